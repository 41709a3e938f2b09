"""Diversity of the blended list: caps per creator and per category, and maximal marginal relevance (MMR).

Caps are applied while filling the list: walking the ranked pool, an item whose creator (or category)
already has `max_per_*` items in the list is deferred; deferred items are used, in their order, only when
the list would otherwise be shorter than k. MMR (Carbonell and Goldstein, 1998) re-orders a pool by
`lambda * relevance - (1 - lambda) * max similarity to the items already chosen`.
"""

from __future__ import annotations

import numpy as np

from candgen.blend.merge import Blended

_CAP_ROUNDS = 16  # every round is safe and admits at least one more item; usually 2-3 reach the greedy answer


class _Groups:
    """Group codes of a ranked list, sorted once so that per-group prefix counts are a few cumsums."""

    def __init__(self, codes: np.ndarray) -> None:
        self.codes = codes
        # codes and positions packed into one unique key: the fast unstable sort gives the stable order
        n = len(codes)
        self.order = np.argsort((codes + 1) * n + np.arange(n, dtype=np.int64))
        g = codes[self.order]
        new_group = np.ones(len(g), dtype=bool)
        np.not_equal(g[1:], g[:-1], out=new_group[1:])
        self.starts = np.flatnonzero(new_group)
        self.seg = np.cumsum(new_group) - 1

    def count_before(self, weights: np.ndarray) -> np.ndarray:
        """For each position, how many earlier positions of the same group have weight True."""
        w = weights[self.order].astype(np.int64)
        excl = np.cumsum(w) - w
        excl -= excl[self.starts][self.seg]
        out = np.empty(len(w), dtype=np.int64)
        out[self.order] = excl
        return out


def _codes_of(ids: np.ndarray, table: np.ndarray | None) -> np.ndarray | None:
    if table is None:
        return None
    inside = ids < len(table)
    out = np.full(len(ids), -1, dtype=np.int64)
    out[inside] = table[ids[inside]]
    return out


def cap_admitted(groups: list[tuple[np.ndarray, int]], n: int) -> np.ndarray:
    """Which of n ranked positions a greedy walk admits under every `(group codes, cap)` pair.

    Code -1 (unknown creator or category) is never capped. The greedy walk admits an item when fewer than
    cap earlier admitted items share its group, for every group. Vectorised in rounds: items whose group is
    already full of admitted items are dropped; the rest are admitted when even counting every other
    undecided item before them keeps them under the caps. Each round is safe (never breaks a cap, admits
    only items the greedy walk admits) and admits at least the first undecided item.
    """
    active = [(_Groups(np.asarray(codes, dtype=np.int64)), cap) for codes, cap in groups if cap > 0]
    if not active or n == 0:
        return np.ones(n, dtype=bool)
    admitted = np.zeros(n, dtype=bool)
    for _ in range(_CAP_ROUNDS):
        undecided = ~admitted
        for grp, cap in active:
            undecided &= (grp.codes < 0) | (grp.count_before(admitted) < cap)
        if not undecided.any():
            break
        ok = undecided.copy()
        for grp, cap in active:
            ok &= (grp.codes < 0) | (grp.count_before(admitted | undecided) < cap)
        admitted |= ok
        if not (undecided & ~ok).any():
            break
    return admitted


def apply_caps(
    blended: Blended,
    *,
    k: int,
    item_creator: np.ndarray | None = None,
    item_category: np.ndarray | None = None,
    max_per_creator: int = 0,
    max_per_category: int = 0,
) -> Blended:
    """The first k items of `blended` under the caps, deferred items filling in only when short.

    `item_creator` / `item_category` give each item's code (-1 unknown). A cap of 0 is off.
    """
    ids = blended.ids
    groups: list[tuple[np.ndarray, int]] = []
    creators = _codes_of(ids, item_creator) if max_per_creator > 0 else None
    if creators is not None:
        groups.append((creators, max_per_creator))
    categories = _codes_of(ids, item_category) if max_per_category > 0 else None
    if categories is not None:
        groups.append((categories, max_per_category))
    if not groups:
        return blended if len(blended) <= k else blended.take(slice(0, k))
    ok = cap_admitted(groups, len(ids))
    order = np.concatenate([np.flatnonzero(ok), np.flatnonzero(~ok)])[:k]
    return blended.take(order)


def mmr(
    ids: np.ndarray, scores: np.ndarray, item_vectors: np.ndarray, lambda_: float, k: int
) -> np.ndarray:
    """Positions (into `ids`) of k items chosen by maximal marginal relevance, in the order chosen.

    Relevance is `scores` rescaled to [0, 1]; similarity is the cosine of the rows `item_vectors[ids]`.
    `lambda_` in [0, 1]: 1 is pure relevance (the input order), 0 pure diversity. O(k * pool * dim).
    """
    if not 0.0 <= lambda_ <= 1.0:
        raise ValueError(f"MMR lambda must be in [0, 1], got {lambda_}")
    ids = np.asarray(ids, dtype=np.int64)
    n = len(ids)
    k = min(k, n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if ids.max() >= len(item_vectors):
        raise ValueError(f"item id {int(ids.max())} has no vector ({len(item_vectors)} item vectors)")
    vecs: np.ndarray = np.asarray(item_vectors[ids], dtype=np.float32)
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    vecs = (vecs / np.where(norms > 0, norms, 1.0)).astype(np.float32, copy=False)
    rel = np.asarray(scores, dtype=np.float32)
    span = float(rel.max() - rel.min())
    rel = (rel - rel.min()) / span if span > 0 else np.ones(n, dtype=np.float32)
    lam = np.float32(lambda_)
    gain = lam * rel
    max_sim = np.zeros(n, dtype=np.float32)  # nothing chosen yet: no redundancy
    chosen = np.empty(k, dtype=np.int64)
    available = np.ones(n, dtype=bool)
    for t in range(k):
        value = np.where(available, gain - (1 - lam) * max_sim, -np.inf)
        j = int(np.argmax(value))
        chosen[t] = j
        available[j] = False
        np.maximum(max_sim, vecs @ vecs[j], out=max_sim)
    return chosen
