import numpy as np
import pytest

from candgen.blend.diversity import apply_caps, cap_admitted, mmr
from candgen.blend.merge import quota_merge
from candgen.types import Candidates


def ranked(ids):
    ids = np.asarray(ids, dtype=np.int64)
    return quota_merge([Candidates(ids, np.linspace(1, 0.1, len(ids)).astype(np.float32), "collaborative")],
                       {"collaborative": 1.0}, len(ids))


def greedy(groups, n):
    """The reference greedy walk, one item at a time."""
    counts = [dict() for _ in groups]
    out = np.zeros(n, dtype=bool)
    for i in range(n):
        if all(codes[i] < 0 or counts[g].get(codes[i], 0) < cap for g, (codes, cap) in enumerate(groups)):
            out[i] = True
            for g, (codes, _) in enumerate(groups):
                counts[g][codes[i]] = counts[g].get(codes[i], 0) + 1
    return out


def test_creator_cap_defers_items_and_uses_them_only_when_short():
    creator = np.array([0, 0, 0, 1, 1, 2])  # items 0-2 by creator 0
    b = ranked([0, 1, 2, 3, 4, 5])
    capped = apply_caps(b, k=4, item_creator=creator, max_per_creator=1)
    assert capped.ids.tolist() == [0, 3, 5, 1]  # 3 distinct creators, then the first deferred item
    full = apply_caps(b, k=3, item_creator=creator, max_per_creator=1)
    assert full.ids.tolist() == [0, 3, 5]


def test_category_and_creator_caps_together_match_the_greedy_walk():
    rng = np.random.default_rng(0)
    n = 500
    creator = rng.integers(-1, 30, n)
    category = rng.integers(-1, 8, n)
    groups = [(creator, 3), (category, 20)]
    got = cap_admitted(groups, n)
    np.testing.assert_array_equal(got, greedy(groups, n))
    for codes, cap in groups:
        vals, cnt = np.unique(codes[got & (codes >= 0)], return_counts=True)
        assert cnt.max() <= cap


def test_unknown_codes_are_never_capped_and_caps_off_is_a_truncation():
    creator = np.full(5, -1)
    b = ranked([0, 1, 2, 3, 4])
    assert apply_caps(b, k=5, item_creator=creator, max_per_creator=1).ids.tolist() == [0, 1, 2, 3, 4]
    assert apply_caps(b, k=2).ids.tolist() == [0, 1]
    assert cap_admitted([], 3).all() and len(cap_admitted([(np.array([], dtype=np.int64), 1)], 0)) == 0


def test_items_beyond_the_creator_table_are_unknown():
    b = ranked([0, 1, 7])
    out = apply_caps(b, k=3, item_creator=np.array([0, 0]), max_per_creator=1)
    assert out.ids.tolist() == [0, 7, 1]


def test_mmr_picks_diverse_items():
    # items 0-2 are near-copies of one direction, 3 is orthogonal and a bit less relevant
    vecs = np.array([[1, 0], [1, 0.01], [1, 0.02], [0, 1]], dtype=np.float32)
    ids = np.arange(4)
    scores = np.array([1.0, 0.99, 0.98, 0.9])
    assert mmr(ids, scores, vecs, 1.0, 2).tolist() == [0, 1]  # pure relevance
    assert mmr(ids, scores, vecs, 0.5, 2).tolist() == [0, 3]
    assert mmr(ids, scores, vecs, 0.5, 10).tolist()[:2] == [0, 3] and len(mmr(ids, scores, vecs, 0.5, 10)) == 4


def test_mmr_edge_cases_and_errors():
    vecs = np.eye(3, dtype=np.float32)
    assert len(mmr(np.empty(0, dtype=np.int64), np.empty(0), vecs, 0.5, 5)) == 0
    assert mmr(np.array([2, 1]), np.array([1.0, 1.0]), vecs, 0.3, 2).tolist() == [0, 1]
    with pytest.raises(ValueError, match="lambda must be in"):
        mmr(np.array([0]), np.array([1.0]), vecs, 1.5, 1)
    with pytest.raises(ValueError, match="has no vector"):
        mmr(np.array([5]), np.array([1.0]), vecs, 0.5, 1)
