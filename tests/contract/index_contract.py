"""`VectorIndexContract`: the ONE test mixin every `VectorIndex` backend must pass.

A backend's test says only how to build itself:

    from index_contract import VectorIndexContract   # tests/contract is on sys.path under pytest

    class TestMyIndex(VectorIndexContract):
        def make(self, dim: int) -> VectorIndex:
            return MyIndex(dim=dim, ...)

Optional class attributes: `recall_threshold` (ANN recall@100 against exact search on 20k
clustered vectors), `tuned_params` (search params the save/load test sets before saving),
`supports_mmap`. Data is clustered, never uniform noise, so ANN recall means something.
"""

from __future__ import annotations

import threading
from functools import cache
from typing import Any, ClassVar

import numpy as np
import pytest

from candgen.errors import CandgenError
from candgen.index.base import VectorIndex
from candgen.index.registry import load_index


def clustered(n: int, dim: int, *, clusters: int = 50, noise: float = 0.35, seed: int = 0) -> np.ndarray:
    """Unit vectors around `clusters` random centres (a stand-in for item embeddings)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, clusters, n)] + noise / np.sqrt(dim) * rng.standard_normal((n, dim))
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def exact_top_k(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    scores = queries @ vectors.T
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return ids[top]


@cache
def _recall_data(dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # 20 wide clusters of ~1000: the top 100 is a small part of a cluster, so an ANN must rank
    # within it (tight clusters of ~k points would make any ANN look perfect)
    x = clustered(20_000, dim, clusters=20, noise=1.0, seed=1)
    rng = np.random.default_rng(5)
    q = x[rng.choice(len(x), 40, replace=False)] + 0.1 / np.sqrt(dim) * rng.standard_normal((40, dim))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return x, np.arange(len(x), dtype=np.int64) * 3 + 1, q.astype(np.float32)


class VectorIndexContract:
    """Behaviour every backend guarantees (see `candgen.index.base`)."""

    recall_threshold: ClassVar[float] = 0.9
    tuned_params: ClassVar[dict[str, Any]] = {}
    supports_mmap: ClassVar[bool] = True
    dim: ClassVar[int] = 16

    def make(self, dim: int) -> VectorIndex:  # pragma: no cover - each backend overrides
        raise NotImplementedError

    def filled(self, n: int = 400, *, seed: int = 0) -> tuple[VectorIndex, np.ndarray, np.ndarray]:
        idx = self.make(self.dim)
        x = clustered(n, self.dim, clusters=8, seed=seed)
        ids = np.arange(n, dtype=np.int64) * 7 + 3  # sparse ids: the map must not assume 0..n-1
        idx.add(x, ids)
        return idx, x, ids

    # ---- results ------------------------------------------------------------------------------
    def test_finds_each_vector_itself(self) -> None:
        idx, x, ids = self.filled()
        res = idx.search(x[:50], k=5)
        assert len(idx) == len(x)
        assert (res.ids[:, 0] == ids[:50]).mean() >= 0.95
        assert np.allclose(res.scores[:, 0], 1.0, atol=1e-3)

    def test_result_shapes_sorted_and_typed(self) -> None:
        idx, x, _ = self.filled()
        res = idx.search(x[:3], k=10)
        assert res.ids.shape == (3, 10) and res.scores.shape == (3, 10)
        assert res.ids.dtype == np.int64 and res.scores.dtype == np.float32
        assert (np.diff(res.scores, axis=1) <= 1e-6).all()
        assert len(res) == 3 and len(res[0]) == 10
        single = idx.search(x[0], k=4)  # a 1-d query is a batch of one
        assert single.ids.shape == (1, 4)

    def test_k_larger_than_index_pads(self) -> None:
        idx, x, ids = self.filled(n=5)
        res = idx.search(x[:2], k=20)
        assert res.ids.shape == (2, 20)
        for row, scores in zip(res.ids, res.scores, strict=True):
            assert sorted(row[:5]) == sorted(ids) and (row[5:] == -1).all()
            assert np.isneginf(scores[5:]).all() and np.isfinite(scores[:5]).all()

    def test_empty_index(self) -> None:
        idx = self.make(self.dim)
        assert len(idx) == 0
        res = idx.search(clustered(2, self.dim), k=3)
        assert res.ids.shape == (2, 3) and (res.ids == -1).all() and np.isneginf(res.scores).all()
        assert len(idx.search(np.zeros((0, self.dim), np.float32), k=3)) == 0

    # ---- exclude, remove, replace -------------------------------------------------------------
    def test_exclude_is_honoured_and_k_still_returned(self) -> None:
        idx, x, ids = self.filled()
        k = 10
        first = idx.search(x[:4], k=k)
        excl = [set(first.ids[i, :5].tolist()) for i in range(4)]
        excl[2] = set()
        batch = idx.search(x[:4], k=k, exclude=excl)
        for i in range(4):
            row = batch.ids[i]
            assert not set(row.tolist()) & excl[i]
            assert (row >= 0).sum() == k
        one = idx.search(x[:1], k=k, exclude=[np.array(sorted(excl[0]))])
        assert not set(one.ids[0].tolist()) & excl[0] and (one.ids[0] >= 0).sum() == k
        # excluding all but 3 leaves exactly 3
        keep = set(ids[:3].tolist())
        rest = [set(ids.tolist()) - keep]
        res = idx.search(x[:1], k=k, exclude=rest)
        assert set(res.ids[0][res.ids[0] >= 0].tolist()) == keep

    def test_remove_is_honoured(self) -> None:
        idx, x, ids = self.filled()
        top = idx.search(x[:5], k=20).ids
        gone = np.unique(top[:, :10])
        idx.remove(gone)
        idx.remove(np.array([10**6, 5]))  # unknown ids are ignored
        assert len(idx) == len(ids) - len(gone)
        res = idx.search(x[:5], k=20)
        assert not np.isin(res.ids, gone).any()
        assert (res.ids >= 0).sum(axis=1).tolist() == [20] * 5

    def test_remove_everything_then_add(self) -> None:
        idx, x, ids = self.filled(n=30)
        idx.remove(ids)
        assert len(idx) == 0 and (idx.search(x[:2], k=5).ids == -1).all()
        idx.add(x[:3], ids[:3])
        res = idx.search(x[:1], k=5)
        assert sorted(res.ids[0][:3].tolist()) == sorted(ids[:3].tolist()) and (res.ids[0][3:] == -1).all()

    def test_re_add_replaces(self) -> None:
        idx, x, ids = self.filled()
        target, moved = int(ids[0]), x[-1].copy()  # give ids[0] the vector of the last item
        idx.add(moved[None, :], np.array([target]))
        assert len(idx) == len(ids)
        res = idx.search(moved[None, :], k=5)
        assert set(res.ids[0][:2].tolist()) == {target, int(ids[-1])}
        assert len(set(res.ids[0].tolist())) == 5  # no duplicate ids
        self_query = idx.search(x[:1], k=5)  # the old vector no longer matches ids[0] exactly
        assert self_query.ids[0, 0] != target or self_query.scores[0, 0] < 0.999

    def test_add_is_visible_to_next_search(self) -> None:
        idx, x, ids = self.filled()
        new = clustered(1, self.dim, seed=99)
        idx.add(new, np.array([10_000]))
        assert idx.search(new, k=1).ids[0, 0] == 10_000

    def test_reconstruct_returns_stored_vectors(self) -> None:
        idx, x, ids = self.filled()
        try:
            got = idx.reconstruct(ids[[4, 1]])
        except NotImplementedError:
            pytest.skip("backend stores no raw vectors")
        assert np.allclose(got, x[[4, 1]], atol=1e-4)
        with pytest.raises((ValueError, KeyError)):
            idx.reconstruct(np.array([2]))

    # ---- persistence --------------------------------------------------------------------------
    def test_save_load_round_trip_keeps_params(self, tmp_path: Any) -> None:
        idx, x, ids = self.filled()
        idx.remove(ids[:7])
        if self.tuned_params:
            idx.set_search_params(**self.tuned_params)
        before = idx.search(x[:5], k=10)
        idx.save(tmp_path / "idx")
        loaded = load_index(tmp_path / "idx")
        assert type(loaded) is type(idx) and loaded.dim == idx.dim and len(loaded) == len(idx)
        assert loaded.params == idx.params
        after = loaded.search(x[:5], k=10)
        assert np.array_equal(before.ids, after.ids)
        assert np.allclose(before.scores, after.scores, atol=1e-5)

    def test_mmap_load_then_add(self, tmp_path: Any) -> None:
        if not self.supports_mmap:
            pytest.skip("backend has no memory-mapped load")
        idx, x, ids = self.filled()
        idx.save(tmp_path / "idx")
        mapped = load_index(tmp_path / "idx", mmap=True)
        assert np.array_equal(mapped.search(x[:3], k=5).ids, idx.search(x[:3], k=5).ids)
        new = clustered(1, self.dim, seed=77)
        mapped.add(new, np.array([99_999]))  # copy-on-write, must not crash
        mapped.remove(ids[:2])
        assert mapped.search(new, k=1).ids[0, 0] == 99_999 and len(mapped) == len(ids) - 1
        assert len(load_index(tmp_path / "idx")) == len(ids)  # the file is untouched

    # ---- concurrency --------------------------------------------------------------------------
    def test_concurrent_searches_and_writes(self) -> None:
        idx, x, ids = self.filled(n=600)
        removed = ids[:100]
        idx.remove(removed)
        errors: list[BaseException] = []
        stop = threading.Event()

        def reader(seed: int) -> None:
            rng = np.random.default_rng(seed)
            try:
                while not stop.is_set():
                    q = x[rng.integers(0, len(x), 3)]
                    res = idx.search(q, k=20, exclude=[{int(ids[200])}, None, None])
                    assert not np.isin(res.ids, removed).any()
                    assert (res.ids >= 0).sum(axis=1).min() == 20
            except BaseException as e:  # noqa: BLE001 - reported to the main thread
                errors.append(e)

        def writer() -> None:
            try:
                for i in range(30):
                    idx.add(clustered(5, self.dim, seed=100 + i), np.arange(5) + 50_000 + 5 * i)
                    idx.remove(np.array([int(ids[300 + i])]))
                    idx.add(x[400 + i : 401 + i], ids[400 + i : 401 + i])  # replace
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        readers = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
        w = threading.Thread(target=writer)
        for t in readers:
            t.start()
        w.start()
        w.join(timeout=60)
        stop.set()
        for t in readers:
            t.join(timeout=30)
        assert not errors, errors[0]
        assert len(idx) == 600 - 100 + 150 - 30

    # ---- bad input ----------------------------------------------------------------------------
    @pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the inf query's probe
    def test_bad_input_raises_clear_errors(self) -> None:
        idx, x, ids = self.filled(n=20)
        bad = (ValueError, CandgenError)
        with pytest.raises(bad, match="shape"):
            idx.add(np.zeros((2, self.dim + 1), np.float32), np.array([1, 2]))
        with pytest.raises(bad, match="NaN"):
            idx.add(np.full((1, self.dim), np.nan, np.float32), np.array([1]))
        with pytest.raises(bad, match="length"):
            idx.add(x[:3], np.array([1, 2]))
        with pytest.raises(bad, match="ids"):
            idx.add(x[:2], np.array([-1, 2]))
        with pytest.raises(bad, match="duplicates"):
            idx.add(x[:2], np.array([4, 4]))
        with pytest.raises(bad, match="integers"):
            idx.add(x[:2], np.array([1.5, 2.0]))
        with pytest.raises(bad, match="k must"):
            idx.search(x[:1], k=0)
        with pytest.raises(bad, match="k must"):
            idx.search(x[:1], k=-3)
        with pytest.raises(bad, match="shape"):
            idx.search(np.zeros((1, self.dim - 1), np.float32), k=3)
        with pytest.raises(bad, match="NaN"):
            idx.search(np.full((1, self.dim), np.inf, np.float32), k=3)
        for value in (np.nan, np.inf, -np.inf):  # one bad component of an otherwise good query (FAISS: lazy check)
            q = x[:1].copy()
            q[0, 3] = value
            with pytest.raises(bad, match="NaN"):
                idx.search(q, k=3)
            with pytest.raises(bad, match="NaN"):
                idx.search(q, k=25)  # more than the index holds: a short row
        with pytest.raises(bad, match="one entry per query"):
            idx.search(x[:2], k=3, exclude=[{1}])
        with pytest.raises(bad, match="1-d integer"):
            idx.remove(np.array([[1, 2]]))
        assert len(idx) == 20  # nothing half-applied

    # ---- quality ------------------------------------------------------------------------------
    def test_recall_against_exact_search(self) -> None:
        dim = 32
        x, ids, q = _recall_data(dim)
        idx = self.make(dim)
        idx.add(x, ids)
        k = 100
        truth = exact_top_k(x, ids, q, k)
        got = idx.search(q, k=k).ids
        recall = np.mean([len(np.intersect1d(g, t)) / k for g, t in zip(got, truth, strict=True)])
        assert recall >= (0.999 if idx.is_exact else self.recall_threshold), recall
