"""Content-based retrieval: `TagIndex` (tag / category / creator → items by popularity) and `ContentSource`
(what the user's recent engagements and interests share with other items; item-to-item similarity over
item embeddings when an index is given), plus `similar_items` for the "similar items" endpoint.

    tags = TagIndex.from_catalog(catalog, popularity)
    src = ContentSource(tags, catalog, index=index, item_vectors=vectors)
    src.retrieve(ctx, k=300); src.similar_items(42, k=20)
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from candgen.index.base import VectorIndex
from candgen.sources.base import (
    CandidateSource,
    UserContext,
    argsort_ints,
    isin,
    load_parts,
    save_parts,
    sum_by_id,
    top_k,
    union,
)
from candgen.sources.catalog import Catalog
from candgen.sources.collaborative import VectorLookup, lookup_vectors
from candgen.types import Candidates

KINDS = ("tag", "category", "creator")
_FILE, _META = "tag_index.npz", "tag_index.json"


def _postings(
    keys: np.ndarray, items: np.ndarray, popularity: np.ndarray, n_keys: int
) -> tuple[np.ndarray, np.ndarray]:
    """CSR key → items sorted by popularity descending (vectorised)."""
    ok = keys >= 0
    keys, items = keys[ok].astype(np.int64), items[ok].astype(np.int64)
    rank = np.empty(len(popularity), np.int64)  # 0 = most popular
    rank[np.argsort(-popularity, kind="stable")] = np.arange(len(popularity))
    order = argsort_ints(keys * max(len(popularity), 1) + rank[items])
    ptr = np.zeros(n_keys + 1, np.int64)
    np.cumsum(np.bincount(keys, minlength=n_keys), out=ptr[1:])
    return ptr, items[order]


class TagIndex:
    """Posting lists per tag, category and creator, most popular item first; items added while serving are
    kept in a small newest-first overlay that is served before the base list (so they are retrievable at
    once). Thread-safety: one lock around the overlay; base arrays are immutable."""

    def __init__(self, postings: Mapping[str, tuple[np.ndarray, np.ndarray]], *, fresh_per_key: int = 20) -> None:
        self._base = {k: postings[k] for k in KINDS}
        self._fresh: dict[tuple[str, int], list[int]] = {}
        self.fresh_per_key = fresh_per_key
        self._lock = threading.Lock()

    @staticmethod
    def from_catalog(catalog: Catalog, popularity: np.ndarray) -> TagIndex:
        """Build from the catalog; `popularity[item]` orders each list (e.g. all-time weighted engagement)."""
        n = catalog.n_items
        pop = np.zeros(n, np.float64)
        pop[: min(n, len(popularity))] = popularity[:n]
        items = np.arange(n, dtype=np.int64)
        live = ~catalog.is_deleted
        csr = catalog.tags_csr()
        tag_keys = csr.idx.astype(np.int64)
        tag_items = np.repeat(items, np.diff(csr.ptr))
        keep_t = live[tag_items]
        postings = {
            "tag": _postings(tag_keys[keep_t], tag_items[keep_t], pop, len(catalog.tags)),
            "category": _postings(catalog.category[live], items[live], pop, len(catalog.categories)),
            "creator": _postings(catalog.creator[live], items[live], pop, len(catalog.creators)),
        }
        return TagIndex(postings)

    def items(self, kind: str, key: int, m: int) -> np.ndarray:
        """Up to m items of one tag / category / creator: the freshest additions first, then by popularity."""
        ptr, items = self._base[kind]
        base = items[ptr[key] : min(ptr[key + 1], ptr[key] + m)] if 0 <= key < len(ptr) - 1 else items[:0]
        with self._lock:
            fresh = self._fresh.get((kind, key))
            if not fresh:
                return base
            new = np.array(fresh[::-1][:m], np.int64)
        return np.concatenate([new, base[~isin(base, new)]])[:m]

    def add_item(self, item: int, *, tags: np.ndarray, category: int, creator: int) -> None:
        """Index an item added while serving (codes as in the catalog; -1 = none)."""
        keys = [("tag", int(t)) for t in tags] + [("category", category), ("creator", creator)]
        with self._lock:
            for kind, key in keys:
                if key >= 0:
                    lst = self._fresh.setdefault((kind, key), [])
                    lst.append(int(item))
                    del lst[: -self.fresh_per_key]

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays: dict[str, np.ndarray] = {}
        for kind in KINDS:
            arrays[f"{kind}_ptr"], arrays[f"{kind}_items"] = self._base[kind]
        with self._lock:
            fresh = [[kind, key, items] for (kind, key), items in self._fresh.items()]
        return arrays, {"fresh": fresh, "fresh_per_key": self.fresh_per_key}

    @staticmethod
    def from_arrays(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> TagIndex:
        ti = TagIndex({k: (arrays[f"{k}_ptr"], arrays[f"{k}_items"]) for k in KINDS},
                      fresh_per_key=int(meta.get("fresh_per_key", 20)))
        ti._fresh = {(str(kind), int(key)): [int(i) for i in items] for kind, key, items in meta.get("fresh", [])}
        return ti

    def save(self, directory: str | Path) -> None:
        arrays, meta = self.to_arrays()
        save_parts(directory, "tag_index", arrays, meta)

    @staticmethod
    def load(directory: str | Path) -> TagIndex:
        return TagIndex.from_arrays(*load_parts(directory, "tag_index"))


_DISCOUNT = 1.0 / np.log2(np.arange(4096) + 2.0)  # 1 / log2(rank + 2): the DCG discount of a posting's rank


def rank_discount(n: int) -> np.ndarray:
    """1 / log2(rank + 2) for ranks 0..n-1 (a slice of a shared table up to 4096; computed beyond)."""
    return _DISCOUNT[:n] if n <= len(_DISCOUNT) else 1.0 / np.log2(np.arange(n) + 2.0)


def _top_keys(keys: np.ndarray, weights: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The n heaviest distinct keys (>= 0) with weights normalised to sum 1."""
    ok = keys >= 0
    ids, sums = sum_by_id(keys[ok], weights[ok])
    if not len(ids) or sums.sum() <= 0:
        return ids[:0], sums[:0]
    ids, sums = top_k(ids, sums, n)
    return ids, sums / sums.sum()


class ContentSource(CandidateSource):
    """Tags, categories and creators of the user's recent engagements (weighted by event weight and recency,
    relative to the newest engagement) and onboarding interests → the most popular items of each, scored
    kind weight x feature weight / log2(rank + 2); blended with item-to-item similarity (the weighted mean of
    the history's item vectors searched in `index`) when an index is given. Both parts are normalised to a
    best score of 1 before they are added."""

    name = "content"

    def __init__(
        self,
        tags: TagIndex,
        catalog: Catalog,
        *,
        index: VectorIndex | None = None,
        item_vectors: VectorLookup = None,
        kind_weights: Mapping[str, float] | None = None,
        features_per_kind: Mapping[str, int] | None = None,
        similarity_weight: float = 1.0,
        interest_weight: float = 1.0,
        recency_half_life_hours: float = 72.0,
    ) -> None:
        self.tags, self.catalog, self.index, self.item_vectors = tags, catalog, index, item_vectors
        self.kind_weights = dict(kind_weights or {"tag": 0.5, "category": 0.2, "creator": 0.3})
        self.features_per_kind = dict(features_per_kind or {"tag": 8, "category": 3, "creator": 5})
        self.similarity_weight, self.interest_weight = similarity_weight, interest_weight
        self.half_life_s = recency_half_life_hours * 3600.0

    def _history(self, ctx: UserContext) -> tuple[np.ndarray, np.ndarray]:
        items = ctx.history_items.astype(np.int64, copy=False)
        n = len(items)
        if not n:
            return items, np.zeros(0, np.float64)
        times = ctx.history_times[:n].astype(np.float64)
        w = ctx.history_weights[:n].astype(np.float64) * np.exp2((times - times.max()) / self.half_life_s)
        ok = (items >= 0) & (items < self.catalog.n_items)
        return items[ok], w[ok]

    def _feature_scores(
        self, ctx: UserContext, items: np.ndarray, w: np.ndarray, m: int
    ) -> tuple[np.ndarray, np.ndarray]:
        tag_keys, per_item = self.catalog.tags_of_items(items)
        tag_w = np.repeat(w, per_item)
        interests = self.catalog.tag_ids(ctx.interests) if ctx.interests else np.zeros(0, np.int64)
        if len(interests):
            per = self.interest_weight * (float(w.sum()) if len(w) else 1.0) / len(interests)
            tag_keys = np.concatenate([tag_keys, interests.astype(np.int64)])
            tag_w = np.concatenate([tag_w, np.full(len(interests), per)])
        per_kind = {
            "tag": (tag_keys, tag_w),
            "category": (self.catalog.category[items].astype(np.int64), w),
            "creator": (self.catalog.creator[items].astype(np.int64), w),
        }
        ids, scores = [], []
        for kind, (keys, kw) in per_kind.items():
            feats, fw = _top_keys(keys, kw, self.features_per_kind.get(kind, 5))
            for f, fwt in zip(feats.tolist(), fw.tolist(), strict=True):
                got = self.tags.items(kind, f, m)
                ids.append(got)
                scores.append(self.kind_weights.get(kind, 0.0) * fwt * rank_discount(len(got)))
        if not ids:
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
        return sum_by_id(np.concatenate(ids), np.concatenate(scores))

    def _query_vector(self, items: np.ndarray, w: np.ndarray) -> np.ndarray | None:
        if self.index is None or not len(items):
            return None
        vecs = lookup_vectors(self.item_vectors, self.index, items)
        if vecs is None or len(vecs) != len(items):
            return None
        q = (w[:, None] * vecs).sum(axis=0)
        norm = float(np.linalg.norm(q))
        return None if norm == 0 else (q / norm).astype(np.float32)[None, :]

    def _search(self, q: np.ndarray | None, k: int, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if q is None or self.index is None or len(self.index) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
        res = self.index.search(q, k, exclude=[exclude if len(exclude) else None])[0]
        return res.ids, np.maximum(res.scores.astype(np.float64), 0.0)

    def retrieve(self, ctx: UserContext, k: int) -> Candidates:
        items, w = self._history(ctx)
        if k <= 0 or (not len(items) and not ctx.interests):
            return Candidates.empty(self.name)
        exclude = union(ctx.exclude, items)
        f_ids, f_scores = self._feature_scores(ctx, items, w, m=k // 2 + 50)
        s_ids, s_scores = self._search(self._query_vector(items, w), k, exclude)
        return self._combine(f_ids, f_scores, s_ids, s_scores, k, exclude)

    def _combine(self, f_ids: np.ndarray, f_scores: np.ndarray, s_ids: np.ndarray, s_scores: np.ndarray, k: int,
                 exclude: np.ndarray) -> Candidates:
        parts_ids, parts_scores = [], []
        for ids, sc, weight in ((f_ids, f_scores, 1.0), (s_ids, s_scores, self.similarity_weight)):
            if len(ids) and sc.max() > 0:
                parts_ids.append(ids)
                parts_scores.append(weight * sc / sc.max())
        if not parts_ids:
            return Candidates.empty(self.name)
        ids, scores = sum_by_id(np.concatenate(parts_ids), np.concatenate(parts_scores))
        live = self.catalog.live(ids)
        ids, scores = top_k(ids[live], scores[live], k, exclude)
        return self.result(ids, scores)

    def similar_items(self, item: int, k: int) -> Candidates:
        """Items most like `item`: nearest item vectors when an index is given, merged with items sharing its
        tags, category and creator (source name "similar")."""
        if not (0 <= item < self.catalog.n_items) or k <= 0:
            return Candidates.empty("similar")
        one = np.array([item], np.int64)
        ctx = UserContext(user_id="", user=-1, now=0.0, history_items=one,
                          history_times=np.zeros(1), history_weights=np.ones(1, np.float32))
        f_ids, f_scores = self._feature_scores(ctx, one, np.ones(1), m=k + 50)
        s_ids, s_scores = self._search(self._query_vector(one, np.ones(1)), k, one)
        c = self._combine(f_ids, f_scores, s_ids, s_scores, k, one)
        return Candidates(c.ids, c.scores, "similar")
