import numpy as np
import pytest

from candgen.blend.exploration import exploration_slots, insert_exploration
from candgen.blend.merge import quota_merge
from candgen.types import Candidates


def ranked(n):
    ids = np.arange(n, dtype=np.int64)
    return quota_merge([Candidates(ids, np.linspace(1, 0.1, n).astype(np.float32), "collaborative")],
                       {"collaborative": 1.0}, n)


def explore(ids, source="new_items"):
    ids = np.asarray(ids, dtype=np.int64)
    return Candidates(ids, np.full(len(ids), 0.5, dtype=np.float32), source)


def test_slots_are_spread_evenly():
    assert exploration_slots(100, 5).tolist() == [10, 30, 50, 70, 90]
    assert exploration_slots(10, 0).tolist() == [] and exploration_slots(3, 10).tolist() == [0, 1, 2]


def test_insert_exploration_positions_count_and_tags():
    b = ranked(100)
    out = insert_exploration(b, explore(np.arange(1000, 1050)), 0.05)
    assert len(out) == 100
    pos = np.flatnonzero(out.found_by("new_items"))
    assert pos.tolist() == [10, 30, 50, 70, 90]
    assert out.ids[pos].tolist() == [1000, 1001, 1002, 1003, 1004]  # the bandit's order
    assert out.sources(10) == ("new_items",) and out.source_scores["new_items"][10] == 0.5
    # the blended items keep their order; the 5 weakest fell off the end
    assert out.ids[~out.found_by("new_items")].tolist() == list(range(95))
    assert out.scores[10] == pytest.approx((b.scores[9] + b.scores[10]) / 2)


def test_random_exploration_samples_with_the_rng():
    b = ranked(100)
    pool = explore(np.arange(1000, 1100))
    a = insert_exploration(b, pool, 0.1, np.random.default_rng(1))
    c = insert_exploration(b, pool, 0.1, np.random.default_rng(1))
    assert a.ids.tolist() == c.ids.tolist()
    assert int(a.found_by("new_items").sum()) == 10
    assert a.ids[a.found_by("new_items")].tolist() != list(range(1000, 1010))


def test_items_already_in_the_list_are_not_repeated_and_short_pools_give_slots_back():
    b = ranked(20)
    out = insert_exploration(b, explore([3, 3, 500]), 0.2)  # 4 slots, only 500 is new
    assert len(out) == 20 and out.ids.tolist().count(3) == 1
    assert out.ids[out.found_by("new_items")].tolist() == [500]
    assert out.ids[~out.found_by("new_items")].tolist() == list(range(19))


def test_short_list_and_empty_inputs():
    out = insert_exploration(ranked(3), explore([100, 101]), 0.2, k=10)  # 2 slots of 10; list has 3
    assert len(out) == 5 and int(out.found_by("new_items").sum()) == 2
    empty = insert_exploration(ranked(0), explore([7, 8]), 0.5, k=4)
    assert empty.ids.tolist() == [7, 8] and np.all(np.diff(empty.scores) < 0)
    assert insert_exploration(ranked(5), explore([]), 0.5).ids.tolist() == [0, 1, 2, 3, 4]
    assert insert_exploration(ranked(5), explore([9]), 0.0, k=3).ids.tolist() == [0, 1, 2]


def test_bad_fraction_is_an_error():
    with pytest.raises(ValueError, match="fraction must be in"):
        insert_exploration(ranked(3), explore([9]), 1.5)
