"""`UserContext` (what the engine resolves once per request) and `CandidateSource`, the base of every source.

Every retrieval source (collaborative, content, trending, social, cold start, new items) reads the same
`UserContext` and returns one named `Candidates` result: dense item indices (int64), scores (float32)
sorted descending, at most k distinct ids, and `source` set to the source's name.

    >>> class Everything(CandidateSource):
    ...     name = "everything"
    ...     def retrieve(self, ctx: UserContext, k: int) -> Candidates:
    ...         ids = np.arange(min(k, 3), dtype=np.int64)
    ...         return self.result(ids, np.ones(len(ids), np.float32))
    >>> Everything().retrieve(UserContext.anonymous(now=0.0), k=2).ids.tolist()
    [0, 1]

Where it runs: a source whose `retrieve` is cheap numpy work that holds the GIL sets `inline = True`, and the
engine calls it on the request's own thread (a hand-off to a pool would cost about as much as the work, and
a queue behind other requests' tasks would expose it to their latency); the others (ANN searches, which
release the GIL, or anything that may wait) run on the engine's thread pool, concurrently with the inline
ones. Both kinds keep their deadlines: a late or failing source is dropped from the answer.

Thread-safety: `retrieve` runs concurrently (from several requests' threads and the engine's pool) while
events update the structures a source reads. Every source in this package reads its structures through
their own locked accessors (or immutable snapshots), never holds a lock across a whole request, and keeps
no per-request state on `self`; its random numbers come from a per-thread generator.
"""

from __future__ import annotations

import abc
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from candgen.errors import ArtifactError
from candgen.idset import member, sum_by_key
from candgen.types import Candidates


def _i64() -> np.ndarray:
    return np.zeros(0, np.int64)


@dataclass(slots=True)
class UserContext:
    """Everything a source may read about the user of one request.

    `user` is the dense user index (-1 for a user the artifacts do not know). `history_*` hold the
    user's recent positive engagements newest first (`history_weights` already include the event weight
    and the early-engagement boost). `exclude` lists items the user must not get (seen, hidden, deleted,
    request excludes); sources may use it to over-fetch, the blend filters anyway.
    """

    user_id: str
    user: int
    now: float
    history_items: np.ndarray = field(default_factory=_i64)
    history_times: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    history_weights: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    n_engagements: int = 0
    attributes: dict[str, str] = field(default_factory=dict)
    interests: list[str] = field(default_factory=list)
    context: dict[str, str] = field(default_factory=dict)
    friends: np.ndarray = field(default_factory=_i64)
    exclude: np.ndarray = field(default_factory=_i64)

    @staticmethod
    def anonymous(*, now: float, user_id: str = "", context: dict[str, str] | None = None) -> UserContext:
        """A user nobody knows anything about."""
        return UserContext(user_id=user_id, user=-1, now=now, context=dict(context or {}))

    def attribute(self, name: str) -> str | None:
        """A segment attribute, the request context first (where the user is now), then the profile."""
        return self.context.get(name) or self.attributes.get(name) or None


class CandidateSource(abc.ABC):
    """Base of every retrieval source: `retrieve(ctx, k) -> Candidates` named after `name`."""

    name: ClassVar[str] = ""
    # True: cheap (under ~1.5 ms), GIL-bound work the engine runs on the request thread; False (the safe
    # default for a source of unknown cost): on the engine's pool, where a deadline can abandon it
    inline: ClassVar[bool] = False

    @abc.abstractmethod
    def retrieve(self, ctx: UserContext, k: int) -> Candidates:
        """At most `k` distinct item indices for this user, scores descending, `source == self.name`.

        Thread-safe: may run concurrently with other `retrieve` calls and with updates of the structures
        the source reads. A user the source knows nothing about gets an empty (or non-personal) answer,
        never an error."""

    def result(self, ids: np.ndarray, scores: np.ndarray) -> Candidates:
        """A `Candidates` named after this source (ids int64, scores float32)."""
        return Candidates(ids.astype(np.int64, copy=False), scores.astype(np.float32, copy=False), self.name)


def top_k(
    ids: np.ndarray, scores: np.ndarray, k: int, exclude: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The k best (id, score) pairs, scores descending; ids in `exclude` dropped. `ids` must be distinct."""
    if exclude is not None and len(exclude) and len(ids):
        keep = ~isin(ids, exclude)
        ids, scores = ids[keep], scores[keep]
    if k <= 0 or not len(ids):
        return ids[:0], scores[:0]
    if len(ids) > k:
        part = np.argpartition(-scores, k - 1)[:k]
        ids, scores = ids[part], scores[part]
    order = np.argsort(-scores, kind="stable")
    return ids[order], scores[order]


def unique(x: np.ndarray) -> np.ndarray:
    """Sorted distinct values. Sort-based on purpose: numpy 2.4's hash-based `np.unique` takes ~30 s on 5M int64
    keys here, where a sort takes 0.2 s."""
    s = np.sort(x)
    if len(s) < 2:
        return s
    keep = np.empty(len(s), bool)
    keep[0] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]


def sort_ints(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(keys sorted, the stable order that sorts them) for non-negative integer keys: each key is packed with its
    row number into one int64 and the packed array is sorted by value, 5-10x faster than
    `np.argsort(kind="stable")` on millions of rows. Falls back to argsort when the keys are too large to pack."""
    n = len(keys)
    if n < 2:
        return keys.astype(np.int64), np.arange(n, dtype=np.int64)
    bits = int(n - 1).bit_length()
    if int(keys.min()) < 0 or int(keys.max()).bit_length() + bits > 62:
        order = np.argsort(keys, kind="stable")
        return keys[order].astype(np.int64), order
    packed = (keys.astype(np.int64) << bits) | np.arange(n, dtype=np.int64)
    packed.sort()
    return packed >> bits, packed & ((1 << bits) - 1)


def argsort_ints(keys: np.ndarray) -> np.ndarray:
    """The stable order that sorts non-negative integer keys (see `sort_ints`)."""
    return sort_ints(keys)[1]


def group_sum(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct non-negative integer keys (sorted) and the sum of `values` per key, by one packed sort."""
    if not len(keys):
        return keys.astype(np.int64), values.astype(np.float64)
    sk, order = sort_ints(keys)
    starts = np.flatnonzero(np.concatenate([[True], sk[1:] != sk[:-1]]))
    return sk[starts], np.add.reduceat(values[order].astype(np.float64), starts)


def unique_inverse(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct values, index of each element of x in them), sort-based like `unique`."""
    order = argsort_ints(x) if x.dtype.kind in "iu" else np.argsort(x, kind="stable")
    s = x[order]
    first = np.empty(len(s), bool)
    first[:1] = True
    np.not_equal(s[1:], s[:-1], out=first[1:])
    inv = np.empty(len(x), np.int64)
    inv[order] = np.cumsum(first) - 1
    return s[first], inv


# `isin` marks ids in a scratch array (4 bytes per id of range, per thread) only below this range: item ids;
# larger keys (composite keys at build time) are searched in sorted order
SCRATCH_ISIN_MAX = 1 << 25


def isin(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mask of the elements of `a` found in `b`: marks in the per-thread scratch array of `candgen.idset` for
    request-sized arrays of item ids, else a binary search in sorted b (both faster than np.isin here)."""
    if not len(a) or not len(b):
        return np.zeros(len(a), bool)
    if len(a) <= 100_000 and a.dtype.kind in "iu" and b.dtype.kind in "iu":
        hi = max(a.max(), b.max())
        if hi < SCRATCH_ISIN_MAX and min(a.min(), b.min()) >= 0:
            return member(a, b, upper=int(hi) + 1)
    sb = np.sort(b)
    if len(a) > 100_000 and a.dtype.kind in "iu":
        # searching sorted queries walks sb in order (cache-friendly); 5-10x faster on millions of rows
        order = argsort_ints(a)
        sa = a[order]
        pos = np.minimum(np.searchsorted(sb, sa), len(sb) - 1)
        out = np.empty(len(a), bool)
        out[order] = sb[pos] == sa
        return out
    pos = np.minimum(np.searchsorted(sb, a), len(sb) - 1)
    return sb[pos] == a


def union(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Sorted distinct values of both arrays (int64)."""
    return unique(np.concatenate([a.astype(np.int64, copy=False), b.astype(np.int64, copy=False)]))


def sum_by_id(ids: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct ids and the summed weight of each (a group-by; the order of the ids is unspecified). In O(n)
    through the per-thread scratch array of `candgen.idset` (2-3x faster than sorting at a few thousand
    ids); sort-based for negative ids or id ranges too large for the scratch array."""
    if not len(ids):
        return ids.astype(np.int64), weights.astype(np.float64)
    got = sum_by_key(ids, weights) if int(ids.min()) >= 0 else None
    if got is None:
        uniq, inv = unique_inverse(ids)
        got = uniq, np.bincount(inv, weights=weights, minlength=len(uniq))
    return got[0].astype(np.int64, copy=False), got[1]


_local = threading.local()


def thread_rng(seed: int | None = None) -> np.random.Generator:
    """A per-thread random generator (numpy generators are not thread-safe)."""
    rng = getattr(_local, "rng", None)
    if rng is None:
        rng = np.random.default_rng(seed)
        _local.rng = rng
    return rng


def save_parts(directory: str | Path, name: str, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
    """Write `<name>.npz` (numpy arrays, no pickle) and `<name>.json` (metadata) under `directory`."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    np.savez(d / f"{name}.npz", **arrays)  # type: ignore[arg-type]  # numpy's stub mistypes **kwds
    (d / f"{name}.json").write_text(json.dumps(meta))


def load_parts(directory: str | Path, name: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """What `save_parts` wrote; ArtifactError when it is missing or unreadable."""
    d = Path(directory)
    try:
        meta = json.loads((d / f"{name}.json").read_text())
        with np.load(d / f"{name}.npz", allow_pickle=False) as z:
            return {k: z[k] for k in z.files}, meta
    except (FileNotFoundError, KeyError, ValueError, OSError) as e:
        raise ArtifactError(f"{name} state in {d} is missing or unreadable: {e}") from None


def splice_rows(
    ptr: np.ndarray, values: np.ndarray, n_rows: int, replace: Mapping[int, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """A CSR (ptr, values) with the rows in `replace` swapped for new contents and empty rows added up to
    `n_rows`: untouched rows are copied as whole slices, so the cost grows with the number of changed rows."""
    base_rows = len(ptr) - 1
    lens = np.zeros(n_rows, np.int64)
    lens[: min(base_rows, n_rows)] = np.diff(ptr)[:n_rows]
    chunks: list[np.ndarray] = []
    prev = 0  # first row not yet copied
    for row in sorted(replace):
        if prev < row:
            chunks.append(values[ptr[min(prev, base_rows)] : ptr[min(row, base_rows)]])
        chunks.append(np.asarray(replace[row], dtype=values.dtype))
        lens[row] = len(replace[row])
        prev = row + 1
    if prev < base_rows:
        chunks.append(values[ptr[prev] : ptr[base_rows]])
    out_ptr = np.zeros(n_rows + 1, np.int64)
    np.cumsum(lens, out=out_ptr[1:])
    return out_ptr, np.concatenate(chunks) if chunks else values[:0]
