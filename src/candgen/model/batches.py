"""Training batches of the two-tower model, assembled in numpy only and ahead of time.

`BatchMaker.make` turns the example indices of one step into everything the step needs, vectorised over
the batch (no Python loop per example): sequential histories, context dropout, random and hard negatives,
id dropout, the distinct candidates the item tower embeds once each, the weighted bags of every table
(`bags.py`) and the softmax's log-multiplicity bias (`losses.grouped_softmax_bias`). Nothing here touches
torch or the model, so a prefetcher (`prefetch.py`) can assemble the next batches on another core while the
current step trains; the random draws happen in one thread in a fixed order, so training stays deterministic by seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from candgen.config import ModelConfig
from candgen.data.dataset import Csr, Dataset
from candgen.model.bags import Bags, TableLayout, history_bags, id_bags
from candgen.model.features import N_AGE, FeatureSpace, PositiveLog, age_bucket, history_len_bucket, hour_bucket
from candgen.model.losses import GroupedSoftmax, grouped_softmax_inputs

CONTEXT_DROPOUT = 0.5


@dataclass
class Batch:
    """One training step's inputs (numpy)."""

    users: np.ndarray  # (B,) user of each example
    items: np.ndarray  # (B,) its positive item
    hist: np.ndarray  # (B, L) history items, most recent first (0 in empty slots)
    hist_weights: np.ndarray  # (B, L) float32, normalised to sum 1 per row (0 in empty slots)
    hours: np.ndarray  # (B,) hour-of-day code after context dropout
    cand: np.ndarray  # (C,) candidates: the B positives, the M random negatives, then B hard negatives if any
    cand_ids: np.ndarray  # (C,) their id buckets after id dropout
    cand_age: np.ndarray  # (C,) their age buckets
    n_random: int  # M
    hard: np.ndarray | None  # (B,) each user's hard negative, -1 for none; None when the data has none
    inverse: np.ndarray  # (C,) row of each candidate among the distinct candidates the item tower embeds
    n_unique: int  # number of distinct candidates
    id_bags: Bags  # n_unique item id bags, then B history id bags
    feat_bags: Bags  # n_unique item feature bags, then B user feature bags
    weight: np.ndarray  # (B,) float32 event weight of each example
    softmax: GroupedSoftmax | None = None  # the softmax loss's inputs; None for the other losses
    softmax_weight: np.ndarray | None = None  # (B,) float32 example weights normalised to sum 1
    # (bank version, (B, D) pooled history vectors), filled ahead of the step by the trainer (`pool_history`)
    history_pool: tuple[int, Any] | None = None


class BatchMaker:
    """Assembles batches for one training run; owns the run's random generator."""

    def __init__(self, ds: Dataset, space: FeatureSpace, config: ModelConfig, rng: np.random.Generator) -> None:
        self.config, self.rng, self.n_items = config, rng, ds.n_items
        self.history_decay = space.history_decay
        self.layout = TableLayout.of(space)
        self.id_rows = max(space.id_buckets, 1)
        self.codes = space.encode_catalog(ds)
        users = np.arange(ds.n_users)
        self.user_attrs = space.encode_user_attributes(ds, users)
        self.user_interests = space.encode_user_interests(ds, users)

    def make(self, log: PositiveLog, ex: np.ndarray, neg: Csr, inv_q: np.ndarray | None) -> Batch:
        """The batch of examples `ex` (rows of `log`); inv_q: exp(-logQ) per item, None without correction."""
        cfg, codes = self.config, self.codes
        users, items, ts = log.user[ex], log.item[ex], log.timestamp[ex]
        hist, hw = log.history(users, log.rank[ex], cfg.history_len, self.history_decay)
        wsum = hw.sum(axis=1, keepdims=True)
        wn = (hw / np.where(wsum > 0, wsum, 1)).astype(np.float32)
        hours = self._hours(ts)
        b, m = len(ex), cfg.random_negatives
        rand = self.rng.integers(0, self.n_items, m) if m else np.zeros(0, np.int64)
        hard = self._hard_negatives(users, neg) if cfg.hard_negatives else None
        cand = np.concatenate([items, rand] + ([np.maximum(hard, 0)] if hard is not None else []))
        cand_now = np.concatenate([ts, np.full(m, int(np.median(ts)))] + ([ts] if hard is not None else []))
        ids = codes.id_bucket[cand]
        if cfg.id_dropout > 0:
            ids = np.where(self.rng.random(len(ids)) < cfg.id_dropout, 0, ids)
        age = age_bucket(codes.created_at[cand], cand_now)
        # the item tower runs once per distinct (item, age bucket, id kept) of the batch, not per occurrence
        key = (cand * N_AGE + age) * 2 + (ids > 0)
        _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        first, inverse = _sampled_first(first, inverse.reshape(-1), b + m)
        u_items = cand[first]
        hist_ids = codes.id_bucket[hist]
        feats = Bags.concat([
            self.layout.item_bags(codes.tags[u_items], codes.category[u_items], codes.creator[u_items], age[first]),
            self.layout.user_bags(self.user_attrs[users], self.user_interests[users], np.zeros(b, np.int64), hours,
                                  history_len_bucket((hw > 0).sum(axis=1))),
        ])
        id_rows = Bags.concat([id_bags(ids[first]), history_bags(np.where(hist_ids > 0, hist_ids, -1), wn)])
        id_rows.transposed(self.id_rows)  # the backward pass's matrices, built here rather than on the training thread
        feats.transposed(self.layout.n_rows)
        weight = log.weight[ex]
        batch = Batch(users=users, items=items, hist=hist, hist_weights=wn, hours=hours, cand=cand, cand_ids=ids,
                      cand_age=age, n_random=m, hard=hard, inverse=inverse, n_unique=len(first), id_bags=id_rows,
                      feat_bags=feats, weight=weight)
        if cfg.loss == "softmax":
            batch.softmax = grouped_softmax_inputs(inverse, cand, items, m, hard, inv_q)
            batch.softmax_weight = (weight / max(float(weight.sum()), 1e-12)).astype(np.float32)
        return batch

    def _hours(self, ts: np.ndarray) -> np.ndarray:
        """Hour-of-day context, dropped (unknown) for half the examples: requests may come without it, and
        offline recommendation has no real request time, so the model must not lean on it alone."""
        h = hour_bucket(ts).astype(np.int64)
        return np.where(self.rng.random(len(h)) < CONTEXT_DROPOUT, 0, h)

    def _hard_negatives(self, users: np.ndarray, neg: Csr) -> np.ndarray | None:
        ptr, idx = neg.ptr, neg.idx
        if len(idx) == 0:
            return None
        cnt = ptr[users + 1] - ptr[users]
        pick = ptr[users] + (self.rng.random(len(users)) * cnt).astype(np.int64)
        return np.where(cnt > 0, idx[np.minimum(pick, len(idx) - 1)], -1).astype(np.int64)


def _sampled_first(first: np.ndarray, inverse: np.ndarray, n_sampled: int) -> tuple[np.ndarray, np.ndarray]:
    """Renumber the distinct candidates so that those holding one of the first `n_sampled` candidates (positives
    and random negatives) come first, before the groups of hard negatives only."""
    sampled = np.zeros(len(first), dtype=bool)
    sampled[inverse[:n_sampled]] = True
    order = np.argsort(~sampled, kind="stable")
    rank = np.empty(len(first), dtype=np.int64)
    rank[order] = np.arange(len(first))
    return first[order], rank[inverse]


__all__ = ["Batch", "BatchMaker"]
