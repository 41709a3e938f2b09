import numpy as np
import pytest

from candgen.blend.filters import apply_filters, valid_mask
from candgen.types import Candidates


def cands(ids, source):
    ids = np.asarray(ids, dtype=np.int64)
    return Candidates(ids, np.linspace(1, 0, len(ids)).astype(np.float32), source)


CREATOR = np.array([0, 0, 1, 1, 2, 2, -1, 3], dtype=np.int32)  # item i's creator code


def test_filters_remove_seen_blocked_deleted_and_excluded():
    lists = [cands([0, 1, 2, 3], "collaborative"), cands([4, 5, 6, 7], "trending")]
    deleted = np.zeros(8, dtype=bool)
    deleted[5] = True
    out = apply_filters(lists, exclude={0, 7}, deleted=deleted, blocked_creators={1}, item_creator=CREATOR)
    assert out[0].ids.tolist() == [1] and out[1].ids.tolist() == [4, 6]
    assert out[0].source == "collaborative" and out[1].source == "trending"
    assert out[1].scores.tolist() == pytest.approx([1.0, 1 / 3])  # scores travel with their ids


def test_exclude_as_array_list_or_set():
    ids = np.array([1, 2, 3])
    for ex in (np.array([2]), [2], {2}, frozenset({2})):
        assert valid_mask(ids, exclude=ex).tolist() == [True, False, True]


def test_unknown_creator_and_items_beyond_the_tables_pass():
    ids = np.array([6, 20])  # 6 has creator -1; 20 was added after the tables were built
    deleted = np.zeros(8, dtype=bool)
    assert valid_mask(ids, deleted=deleted, blocked_creators=[-1, 3], item_creator=CREATOR).tolist() == [True, True]


def test_negative_ids_are_never_valid():
    assert valid_mask(np.array([-1, 2])).tolist() == [False, True]


def test_nothing_to_filter_returns_the_same_lists():
    lists = [cands([1, 2], "a")]
    assert apply_filters(lists)[0] is lists[0]
    assert apply_filters([]) == []
    assert len(apply_filters([cands([], "a")], exclude={1})[0]) == 0
    assert valid_mask(np.empty(0, dtype=np.int64), exclude={1}).tolist() == []


def test_blocked_creators_need_the_creator_table():
    with pytest.raises(ValueError, match="needs item_creator"):
        valid_mask(np.array([1]), blocked_creators={1})
