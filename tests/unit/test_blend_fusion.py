"""Calibrated rank fusion (candgen.blend.fusion), on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from candgen.blend.fusion import (
    FLOOR,
    RANK_EDGES,
    check_curves,
    curve_at,
    curve_shares,
    fit_curve,
    fusion_merge,
    ordered_quota_merge,
    pava_decreasing,
    rank_bins,
)
from candgen.blend.pipeline import blend, rank_curves
from candgen.config import BlendConfig, ConfigError
from candgen.types import Candidates

NB = len(RANK_EDGES)


def flat(p: float) -> list[float]:
    return [p] * NB


def falling(top: float) -> list[float]:
    return [top / (b + 1) for b in range(NB)]


def cands(ids: list[int], source: str) -> Candidates:
    return Candidates(np.array(ids, np.int64), np.linspace(1, 0, len(ids)).astype(np.float32), source)


def test_rank_bins_follow_the_edges():
    ranks = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 17, 16384, 50_000])
    assert rank_bins(ranks).tolist() == [0, 1, 2, 3, 4, 4, 5, 5, 6, 7, 8, NB - 1, NB - 1]


def test_pava_pools_increasing_runs():
    assert pava_decreasing(np.array([1.0, 3.0, 2.0]), np.ones(3)).tolist() == [2.0, 2.0, 2.0]
    assert pava_decreasing(np.array([3.0, 1.0, 2.0]), np.ones(3)).tolist() == [3.0, 1.5, 1.5]
    assert pava_decreasing(np.array([3.0, 1.0, 2.0]), np.array([1.0, 1.0, 3.0])).tolist() == [3.0, 1.75, 1.75]
    assert pava_decreasing(np.array([5.0, 4.0]), np.ones(2)).tolist() == [5.0, 4.0]


def test_fit_curve_shrinks_sparse_bins_is_monotone_and_floors_unreached_bins():
    hits = np.zeros(NB)
    shown = np.zeros(NB)
    hits[:3], shown[:3] = [1, 0, 1], [1, 1, 1]  # three items shown, ranks 1-3
    hits[3], shown[3] = 0, 100
    c = fit_curve(hits, shown, prior_strength=0.0)
    assert c[0] == pytest.approx(1.0)
    assert c[1] == c[2] == pytest.approx(0.5)  # the 0 then 1 violate monotonicity: pooled
    assert c[3] == pytest.approx(FLOOR) and np.all(c[4:] == np.float32(FLOOR))  # unreached bins: unmeasured
    shrunk = fit_curve(hits, shown)  # towards the mean rate 2/103
    assert shrunk[0] < 0.1 and np.all(np.diff(shrunk) <= 0)


def test_fit_curve_with_nothing_shown_is_the_floor_and_bad_counts_are_refused():
    assert np.all(fit_curve(np.zeros(NB), np.zeros(NB)) == np.float32(FLOOR))
    with pytest.raises(ValueError, match="bins"):
        fit_curve(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="at most the shown"):
        fit_curve(np.ones(NB), np.zeros(NB))


def test_curve_at_interpolates_and_keeps_the_order():
    p = curve_at(falling(0.5), 3000)
    assert p[0] == pytest.approx(0.5, rel=1e-6)
    assert np.all(np.diff(p) < 0)  # strictly decreasing, even where the curve is flat
    assert np.all(np.diff(curve_at(flat(0.2), 50)) < 0)
    with pytest.raises(ValueError, match="rank curve"):
        curve_at([0.1, 0.2], 5)


def test_fusion_gives_the_slots_to_the_likelier_hits_and_keeps_provenance():
    strong = cands([1, 2, 3, 4], "strong")
    weak = cands([5, 6, 2, 7], "weak")
    curves = {"strong": flat(0.5), "weak": flat(0.1)}
    out = fusion_merge([strong, weak], curves, 5)
    # item 2 (both sources) first: 1 - 0.5 * 0.9 = 0.55; then strong's in rank order; then weak's best
    assert out.ids.tolist() == [2, 1, 3, 4, 5]
    assert out.scores[0] == pytest.approx(0.55, abs=1e-3)
    assert out.sources(0) == ("strong", "weak") and out.sources(4) == ("weak",)
    assert np.isnan(out.source_scores["weak"][1]) and out.source_scores["strong"][1] == pytest.approx(1.0)
    assert np.all(np.diff(out.scores) <= 0)


def test_fusion_follows_the_curves_across_depth():
    a = cands(list(range(0, 100)), "a")
    b = cands(list(range(100, 200)), "b")
    # a is excellent at the top and useless below rank 8; b is mediocre everywhere
    curve_a = [0.9] * 6 + [0.001] * (NB - 6)
    out = fusion_merge([a, b], {"a": curve_a, "b": flat(0.05)}, 20)
    from_a = np.count_nonzero(out.ids < 100)
    assert 6 <= from_a <= 9 and len(out) == 20


def test_fusion_edge_cases():
    a = cands([1, 2, 3], "a")
    assert len(fusion_merge([a], {"a": flat(0.1)}, 0)) == 0
    assert len(fusion_merge([], {"a": flat(0.1)}, 5)) == 0
    with pytest.raises(ValueError, match="k must be"):
        fusion_merge([a], {"a": flat(0.1)}, -1)
    # a source without a curve ranks like the weakest curve given
    out = fusion_merge([a, cands([9], "other")], {"a": flat(0.1), "z": flat(0.01)}, 4)
    assert out.ids.tolist() == [1, 2, 3, 9]
    # no curves at all: every item at the floor, in list order
    assert fusion_merge([a], {}, 2).ids.tolist() == [1, 2]


def test_curve_shares_split_k_by_what_each_curve_wins():
    shares = curve_shares({"a": flat(0.5), "b": flat(0.01)}, ["a", "b", "c"], 100)
    assert shares["a"] > 90 and shares["b"] < 10 and "c" not in shares
    assert sum(shares.values()) == pytest.approx(100)
    assert curve_shares({}, ["a"], 10) == {} and curve_shares({"a": flat(0.1)}, ["a"], 0) == {}


def test_curve_checks_name_the_bad_entry():
    check_curves({"a": flat(0.5)}, "x")
    for bad, words in (([0.1] * 3, "expected 28 numbers"), ([2.0] * NB, r"\[0, 1\]"),
                       ([float("nan")] * NB, r"\[0, 1\]"), (["x"] * NB, "list of")):
        with pytest.raises(ValueError, match=words):
            check_curves({"a": bad}, "blend.rank_curves.warm")
    with pytest.raises(ConfigError, match="cohorts"):
        rank_curves(BlendConfig(rank_curves={"lukewarm": {"a": flat(0.1)}}))
    with pytest.raises(ConfigError, match="blend.rank_curves.warm.a"):
        rank_curves(BlendConfig(rank_curves={"warm": {"a": [0.5]}}))
    got = rank_curves(BlendConfig(rank_curves={"cold": {"a": flat(0.1)}}))
    assert got["cold"]["a"].dtype == np.float32 and got["cold"]["a"].shape == (NB,)


def test_the_blend_pipeline_runs_fusion_with_curves_and_quota_without():
    strong = cands([1, 2, 3, 4], "strong")
    weak = cands([5, 6, 7, 8], "weak")
    cfg = BlendConfig(strategy="calibrated", exploration_fraction=0.0)
    mix = {"strong": 0.5, "weak": 0.5}
    fused = blend([strong, weak], k=4, config=cfg, mix=mix, curves={"strong": np.array(flat(0.5)),
                                                                     "weak": np.array(flat(0.01))})
    assert fused.ids.tolist() == [1, 2, 3, 4]
    quota = blend([strong, weak], k=4, config=cfg, mix=mix)  # no curves for this cohort: the quota merge
    assert sorted(quota.ids.tolist()) == [1, 2, 5, 6]


def test_a_source_with_short_lists_does_not_claim_the_deep_slots():
    """Social-like: 14-item lists with a high hit rate; its curve ends where its lists end, so a long
    fused list asks it for about its length, not for most of k."""
    short_hits, short_shown = np.zeros(NB), np.zeros(NB)
    short_hits[:8], short_shown[:8] = 2, 10  # ranks 1..16 reached, 20% hits
    long_hits, long_shown = np.zeros(NB), np.zeros(NB)
    long_shown[:22] = 100
    long_hits[:22] = np.linspace(20, 1, 22)  # ranks up to 2048, falling from 20% to 1%
    curves = {"short": fit_curve(short_hits, short_shown), "long": fit_curve(long_hits, long_shown)}
    shares = curve_shares(curves, ["short", "long"], 1000)
    assert shares["short"] <= 30 and shares["long"] >= 970


def test_ordered_quota_merge_keeps_the_quota_items_in_curve_order():
    strong = cands([1, 2, 3, 4], "strong")
    weak = cands([5, 6, 7, 8], "weak")
    curves = {"strong": flat(0.01), "weak": falling(0.5)}
    out = ordered_quota_merge([strong, weak], {"strong": 0.5, "weak": 0.5}, curves, 4)
    assert sorted(out.ids.tolist()) == [1, 2, 5, 6]  # membership: the quota's two each
    assert out.ids.tolist()[:2] == [5, 6]  # order: the curves' (weak's items are the likely hits)
    assert np.all(np.diff(out.scores) <= 0) and out.scores[0] == pytest.approx(0.5, rel=0.01)


def test_the_pipeline_takes_a_per_cohort_strategy_and_checks_it():
    strong = cands([1, 2, 3, 4], "strong")
    weak = cands([5, 6, 7, 8], "weak")
    cfg = BlendConfig(strategy="quota", exploration_fraction=0.0)
    mix = {"strong": 0.5, "weak": 0.5}
    curves = {"strong": np.array(flat(0.01)), "weak": np.array(falling(0.5))}
    ordered = blend([strong, weak], k=4, config=cfg, mix=mix, curves=curves, strategy="ordered")
    assert ordered.ids.tolist()[:2] == [5, 6] and sorted(ordered.ids.tolist()) == [1, 2, 5, 6]
    plain = blend([strong, weak], k=4, config=cfg, mix=mix, curves=curves)  # "quota": curves unused
    assert plain.ids.tolist()[0] in (1, 5) and sorted(plain.ids.tolist()) == [1, 2, 5, 6]
    with pytest.raises(ValueError, match="strategy"):
        blend([strong, weak], k=4, config=cfg, mix=mix, strategy="best")
    for bad in ({"lukewarm": "ordered"}, {"warm": "best"}):
        with pytest.raises(ConfigError, match="cohort_strategy"):
            blend([strong], k=2, config=BlendConfig(cohort_strategy=bad), mix=mix)
