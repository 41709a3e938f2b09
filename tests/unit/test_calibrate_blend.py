"""The blend half of the calibration (candgen.calibrate_blend) on hand-made validation lists."""

from __future__ import annotations

import numpy as np
import pytest

from candgen.blend.fusion import RANK_EDGES
from candgen.calibrate_blend import Sample, choose_blend, fit_curves, fusion_recall, pick, quota_recall
from candgen.types import Candidates


def lst(ids: list[int] | np.ndarray, source: str) -> Candidates:
    ids = np.asarray(ids, np.int64)
    return Candidates(ids, np.linspace(1, 0, len(ids)).astype(np.float32), source)


def sample(a: list[int], b: list[int], truth: list[int]) -> Sample:
    return Sample([lst(a, "a"), lst(b, "b")], np.array(truth, np.int64))


def test_fit_curves_measure_hit_rates_by_rank_and_weigh_users_by_their_recall():
    s1 = sample([1, 2, 3, 4], [5, 6, 7, 8], [1])  # a's first item hits
    s2 = sample([1, 2, 3, 4], [5, 6, 7, 8], [5, 9, 10, 11])  # b's first item hits (a quarter of the recall)
    curves = fit_curves([s1, s2], ["a", "b"])
    assert set(curves) == {"a", "b"} and len(curves["a"]) == len(RANK_EDGES)
    # user weights 2.5/1 and 2.5/4: a's hit (user 1) counts 4x b's hit (user 2)
    assert curves["a"][0] > 3 * curves["b"][0] and curves["a"][0] > curves["a"][3]
    assert all(x >= y for x, y in zip(curves["a"], curves["a"][1:], strict=False))


def test_quota_and_fusion_recall_on_a_hand_case():
    s = sample([1, 2, 3, 4], [5, 6, 7, 8], [1, 5, 6])
    assert quota_recall([s], {"a": 1.0}, ks=(2,), overfetch=1.0, normalization="rank") == pytest.approx([1 / 3])
    both = quota_recall([s, s], {"a": 0.5, "b": 0.5}, ks=(2,), overfetch=1.0, normalization="rank")
    assert both == pytest.approx([2 / 3, 2 / 3])
    curves = {"a": [0.01] * len(RANK_EDGES), "b": [0.5] * len(RANK_EDGES)}
    assert fusion_recall([s], curves, ks=(2,), overfetch=1.0) == pytest.approx([2 / 3])
    # averaged over list sizes: @1 finds b's 5 (1/3), @2 finds 5 and 6 (2/3)
    assert fusion_recall([s], curves, ks=(1, 2), overfetch=1.0) == pytest.approx([0.5])


def consistent(n: int) -> list[Sample]:
    """Every user finds hits at the top 3 of both sources and nowhere else."""
    out = []
    for u in range(n):
        a = np.arange(1000 * u, 1000 * u + 50)
        b = np.arange(1000 * u + 500, 1000 * u + 550)
        out.append(Sample([lst(a, "a"), lst(b, "b")], np.concatenate([a[:3], b[:3]])))
    return out


def test_fusion_is_chosen_when_it_beats_every_mix_out_of_sample():
    grid = [{"a": 1.0}, {"a": 0.9, "b": 0.1}]
    choice = choose_blend(consistent(20), current={"a": 0.95, "b": 0.05}, grid=grid, ks=(6,), overfetch=2.0,
                          normalization="rank")
    assert choice.curves is not None and choice.report["chosen"] == "calibrated"
    assert choice.report["fusion_recall_cross_fitted"] == pytest.approx(1.0)
    assert set(choice.mix) == {"a", "b"} and all(w >= 0.01 for w in choice.mix.values())
    quota_rows = [t for t in choice.report["tried"] if "order" not in t]
    assert len(quota_rows) == 3 and choice.report["fusion_margin"] == pytest.approx(0.5)
    assert choice.strategy == "calibrated"


def test_a_gain_within_the_noise_does_not_move_the_configured_mix():
    samples = []
    for u in range(4):  # the mix gains for two users, loses for one, ties for one: better on average only
        a = np.arange(1000 * u, 1000 * u + 50)
        b = np.arange(1000 * u + 500, 1000 * u + 550)
        samples.append(Sample([lst(a, "a"), lst(b, "b")], (b[:3], b[:3], a[:3], a[:1])[u]))
    current = {"a": 1.0}
    choice = choose_blend(samples, current=current, grid=[{"a": 0.5, "b": 0.5}], ks=(3,), overfetch=1.0,
                          normalization="rank", z=1.0)
    better = choice.report["tried"][1]
    assert better["recall"] > choice.report["tried"][0]["recall"] and better["margin"] <= 0
    assert choice.mix == current and choice.curves is None
    # with z = 0 the same evidence is enough
    assert choose_blend(samples, current=current, grid=[{"a": 0.5, "b": 0.5}], ks=(3,), overfetch=1.0,
                        normalization="rank", z=0.0).mix != current


def test_a_quota_mix_is_kept_when_fusion_does_not_generalise():
    samples = []
    for u in range(20):  # even users hit only in a's top 3, odd users only in b's: the halves disagree
        a = np.arange(1000 * u, 1000 * u + 50)
        b = np.arange(1000 * u + 500, 1000 * u + 550)
        samples.append(Sample([lst(a, "a"), lst(b, "b")], a[:3] if u % 2 == 0 else b[:3]))
    current = {"a": 0.5, "b": 0.5}
    choice = choose_blend(samples, current=current, grid=[{"a": 1.0}], ks=(6,), overfetch=2.0,
                          normalization="rank")
    assert choice.curves is None and choice.mix == current and choice.report["chosen"] == current
    assert choice.report["recall"] == pytest.approx(1.0)
    assert choice.report["fusion_recall_cross_fitted"] < 1.0


def test_quota_recall_reads_the_prefixes_of_one_list_and_can_order_it_by_curves():
    # b's two first items are the hits; an equal mix puts a's first item at the top by reciprocal rank
    s = sample([1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [6, 7])
    plain = quota_recall([s], {"a": 0.5, "b": 0.5}, ks=(2, 10), overfetch=1.0, normalization="rank")
    assert plain == pytest.approx([(0.5 + 1.0) / 2])  # @2: a1 and b1; @10: everything
    curves = {"a": [0.001] * len(RANK_EDGES), "b": [0.5] * len(RANK_EDGES)}
    ordered = quota_recall([s], {"a": 0.5, "b": 0.5}, ks=(2, 10), overfetch=1.0, normalization="rank",
                           curves=curves)
    assert ordered == pytest.approx([1.0])


def test_curve_order_is_chosen_when_the_mix_is_right_but_its_head_is_not():
    samples = []
    for u in range(20):  # every user's hits: b's first two items; a's items never hit
        a = np.arange(1000 * u, 1000 * u + 50)
        b = np.arange(1000 * u + 500, 1000 * u + 550)
        samples.append(Sample([lst(a, "a"), lst(b, "b")], b[:2]))
    current = {"a": 0.5, "b": 0.5}
    choice = choose_blend(samples, current=current, grid=[], ks=(2, 10), overfetch=1.0, normalization="rank")
    assert choice.strategy == "ordered" and choice.mix == current and choice.report["chosen"] == current
    assert choice.curves is not None and choice.curves["b"][0] > 10 * choice.curves["a"][0]
    assert choice.report["recall"] == pytest.approx(1.0) and choice.report["tried"][0]["recall"] == pytest.approx(0.75)


def test_pick_gates_on_the_margin_and_ranks_the_passing_options_by_their_mean():
    options = [(0.02, 0.41, "near the default"), (0.005, 0.45, "far and better"),
               (-0.01, 0.60, "better on average, within the noise")]
    assert pick(options, fallback="default") == "far and better"
    assert pick(options[2:], fallback="default") == "default"
    assert pick([], fallback="default") == "default"
    # equals: the first listed wins, so the choice does not depend on set or dict ordering
    assert pick([(0.1, 0.5, "x"), (0.2, 0.5, "y")], fallback="d") == "x"


def test_of_two_mixes_that_beat_the_default_the_better_one_wins_not_the_surer_one():
    # @3: the default shows a1 a2 a3; "near" a1 a2 b1 (gains a little for every user); "far" a1 c1 c2 (gains
    # a lot for three users in four, loses a lot for the fourth): far is better on average but less sure
    samples = []
    for u in range(12):
        a, b, c = (np.arange(1000 * u + o, 1000 * u + o + 50) for o in (0, 100, 200))
        truth = [a[0], b[0], c[0], c[1]] if u % 4 else [a[0], a[1], a[2], b[0]]
        samples.append(Sample([lst(a, "a"), lst(b, "b"), lst(c, "c")], np.array(truth, np.int64)))
    near, far = {"a": 2 / 3, "b": 1 / 3}, {"a": 1 / 3, "c": 2 / 3}
    choice = choose_blend(samples, current={"a": 1.0}, grid=[near, far], ks=(3,), overfetch=1.0,
                          normalization="rank")
    rows = [t for t in choice.report["tried"] if "order" not in t]
    assert rows[1]["mix"] == near and rows[2]["mix"] == far
    assert rows[1]["margin"] > rows[2]["margin"] > 0 and rows[2]["recall"] > rows[1]["recall"]
    assert rows[1]["recall"] == pytest.approx(0.5625) and rows[2]["recall"] == pytest.approx(0.625)
    assert choice.mix == far and choice.strategy == "quota" and choice.report["recall"] == pytest.approx(0.625)
