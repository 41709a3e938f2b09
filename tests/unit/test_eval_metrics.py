"""Ranking and beyond-accuracy metrics on hand-computed cases and against brute-force loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from candgen.data.dataset import Csr
from candgen.eval import metrics as m

REC = np.array([[1, 2, 3, -1], [4, 5, 6, 7], [0, 1, 2, 3]])
REL = [np.array([2, 9]), np.array([8]), np.array([], dtype=np.int64)]


def test_hand_computed_at_3() -> None:
    # user 0: one hit (item 2, rank 2) of 2 relevant; user 1: no hit; user 2: nothing relevant -> left out
    assert m.recall_at_k(REC, REL, 3) == pytest.approx(0.25)
    assert m.precision_at_k(REC, REL, 3) == pytest.approx(1 / 6)
    assert m.hit_rate_at_k(REC, REL, 3) == pytest.approx(0.5)
    ndcg0 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert m.ndcg_at_k(REC, REL, 3) == pytest.approx(ndcg0 / 2)
    per_user = m.recall_per_user(REC, REL, 3)
    assert per_user[:2] == pytest.approx([0.5, 0.0]) and np.isnan(per_user[2])


def test_recall_uses_all_relevant_not_min_with_k() -> None:
    rec = np.array([[0]])
    rel = [np.array([0, 1, 2])]
    assert m.recall_at_k(rec, rel, 1) == pytest.approx(1 / 3)
    assert m.ndcg_at_k(rec, rel, 1) == pytest.approx(1.0)  # ideal DCG is capped at k


def test_k_beyond_list_width_counts_empty_slots_as_misses() -> None:
    assert m.precision_at_k(REC, REL, 10) == pytest.approx((1 / 10 + 0) / 2)
    assert m.recall_at_k(REC, REL, 10) == pytest.approx(0.25)


def test_relevant_containers_agree_and_duplicates_count_once() -> None:
    csr = Csr.from_lists([[2, 9], [8], []])
    mat = sp.csr_matrix((np.ones(3), ([0, 0, 1], [2, 9, 8])), shape=(3, 10))
    dup = [np.array([2, 9, 2]), np.array([8]), np.array([], dtype=np.int64)]
    expected = m.ranking_metrics_per_user(REC, REL, [2, 4])
    for rel in (csr, mat, dup):
        got = m.ranking_metrics_per_user(REC, rel, [2, 4])
        assert got.keys() == expected.keys()
        for key in expected:
            np.testing.assert_allclose(got[key], expected[key], equal_nan=True)


def test_no_relevant_users_gives_nan() -> None:
    assert math.isnan(m.recall_at_k(REC, [np.array([], dtype=np.int64)] * 3, 2))


def test_ranking_metrics_match_brute_force() -> None:
    rng = np.random.default_rng(0)
    rec = np.stack([rng.permutation(50)[:20] for _ in range(30)])
    rec[::4, 15:] = -1
    rel = [rng.choice(50, size=int(rng.integers(0, 8)), replace=False) for _ in range(30)]
    got = m.ranking_metrics_per_user(rec, rel, [5, 20])
    for u in range(30):
        s = set(rel[u].tolist())
        for k in (5, 20):
            hits = [int(x) in s for x in rec[u, :k]]
            if not s:
                assert np.isnan(got[f"recall@{k}"][u])
                continue
            dcg = sum(h / math.log2(i + 2) for i, h in enumerate(hits))
            idcg = sum(1 / math.log2(i + 2) for i in range(min(len(s), k)))
            assert got[f"recall@{k}"][u] == pytest.approx(sum(hits) / len(s))
            assert got[f"precision@{k}"][u] == pytest.approx(sum(hits) / k)
            assert got[f"hit_rate@{k}"][u] == float(any(hits))
            assert got[f"ndcg@{k}"][u] == pytest.approx(dcg / idcg)


@pytest.mark.parametrize(
    ("rec", "rel", "k", "match"),
    [
        (np.array([1, 2]), [np.array([1])], 1, "2-d"),
        (np.array([[1.0, 2.0]]), [np.array([1])], 1, "integer"),
        (REC, REL, 0, "positive integer"),
        (REC, REL[:2], 2, "relevant has 2 users"),
        (REC, [np.array([-3]), np.array([1]), np.array([2])], 2, ">= 0"),
    ],
)
def test_ranking_errors(rec: np.ndarray, rel: list[np.ndarray], k: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        m.recall_at_k(rec, rel, k)


def test_ranking_metrics_need_a_cutoff() -> None:
    with pytest.raises(ValueError, match="at least one"):
        m.ranking_metrics_per_user(REC, REL, [])


def test_unknown_metric_name() -> None:
    with pytest.raises(ValueError, match="unknown metric"):
        m._per_user_from_hits(np.zeros((1, 1), bool), np.ones(1, np.int64), 1, "mrr")


def test_coverage_and_counts() -> None:
    assert m.catalog_coverage(REC, 10) == pytest.approx(0.8)
    assert m.catalog_coverage(REC, 10, k=1) == pytest.approx(0.3)
    np.testing.assert_array_equal(m.recommendation_counts(REC, 10, k=2), [1, 2, 1, 0, 1, 1, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="catalog has only 5"):
        m.catalog_coverage(REC, 5)
    with pytest.raises(ValueError, match="n_items"):
        m.catalog_coverage(REC, 0)


def test_gini() -> None:
    assert m.gini(np.array([3, 3, 3, 3])) == pytest.approx(0.0)
    assert m.gini(np.array([0, 0, 0, 5])) == pytest.approx(0.75)
    assert m.gini(np.array([1, 2, 3])) == pytest.approx(2 / 9)  # mean |xi - xj| / (2 mean)
    assert m.gini(np.zeros(4)) == 0.0 and m.gini(np.zeros(0)) == 0.0
    with pytest.raises(ValueError, match="non-negative"):
        m.gini(np.array([1, -1]))


def test_novelty() -> None:
    p = np.array([0.5, 0.25, 1.0])
    rec = np.array([[0, 1], [2, -1], [-1, -1]])
    per_user = m.novelty_per_user(rec, p)
    assert per_user[:2] == pytest.approx([1.5, 0.0]) and np.isnan(per_user[2])
    assert m.novelty(rec, p) == pytest.approx(0.75)
    np.testing.assert_allclose(m.item_probability(np.array([0, 1]), 3), [0.25, 0.5])
    with pytest.raises(ValueError, match="smooth zero counts"):
        m.novelty(rec, np.array([0.0, 0.5, 1.0]))
    with pytest.raises(ValueError, match="between 0 and n_users"):
        m.item_probability(np.array([4]), 3)


def test_intra_list_diversity_vectors() -> None:
    v = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [-1.0, 0.0], [0.0, 0.0]])
    rec = np.array([[0, 1, -1], [0, 2, -1], [0, 3, -1], [0, 1, 2], [0, -1, -1], [0, 4, -1]])
    got = m.intra_list_diversity_per_user(rec, item_vectors=v)
    np.testing.assert_allclose(got[:4], [1.0, 0.0, 2.0, 2 / 3])
    assert np.isnan(got[4]) and np.isnan(got[5])  # one featured item only (item 4 has a zero vector)
    assert m.intra_list_diversity(rec, item_vectors=v) == pytest.approx((1 + 0 + 2 + 2 / 3) / 4)


def test_intra_list_diversity_tags_match_brute_force() -> None:
    tags = Csr.from_lists([[0, 1], [1], [], [2, 3, 1]])
    rec = np.array([[0, 1, -1], [0, 2, -1], [0, 1, 3]])
    got = m.intra_list_diversity_per_user(rec, item_tags=tags)
    assert got[0] == pytest.approx(1 - 1 / math.sqrt(2))
    assert np.isnan(got[1])
    sets = [{0, 1}, {1}, set(), {1, 2, 3}]

    def cos(a: set[int], b: set[int]) -> float:
        return len(a & b) / math.sqrt(len(a) * len(b))

    brute = 1 - (cos(sets[0], sets[1]) + cos(sets[0], sets[3]) + cos(sets[1], sets[3])) / 3
    assert got[2] == pytest.approx(brute)
    mat = sp.csr_matrix((np.ones(6), ([0, 0, 1, 3, 3, 3], [0, 1, 1, 2, 3, 1])), shape=(4, 4))
    np.testing.assert_allclose(m.intra_list_diversity_per_user(rec, item_tags=mat), got, equal_nan=True)


def test_intra_list_diversity_errors() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        m.intra_list_diversity(REC)
    with pytest.raises(ValueError, match="exactly one"):
        m.intra_list_diversity(REC, item_vectors=np.eye(10), item_tags=Csr.from_lists([[0]] * 10))
    with pytest.raises(ValueError, match="2-d"):
        m.intra_list_diversity(REC, item_vectors=np.ones(10))
