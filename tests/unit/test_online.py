"""L2 user-embedding cache and the online quality monitor's math."""

import numpy as np
import pytest

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


def test_the_quality_monitor_keeps_its_exact_searches_within_its_share_of_a_core():
    import time
    from types import SimpleNamespace

    from candgen.online import QualityMonitor
    from candgen.sources.base import UserContext

    now = [100.0]
    vectors = np.eye(8, dtype=np.float32)

    def search(q, k, exclude):
        now[0] += 0.5  # this search "takes" 0.5 s
        return [SimpleNamespace(ids=np.arange(k))]

    rt = SimpleNamespace(
        index=SimpleNamespace(is_exact=False, search=search), item_vectors=vectors,
        state=SimpleNamespace(catalog=SimpleNamespace(n_items=8, is_deleted=np.zeros(8, bool))),
        vector_lookup=lambda ids: vectors[ids], sources={"collaborative": SimpleNamespace(
            user_vector=lambda ctx: np.ones((1, 8), np.float32))})
    ctx = UserContext.anonymous(now=0.0)
    mon = QualityMonitor(1, max_share=0.1, clock=lambda: now[0])

    def observe_and_settle() -> None:
        mon.observe(rt, ctx, np.arange(4), 4)
        end = time.monotonic() + 5.0
        while mon._busy and time.monotonic() < end:
            time.sleep(0.001)

    observe_and_settle()
    assert mon.ann_samples == 1 and mon.take()["ann_recall"] == 1.0
    now[0] += 4.0  # 0.5 s of search at a 10% share: quiet until 5 s after it started
    observe_and_settle()
    assert mon.ann_samples == 1 and "diversity" in mon.take()  # diversity is cheap: always measured
    now[0] += 1.0
    observe_and_settle()
    assert mon.ann_samples == 2
    mon.close()
    with pytest.raises(ValueError, match="max_share"):
        QualityMonitor(1, max_share=0.0)
