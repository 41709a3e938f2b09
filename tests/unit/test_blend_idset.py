import threading

import numpy as np

from candgen.blend import idset
from candgen.blend.idset import argsort_desc, compact, first_occurrence, member


def test_against_numpy_on_random_cases():
    rng = np.random.default_rng(0)
    for _ in range(100):
        n = int(rng.integers(0, 200))
        ids = rng.integers(0, 60, n)
        values = rng.integers(0, 60, int(rng.integers(0, 30)))
        np.testing.assert_array_equal(member(ids, values), np.isin(ids, values))
        ref = np.zeros(n, dtype=bool)
        ref[np.unique(ids, return_index=True)[1]] = True
        np.testing.assert_array_equal(first_occurrence(ids), ref)
        uniq, inv = compact(ids)
        np.testing.assert_array_equal(uniq[inv], ids)
        assert len(uniq) == len(np.unique(ids)) and uniq.tolist() == ids[ref].tolist()


def test_scratch_is_left_clean_and_per_thread():
    member(np.array([5, 6]), np.array([6]))
    first_occurrence(np.array([3, 3, 9]))
    compact(np.array([4, 4, 1]))
    assert not idset._local.buf.any()
    seen = {}

    def worker():
        member(np.array([1]), np.array([1]))
        seen["buf"] = idset._local.buf

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen["buf"] is not idset._local.buf


def test_huge_ids_fall_back_to_numpy(monkeypatch):
    monkeypatch.setattr(idset, "MAX_SCRATCH_ITEMS", 10)
    ids = np.array([100, 5, 100])
    assert member(ids, np.array([100])).tolist() == [True, False, True]
    assert first_occurrence(ids).tolist() == [True, True, False]
    uniq, inv = compact(ids)
    assert uniq.tolist() == [100, 5] and inv.tolist() == [0, 1, 0]


def test_argsort_desc_is_a_stable_descending_sort():
    rng = np.random.default_rng(1)
    special = np.array([-np.inf, np.inf, -1.5, 0.0, 1e-30, -1e-30, 2.0, 1e30, -1e30], dtype=np.float32)
    for _ in range(50):
        s = np.where(rng.random(300) < 0.5, rng.choice(special, 300), rng.normal(size=300)).astype(np.float32)
        np.testing.assert_array_equal(argsort_desc(s), np.argsort(-s, kind="stable"))
    assert argsort_desc(np.array([1.0, np.nan, 2.0])).tolist() == [2, 0, 1]  # NaN last
    assert len(argsort_desc(np.empty(0))) == 0
