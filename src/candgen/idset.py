"""Set operations and group-by on item ids in O(n) with a per-thread, catalog-sized scratch array, and a fast
stable sort. Shared by the sources (summing scores per item) and the blend (dedup, filters).

A request does a few set operations and group-bys (is this id excluded? seen in another list already? the
summed score of each distinct item?) over a few thousand ids. Hash or sort based versions (`np.isin`,
`np.unique`) cost 100-200 µs each at that size; writing marks into a zeroed array indexed by item id, reading
them back and clearing them costs a few µs.
The scratch array is per thread (so concurrent requests never share it), grows to the largest id seen
(4 bytes per catalog item per thread: 4 MB at 1M items) and is always left zeroed, even on errors.
Ids must be >= 0; callers drop negative ids (index padding) first.
"""

from __future__ import annotations

import threading

import numpy as np

_local = threading.local()
MAX_SCRATCH_ITEMS = 200_000_000  # above this id range fall back to sort-based numpy set operations


def _scratch(size: int) -> np.ndarray | None:
    """A zeroed int32 array of length >= size for this thread, or None when size is out of reason."""
    if size > MAX_SCRATCH_ITEMS:
        return None
    buf: np.ndarray | None = getattr(_local, "buf", None)
    if buf is None or len(buf) < size:
        grown = max(size, int(len(buf) * 1.5) if buf is not None else size, 1024)
        buf = np.zeros(grown, dtype=np.int32)
        _local.buf = buf
    return buf


def _upper(*arrays: np.ndarray) -> int:
    return max(int(a.max()) for a in arrays if len(a)) + 1


def member(ids: np.ndarray, values: np.ndarray, *, upper: int | None = None) -> np.ndarray:
    """Boolean mask: `ids[i]` is one of `values` (both non-negative int arrays); like `np.isin`. `upper`: a
    bound above every id and value, when the caller knows one."""
    if len(ids) == 0 or len(values) == 0:
        return np.zeros(len(ids), dtype=bool)
    buf = _scratch(upper if upper is not None else _upper(ids, values))
    if buf is None:
        return np.isin(ids, values)
    try:
        buf[values] = 1
        return buf[ids] == 1
    finally:
        buf[values] = 0


def first_occurrence(ids: np.ndarray) -> np.ndarray:
    """Boolean mask of the first occurrence of each id (non-negative ints), in input order."""
    n = len(ids)
    if n == 0:
        return np.zeros(0, dtype=bool)
    buf = _scratch(_upper(ids))
    if buf is None:
        out = np.zeros(n, dtype=bool)
        out[np.unique(ids, return_index=True)[1]] = True
        return out
    pos = np.arange(1, n + 1, dtype=np.int32)
    try:
        # with repeated indices the last write wins, so writing in reverse leaves each id's first position
        buf[ids[::-1]] = pos[::-1]
        return buf[ids] == pos
    finally:
        buf[ids] = 0


def compact(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(uniq, inv)` with `uniq[inv] == ids`; `uniq` holds each distinct id once, in order of first occurrence."""
    n = len(ids)
    buf = _scratch(_upper(ids)) if n else None
    if buf is None:
        if n == 0:
            return ids[:0].astype(np.int64), np.zeros(0, dtype=np.int64)
        _, first, inv_sorted = np.unique(ids, return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")  # sorted-unique order -> first-occurrence order
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order))
        return ids[np.sort(first)], rank[inv_sorted]
    pos = np.arange(1, n + 1, dtype=np.int32)
    try:
        buf[ids[::-1]] = pos[::-1]  # the last write wins: each id keeps its first position (1-based)
        first_pos = buf[ids]
    finally:
        buf[ids] = 0
    is_first = first_pos == pos
    code_of_pos = np.cumsum(is_first) - 1
    return ids[is_first], code_of_pos[first_pos - 1]


def sum_by_key(ids: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """`(distinct ids, summed weight of each)`, the ids in order of their last occurrence; None when the id
    range is out of reason for the scratch array (the caller sorts instead). Each position writes its index
    into the scratch array at its id (the last write wins), so reading it back names one representative
    position per id; the weights are summed per representative."""
    n = len(ids)
    if n == 0:
        return ids[:0].astype(np.int64), np.zeros(0, np.float64)
    buf = _scratch(_upper(ids))
    if buf is None or n >= 2**31 - 1:
        return None
    pos = np.arange(n, dtype=np.int32)
    try:
        buf[ids] = pos
        rep = buf[ids]
    finally:
        buf[ids] = 0
    is_rep = rep == pos
    return ids[is_rep], np.bincount(rep, weights=weights, minlength=n)[is_rep]


def argsort_desc(scores: np.ndarray) -> np.ndarray:
    """Positions that sort float scores descending, ties in input order (a stable sort, 3x faster than numpy's).

    The float32 bits are mapped to order-preserving integers and packed with the position into one int64
    key, so numpy's fast unstable sort gives the stable order. NaN sorts last.
    """
    s = np.asarray(scores, dtype=np.float32)
    n = len(s)
    if n >= 2**31:
        return np.argsort(-s, kind="stable")
    s = np.where(np.isnan(s), np.float32(-np.inf), s)
    bits = s.view(np.int32).astype(np.int64)
    # negative floats order backwards as integers: flip their magnitude bits
    ordered = np.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    descending = (np.int64(2**31 - 1) - ordered).astype(np.uint64)  # in [0, 2**32)
    key = (descending << np.uint64(32)) | np.arange(n, dtype=np.uint64)
    return np.argsort(key)
