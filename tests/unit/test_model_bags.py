"""Weighted bags of table rows and the fused feature-table layout (numpy side of the training towers)."""

from __future__ import annotations

import numpy as np
import pytest
from model_world import planted_world

from candgen.model.bags import FEATURE_TABLES, Bags, TableLayout, history_bags, id_bags
from candgen.model.features import N_AGE, N_HISTORY_LEN, N_HOURS, FeatureSpace


@pytest.fixture(scope="module")
def layout():
    ds = planted_world()
    return TableLayout.of(FeatureSpace.from_dataset(ds, id_buckets=1000, history_len=5))


def test_from_padded_drops_absent_slots_and_keeps_weights():
    b = Bags.from_padded(np.array([[3, -1, 5], [-1, -1, -1], [0, 2, -1]]),
                         np.array([[0.5, 9.0, 0.25], [1, 1, 1], [1.0, 2.0, 7.0]]))
    assert b.n_bags == 3
    assert b.ptr.tolist() == [0, 2, 2, 4] and b.idx.tolist() == [3, 5, 0, 2]
    assert b.weight.tolist() == [0.5, 0.25, 1.0, 2.0] and b.weight.dtype == np.float32
    ones = Bags.from_padded(np.array([[1, -1]]))
    assert ones.weight.tolist() == [1.0]
    with pytest.raises(ValueError, match="2-d matrix"):
        Bags.from_padded(np.array([1, 2]))


def test_concat_and_matrix():
    a = Bags.from_padded(np.array([[1, 2], [-1, 3]]), np.array([[1.0, 2.0], [0.0, 4.0]]))
    b = Bags.from_padded(np.array([[3, 3]]), np.array([[0.5, 0.25]]))  # the same row twice: weights add up
    c = Bags.concat([a, b])
    assert c.n_bags == 3 and c.ptr.tolist() == [0, 2, 3, 5]
    dense = c.matrix(4).toarray()
    np.testing.assert_allclose(dense, [[0, 1, 2, 0], [0, 0, 0, 4], [0, 0, 0, 0.75]])
    with pytest.raises(ValueError, match=r"bag rows must lie in \[0, 3\)"):
        c.matrix(3)
    empty = Bags.concat([Bags.from_padded(np.full((2, 1), -1))])
    assert empty.n_bags == 2 and empty.matrix(5).nnz == 0


def test_id_and_history_bags_leave_out_unknown_and_empty_slots():
    ids = id_bags(np.array([4, 0, 7]))
    assert ids.ptr.tolist() == [0, 1, 1, 2] and ids.idx.tolist() == [4, 7]
    h = history_bags(np.array([[5, 6, -1], [8, 9, 9]]), np.array([[0.7, 0.3, 0.0], [0.0, 0.0, 0.0]]))
    assert h.ptr.tolist() == [0, 2, 2] and h.idx.tolist() == [5, 6]
    np.testing.assert_allclose(h.weight, [0.7, 0.3])


def test_layout_spans_are_contiguous_and_sized_from_the_space(layout):
    start = 0
    for name in FEATURE_TABLES:
        s, n = layout.spans[name]
        assert s == start and n >= 1
        start += n
    assert layout.n_rows == start
    assert layout.spans["age"][1] == N_AGE and layout.spans["hour"][1] == N_HOURS
    assert layout.spans["history_len"][1] == N_HISTORY_LEN
    assert layout.spans["tag"][1] == 4 + 3 + 1  # t0..t3, x0..x2, unknown


def test_layout_rows_skip_unknown_only_in_padded_tables(layout):
    tag0, age0 = layout.spans["tag"][0], layout.spans["age"][0]
    assert layout.rows("tag", np.array([0, 1, 3])).tolist() == [-1, tag0 + 1, tag0 + 3]
    assert layout.rows("age", np.array([0, 2])).tolist() == [age0, age0 + 2]  # age 0 (unknown) is a trained row
    with pytest.raises(ValueError, match="hour codes must lie in"):
        layout.rows("hour", np.array([N_HOURS]))


def test_item_and_user_bags_by_hand(layout):
    s = {name: start for name, (start, _) in layout.spans.items()}
    items = layout.item_bags(tags=np.array([[1, 2, 0], [0, 0, 0]]), category=np.array([1, 0]),
                             creator=np.array([0, 2]), age=np.array([3, 0]))
    m = items.matrix(layout.n_rows).toarray()
    expect = np.zeros_like(m)
    expect[0, [s["tag"] + 1, s["tag"] + 2]] = 0.5  # mean of two tags
    expect[0, s["category"] + 1] = expect[0, s["age"] + 3] = 1.0
    expect[1, s["creator"] + 2] = expect[1, s["age"]] = 1.0  # no tags, no category
    np.testing.assert_allclose(m, expect)
    users = layout.user_bags(attributes=np.array([[1, 0]]), interests=np.array([[2, 3, 1]]), device=np.array([0]),
                             hour=np.array([5]), history_len=np.array([0]))
    m = users.matrix(layout.n_rows).toarray()
    expect = np.zeros_like(m)
    expect[0, s["attr"] + 1] = expect[0, s["hour"] + 5] = expect[0, s["history_len"]] = 1.0
    expect[0, [s["tag"] + 1, s["tag"] + 2, s["tag"] + 3]] = 1 / 3
    np.testing.assert_allclose(m, expect, rtol=1e-6)
