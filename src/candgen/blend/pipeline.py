"""The blend stage of a request: filter → normalise and merge → diversity → exploration → fallback.

`blend` is the one function the engine calls per request with every source's `Candidates`; each step is a
pure function of its own module, so each can be tested and reused alone. The list ends in an explicit
fallback: when fewer than k valid candidates remain, the caller's fallback list (e.g. popular items) fills
the rest, so a request with thin or failing sources still gets k candidates when the catalog allows.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from candgen.blend.diversity import apply_caps, mmr
from candgen.blend.exploration import insert_exploration
from candgen.blend.filters import ItemSet, apply_filters
from candgen.blend.fusion import check_curves, fusion_merge, ordered_quota_merge
from candgen.blend.merge import Blended, quota_merge, weighted_merge
from candgen.blend.normalize import NORMALIZATIONS
from candgen.config import BlendConfig, ConfigError
from candgen.idset import first_occurrence, member
from candgen.types import Candidates

STRATEGIES = ("quota", "weighted", "calibrated", "ordered")
COHORTS = ("warm", "cold")


def check_config(config: BlendConfig) -> None:
    """Raise `ConfigError` naming the field when the blend config cannot be run."""
    if config.strategy not in STRATEGIES:
        raise ConfigError(f"blend.strategy: expected one of {', '.join(STRATEGIES)}, got {config.strategy!r}")
    for cohort, strategy in config.cohort_strategy.items():
        if cohort not in COHORTS or strategy not in STRATEGIES:
            raise ConfigError(f"blend.cohort_strategy: expected {' or '.join(COHORTS)} → one of "
                              f"{', '.join(STRATEGIES)}, got {cohort!r}: {strategy!r}")
    if config.normalization not in NORMALIZATIONS:
        raise ConfigError(
            f"blend.normalization: expected one of {', '.join(NORMALIZATIONS)}, got {config.normalization!r}"
        )
    if config.max_per_creator < 0 or config.max_per_category < 0:
        raise ConfigError("blend.max_per_creator / max_per_category: expected >= 0 (0 is no cap)")
    if not 0.0 <= config.mmr_lambda <= 1.0:
        raise ConfigError(f"blend.mmr_lambda: expected a number in [0, 1] (0 is off), got {config.mmr_lambda}")
    if not 0.0 <= config.exploration_fraction <= 1.0:
        raise ConfigError(f"blend.exploration_fraction: expected a number in [0, 1], got {config.exploration_fraction}")
    if not config.diversity_pool >= 1.0:
        raise ConfigError(f"blend.diversity_pool: expected a number >= 1, got {config.diversity_pool}")


def rank_curves(config: BlendConfig) -> dict[str, dict[str, np.ndarray]]:
    """`config.rank_curves` as arrays, checked once (at start-up, not per request): cohort → source → curve."""
    out = {}
    for cohort, curves in config.rank_curves.items():
        if cohort not in COHORTS:
            raise ConfigError(f"blend.rank_curves: expected cohorts {' and '.join(COHORTS)}, got {cohort!r}")
        try:
            check_curves(curves, f"blend.rank_curves.{cohort}")
        except ValueError as e:
            raise ConfigError(str(e)) from None
        out[cohort] = {name: np.asarray(c, np.float32) for name, c in curves.items()}
    return out


def _scores_below(last: float, n: int) -> np.ndarray:
    """n strictly decreasing scores below `last`, for items appended after the blended ones."""
    step = (abs(last) + 1e-3) / (n + 1)
    return (last - step * np.arange(1, n + 1)).astype(np.float32)


def fill_from_fallback(blended: Blended, fallback: Candidates, k: int) -> Blended:
    """Up to k items: `blended`, then the fallback's items it does not hold yet, in the fallback's order."""
    need = k - len(blended)
    if need <= 0 or len(fallback) == 0:
        return blended
    ids = np.asarray(fallback.ids, dtype=np.int64)
    scores = np.asarray(fallback.scores, dtype=np.float32)
    ids, scores = ids[ids >= 0], scores[ids >= 0]
    pick = np.flatnonzero(~member(ids, blended.ids) & first_occurrence(ids))[:need]
    if len(pick) == 0:
        return blended
    extra = Candidates(ids[pick], scores[pick], fallback.source)
    last = float(blended.scores[-1]) if len(blended) else 1.0
    return blended.append(extra, _scores_below(last, len(pick)))


def blend(
    lists: list[Candidates],
    *,
    k: int,
    config: BlendConfig,
    mix: dict[str, float],
    exclude: ItemSet | None = None,
    deleted: np.ndarray | None = None,
    blocked_creators: ItemSet | None = None,
    item_creator: np.ndarray | None = None,
    item_category: np.ndarray | None = None,
    explore: Candidates | None = None,
    item_vectors: np.ndarray | None = None,
    fallback: Candidates | None = None,
    rng: np.random.Generator | None = None,
    curves: dict[str, np.ndarray] | None = None,
    strategy: str | None = None,
) -> Blended:
    """Blend every source's candidates into one list of at most k, best first, with provenance.

    1. Filters (`apply_filters`) drop excluded, deleted and blocked-creator items from every list, the
       exploration and the fallback candidates, before anything is counted.
    2. Merge by `config.strategy`: `quota_merge` by `mix`, or `weighted_merge` with `mix` as weights and
       `rng`, or `fusion_merge` by the rank `curves` of this request's cohort ("calibrated"), or the quota
       merge's items ordered by those curves ("ordered"; without curves both fall back to the quota merge);
       `strategy` (this request's cohort's) overrides `config.strategy`; the quota merge ranks by scores normalised by
       `config.normalization`. With caps or MMR on, the
       merge fills `config.diversity_pool * k` so that diversity has items to choose from.
    3. Diversity: MMR re-orders the pool when `0 < config.mmr_lambda < 1` (needs `item_vectors`); caps per
       creator / category (`item_creator`, `item_category` codes) then take k, deferring items over a cap.
    4. Exploration: `config.exploration_fraction * k` slots for `explore`'s items, in its order.
    5. Fallback: when fewer than k remain, `fallback`'s items fill the rest.

    Pure: the inputs are never modified. Thread-safe: concurrent requests may call it from any threads.
    """
    check_config(config)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    filters = functools.partial(
        apply_filters, exclude=exclude, deleted=deleted, blocked_creators=blocked_creators, item_creator=item_creator
    )
    lists = filters(lists)

    use_mmr = 0.0 < config.mmr_lambda < 1.0
    use_caps = config.max_per_creator > 0 or config.max_per_category > 0
    if use_mmr and item_vectors is None:
        raise ValueError("blend.mmr_lambda is set but no item_vectors were given for MMR")
    pool_k = max(k, math.ceil(k * config.diversity_pool)) if (use_mmr or use_caps) else k
    strategy = strategy or config.strategy
    if strategy not in STRATEGIES:
        raise ValueError(f"blend strategy: expected one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if strategy == "weighted":
        merged = weighted_merge(lists, mix, pool_k, rng=rng)
    elif strategy == "calibrated" and curves:
        merged = fusion_merge(lists, curves, pool_k)
    elif strategy == "ordered" and curves:
        merged = ordered_quota_merge(lists, mix, curves, pool_k, normalization=config.normalization)
    else:
        merged = quota_merge(lists, mix, pool_k, normalization=config.normalization)

    if use_mmr and len(merged) and item_vectors is not None:
        chosen = mmr(merged.ids, merged.scores, item_vectors, config.mmr_lambda, k)
        rest_mask = np.ones(len(merged), dtype=bool)
        rest_mask[chosen] = False
        merged = merged.take(np.concatenate([chosen, np.flatnonzero(rest_mask)]))
    merged = apply_caps(
        merged, k=k, item_creator=item_creator, item_category=item_category,
        max_per_creator=config.max_per_creator, max_per_category=config.max_per_category,
    )
    # exploration and fallback candidates are filtered only when they are used (the fallback rarely is)
    if explore is not None and config.exploration_fraction > 0:
        explore = filters([explore])[0]
        merged = insert_exploration(merged, explore, config.exploration_fraction, k=k)
    if fallback is not None and len(merged) < k:
        fallback = filters([fallback])[0]
        merged = fill_from_fallback(merged, fallback, k)
    return merged
