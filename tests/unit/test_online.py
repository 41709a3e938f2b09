"""L2 user-embedding cache and the online quality monitor's math."""

import numpy as np

from candgen.online import CachedUserEncoder, exact_top_k, intra_list_diversity
from candgen.state.memory import LocalCache


class Tower:
    version, dim = "m1", 4

    def __init__(self):
        self.calls = 0

    def embed_user(self, **kw):
        self.calls += 1
        v = np.ones(4, np.float32) * (1 + len(kw["history_items"]))
        return v / np.linalg.norm(v)


def call(enc, items, **over):
    kw = dict(attributes={"country": "DE"}, interests=["a"], context={"device": "mobile"},
              history_items=np.array(items, np.int64), history_weights=np.ones(len(items), np.float32), now=7200)
    kw.update(over)
    return enc.embed_user(**kw)


def test_l2_hits_only_for_identical_inputs():
    tower = Tower()
    enc = CachedUserEncoder(tower, LocalCache("L2", max_entries=100), ttl_s=60)
    a = call(enc, [1, 2])
    b = call(enc, [1, 2])
    assert np.array_equal(a, b) and tower.calls == 1 and enc.hits == 1
    call(enc, [1, 2, 3])  # a new engagement changes the key
    call(enc, [1, 2], context={"device": "tv"})
    call(enc, [1, 2], attributes={"country": "FR"})
    assert tower.calls == 4 and enc.misses == 4


def test_intra_list_diversity_matches_pairwise_mean():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(30, 8)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    sims = v @ v.T
    brute = 1 - (sims.sum() - np.trace(sims)) / (30 * 29)
    assert abs(intra_list_diversity(v) - brute) < 1e-5
    assert intra_list_diversity(v[:1]) == 0.0
    same = np.repeat(v[:1], 5, axis=0)
    assert abs(intra_list_diversity(same)) < 1e-5


def test_exact_top_k_honours_exclusions_deletions_and_added_items():
    vectors = np.eye(5, dtype=np.float32)
    q = np.array([5, 4, 3, 2, 1], np.float32)
    live = np.array([True, False, True, True, True, True])
    got = exact_top_k(vectors, q, 2, exclude=np.array([0]), live=live,
                      extra_ids=np.array([5]), extra_vectors=np.array([[10, 0, 0, 0, 0]], np.float32))
    assert set(got.tolist()) == {5, 2}
    assert len(exact_top_k(vectors, q, 10, exclude=np.arange(5), live=np.ones(5, bool))) == 0
