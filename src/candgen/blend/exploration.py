"""Exploration slots: a fraction of the list reserved for items the user's history would not surface.

The exploration candidates (new items chosen by the bandit, or random items) are placed at slots spread
evenly through the list, one in the middle of every `1 / fraction` positions, so that they are seen at
every depth the ranker or the user looks at, and are tagged with their own source name for attribution.
"""

from __future__ import annotations

import numpy as np

from candgen.blend.merge import Blended
from candgen.idset import first_occurrence, member
from candgen.types import Candidates


def exploration_slots(k: int, n: int) -> np.ndarray:
    """n positions spread through a list of k: the middle of each of n equal stretches (sorted, unique)."""
    n = max(0, min(n, k))
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    return ((np.arange(n, dtype=np.float64) + 0.5) * (k / n)).astype(np.int64)


def insert_exploration(
    blended: Blended,
    explore: Candidates,
    fraction: float,
    rng: np.random.Generator | None = None,
    *,
    k: int | None = None,
) -> Blended:
    """The list with `round(fraction * k)` exploration items at evenly spread slots, total length <= k.

    `k` defaults to `len(blended)`. Exploration items already in the list's top k are not repeated (the blend
    found them anyway). With `rng` the exploration items are a uniform sample of `explore` (random exploration);
    without, the first ones in `explore`'s order (the bandit's ranking). The items of the list that no
    longer fit are dropped from its tail. An inserted item's blended score is the mean of its neighbours'.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"exploration fraction must be in [0, 1], got {fraction}")
    k = len(blended) if k is None else k
    n_slots = min(int(round(fraction * k)), k)
    if n_slots == 0 or len(explore) == 0:
        return blended if len(blended) <= k else blended.take(slice(0, k))
    n_keep = min(len(blended), k - n_slots)
    kept = blended.take(slice(0, n_keep)) if n_keep < len(blended) else blended
    ids = np.asarray(explore.ids, dtype=np.int64)
    own = np.asarray(explore.scores, dtype=np.float32)
    ids, own = ids[ids >= 0], own[ids >= 0]
    # items the blend already placed in its top k are not exploration: never repeat them
    fresh = ~member(ids, blended.ids[:k])
    pool = np.flatnonzero(fresh & first_occurrence(ids))
    if rng is not None and len(pool) > n_slots:
        pool = np.sort(rng.choice(pool, size=n_slots, replace=False))
    pool = pool[:n_slots]
    n = len(pool)
    if n == 0:
        return kept
    if n < n_slots and n_keep < len(blended):
        # fewer exploration items than slots: give the unused slots back to the list
        n_keep = min(len(blended), k - n)
        kept = blended.take(slice(0, n_keep))
    total = n_keep + n
    slots = exploration_slots(total, n)
    chosen = Candidates(ids[pool], own[pool], explore.source)
    # neighbours in the final list: the kept item before the slot and the one after it
    before = slots - np.arange(n) - 1
    s = kept.scores
    if len(s):
        prev = s[np.clip(before, 0, len(s) - 1)]
        nxt = s[np.clip(before + 1, 0, len(s) - 1)]
        prev = np.where(before >= 0, prev, nxt)
        nxt = np.where(before + 1 < len(s), nxt, prev)
        scores = (prev + nxt) / 2
    else:
        scores = 1.0 - np.arange(n, dtype=np.float32) / np.float32(n)
    return kept.insert(slots, chosen, scores)
