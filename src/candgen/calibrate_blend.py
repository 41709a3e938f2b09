"""The blend half of the train-time calibration: quota mixes against calibrated rank fusion.

For each validation user of a cohort, every source is run once, alone, to `depth` candidates (with the
blend's filters: seen, hidden, deleted); the candidate blends are then scored offline on those lists with
the same pure merge functions the engine runs, truncated to the sizes the engine would ask each source
for:

- each quota mix of a small grid (the configured mix first);
- rank fusion (`candgen.blend.fusion`), with its rank curves fitted on one half of the users and scored
  on the other, both ways (2-fold cross-fitting: the curves never score the users they were fitted on).

Recall is averaged over the list sizes `ks` (the head and the full list the service returns). The
configured mix stays unless an option beats it beyond noise: by more than z standard errors of the
paired per-user difference (few validation users, as on small public data sets, must not move the blend
on noise). Fusion, when chosen, has its curves refitted on every validation user.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from candgen.blend.filters import apply_filters
from candgen.blend.fusion import RANK_EDGES, curve_shares, fit_curve, fusion_merge, ordered_quota_merge, rank_bins
from candgen.blend.merge import quota_merge
from candgen.data.dataset import Dataset
from candgen.idset import member
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
    strategy: str = "quota"  # quota | ordered (quota membership, curve order) | calibrated (rank fusion)


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


def _prefix_recall(got: np.ndarray, truth: np.ndarray, ks: Sequence[int]) -> float:
    """Recall of each prefix `got[:k]`, averaged over `ks`: one list per user, as a client reads it."""
    return float(np.mean([_recall(got[:k], truth) for k in ks]))


def quota_recall(samples: Sequence[Sample], mix: Mapping[str, float], *, ks: Sequence[int], overfetch: float,
                 normalization: str, curves: Mapping[str, Sequence[float]] | None = None) -> np.ndarray:
    """Per user, recall@k of the prefixes of one quota-merged list of max(ks) by `mix`, averaged over `ks`, each
    source truncated to what the engine asks it for. With `curves`, the merged items are ordered by them
    (`ordered_quota_merge`) instead of by weighted reciprocal rank."""
    from candgen.engine import source_fetch_sizes

    names = [n for n, w in mix.items() if w > 0]
    k = max(ks)
    sizes = source_fetch_sizes(dict(mix), names, k, overfetch)
    out = []
    for s in samples:
        lists = _truncate(s.lists, sizes)
        merged = (quota_merge(lists, dict(mix), k, normalization=normalization) if curves is None
                  else ordered_quota_merge(lists, dict(mix), curves, k, normalization=normalization))
        out.append(_prefix_recall(merged.ids, s.truth, ks))
    return np.asarray(out)


def fusion_recall(samples: Sequence[Sample], curves: Mapping[str, Sequence[float]], *, ks: Sequence[int],
                  overfetch: float) -> np.ndarray:
    """Per user, recall@k of the prefixes of one rank-fused list of max(ks) by `curves`, averaged over `ks`
    (sources truncated as the engine does)."""
    from candgen.engine import source_fetch_sizes

    names = list(curves)
    k = max(ks)
    sizes = source_fetch_sizes(curve_shares(curves, names, k), names, k, overfetch)
    return np.asarray([_prefix_recall(fusion_merge(_truncate(s.lists, sizes), curves, k).ids, s.truth, ks)
                       for s in samples])


def cross_fitted(samples: list[Sample], names: Sequence[str],
                 score: Callable[[list[Sample], dict[str, list[float]]], np.ndarray]) -> np.ndarray | None:
    """Per user (in `samples` order), `score(users, curves)` with rank curves fitted on the other half of the
    users (2-fold: the curves never score the users they were fitted on)."""
    if len(samples) < 2:
        return None
    out = np.zeros(len(samples))
    idx = np.arange(len(samples))
    for fit_idx, score_idx in ((idx[0::2], idx[1::2]), (idx[1::2], idx[0::2])):
        curves = fit_curves([samples[i] for i in fit_idx], names)
        out[score_idx] = score([samples[i] for i in score_idx], curves)
    return out


def cross_fitted_fusion(samples: list[Sample], names: Sequence[str], *, ks: Sequence[int],
                        overfetch: float) -> np.ndarray | None:
    """Per user (in `samples` order), fusion's recall with curves fitted on the other half of the users."""
    return cross_fitted(samples, names, lambda users, curves: fusion_recall(users, curves, ks=ks, overfetch=overfetch))


T = TypeVar("T")


def margin(option: np.ndarray, default: np.ndarray, z: float) -> float:
    """How surely `option` beats `default` on the same users: the mean paired difference minus z standard
    errors of it (> 0: better beyond noise)."""
    d = option - default
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("inf")
    return float(d.mean()) - z * se


def pick(options: Sequence[tuple[float, float, T]], *, fallback: T) -> T:
    """The option to take from (margin over the default, mean recall, setting) triples: the default
    (`fallback`) unless some option beats it beyond noise (margin > 0); among those that do, the one with
    the highest mean recall. The margin is only the gate: ranking the passing options by it would favour
    options that differ little from the default (a small variance of the paired difference) over better ones."""
    passing = [o for o in options if o[0] > 0]
    if not passing:
        return fallback
    return max(passing, key=lambda o: o[1])[2]  # the first of equals: options are listed in a fixed order


def choose_blend(samples: list[Sample], *, current: dict[str, float], grid: Sequence[Mapping[str, float]],
                 ks: Sequence[int], overfetch: float, normalization: str, z: float = 1.0) -> BlendChoice:
    """The configured mix `current` (quota merge) unless an option beats it by more than `z` standard errors of
    the paired per-user difference (recall of one list's prefixes, averaged over `ks`); among those that do,
    the one with the highest mean recall (`pick`). Options: each grid mix (quota merge); the configured and the best
    grid mix with their items ordered by cross-fitted rank curves ("ordered"); rank fusion ("calibrated")."""
    present = {c.source for s in samples for c in s.lists}
    usable = {n: float(w) for n, w in current.items() if n in present}
    base = quota_recall(samples, usable, ks=ks, overfetch=overfetch, normalization=normalization)
    tried: list[dict[str, Any]] = [{"mix": current, "recall": round(float(base.mean()), 4), "margin": 0.0}]
    # (margin, mean recall, (strategy, mix)) of every option; the configured mix is the fallback
    options: list[tuple[float, float, tuple[str, dict[str, float]]]] = []
    best_quota: tuple[float, dict[str, float]] = (0.0, dict(current))
    for mix in grid:
        if mix == current:
            continue
        r = quota_recall(samples, {n: float(w) for n, w in mix.items() if n in present}, ks=ks, overfetch=overfetch,
                         normalization=normalization)
        m = margin(r, base, z)
        tried.append({"mix": dict(mix), "recall": round(float(r.mean()), 4), "margin": round(m, 4)})
        if float(r.mean() - base.mean()) > best_quota[0]:
            best_quota = (float(r.mean() - base.mean()), dict(mix))
        options.append((m, float(r.mean()), ("quota", dict(mix))))
    names = sorted(present)
    report: dict[str, Any] = {"ks": list(ks), "z": z, "tried": tried}
    for mix in ([dict(current)] if best_quota[1] == current else [dict(current), best_quota[1]]):
        use = {n: float(w) for n, w in mix.items() if n in present}

        def ordered_recall(users: list[Sample], curves: dict[str, list[float]],
                           use: dict[str, float] = use) -> np.ndarray:
            return quota_recall(users, use, ks=ks, overfetch=overfetch, normalization=normalization, curves=curves)

        ordered = cross_fitted(samples, names, ordered_recall)
        if ordered is None:
            continue
        m = margin(ordered, base, z)
        tried.append({"mix": mix, "order": "rank curves (cross-fitted)", "recall": round(float(ordered.mean()), 4),
                      "margin": round(m, 4)})
        options.append((m, float(ordered.mean()), ("ordered", mix)))
    fused = cross_fitted_fusion(samples, names, ks=ks, overfetch=overfetch)
    if fused is not None:
        m = margin(fused, base, z)
        report["fusion_recall_cross_fitted"] = round(float(fused.mean()), 4)
        report["fusion_margin"] = round(m, 4)
        options.append((m, float(fused.mean()), ("calibrated", {})))
    strategy, chosen = pick(options, fallback=("quota", dict(current)))
    if strategy == "calibrated":
        curves = fit_curves(samples, names)
        shares = curve_shares(curves, names, max(ks))
        total = sum(shares.values()) or 1.0
        # every source with a curve keeps a weight, so that it runs (its slots are decided by its curve)
        mix = {n: round(max(shares.get(n, 0.0) / total, 0.01), 3) for n in names}
        report.update(chosen="calibrated", strategy="calibrated", mix=mix,
                      recall=report["fusion_recall_cross_fitted"])
        return BlendChoice(mix, curves, report, "calibrated")
    recall = next(t["recall"] for t in tried if t["mix"] == chosen and ("order" in t) == (strategy == "ordered"))
    report.update(chosen=chosen, strategy=strategy, recall=recall)
    return BlendChoice(chosen, fit_curves(samples, names) if strategy == "ordered" else None, report, strategy)
