"""candgen's own blend and each of its retrieval sources as rows of the evaluation table.

`engine_recommenders(engine, dataset)` wraps a loaded `candgen.engine.Engine` (trained on the train part of
the split) into objects with a `name` and a batched `recommend(users, k)`, the interface `evaluate` needs:
one for the blend (the whole request path: sources, blend, filters, fallback) and one per source alone.
Users and items are matched by their string ids, so the artifacts may number them differently from the
evaluation dataset. "now" is the end of the artifacts' training data, as for `candgen recommend`.

A source alone is judged like the baselines: the items the user already interacted with (the engine's
exclusions for that user) are dropped from its list before the cut at k; it is asked for k plus the
number of such items so that dropping them never leaves its list short.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from candgen.data.dataset import Dataset, IdMap
from candgen.errors import CandgenError
from candgen.types import BatchCandidates, Request

# sources that produce personalised or popular lists on their own; "new_items" only fills exploration slots
EVALUATED_SOURCES = ("collaborative", "content", "trending", "social", "cold_start")


class _EngineRows:
    def __init__(self, engine: Any, *, users: IdMap, items: IdMap, name: str) -> None:
        self.engine, self.users, self.items, self.name = engine, users, items, name
        self.now = float(engine.manifest.data_end_time)

    def _batch(self, users: np.ndarray, k: int) -> BatchCandidates:
        users = np.asarray(users)
        if users.ndim != 1:
            raise ValueError(f"users must be a 1-d array of user indices, got shape {users.shape}")
        if int(k) != k or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        ids = np.full((len(users), k), -1, dtype=np.int64)
        scores = np.full((len(users), k), -np.inf, dtype=np.float32)
        for row, u in enumerate(users):
            item_ids, item_scores = self._one(self.users.id(int(u)), k)
            dense = self.items.lookup(item_ids)
            known = dense >= 0  # items the evaluation catalog does not know cannot be relevant anyway
            n = min(k, int(known.sum()))
            ids[row, :n] = dense[known][:n]
            scores[row, :n] = np.asarray(item_scores, dtype=np.float32)[known][:n]
        return BatchCandidates(ids, scores)

    def _one(self, user_id: str, k: int) -> tuple[list[str], np.ndarray]:
        raise NotImplementedError


class BlendRecommender(_EngineRows):
    """The whole request path of the engine: what `POST /v1/candidates` would answer."""

    def recommend(self, users: np.ndarray, k: int) -> BatchCandidates:
        return self._batch(users, k)

    def _one(self, user_id: str, k: int) -> tuple[list[str], np.ndarray]:
        res = self.engine.candidates(Request(user_id=user_id, k=k, now=self.now))
        return list(res.item_ids), np.asarray(res.scores, dtype=np.float32)


class SourceRecommender(_EngineRows):
    """One retrieval source of the engine alone, on the same user context the blend would give it."""

    def __init__(self, engine: Any, source: str, *, users: IdMap, items: IdMap, name: str | None = None) -> None:
        if source not in engine.sources:
            raise CandgenError(f"the artifacts have no source {source!r}; they have {', '.join(engine.sources)}")
        super().__init__(engine, users=users, items=items, name=name or source)
        self.source = engine.sources[source]

    def recommend(self, users: np.ndarray, k: int) -> BatchCandidates:
        return self._batch(users, k)

    def _one(self, user_id: str, k: int) -> tuple[list[str], np.ndarray]:
        ctx = self.engine.user_context(Request(user_id=user_id, k=k, now=self.now), self.now)
        cands = self.source.retrieve(ctx, k + len(ctx.exclude))
        keep = ~np.isin(cands.ids, ctx.exclude) & (cands.ids >= 0)
        ids, scores = cands.ids[keep][:k], cands.scores[keep][:k]
        return self.engine.state.catalog.items.ids(ids), scores


def engine_recommenders(engine: Any, dataset: Dataset, *, sources: tuple[str, ...] | None = None,
                        ) -> list[BlendRecommender | SourceRecommender]:
    """The blend first, then every source of `sources` (default: `EVALUATED_SOURCES`) the engine has."""
    wanted = EVALUATED_SOURCES if sources is None else sources
    rows: list[BlendRecommender | SourceRecommender] = [
        BlendRecommender(engine, users=dataset.users, items=dataset.items, name="blend")
    ]
    for name in wanted:
        if name in engine.sources or sources is not None:
            rows.append(SourceRecommender(engine, name, users=dataset.users, items=dataset.items))
    return rows
