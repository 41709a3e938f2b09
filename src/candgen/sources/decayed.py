"""`SparseScores`: per-item running scores with a cached top list that stays exact under increments.

The building block of `TrendingCounter` (global and per-segment trending) and `SegmentPopularity`.
Scores only ever grow (forward decay adds w * 2^((t - t0) / half_life); nothing is subtracted), so the
true top-k always lies in (the top-C list cached at the last rebuild) ∪ (items touched since): `top`
costs O(k) when nothing was touched (the cached list is kept sorted) and O(C + touched) otherwise, an
update costs O(log n) (a binary search) or O(1) (a dict), and the O(n) rebuild runs only when the touched
set grows large.
"""

from __future__ import annotations

import numpy as np

from candgen.sources.base import group_sum, isin

_MAX_DIRTY = 4096  # touched items before the next top() rebuilds its cached list (O(n))
_MAX_EXTRA = 65536  # items outside the sorted arrays before they are merged in


class SparseScores:
    """Scores of a set of items: sorted `ids` + `vals` arrays, plus a dict for items added since.

    Not thread-safe by itself: the owning counter holds one lock around every call.
    """

    __slots__ = ("ids", "vals", "extra", "_top", "_top_vals", "_dirty", "_cache", "_dense")

    def __init__(self, ids: np.ndarray | None = None, vals: np.ndarray | None = None, cache: int = 2048) -> None:
        self.ids = np.zeros(0, np.int64) if ids is None else ids.astype(np.int64, copy=False)
        self.vals = np.zeros(0, np.float64) if vals is None else vals.astype(np.float64, copy=False)
        self.extra: dict[int, float] = {}
        self._top: np.ndarray | None = None  # cached top-C ids at the last rebuild
        self._top_vals = np.zeros(0, np.float64)  # their scores then (still exact for items not dirty)
        self._dirty: set[int] = set()
        self._cache = cache
        self._dense = self._is_dense()

    def _is_dense(self) -> bool:
        """ids == 0..n-1 (the global counter): an item's position is the item itself, no search needed."""
        return bool(len(self.ids)) and int(self.ids[-1]) == len(self.ids) - 1 and int(self.ids[0]) == 0

    def __len__(self) -> int:
        return len(self.ids) + len(self.extra)

    def add(self, item: int, value: float) -> None:
        ids = self.ids
        pos = item if self._dense else int(ids.searchsorted(item))
        if pos < len(ids) and ids[pos] == item:
            self.vals[pos] += value
        else:
            self.extra[item] = self.extra.get(item, 0.0) + value
        if self._top is not None:
            self._dirty.add(item)

    def scores_of(self, items: np.ndarray) -> np.ndarray:
        items = items.astype(np.int64, copy=False)
        out = np.zeros(len(items), np.float64)
        if self._dense:
            hit = (items >= 0) & (items < len(self.ids))
            out[hit] = self.vals[items[hit]]
        elif len(self.ids):
            pos = np.minimum(np.searchsorted(self.ids, items), len(self.ids) - 1)
            hit = self.ids[pos] == items
            out[hit] = self.vals[pos[hit]]
        if self.extra:
            get = self.extra.get
            out += np.fromiter((get(int(i), 0.0) for i in items), np.float64, len(items))
        return out

    def scale(self, factor: float) -> None:
        """Multiply every score (forward-decay renormalisation); the order does not change."""
        self.vals *= factor
        self._top_vals = self._top_vals * factor
        for k in self.extra:
            self.extra[k] *= factor

    def compact(self) -> None:
        """Merge `extra` into the sorted arrays."""
        if not self.extra:
            return
        ids = np.fromiter(self.extra.keys(), np.int64, len(self.extra))
        vals = np.fromiter(self.extra.values(), np.float64, len(self.extra))
        all_ids = np.concatenate([self.ids, ids])
        order = np.argsort(all_ids, kind="stable")
        self.ids, self.vals = all_ids[order], np.concatenate([self.vals, vals])[order]
        self.extra = {}
        self._dense = self._is_dense()

    def _rebuild(self, size: int) -> None:
        if len(self.extra) > _MAX_EXTRA:
            self.compact()
        self._cache = max(self._cache, size)
        ids, vals = self._all()
        if len(ids) > self._cache:
            part = np.argpartition(-vals, self._cache - 1)[: self._cache]
            ids, vals = ids[part], vals[part]
        order = np.argsort(-vals, kind="stable")  # kept sorted: an untouched top list is then a prefix
        self._top, self._top_vals = ids[order], vals[order]
        self._dirty = set()

    def _all(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.extra:
            return self.ids, self.vals
        ids = np.fromiter(self.extra.keys(), np.int64, len(self.extra))
        vals = np.fromiter(self.extra.values(), np.float64, len(self.extra))
        return np.concatenate([self.ids, ids]), np.concatenate([self.vals, vals])

    def top(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k highest-scoring (ids, scores), scores descending (exact)."""
        if k <= 0 or not len(self):
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
        if self._top is None or k > self._cache or len(self._dirty) > _MAX_DIRTY:
            self._rebuild(max(2 * k, self._cache) if k > self._cache else self._cache)
        assert self._top is not None  # set by _rebuild
        cand, vals = self._top, self._top_vals  # sorted by score, descending
        if self._dirty:  # touched items get fresh scores; every other cached score is still exact
            dirty = np.fromiter(self._dirty, np.int64, len(self._dirty))
            keep = ~isin(cand, dirty)
            # the k best untouched items are the first k of the (still sorted) rest; merge the touched ones in
            cand = np.concatenate([cand[keep][:k], dirty])
            vals = np.concatenate([vals[keep][:k], self.scores_of(dirty)])
            if len(cand) > k:
                part = np.argpartition(-vals, k - 1)[:k]
                cand, vals = cand[part], vals[part]
            order = np.argsort(-vals, kind="stable")
            cand, vals = cand[order], vals[order]
        else:  # nothing touched since the rebuild: a prefix, no sort
            cand, vals = cand[:k].copy(), vals[:k].copy()
        if len(vals) and vals[-1] <= 0:  # a dense array holds items nobody engaged with
            keep = vals > 0
            cand, vals = cand[keep], vals[keep]
        return cand, vals

    def prune(self, keep: int) -> None:
        """Keep only the `keep` highest-scoring items (bounds the memory of rarely read segments)."""
        self.compact()
        if len(self.ids) > keep:
            part = np.sort(np.argpartition(-self.vals, keep - 1)[:keep])
            self.ids, self.vals = self.ids[part], self.vals[part]
        self._top, self._dirty = None, set()
        self._dense = self._is_dense()


def group_scores(
    group: np.ndarray, items: np.ndarray, values: np.ndarray, *, keep: int | None = None
) -> dict[int, SparseScores]:
    """Vectorised bulk build: for each group code >= 0, the summed `values` per item as `SparseScores`."""
    ok = (group >= 0) & (values > 0)
    if not ok.any():
        return {}
    n_items = int(items.max()) + 1
    key = group[ok].astype(np.int64) * n_items
    key += items[ok]
    uniq, sums = group_sum(key, values[ok])
    g, it = uniq // n_items, uniq % n_items  # sorted by group, then item
    bounds = np.flatnonzero(np.diff(g)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(g)]])
    out: dict[int, SparseScores] = {}
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        sc = SparseScores(it[s:e].copy(), sums[s:e].copy())
        if keep is not None:
            sc.prune(keep)
        out[int(g[s])] = sc
    return out
