"""Collaborative retrieval: the user tower's embedding of this user, searched in the item ANN index.

`UserEncoder` is the small protocol the two-tower export (`TwoTowerModel.embed_user`) satisfies; the
source never imports the model package. Item vectors of the user's history (the user tower may pool them)
come from `item_vectors_lookup`: an (n_items, dim) array, a function of item ids, or the index's own
`reconstruct`.

    src = CollaborativeSource(model, index, item_vectors)
    src.retrieve(ctx, k=1000)                                      # Candidates(..., source="collaborative")
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import numpy as np

from candgen.index.base import VectorIndex
from candgen.sources.base import CandidateSource, UserContext
from candgen.sources.catalog import Catalog
from candgen.types import Candidates

VectorLookup = np.ndarray | Callable[[np.ndarray], np.ndarray] | None


class UserEncoder(Protocol):
    """What the collaborative source needs of the user tower."""

    def embed_user(
        self,
        *,
        attributes: Mapping[str, str],
        interests: Sequence[str],
        context: Mapping[str, str],
        history_items: np.ndarray,
        history_weights: np.ndarray,
        history_item_vectors: np.ndarray | None = None,
        now: int | None = None,
    ) -> np.ndarray:
        """A (dim,) float32 user embedding, L2-normalised."""
        ...


def lookup_vectors(lookup: VectorLookup, index: VectorIndex | None, ids: np.ndarray) -> np.ndarray | None:
    """(len(ids), dim) vectors of `ids` from a function, an array (rows beyond it come from the index), or the
    index; rows nobody can provide are zero (they then add nothing to a weighted pool)."""
    if not len(ids):
        return None
    if callable(lookup):
        return np.asarray(lookup(ids), np.float32)
    known = np.zeros(len(ids), bool)
    out: np.ndarray | None = None
    if isinstance(lookup, np.ndarray):
        known = (ids >= 0) & (ids < len(lookup))
        out = np.zeros((len(ids), lookup.shape[1]), np.float32)
        out[known] = lookup[ids[known]]
        if known.all():
            return out
    if index is not None:
        missing = ids[~known]
        try:
            got = np.asarray(index.reconstruct(missing), np.float32)
        except (NotImplementedError, KeyError, IndexError, RuntimeError, ValueError):
            return out
        if out is None:
            out = np.zeros((len(ids), got.shape[1]), np.float32)
        out[~known] = got
    return out


class CollaborativeSource(CandidateSource):
    """ANN search over item embeddings with the user tower's embedding, excluding the user's exclude set.

    Users with no signal at all (no history, interests, attributes or context) get an empty answer: cold
    start is another source's job. Thread-safety: the encoder is pure numpy and the index documents its own
    concurrency; this class keeps no state per request.
    """

    name = "collaborative"

    def __init__(
        self, encoder: UserEncoder, index: VectorIndex, item_vectors_lookup: VectorLookup = None, *,
        catalog: Catalog | None = None,
    ) -> None:
        self.encoder, self.index, self.item_vectors, self.catalog = encoder, index, item_vectors_lookup, catalog

    def user_vector(self, ctx: UserContext) -> np.ndarray | None:
        if not (len(ctx.history_items) or ctx.interests or ctx.attributes or ctx.context):
            return None
        hist = ctx.history_items.astype(np.int64, copy=False)
        vectors = lookup_vectors(self.item_vectors, self.index, hist)
        vec = self.encoder.embed_user(
            attributes=ctx.attributes, interests=ctx.interests, context=ctx.context, history_items=hist,
            history_weights=ctx.history_weights, history_item_vectors=vectors, now=int(ctx.now),
        )
        return np.ascontiguousarray(np.asarray(vec, np.float32).reshape(1, -1))

    def retrieve(self, ctx: UserContext, k: int) -> Candidates:
        q = self.user_vector(ctx)
        if q is None or k <= 0 or len(self.index) == 0:
            return Candidates.empty(self.name)
        res = self.index.search(q, k, exclude=[ctx.exclude if len(ctx.exclude) else None])[0]
        if self.catalog is not None:  # deleted items may linger in the index until it is rebuilt
            live = self.catalog.live(res.ids)
            return self.result(res.ids[live], res.scores[live])
        return self.result(res.ids, res.scores)
