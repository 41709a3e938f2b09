import numpy as np
import pytest

from candgen.blend.merge import Blended, quota_merge, quota_shares, weighted_merge
from candgen.types import Candidates

MIX = {"collaborative": 0.4, "content": 0.3, "trending": 0.2, "social": 0.1}


def cands(ids, source, scores=None):
    ids = np.asarray(ids, dtype=np.int64)
    if scores is None:
        scores = np.linspace(1.0, 0.1, len(ids)) if len(ids) else np.empty(0)
    return Candidates(ids, np.asarray(scores, dtype=np.float32), source)


def disjoint(n=100):
    return [cands(np.arange(n) + 1000 * j, name) for j, name in enumerate(MIX)]


def counts(b: Blended):
    return {name: int(b.found_by(name).sum()) for name in MIX}


def test_quota_shares_follow_the_mix_and_sum_to_k():
    assert quota_shares(MIX, 10) == {"collaborative": 4, "content": 3, "trending": 2, "social": 1}
    thirds = quota_shares({"a": 1, "b": 1, "c": 1}, 10)
    assert sum(thirds.values()) == 10 and thirds["a"] == 4
    assert quota_shares({"a": 0.0}, 5) == {"a": 0} and quota_shares({}, 5) == {}


def test_quota_merge_gives_each_source_its_share_of_its_best_items():
    b = quota_merge(disjoint(), MIX, 10)
    assert counts(b) == {"collaborative": 4, "content": 3, "trending": 2, "social": 1}
    assert set(b.ids.tolist()) == {0, 1, 2, 3, 1000, 1001, 1002, 2000, 2001, 3000}
    assert b.ids.dtype == np.int64 and b.scores.dtype == np.float32
    assert np.all(np.diff(b.scores) <= 0)


def test_unused_quota_is_shared_among_the_others_by_weight():
    lists = disjoint()
    lists[2] = cands([2000], "trending")  # trending's share is 2 but it has 1 item
    lists[3] = cands([], "social")
    # social has no list, so round 1 shares 71 slots 4:3:2 (31 + 24 + 16), of which trending fills 1; the 15
    # slots left are shared 4:3 (9 + 6) by the two sources that still have items: the mix's 4:3 holds
    big = quota_merge(lists, MIX, 71)
    assert len(big) == 71
    assert counts(big) == {"collaborative": 40, "content": 30, "trending": 1, "social": 0}
    assert counts(quota_merge(lists, MIX, 10)) == {"collaborative": 6, "content": 3, "trending": 1, "social": 0}


@pytest.mark.parametrize("k", [1, 7, 10, 100, 333])
def test_a_source_with_nothing_changes_nothing(k):
    mix = {"collaborative": 0.25, "content": 0.25, "social": 0.25, "trending": 0.25}
    lists = [cands(np.arange(400) + 1000 * j, name) for j, name in enumerate(mix)]
    lists[2] = cands([], "social")
    with_empty = quota_merge(lists, mix, k)
    without = quota_merge([c for c in lists if c.source != "social"],
                          {n: w for n, w in mix.items() if n != "social"}, k)
    assert with_empty.ids.tolist() == without.ids.tolist()
    assert len(with_empty) == k


def test_shares_are_refilled_over_several_rounds_until_every_source_is_exhausted():
    lists = [cands(np.arange(30), "collaborative"), cands(np.arange(100, 103), "content"),
             cands(np.arange(200, 206), "trending"), cands(np.arange(300, 400), "social")]
    # round 1 (60 slots, 24/18/12/6): content and trending run short, 21 slots left; round 2 shares them 4:1
    # (17/4) and collaborative runs short after 6 more; round 3 gives social the 11 left
    b = quota_merge(lists, MIX, 60)
    assert counts(b) == {"collaborative": 30, "content": 3, "trending": 6, "social": 21}
    everything = quota_merge(lists, MIX, 1000)
    assert len(everything) == 139 and len(set(everything.ids.tolist())) == 139  # every distinct item


def test_shared_items_taken_by_an_earlier_source_leave_the_later_one_short():
    # content's items are all collaborative's: it runs short, and its share goes back to collaborative
    lists = [cands(np.arange(20), "collaborative"), cands(np.arange(5), "content")]
    b = quota_merge(lists, {"collaborative": 0.5, "content": 0.5}, 10)
    assert sorted(b.ids.tolist()) == list(range(10))
    assert int(b.found_by("content").sum()) == 5  # provenance keeps both sources for the shared items


def test_a_source_missing_from_the_mix_takes_only_overflow():
    lists = [cands(np.arange(3), "collaborative"), cands(np.arange(100, 110), "new_items")]
    b = quota_merge(lists, {"collaborative": 1.0}, 5)
    assert set(b.ids.tolist()) == {0, 1, 2, 100, 101}
    # with no share of its own, new_items only got the 2 slots collaborative could not fill
    assert int(b.found_by("new_items").sum()) == 2
    assert "new_items" in b.source_names


def test_k_larger_than_all_candidates_returns_every_distinct_item():
    lists = [cands([1, 2, 3], "collaborative"), cands([3, 4], "social")]
    b = quota_merge(lists, MIX, 1000)
    assert sorted(b.ids.tolist()) == [1, 2, 3, 4]


def test_items_found_by_several_sources_count_once_and_keep_all_sources():
    lists = [
        cands([1, 2, 3, 4], "collaborative", [0.9, 0.8, 0.7, 0.6]),
        cands([1, 2, 5, 6], "content", [50.0, 40.0, 30.0, 20.0]),
    ]
    b = quota_merge(lists, {"collaborative": 0.5, "content": 0.5}, 4)
    # collaborative takes 1, 2; content's 1, 2 are taken so it fills its share with 5, 6
    assert sorted(b.ids.tolist()) == [1, 2, 5, 6]
    i = b.ids.tolist().index(1)
    assert b.sources(i) == ("collaborative", "content")
    assert b.source_scores["collaborative"][i] == pytest.approx(0.9)
    assert b.source_scores["content"][i] == pytest.approx(50.0)
    j = b.ids.tolist().index(5)
    assert b.sources(j) == ("content",) and np.isnan(b.source_scores["collaborative"][j])
    assert b.source_lists()[i] == ("collaborative", "content")


def test_dedup_keeps_the_best_rank():
    lists = [cands([1, 2, 3], "collaborative"), cands([9, 3], "content")]
    b = quota_merge(lists, {"collaborative": 0.5, "content": 0.5}, 10)
    assert b.ids.tolist().count(3) == 1
    # item 3 is rank 2 and rank 1: found twice it ranks above every item found once
    assert b.ids[0] == 3
    single = quota_merge([cands([9, 3], "content")], {"content": 1.0}, 10)
    assert b.scores[0] >= 0.5 * single.scores[1]


def test_a_source_repeating_an_item_counts_it_once():
    b = quota_merge([cands([7, 7, 8], "collaborative", [3.0, 2.0, 1.0])], {"collaborative": 1.0}, 10)
    assert b.ids.tolist() == [7, 8]
    assert b.source_scores["collaborative"][0] == 3.0


def test_lists_sharing_a_source_name_are_merged():
    lists = [cands([1, 2], "trending", [5.0, 1.0]), cands([3], "trending", [3.0])]
    b = quota_merge(lists, {"trending": 1.0}, 10)
    assert b.ids.tolist() == [1, 3, 2] and b.source_names == ("trending",)


def test_empty_inputs_and_k_zero():
    assert len(quota_merge([], MIX, 10)) == 0
    assert len(quota_merge([cands([], "social")], MIX, 10)) == 0
    assert len(quota_merge(disjoint(), MIX, 0)) == 0
    assert len(weighted_merge([], MIX, 10)) == 0
    assert len(weighted_merge(disjoint(), MIX, 0)) == 0


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="k must be >= 0"):
        quota_merge(disjoint(), MIX, -1)
    with pytest.raises(ValueError, match="weights must be >= 0.*social=-1"):
        quota_merge(disjoint(), {**MIX, "social": -1.0}, 10)
    with pytest.raises(ValueError, match="k must be >= 0"):
        weighted_merge(disjoint(), MIX, -1)
    with pytest.raises(ValueError, match="weights must be >= 0"):
        weighted_merge(disjoint(), {"social": float("nan")}, 10)
    with pytest.raises(ValueError, match="at most 64 sources"):
        quota_merge([cands([i], f"s{i}") for i in range(65)], {}, 10)


def test_weighted_merge_proportions_on_a_large_draw():
    k = 20_000
    lists = [cands(np.arange(k) + 100_000 * j, name) for j, name in enumerate(MIX)]
    b = weighted_merge(lists, MIX, k, rng=np.random.default_rng(7))
    assert len(b) == k and len(np.unique(b.ids)) == k
    for name, w in MIX.items():
        assert abs(counts(b)[name] / k - w) < 0.015, name  # binomial sd is < 0.4% here
    top = b.take(np.arange(2000))
    assert abs(int(top.found_by("collaborative").sum()) / 2000 - 0.4) < 0.05  # the mix holds from the top
    # each source hands out its items best first
    coll = b.ids[b.found_by("collaborative")]
    assert np.all(np.diff(coll) > 0)
    assert np.all(np.diff(b.scores) < 0)


def test_weighted_merge_is_deterministic_given_the_rng():
    a = weighted_merge(disjoint(), MIX, 50, rng=np.random.default_rng(3))
    b = weighted_merge(disjoint(), MIX, 50, rng=np.random.default_rng(3))
    c = weighted_merge(disjoint(), MIX, 50, rng=np.random.default_rng(4))
    assert a.ids.tolist() == b.ids.tolist() and a.ids.tolist() != c.ids.tolist()
    assert weighted_merge(disjoint(), MIX, 50).ids.tolist() == weighted_merge(disjoint(), MIX, 50).ids.tolist()


def test_weighted_merge_redraws_exhausted_sources_and_dedups_with_provenance():
    lists = [cands([1, 2, 3], "collaborative"), cands([3, 4], "social"), cands(np.arange(10, 100), "content")]
    b = weighted_merge(lists, {"collaborative": 0.45, "social": 0.45, "content": 0.1}, 30, rng=np.random.default_rng(0))
    assert len(b) == 30 and len(np.unique(b.ids)) == 30
    assert {1, 2, 3, 4} <= set(b.ids.tolist())
    i = b.ids.tolist().index(3)
    assert set(b.sources(i)) == {"collaborative", "social"}


def test_weighted_merge_never_draws_a_zero_weight_or_unnamed_source():
    lists = [cands([1, 2], "collaborative"), cands([5, 6], "social"), cands([8], "other")]
    b = weighted_merge(lists, {"collaborative": 1.0, "social": 0.0}, 10, rng=np.random.default_rng(0))
    assert sorted(b.ids.tolist()) == [1, 2]


def test_blended_helpers():
    b = quota_merge([cands([1, 2], "collaborative"), cands([2], "social")], MIX, 5)
    assert not b.found_by("nope").any()
    empty = Blended.empty(["a"])
    assert len(empty) == 0 and list(empty.source_scores) == ["a"] and empty.source_lists() == []
    extra = cands([42], "exploration", [0.5])
    out = b.insert(np.array([1]), extra, np.array([0.7]))
    assert out.ids.tolist() == [b.ids[0], 42, b.ids[1]]
    assert out.sources(1) == ("exploration",) and out.source_scores["exploration"][1] == 0.5
    assert np.isnan(out.source_scores["exploration"][0]) and np.isnan(out.source_scores["collaborative"][1])
    tail = b.append(cands([43], "collaborative", [0.1]), np.array([0.0]))
    assert tail.ids[-1] == 43 and tail.sources(2) == ("collaborative",)
    assert tail.source_names == b.source_names


def test_normalisation_decides_how_sources_compare():
    lists = [cands([1, 2], "collaborative", [0.9, 0.8]), cands([5, 6], "trending", [900.0, 10.0])]
    mix = {"collaborative": 0.5, "trending": 0.5}
    # rank-based: both tops tie at 0.5 and keep input order; raw scores let trending's scale win
    assert quota_merge(lists, mix, 4).ids.tolist()[:2] == [1, 5]
    assert quota_merge(lists, mix, 4, normalization="none").ids.tolist() == [5, 6, 1, 2]
    with pytest.raises(ValueError, match="unknown score normalisation"):
        quota_merge(lists, mix, 4, normalization="softmax")
