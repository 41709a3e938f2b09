"""Per-data-set calibration at train time: the time scales of trending and popularity, and the blend's
mixes, chosen on a held-out slice of the training data itself.

Why: the right decay differs by orders of magnitude between data sets (a feed's trending is hours,
a film catalog's is months) and so does the value of each source, so one fixed default cannot be
right everywhere. `calibrate` splits the training log by time (the last `valid_fraction`), and

1. for each half-life of a small grid (6 h .. 1 year), ranks the whole catalog by the forward-decayed
   engagement of the fit part and measures recall@k (averaged over `ks`, the head and the full list)
   of that one list on the validation users (cheap:
   one weighted bincount per half-life); the best becomes both `trending_half_life_hours` and
   `popular_half_life_hours`; the popularity that cold start serves to new users then gets its own
   half-life and early boost (`popular_early_boost`), chosen on the new validation users alone;
2. builds the sources' state on the fit part with those half-lives, runs every source alone for each
   validation user (once), and scores candidate blends offline on those lists
   (`candgen.calibrate_blend`): a few quota mixes, the quota merge ordered by rank curves ("ordered") and
   calibrated rank fusion (`candgen.blend.fusion`, both cross-fitted) against the configured mix — warm
   users for `sources.mix`, the users the engine treats as new (fewer than `new_user_engagements`) for
   `sources.cold_user_mix`. The configured mix stays unless an option beats it beyond noise (paired
   per-user differences); of the options that do, the one with the best mean recall is taken. When a
   curve strategy wins for a cohort, `blend.cohort_strategy[cohort]` says which and that cohort's rank
   curves are stored in `blend.rank_curves`.

The collaborative source is measured with the model that never learnt the validation slice (the
early-stopped model from before the refit, `train_two_tower(held_out=...)`), so that it is not
flattered by having seen the answers: with the final model, collaborative looked 1.5-2x better on the
validation slice than it does on the future, and the calibration chose it over better sources.
Nothing here looks at the test period of an evaluation.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from candgen.artifacts import Manifest
from candgen.calibrate_blend import choose_blend, collect_lists
from candgen.config import Config
from candgen.data.dataset import Dataset
from candgen.types import NO_PROGRESS, Progress

log = logging.getLogger(__name__)

HALF_LIVES_H = (6.0, 24.0, 24.0 * 7, 24.0 * 30, 24.0 * 91, 24.0 * 365, 24.0 * 365 * 3)
WARM_MIXES = (
    {"collaborative": 0.6, "content": 0.2, "trending": 0.1, "social": 0.1},
    {"collaborative": 0.2, "content": 0.5, "trending": 0.2, "social": 0.1},
    {"collaborative": 0.3, "content": 0.1, "trending": 0.6},
    {"collaborative": 0.25, "content": 0.25, "trending": 0.25, "social": 0.25},
    {"collaborative": 0.15, "content": 0.05, "trending": 0.8},
    {"collaborative": 0.8, "content": 0.1, "trending": 0.1},
)
COLD_MIXES = (
    {"cold_start": 0.6, "trending": 0.4},
    {"cold_start": 0.3, "trending": 0.7},
    {"cold_start": 0.3, "collaborative": 0.3, "trending": 0.4},
    {"cold_start": 0.1, "trending": 0.9},  # cold_start keeps a share: it is what reads onboarding interests
)
MIN_USERS = 30  # fewer validation users with an engagement: too noisy to choose anything


@dataclass
class Calibration:
    """What was chosen and the validation figures behind it (stored in the artifacts' manifest)."""

    config: Config
    report: dict[str, Any] = field(default_factory=dict)


def _popularity_recall(items: np.ndarray, weights: np.ndarray, n_items: int, seen: list[np.ndarray],
                       rel: list[np.ndarray], ks: tuple[int, ...]) -> np.ndarray:
    """Per user, recall of the catalog ranked by `weights` summed per item (the user's seen items dropped),
    averaged over `ks`: one weighted bincount and one sort for every user."""
    s = np.bincount(items, weights=weights, minlength=n_items)
    top = np.argsort(-s, kind="stable")[: max(ks) + max((len(x) for x in seen), default=0)]
    lists = [top[~np.isin(top, x)] for x in seen]
    return np.array([np.mean([len(np.intersect1d(x[:k], t)) / len(t) for k in ks]) if len(t) else 0.0
                     for x, t in zip(lists, rel, strict=True)])


def calibrate(ds: Dataset, *, config: Config, model: Any, index: Any, vectors: np.ndarray,
              valid_fraction: float = 0.1, max_users: int = 400, seed: int = 0, ks: tuple[int, ...] = (100, 1000),
              progress: Progress = NO_PROGRESS) -> Calibration:
    """A copy of `config` with the calibrated half-lives and mixes; `report` says what was measured."""
    from candgen.data.split import time_split
    from candgen.eval.evaluate import ground_truth

    t0 = time.perf_counter()
    cfg = copy.deepcopy(config)
    split = time_split(ds, fraction=1.0 - valid_fraction)
    truth = ground_truth(split, cfg.events)
    has = np.diff(truth.ptr) > 0
    rng = np.random.default_rng(seed)
    cohorts = {}
    # the cohorts the engine serves: "cold" is every user it treats as new (fewer than `new_user_engagements`
    # positive engagements, so also users with a few), not only users without any
    fit_inter = split.train.interactions
    n_engaged = np.bincount(fit_inter.user[fit_inter.weights(cfg.events) > 0], minlength=split.train.n_users)
    test_users = np.union1d(split.warm_users, split.cold_users).astype(np.int64)
    test_users = test_users[has[test_users]]
    new_user = n_engaged[test_users] < cfg.sources.new_user_engagements
    for name, users in (("warm", test_users[~new_user]), ("cold", test_users[new_user])):
        cohorts[name] = np.sort(rng.choice(users, min(len(users), max_users), replace=False)) if len(users) else users
    n_valid = sum(len(u) for u in cohorts.values())
    if n_valid < MIN_USERS or split.cutoff is None:
        return Calibration(cfg, {"skipped": f"only {n_valid} validation users with an engagement"})
    progress.task("calibrate", total=len(HALF_LIVES_H) + len(WARM_MIXES) + len(COLD_MIXES) + 2)
    fit = split.train
    now = float(split.cutoff)
    everyone = np.concatenate(list(cohorts.values()))
    rel = [truth.row(int(u)) for u in everyone]

    # 1. time scale: recall of the global decayed-popularity list
    inter = fit.interactions
    w = inter.weights(cfg.events).astype(np.float64)
    age_h = (now - inter.timestamp.astype(np.float64)) / 3600.0
    seen = _seen_sets(fit, everyone)
    scores_by_hl = {}
    for hl in HALF_LIVES_H:
        scores_by_hl[hl] = float(_popularity_recall(inter.item, w * np.exp2(-age_h / hl), fit.n_items, seen, rel,
                                                    ks).mean())
        progress.advance("calibrate", 1)
    best_hl = max(HALF_LIVES_H, key=lambda h: (scores_by_hl[h], h == cfg.sources.trending_half_life_hours))
    cfg.sources.trending_half_life_hours = best_hl
    cfg.sources.popular_half_life_hours = best_hl
    popularity_report = _calibrate_popularity(cfg, fit, cohorts["cold"], truth, seen[len(cohorts["warm"]):],
                                              w=w, age_h=age_h, ks=ks)

    # 2. how to blend, from every source's own list for each validation user (computed once)
    from candgen.engine import Engine
    from candgen.runtime import Runtime
    from candgen.sources.build import build_state

    state = build_state(fit, config=cfg, now=now)
    progress.advance("calibrate", 1)
    manifest = Manifest(model_version=str(getattr(model, "version", "calibration")), dataset_fingerprint="",
                        data_end_time=int(now), config={})
    report: dict[str, Any] = {"half_life_recall": {str(h): round(v, 4) for h, v in scores_by_hl.items()},
                              "half_life_hours": best_hl, "validation_users": {c: len(u) for c, u in cohorts.items()},
                              "popularity": popularity_report}
    rt = Runtime(config=cfg, manifest=manifest, dataset=fit, model=model, item_vectors=vectors, index=index,
                 state=state)
    engine = Engine(rt, deadlines=False)
    chosen_curves: dict[str, dict[str, list[float]]] = {}
    try:
        for cohort, attr, grid in (("warm", "mix", WARM_MIXES), ("cold", "cold_user_mix", COLD_MIXES)):
            users = cohorts[cohort]
            current = dict(getattr(cfg.sources, attr))
            if len(users) < MIN_USERS // 3:
                report[attr] = {"kept": current, "why": f"{len(users)} {cohort} validation users"}
                progress.advance("calibrate", len(grid))
                continue
            samples = collect_lists(engine, fit, users, truth, now=now,
                                    depth=math.ceil(max(ks) * max(1.0, cfg.sources.overfetch)))
            progress.advance("calibrate", len(grid) // 2)
            choice = choose_blend(samples, current=current, grid=grid, ks=ks, overfetch=cfg.sources.overfetch,
                                  normalization=cfg.blend.normalization)
            progress.advance("calibrate", len(grid) - len(grid) // 2)
            setattr(cfg.sources, attr, dict(choice.mix))
            if choice.curves is not None:
                chosen_curves[cohort] = choice.curves
                cfg.blend.cohort_strategy[cohort] = choice.strategy
            report[attr] = choice.report
    finally:
        engine.close()
    if chosen_curves:
        cfg.blend.rank_curves = chosen_curves
    report["strategy"] = {c: cfg.blend.cohort_strategy.get(c, cfg.blend.strategy) for c in ("warm", "cold")}
    report["seconds"] = round(time.perf_counter() - t0, 2)
    progress.done("calibrate")
    return Calibration(cfg, report)


def _calibrate_popularity(cfg: Config, fit: Dataset, users: np.ndarray, truth: Any, seen: list[np.ndarray], *,
                          w: np.ndarray, age_h: np.ndarray, ks: tuple[int, ...], z: float = 1.0) -> dict[str, Any]:
    """The cold-start popularity's half-life and early boost, chosen on the new (cold) validation users alone:
    it is only served to them. Each option ranks the catalog once (a weighted bincount); the current setting
    (step 1's half-life, the configured boost) stays unless an option beats it by more than z standard errors
    of the paired per-user difference; of those that do, the best on average is taken. Changes `cfg.sources`
    in place; returns what was measured."""
    from candgen.calibrate_blend import margin, pick
    from candgen.sources.activity import early_boosted

    current = (cfg.sources.popular_half_life_hours, cfg.sources.popular_early_boost)
    if len(users) < MIN_USERS:
        return {"kept": list(current), "why": f"{len(users)} cold validation users"}
    inter = fit.interactions
    weights = {False: w, True: early_boosted(inter.user, w)}
    rel = [truth.row(int(u)) for u in users]
    per_user = {(hl, boosted): _popularity_recall(inter.item, weights[boosted] * np.exp2(-age_h / hl), fit.n_items,
                                                  seen, rel, ks)
                for hl in HALF_LIVES_H for boosted in (False, True)}
    base = per_user.get(current)
    best, best_margin = current, 0.0
    if base is not None:
        margins = {option: margin(r, base, z) for option, r in per_user.items()}
        best = pick([(margins[o], float(r.mean()), o) for o, r in per_user.items()], fallback=current)
        best_margin = margins.get(best, 0.0)
    else:  # the configured half-life is off the grid: take the best option outright
        best = max(per_user, key=lambda o: float(per_user[o].mean()))
    cfg.sources.popular_half_life_hours, cfg.sources.popular_early_boost = float(best[0]), bool(best[1])
    return {"chosen": [best[0], best[1]], "margin": round(best_margin, 4), "users": len(users),
            "recall": {f"{hl:g}h{'+boost' if b else ''}": round(float(r.mean()), 4) for (hl, b), r in per_user.items()}}


def _seen_sets(fit: Dataset, users: np.ndarray) -> list[np.ndarray]:
    inter = fit.interactions
    order = np.argsort(inter.user, kind="stable")
    u_sorted = inter.user[order]
    out = []
    for u in users:
        lo, hi = np.searchsorted(u_sorted, u), np.searchsorted(u_sorted, u, side="right")
        out.append(np.unique(inter.item[order[lo:hi]]))
    return out
