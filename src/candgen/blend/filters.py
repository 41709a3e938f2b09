"""Request filters applied to every source's list before merging, so that quotas are filled with valid items.

An item is dropped when it is excluded for this request (already seen, hidden or disliked by the user,
named in the request's `exclude`), deleted from the catalog, or made by a creator the user blocked.
Everything is vectorised: the ids of all sources are checked in one pass and split back per source.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from candgen.idset import member
from candgen.types import Candidates

ItemSet = np.ndarray | set[int] | frozenset[int] | Sequence[int]


def _as_array(items: ItemSet | Iterable[int] | None) -> np.ndarray:
    if items is None:
        return np.empty(0, dtype=np.int64)
    if isinstance(items, np.ndarray):
        return items.astype(np.int64, copy=False).ravel()
    if isinstance(items, set | frozenset):
        return np.fromiter(items, dtype=np.int64, count=len(items))
    return np.asarray(list(items), dtype=np.int64).ravel()


def _lookup(table: np.ndarray, ids: np.ndarray, missing: int | bool) -> np.ndarray:
    """`table[ids]`, with `missing` for ids beyond the table (items added after it was built)."""
    inside = ids < len(table)
    if bool(inside.all()):
        return table[ids]
    out = np.full(len(ids), missing, dtype=table.dtype)
    out[inside] = table[ids[inside]]
    return out


def valid_mask(
    ids: np.ndarray,
    *,
    exclude: ItemSet | None = None,
    deleted: np.ndarray | None = None,
    blocked_creators: ItemSet | None = None,
    item_creator: np.ndarray | None = None,
) -> np.ndarray:
    """True for each id that passes every filter.

    - `exclude`: item indices this request must not return (seen, hidden/disliked, request excludes).
    - `deleted`: a boolean mask over the catalog, True for deleted items (kept by the caller across requests,
      so the check is one gather; ids beyond its end count as not deleted).
    - `blocked_creators`: creator codes the user blocked; `item_creator[i]` is item i's creator code (-1 when
      unknown, never blocked). Needs `item_creator` when non-empty.
    Negative ids (padding from an index search) are never valid.
    """
    ids = np.asarray(ids, dtype=np.int64)
    ok = ids >= 0
    if len(ids) == 0:
        return ok
    safe = np.where(ok, ids, 0)
    ex = _as_array(exclude)
    if len(ex):
        ok &= ~member(safe, ex[ex >= 0])
    if deleted is not None and len(deleted):
        ok &= ~_lookup(np.asarray(deleted, dtype=bool), safe, False)
    blocked = _as_array(blocked_creators)
    if len(blocked):
        if item_creator is None:
            raise ValueError("blocked_creators needs item_creator (the creator code of each item)")
        creators = _lookup(np.asarray(item_creator), safe, -1).astype(np.int64, copy=False)
        known = creators >= 0
        ok &= ~(member(np.where(known, creators, 0), blocked[blocked >= 0]) & known)
    return ok


def apply_filters(
    lists: Sequence[Candidates],
    *,
    exclude: ItemSet | None = None,
    deleted: np.ndarray | None = None,
    blocked_creators: ItemSet | None = None,
    item_creator: np.ndarray | None = None,
) -> list[Candidates]:
    """Every list without the items that `valid_mask` rejects; order, scores and source names are kept.

    All lists are checked in one `valid_mask` call over their concatenated ids (one pass per request, not per
    source).
    """
    if not lists:
        return []
    sizes = np.fromiter((len(c) for c in lists), dtype=np.int64, count=len(lists))
    ids = np.concatenate([np.asarray(c.ids, dtype=np.int64) for c in lists])
    ok = valid_mask(ids, exclude=exclude, deleted=deleted, blocked_creators=blocked_creators, item_creator=item_creator)
    if bool(ok.all()):
        return list(lists)
    out = []
    for cand, keep in zip(lists, np.split(ok, np.cumsum(sizes)[:-1]), strict=True):
        if bool(keep.all()):
            out.append(cand)
        else:
            out.append(Candidates(np.asarray(cand.ids)[keep], np.asarray(cand.scores)[keep], cand.source))
    return out
