import threading

import numpy as np
import pytest

from candgen import idset
from candgen.idset import argsort_desc, compact, first_occurrence, member, sum_by_key
from candgen.sources.base import sum_by_id


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
        w = rng.random(n)
        got = sum_by_key(ids, w)
        assert got is not None
        want = dict(zip(np.unique(ids).tolist(), np.bincount(ids, weights=w)[np.unique(ids)].tolist(), strict=True))
        assert len(got[0]) == len(want)
        assert dict(zip(got[0].tolist(), got[1].tolist(), strict=True)) == pytest.approx(want)


def test_scratch_is_left_clean_and_per_thread():
    member(np.array([5, 6]), np.array([6]))
    first_occurrence(np.array([3, 3, 9]))
    compact(np.array([4, 4, 1]))
    sum_by_key(np.array([7, 2, 7]), np.ones(3))
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
    assert sum_by_key(ids, np.array([1.0, 2.0, 3.0])) is None  # the caller sorts instead
    got = sum_by_id(ids, np.array([1.0, 2.0, 3.0]))
    assert dict(zip(got[0].tolist(), got[1].tolist(), strict=True)) == {5: 2.0, 100: 4.0}


def test_sum_by_id_takes_negative_ids_by_sorting():
    ids, sums = sum_by_id(np.array([-1, 3, -1, 3, 0]), np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert dict(zip(ids.tolist(), sums.tolist(), strict=True)) == {-1: 4.0, 3: 6.0, 0: 5.0}
    assert ids.dtype == np.int64 and sums.dtype == np.float64


def test_argsort_desc_is_a_stable_descending_sort():
    rng = np.random.default_rng(1)
    special = np.array([-np.inf, np.inf, -1.5, 0.0, 1e-30, -1e-30, 2.0, 1e30, -1e30], dtype=np.float32)
    for _ in range(50):
        s = np.where(rng.random(300) < 0.5, rng.choice(special, 300), rng.normal(size=300)).astype(np.float32)
        np.testing.assert_array_equal(argsort_desc(s), np.argsort(-s, kind="stable"))
    assert argsort_desc(np.array([1.0, np.nan, 2.0])).tolist() == [2, 0, 1]  # NaN last
    assert len(argsort_desc(np.empty(0))) == 0
