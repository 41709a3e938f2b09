"""The contestants of the ANN benchmark, each behind the same small adapter.

candgen's own indexes (`candgen.index`: HNSW, IVF-Flat, IVF-PQ with re-ranking, Milvus), the raw
libraries at the same settings (FAISS, hnswlib, usearch) and the Milvus server. The raw FAISS rows
search the very FAISS object inside candgen's index (built once), so the difference between the two
rows is the wrapper's overhead and nothing else. For IVF-PQ there are two raw rows: the PQ codes
alone (no re-ranking: less work than candgen does) and FAISS's `IndexRefineFlat` around the same
IVF-PQ (PQ search of k * k_factor, then exact inner products of those with the full vectors): the
same work as candgen's IVF-PQ with re-ranking, and so the fair denominator of its overhead.

Threads: single queries run on 1 thread (FAISS OpenMP at 1, as candgen does for one query); the
batch QPS figure uses 2 threads (OpenMP, the libraries' own pools, or 2 client threads for Milvus).
"""

from __future__ import annotations

import threading
from typing import Any

import faiss
import numpy as np

HNSW_EF = {1000: (1000, 1500), 100: (128, 256)}  # efSearch tried per k
IVF_NPROBE = (32, 64)


class Contestant:
    """Build once, then search at each setting. `shared_with` names the row whose build it reuses."""

    name = ""
    shared_with = ""

    def build(self, x: np.ndarray) -> None:
        raise NotImplementedError

    def settings(self, k: int) -> list[dict[str, int]]:
        raise NotImplementedError

    def apply(self, setting: dict[str, int]) -> None:
        raise NotImplementedError

    def search_one(self, q: np.ndarray, k: int) -> np.ndarray:
        raise NotImplementedError

    def search_batch(self, q: np.ndarray, k: int) -> np.ndarray:
        raise NotImplementedError

    def memory_bytes(self) -> int | None:
        """Index bytes when the library reports them; None: the runner measures RSS growth."""
        return None

    def close(self) -> None:
        pass


def _hnsw_settings(k: int) -> list[dict[str, int]]:
    return [{"ef": ef} for ef in HNSW_EF.get(k, (max(k, 128), max(2 * k, 256)))]


def _ivf_settings(k: int) -> list[dict[str, int]]:
    return [{"nprobe": p} for p in IVF_NPROBE]


# ---- candgen's FAISS-backed indexes, and raw FAISS on the same object ---------------------------
class CandgenIndex(Contestant):
    def __init__(self, kind: str, label: str, dim: int, **params: Any) -> None:
        from candgen.index.registry import open_index

        self.name = f"candgen {label}"
        self.index = open_index(kind, dim, threads=2, **params)
        self.kind = kind

    def build(self, x: np.ndarray) -> None:
        self.index.add(x, np.arange(len(x), dtype=np.int64))

    def settings(self, k: int) -> list[dict[str, int]]:
        return _hnsw_settings(k) if self.kind == "hnsw" else _ivf_settings(k)

    def apply(self, setting: dict[str, int]) -> None:
        if "ef" in setting:
            self.index.set_search_params(ef_search=setting["ef"])
        else:
            self.index.set_search_params(nprobe=setting["nprobe"])

    def search_one(self, q: np.ndarray, k: int) -> np.ndarray:
        return self.index.search(q[None, :], k).ids[0]

    def search_batch(self, q: np.ndarray, k: int) -> np.ndarray:
        return self.index.search(q, k).ids


class RawFaiss(Contestant):
    """The FAISS index inside a `CandgenIndex`, called directly (ids are 0..n-1, so labels are ids).
    For IVF-PQ this is the codes-only search, without candgen's exact re-ranking."""

    def __init__(self, inner: CandgenIndex, label: str) -> None:
        self.name, self.shared_with, self.inner = f"faiss {label}", inner.name, inner

    def build(self, x: np.ndarray) -> None:
        self.index = self.inner.index._index  # type: ignore[attr-defined]

    def settings(self, k: int) -> list[dict[str, int]]:
        return self.inner.settings(k)

    def apply(self, setting: dict[str, int]) -> None:
        if "ef" in setting:
            self.index.hnsw.efSearch = setting["ef"]
        else:
            self.index.nprobe = setting["nprobe"]

    def search_one(self, q: np.ndarray, k: int) -> np.ndarray:
        faiss.omp_set_num_threads(1)
        return self.index.search(q[None, :], k)[1][0]

    def search_batch(self, q: np.ndarray, k: int) -> np.ndarray:
        faiss.omp_set_num_threads(2)
        return self.index.search(q, k)[1]


class RawFaissRefine(RawFaiss):
    """`faiss.IndexRefineFlat` around the IVF-PQ inside a `CandgenIndex` (labels are row positions,
    as the refine index needs), k_factor = candgen's rerank_factor. Its flat copy of the vectors is
    extra memory that candgen does not hold twice; memory is reported as shared."""

    def build(self, x: np.ndarray) -> None:
        base = self.inner.index._index  # type: ignore[attr-defined]
        self.index = faiss.IndexRefineFlat(base, faiss.swig_ptr(np.ascontiguousarray(x, dtype=np.float32)))
        self.index.k_factor = float(self.inner.index.params["rerank_factor"])
        self.base = base

    def apply(self, setting: dict[str, int]) -> None:
        self.base.nprobe = setting["nprobe"]


# ---- other libraries --------------------------------------------------------------------------
class Hnswlib(Contestant):
    """hnswlib M=16: 2*M = 32 links at layer 0, the same as FAISS's M=32."""

    name = "hnswlib M16"

    def __init__(self, dim: int) -> None:
        import hnswlib

        self.index = hnswlib.Index(space="ip", dim=dim)
        self.dim = dim

    def build(self, x: np.ndarray) -> None:
        self.index.init_index(max_elements=len(x), ef_construction=200, M=16, random_seed=0)
        self.index.add_items(x, np.arange(len(x)), num_threads=2)

    def settings(self, k: int) -> list[dict[str, int]]:
        return _hnsw_settings(k)

    def apply(self, setting: dict[str, int]) -> None:
        self.index.set_ef(setting["ef"])

    def search_one(self, q: np.ndarray, k: int) -> np.ndarray:
        return self.index.knn_query(q[None, :], k=k, num_threads=1)[0][0]

    def search_batch(self, q: np.ndarray, k: int) -> np.ndarray:
        return self.index.knn_query(q, k=k, num_threads=2)[0]


class Usearch(Contestant):
    """usearch connectivity=16 (2*16 links at the base layer, as hnswlib M=16), f32, inner product."""

    name = "usearch c16"

    def __init__(self, dim: int) -> None:
        from usearch.index import Index

        self.index = Index(ndim=dim, metric="ip", dtype="f32", connectivity=16, expansion_add=200)

    def build(self, x: np.ndarray) -> None:
        self.index.add(np.arange(len(x), dtype=np.uint64), x, threads=2)

    def settings(self, k: int) -> list[dict[str, int]]:
        return _hnsw_settings(k)

    def apply(self, setting: dict[str, int]) -> None:
        self.index.expansion_search = setting["ef"]

    def search_one(self, q: np.ndarray, k: int) -> np.ndarray:
        return np.asarray(self.index.search(q, k, threads=1).keys, dtype=np.int64)

    def search_batch(self, q: np.ndarray, k: int) -> np.ndarray:
        return np.asarray(self.index.search(q, k, threads=2).keys, dtype=np.int64)

    def memory_bytes(self) -> int | None:
        return int(self.index.memory_usage)


class Milvus(Contestant):
    """The Milvus server (embedded 2.3.5 standalone, or `uri`) through candgen's `MilvusIndex`.
    Build = upsert + flush + the server's index build. Memory = the server process's RSS growth."""

    def __init__(self, dim: int, *, uri: str, index_type: str, nlist: int, server_pid: int | None) -> None:
        from candgen.index.milvus import MilvusIndex

        self.index_type = index_type
        self.name = f"milvus {'HNSW M32' if index_type == 'HNSW' else f'IVF{nlist},Flat'}"
        self.index = MilvusIndex(dim=dim, uri=uri, index_type=index_type, m=32, ef_construction=200,
                                 nlist=nlist, timeout=600.0)
        self.server_pid = server_pid
        self._rss0 = _rss(server_pid) if server_pid else 0

    def build(self, x: np.ndarray) -> None:
        self.index.add(x, np.arange(len(x), dtype=np.int64))
        self.index.flush(reload=True)

    def settings(self, k: int) -> list[dict[str, int]]:
        return _hnsw_settings(k) if self.index_type == "HNSW" else _ivf_settings(k)

    def apply(self, setting: dict[str, int]) -> None:
        if "ef" in setting:
            self.index.set_search_params(ef_search=setting["ef"])
        else:
            self.index.set_search_params(nprobe=setting["nprobe"])

    def search_one(self, q: np.ndarray, k: int) -> np.ndarray:
        return self.index.search(q[None, :], k).ids[0]

    def search_batch(self, q: np.ndarray, k: int) -> np.ndarray:
        out = np.empty((len(q), k), dtype=np.int64)
        half = (len(q) + 1) // 2

        def work(lo: int, hi: int) -> None:
            for a in range(lo, hi, 64):
                b = min(hi, a + 64)
                out[a:b] = self.index.search(q[a:b], k).ids

        threads = [threading.Thread(target=work, args=(0, half)), threading.Thread(target=work, args=(half, len(q)))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return out

    def memory_bytes(self) -> int | None:
        return _rss(self.server_pid) - self._rss0 if self.server_pid else None

    def close(self) -> None:
        self.index.drop()
        self.index.close()


def _rss(pid: int | None = None) -> int:
    """Resident set size in bytes of `pid` (default: this process), from /proc."""
    with open(f"/proc/{pid or 'self'}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0
