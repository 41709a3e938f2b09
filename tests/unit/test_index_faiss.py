"""Backend-specific behaviour of the FAISS indexes beyond the shared contract: HNSW tombstones and
rebuilds, completion of short ANN rows, threads, the registry, save/load errors and warnings."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import faiss
import numpy as np
import pytest

from candgen.config import IndexConfig
from candgen.errors import ArtifactError, CandgenError
from candgen.index import choose_index, load_index, open_index, update_search_params
from candgen.index.base import ReadWriteLock
from candgen.index.faiss_base import PARALLEL_MIN_QUERIES
from candgen.index.flat import FlatIndex
from candgen.index.hnsw import HNSWIndex
from candgen.index.ivf import IVFIndex, IVFPQIndex, default_nlist


def clustered(n: int, dim: int, *, clusters: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.3 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_hnsw_tombstones_then_rebuilds_past_the_fraction():
    x = clustered(100, 8, seed=3)
    idx = HNSWIndex(dim=8, m=8, ef_construction=40, ef_search=64, compact_fraction=0.25)
    idx.add(x, np.arange(100))
    idx.remove(np.arange(20))  # 20% < 25%: tombstones only
    assert idx._dead == 20 and idx._n_slots == 100 and len(idx) == 80
    assert not np.isin(idx.search(x[:20], k=10).ids, np.arange(20)).any()
    idx.remove(np.arange(20, 30))  # 30% > 25%: rebuilt from the 70 live vectors
    assert idx._dead == 0 and idx._n_slots == 70 and len(idx) == 70
    res = idx.search(x[30:40], k=1)
    assert res.ids[:, 0].tolist() == list(range(30, 40))
    idx.add(x[:5], np.arange(5))  # slots continue after the rebuild
    assert idx.search(x[:5], k=1).ids[:, 0].tolist() == list(range(5))


def test_hnsw_replacing_tombstones_the_old_vector_and_rebuild_keeps_ids():
    x = clustered(50, 8, seed=4)
    idx = HNSWIndex(dim=8, m=8, ef_construction=40, ef_search=32, compact_fraction=0.9)
    idx.add(x, np.arange(50) + 1000)
    idx.add(x[:10][::-1].copy(), np.arange(10) + 1000)  # ids 1000..1009 get each other's vectors reversed
    assert idx._dead == 10 and len(idx) == 50
    idx.rebuild()
    assert idx._dead == 0
    assert np.allclose(idx.reconstruct(np.array([1000])), x[9:10], atol=1e-6)


def test_heavy_filtering_still_returns_every_available_result():
    x = clustered(500, 8, seed=5)
    idx = HNSWIndex(dim=8, m=4, ef_construction=16, ef_search=16)
    idx.add(x, np.arange(500))
    keep = np.array([3, 77, 150, 260, 499])
    excl = np.setdiff1d(np.arange(500), keep)
    res = idx.search(x[:1], k=10, exclude=[excl])
    assert sorted(res.ids[0][:5].tolist()) == keep.tolist() and (res.ids[0][5:] == -1).all()
    batch = idx.search(x[:2], k=10, exclude=[excl, None])
    assert sorted(batch.ids[0][:5].tolist()) == keep.tolist() and (batch.ids[1] >= 0).all()


def test_ivf_probe_too_narrow_is_completed_exhaustively():
    x = clustered(400, 8, clusters=20, seed=6)
    idx = IVFIndex(dim=8, nlist=10, nprobe=1)
    idx.add(x, np.arange(400))
    res = idx.search(x[:3], k=300)  # one list holds far fewer than 300 vectors
    assert ((res.ids >= 0).sum(axis=1) == 300).all()
    truth = np.argsort(-(x[:3] @ x.T), axis=1)[:, :300]
    for got, t in zip(res.ids, truth, strict=True):
        assert set(got.tolist()) == set(t.tolist())


def test_ivfpq_reranks_with_exact_scores_and_fixes_pq_m():
    x = clustered(3000, 12, seed=7)
    idx = IVFPQIndex(dim=12, nlist=16, nprobe=16, pq_m=8, rerank_factor=4)
    assert idx.pq_m == 6  # largest divisor of 12 not above 8
    idx.add(x, np.arange(3000))
    res = idx.search(x[:5], k=10)
    exact = np.einsum("qkd,qd->qk", x[res.ids], x[:5])
    assert np.allclose(res.scores, exact, atol=1e-5)  # scores are exact inner products, not PQ estimates


def _rerank_reference(idx: IVFPQIndex, x: np.ndarray, q: np.ndarray, k: int) -> list[list[int]]:
    """The re-ranking spelled out in numpy: the PQ search's k * rerank_factor candidates, re-scored exactly."""
    fetch = k * idx.rerank_factor
    _, cand = idx._index.search(q, fetch, params=idx._search_parameters(None))
    out = []
    for row, c in zip(q, cand, strict=True):
        c = c[c >= 0]
        out.append(c[np.argsort(-(x[c] @ row), kind="stable")][:k].tolist())
    return out


@pytest.mark.parametrize("nq", [1, 150])  # 150 > 100: FAISS re-ranks the batch on OpenMP threads
def test_ivfpq_rerank_is_the_exact_top_k_of_the_pq_candidates(nq):
    x = clustered(3000, 16, seed=21)
    idx = IVFPQIndex(dim=16, nlist=16, nprobe=4, pq_m=4, rerank_factor=3)
    idx.add(x, np.arange(3000))  # ids 0..n-1 land in slots 0..n-1
    q = clustered(nq, 16, seed=22)
    scores, slots = idx._faiss_search(q, 20, None)
    assert slots.shape == (nq, 20)
    assert [r.tolist() for r in slots] == _rerank_reference(idx, x, q, 20)
    assert np.allclose(scores, np.einsum("qkd,qd->qk", x[slots], q), atol=1e-5)


def test_ivfpq_rerank_pads_rows_the_pq_search_left_short(tmp_path):
    x = clustered(400, 8, clusters=4, seed=23)
    idx = IVFPQIndex(dim=8, nlist=8, nprobe=1, pq_m=4, pq_nbits=4, rerank_factor=4)
    idx.add(x, np.arange(400))
    idx.save(tmp_path / "pq")
    mapped = load_index(tmp_path / "pq", mmap=True)  # the vectors are a read-only mapping
    assert isinstance(mapped, IVFPQIndex) and not mapped._vectors.flags.writeable
    q = x[:3]
    k = 150  # one list of ~50 vectors cannot fill 150, let alone the 600 fetched for re-ranking
    scores, slots = mapped._faiss_search(q, k, None)
    ref = _rerank_reference(mapped, x, q, k)
    for row_slots, row_scores, want in zip(slots, scores, ref, strict=True):
        n_valid = len(want)
        assert 0 < n_valid < k
        assert row_slots[:n_valid].tolist() == want and (row_slots[n_valid:] == -1).all()
        assert (row_scores[n_valid:] < -1e30).all()  # FAISS's -FLT_MAX; the public search pads with -inf
    res = mapped.search(q, k)  # the widened probe completes the short rows
    assert ((res.ids >= 0).sum(axis=1) == k).all() and np.isneginf(res.scores).sum() == 0


def test_tiny_first_add_trains_small_codebooks():
    idx = IVFPQIndex(dim=8, pq_m=4)
    x = clustered(5, 8, seed=8)
    idx.add(x, np.arange(5))
    assert idx.params["nlist"] == 1 and idx.params["pq_nbits"] == 2
    assert sorted(idx.search(x[:1], k=5).ids[0].tolist()) == list(range(5))
    assert default_nlist(1_000_000) == 4000 and default_nlist(100) == 2


def test_untrained_ivf_saves_and_loads(tmp_path):
    IVFIndex(dim=8, nprobe=4).save(tmp_path / "empty")
    loaded = load_index(tmp_path / "empty")
    assert isinstance(loaded, IVFIndex) and len(loaded) == 0
    loaded.add(clustered(100, 8), np.arange(100))
    assert len(loaded) == 100


def test_threads_one_for_single_queries_and_small_batches_configured_for_large_ones():
    idx = FlatIndex(dim=8, threads=2)
    x = clustered(50, 8)
    idx.add(x, np.arange(50))
    idx.search(x[:1], k=3)
    assert faiss.omp_get_max_threads() == 1
    idx.search(x[:PARALLEL_MIN_QUERIES], k=3)
    assert faiss.omp_get_max_threads() == 2
    idx.search(x[:4], k=3)
    assert faiss.omp_get_max_threads() == 1


def test_read_write_lock_excludes_readers_during_a_write():
    lock = ReadWriteLock()
    events: list[str] = []
    with lock.read():
        t = threading.Thread(target=lambda: (lock.write().__enter__(), events.append("write")))
        t.start()
        time.sleep(0.05)
        assert events == []  # the writer waits for the reader
    t.join(timeout=5)
    assert events == ["write"]


def test_registry_opens_chooses_and_rejects():
    assert isinstance(open_index("flat", 8), FlatIndex)
    assert open_index("hnsw", 8, m=8, ef_search=50).params["ef_search"] == 50
    with pytest.raises(CandgenError, match="unknown index kind"):
        open_index("annoy", 8)
    with pytest.raises(CandgenError, match="bad parameters"):
        open_index("hnsw", 8, nprobe=3)
    cfg = IndexConfig(exact_below=1000, threads=2)
    assert isinstance(choose_index(999, 8, cfg), FlatIndex)
    auto = choose_index(1000, 8, cfg)
    assert isinstance(auto, IVFIndex) and auto.nprobe == cfg.ivf_nprobe and auto.threads == 2
    assert isinstance(choose_index(10, 8, IndexConfig(backend="hnsw", hnsw_m=12)), HNSWIndex)
    assert isinstance(choose_index(10, 8, IndexConfig(backend="ivfpq", pq_m=4)), IVFPQIndex)
    with pytest.raises(CandgenError, match="unknown index backend"):
        choose_index(10, 8, IndexConfig(backend="lsh"))
    with pytest.raises(ValueError, match="n_items"):
        choose_index(-1, 8)


@pytest.mark.parametrize("make, match", [
    (lambda: FlatIndex(dim=0), "dim"),
    (lambda: FlatIndex(dim=4, threads=0), "threads"),
    (lambda: FlatIndex(dim=4, compact_fraction=0.0), "compact_fraction"),
    (lambda: HNSWIndex(dim=4, m=0), "m must"),
    (lambda: IVFIndex(dim=4, nprobe=0), "nprobe"),
    (lambda: IVFPQIndex(dim=4, pq_nbits=20), "pq_nbits"),
])
def test_bad_construction_raises(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_set_search_params_checks_names_and_values():
    idx = HNSWIndex(dim=4)
    with pytest.raises(ValueError, match="no search parameter"):
        idx.set_search_params(nprobe=3)
    with pytest.raises(ValueError, match="positive integer"):
        idx.set_search_params(ef_search=0)
    idx.set_search_params(ef_search=40)
    assert idx.search_params == {"ef_search": 40} and idx._index.hnsw.efSearch == 40


def test_exclude_and_reconstruct_errors():
    idx = FlatIndex(dim=4)
    idx.add(clustered(3, 4), np.arange(3))
    with pytest.raises(ValueError, match="integer ids"):
        idx.search(clustered(1, 4), k=2, exclude=[np.array([0.5])])
    with pytest.raises(ValueError, match="not in the index"):
        idx.reconstruct(np.array([7]))
    assert idx.ids().tolist() == [0, 1, 2]


def _saved(tmp_path: Path) -> Path:
    idx = HNSWIndex(dim=8, m=8, ef_search=33)
    idx.add(clustered(30, 8), np.arange(30))
    idx.save(tmp_path / "idx")
    return tmp_path / "idx"


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(ArtifactError, match="metadata.json is missing"):
        load_index(tmp_path / "nothing")
    path = _saved(tmp_path)
    meta = json.loads((path / "metadata.json").read_text())
    (path / "metadata.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_index(path)
    (path / "metadata.json").write_text(json.dumps({**meta, "kind": "annoy"}))
    with pytest.raises(ArtifactError, match="'annoy' is not available"):
        load_index(path)
    (path / "metadata.json").write_text(json.dumps({"dim": 8}))
    with pytest.raises(ArtifactError, match="lacks the field 'kind'"):
        load_index(path)


def test_metadata_describes_the_index_and_warns_on_faiss_version(tmp_path):
    path = _saved(tmp_path)
    meta = json.loads((path / "metadata.json").read_text())
    assert meta["kind"] == "hnsw" and meta["dim"] == 8 and meta["metric"] == "inner_product"
    assert meta["count"] == 30 and meta["search_params"] == {"ef_search": 33}
    assert meta["build_params"]["m"] == 8 and meta["versions"]["faiss"] == faiss.__version__
    assert {"index.faiss", "ids.npy"} <= set(meta["files"])
    meta["versions"]["faiss"] = "0.0.1"
    (path / "metadata.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="saved with faiss 0.0.1"):
        load_index(path)


def test_update_search_params_rewrites_only_metadata(tmp_path):
    path = _saved(tmp_path)
    before = (path / "index.faiss").stat().st_mtime_ns
    update_search_params(path, {"ef_search": 99})
    assert (path / "index.faiss").stat().st_mtime_ns == before
    assert load_index(path).params["ef_search"] == 99


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf", "ivfpq"])
def test_mmap_load_maps_the_files_instead_of_reading_them(tmp_path, kind):
    params = {"ivf": {"nlist": 4}, "ivfpq": {"nlist": 4, "pq_m": 4, "pq_nbits": 4}}.get(kind, {})
    idx = open_index(kind, 8, **params)
    idx.add(clustered(300, 8), np.arange(300))
    idx.save(tmp_path / kind)
    mapped = load_index(tmp_path / kind, mmap=True)
    maps = Path("/proc/self/maps").read_text()
    assert str((tmp_path / kind / "index.faiss").resolve()) in maps
    if kind == "ivfpq":
        assert str((tmp_path / kind / "vectors.npy").resolve()) in maps
    assert np.array_equal(mapped.search(clustered(2, 8, seed=1), k=5).ids, idx.search(clustered(2, 8, seed=1), k=5).ids)


def test_huge_finite_query_is_accepted():
    idx = FlatIndex(dim=4)
    idx.add(clustered(3, 4), np.arange(3))
    q = np.full((1, 4), 1e30, np.float32)  # its dot product overflows float32, yet it is finite
    assert (idx.search(q, k=2).ids >= 0).all()


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_batch_mixing_small_large_and_no_excludes(kind):
    x = clustered(600, 8, seed=11)
    idx = open_index(kind, 8, **({"nlist": 8} if kind == "ivf" else {}))
    idx.add(x, np.arange(600))
    truth = np.argsort(-(x[:3] @ x.T), axis=1)
    small = set(truth[0, :5].tolist())  # over-fetched and filtered
    large = set(truth[1, :300].tolist())  # above the limit: a selector search of its own
    res = idx.search(x[:3], k=20, exclude=[small, large, None])
    assert not set(res.ids[0].tolist()) & small and not set(res.ids[1].tolist()) & large
    assert ((res.ids >= 0).sum(axis=1) == 20).all()
    if kind == "flat":  # exact: the next 20 after the excluded ones
        assert res.ids[0].tolist() == truth[0, 5:25].tolist()
        assert res.ids[1].tolist() == truth[1, 300:320].tolist()
        assert res.ids[2].tolist() == truth[2, :20].tolist()


def test_isin_sorted_matches_numpy():
    from candgen.index.faiss_base import _isin_sorted

    rng = np.random.default_rng(0)
    s = np.unique(rng.integers(0, 50, 7))
    v = rng.integers(-2, 60, 200)
    assert (_isin_sorted(v, s) == np.isin(v, s)).all()
