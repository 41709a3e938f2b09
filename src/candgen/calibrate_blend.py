"""The blend half of the train-time calibration: quota mixes against calibrated rank fusion.

For each validation user of a cohort, every source is run once, alone, to `depth` candidates (with the
blend's filters: seen, hidden, deleted); the candidate blends are then scored offline on those lists with
the same pure merge functions the engine runs, truncated to the sizes the engine would ask each source
for:

- each quota mix of a small grid (the configured mix first);
- rank fusion (`candgen.blend.fusion`), with its rank curves fitted on one half of the users and scored
  on the other, both ways (2-fold cross-fitting: the curves never score the users they were fitted on).

Fusion is chosen when its cross-fitted recall@k is at least the best quota mix's recall (which, chosen on
the very users it is scored on, is the optimistic one of the two); then the curves are refitted on
every validation user.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from candgen.blend.filters import apply_filters
from candgen.blend.fusion import RANK_EDGES, curve_shares, fit_curve, fusion_merge, rank_bins
from candgen.blend.idset import member
from candgen.blend.merge import quota_merge
from candgen.data.dataset import Dataset
from candgen.types import Candidates, Request

EXPLORATION_SOURCE = "new_items"  # fills the exploration slots, never merged: not calibrated


@dataclass
class Sample:
    """One validation user: every source's filtered list (best first) and the items the user engaged with."""

    lists: list[Candidates]
    truth: np.ndarray


@dataclass
class BlendChoice:
    mix: dict[str, float]
    curves: dict[str, list[float]] | None
    report: dict[str, Any] = field(default_factory=dict)


def collect_lists(engine: Any, fit: Dataset, users: np.ndarray, truth: Any, *, now: float, depth: int) -> list[Sample]:
    """Every source's own list of `depth` for each of `users` (dense ids of `fit`) as the engine builds it."""
    rt = engine.rt
    catalog = rt.state.catalog
    names = [n for n in rt.sources if n != EXPLORATION_SOURCE]
    out = []
    for u in users:
        ctx = engine.user_context(Request(user_id=fit.users.id(int(u)), k=depth, now=now), now, rt)
        lists = [rt.sources[n].retrieve(ctx, depth) for n in names]
        lists = apply_filters(
            lists, exclude=ctx.exclude, deleted=catalog.is_deleted,
            blocked_creators=rt.state.activity.blocked_creators(ctx.user) if ctx.user >= 0 else None,
            item_creator=catalog.creator,
        )
        out.append(Sample([_positive(c) for c in lists], np.asarray(truth.row(int(u)), np.int64)))
    return out


def _positive(c: Candidates) -> Candidates:
    ids = np.asarray(c.ids, np.int64)
    keep = ids >= 0
    return Candidates(ids[keep], np.asarray(c.scores, np.float32)[keep], c.source)


def _truncate(lists: Sequence[Candidates], sizes: Mapping[str, int]) -> list[Candidates]:
    return [Candidates(c.ids[: sizes[c.source]], c.scores[: sizes[c.source]], c.source)
            for c in lists if c.source in sizes]


def _recall(got: np.ndarray, truth: np.ndarray) -> float:
    return float(np.count_nonzero(member(got, truth))) / len(truth) if len(truth) else 0.0


def fit_curves(samples: Sequence[Sample], names: Sequence[str]) -> dict[str, list[float]]:
    """A rank curve per source from these users' lists. Each user weighs 1/|truth| (scaled to a mean of 1),
    so that a hit counts as its share of that user's recall, the quantity the blend maximises."""
    sizes = np.array([len(s.truth) for s in samples], np.float64)
    weights = np.where(sizes > 0, sizes.mean() / np.maximum(sizes, 1), 0.0)
    hits = {n: np.zeros(len(RANK_EDGES)) for n in names}
    shown = {n: np.zeros(len(RANK_EDGES)) for n in names}
    for s, w in zip(samples, weights, strict=True):
        if w == 0:
            continue
        for c in s.lists:
            if c.source not in hits or len(c) == 0:
                continue
            bins = rank_bins(np.arange(1, len(c) + 1))
            hit = member(np.asarray(c.ids, np.int64), s.truth).astype(np.float64)
            hits[c.source] += np.bincount(bins, weights=hit * w, minlength=len(RANK_EDGES))
            shown[c.source] += np.bincount(bins, minlength=len(RANK_EDGES)) * w
    return {n: [round(float(v), 6) for v in fit_curve(hits[n], shown[n])] for n in names}


def quota_recall(samples: Sequence[Sample], mix: Mapping[str, float], *, k: int, overfetch: float,
                 normalization: str) -> float:
    """Mean recall@k of the quota merge by `mix`, each source truncated to what the engine asks it for."""
    from candgen.engine import source_fetch_sizes

    names = [n for n, w in mix.items() if w > 0]
    sizes = source_fetch_sizes(dict(mix), names, k, overfetch)
    vals = [_recall(quota_merge(_truncate(s.lists, sizes), dict(mix), k, normalization=normalization).ids, s.truth)
            for s in samples]
    return float(np.mean(vals)) if vals else 0.0


def fusion_recall(samples: Sequence[Sample], curves: Mapping[str, Sequence[float]], *, k: int,
                  overfetch: float) -> float:
    """Mean recall@k of rank fusion by `curves`, each source truncated to what the engine asks it for."""
    from candgen.engine import source_fetch_sizes

    names = list(curves)
    sizes = source_fetch_sizes(curve_shares(curves, names, k), names, k, overfetch)
    vals = [_recall(fusion_merge(_truncate(s.lists, sizes), curves, k).ids, s.truth) for s in samples]
    return float(np.mean(vals)) if vals else 0.0


def choose_blend(samples: list[Sample], *, current: dict[str, float], grid: Sequence[Mapping[str, float]], k: int,
                 overfetch: float, normalization: str) -> BlendChoice:
    """The best of the quota mixes (`current` first, ties keep it) and cross-fitted rank fusion."""
    present = {c.source for s in samples for c in s.lists}
    quota = []
    for mix in (current, *[m for m in grid if m != current]):
        usable = {n: float(w) for n, w in mix.items() if n in present}
        quota.append((quota_recall(samples, usable, k=k, overfetch=overfetch, normalization=normalization), mix))
    best_q = max(quota, key=lambda r: r[0])  # max keeps the first (the configured mix) on ties
    names = sorted(present)
    halves = (samples[0::2], samples[1::2])
    fused = []
    for fit_part, score_part in (halves, halves[::-1]):
        if fit_part and score_part:
            fused.append((fusion_recall(score_part, fit_curves(fit_part, names), k=k, overfetch=overfetch),
                          len(score_part)))
    fusion_cv = sum(r * n for r, n in fused) / max(1, sum(n for _, n in fused))
    report: dict[str, Any] = {
        "tried": [{"mix": m, "recall": round(r, 4)} for r, m in quota],
        "fusion_recall_cross_fitted": round(fusion_cv, 4),
    }
    if fused and fusion_cv >= best_q[0]:
        curves = fit_curves(samples, names)
        shares = curve_shares(curves, names, k)
        total = sum(shares.values()) or 1.0
        # every source with a curve keeps a weight, so that it runs (its slots are decided by its curve)
        mix = {n: round(max(shares.get(n, 0.0) / total, 0.01), 3) for n in names}
        report.update(chosen="calibrated", mix=mix, recall=round(fusion_cv, 4))
        return BlendChoice(mix, curves, report)
    report.update(chosen=best_q[1], recall=round(best_q[0], 4))
    return BlendChoice(dict(best_q[1]), None, report)
