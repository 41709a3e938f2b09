"""Opening, loading and choosing an index by name: `open_index`, `load_index`, `choose_index`.

Backends register themselves by `kind` when their module is imported (see `VectorIndex`); this
module imports the FAISS ones, and the Milvus one when pymilvus is installed.
"""

from __future__ import annotations

import contextlib
import importlib
import warnings
from pathlib import Path
from typing import Any

from candgen.config import IndexConfig
from candgen.errors import ArtifactError, CandgenError
from candgen.index.base import VectorIndex, read_metadata, registered_kinds, write_metadata

_BACKEND_MODULES = ("candgen.index.flat", "candgen.index.hnsw", "candgen.index.ivf")
_OPTIONAL_MODULES = ("candgen.index.milvus",)


def _kinds() -> dict[str, type[VectorIndex]]:
    for name in _BACKEND_MODULES:
        importlib.import_module(name)
    for name in _OPTIONAL_MODULES:
        with contextlib.suppress(ImportError):  # optional dependency (pymilvus) not installed
            importlib.import_module(name)
    return registered_kinds()


def open_index(kind: str, dim: int, **params: Any) -> VectorIndex:
    """A new empty index of `kind` ("flat", "hnsw", "ivf", "ivfpq", "milvus") with build and
    search `params` passed by keyword, e.g. `open_index("hnsw", 64, m=32, ef_search=1000)`."""
    kinds = _kinds()
    if kind not in kinds:
        raise CandgenError(f"unknown index kind {kind!r}; known: {sorted(kinds)}")
    try:
        return kinds[kind](dim=dim, **params)
    except TypeError as e:  # an unknown keyword: say which backend and what it takes
        raise CandgenError(f"bad parameters for index kind {kind!r}: {e}") from None


def load_index(path: str | Path, *, mmap: bool = False) -> VectorIndex:
    """Restore an index from the directory `VectorIndex.save` wrote; needs nothing else.

    Warns (`warnings.warn`) when it was saved by another faiss version. With `mmap=True` the FAISS
    backends map their vector storage read-only so worker processes share one copy (see
    `candgen.index.faiss_base`); the first write copies it privately.
    """
    p = Path(path)
    meta = read_metadata(p)
    kinds = _kinds()
    kind = meta["kind"]
    if kind not in kinds:
        raise ArtifactError(f"{p}: index kind {kind!r} is not available here; known: {sorted(kinds)}")
    saved = meta.get("versions", {}).get("faiss")
    if saved is not None:
        import faiss

        if saved != faiss.__version__:
            warnings.warn(f"{p} was saved with faiss {saved}, loading with faiss {faiss.__version__}",
                          stacklevel=2)
    return kinds[kind].load(p, meta, mmap=mmap)


def update_search_params(path: str | Path, params: dict[str, Any]) -> dict[str, Any]:
    """Store new search `params` in a saved index's metadata.json only (the index files stay as they
    are); returns the new metadata. `load_index` applies them."""
    p = Path(path)
    meta = read_metadata(p)
    meta["search_params"] = {**meta.get("search_params", {}), **params}
    write_metadata(p, meta)
    return meta


def choose_index(n_items: int, dim: int, config: IndexConfig | None = None) -> VectorIndex:
    """The index `config.backend` names, or for "auto": exact flat search below `exact_below`
    items, else IVF-Flat (nlist ~ 4 sqrt(n), nprobe from the config; run `tune-index` after).

    Why IVF-Flat by default, measured at k=1000 (benchmarks/index_choice.py --n 200000 --dim 64
    --kinds ivf,hnsw: clustered low-rank vectors, 200 single queries on 1 thread; this shared
    2-core machine ran at load ~12-15, so CPU time per query is the reliable column):

    | backend | build | cheapest setting >= 0.95 | recall@1000 | CPU p50 ms | wall p50 ms |
    |---|---:|---|---:|---:|---:|
    | IVF-Flat nlist 1789 | 34 s | nprobe 256 (192: 0.944 at 1.05 ms) | 0.961 | 1.25 | 1.27 |
    | HNSW M=32 efC=200 | 253 s | efSearch 1000 (the floor: ef >= k) | 0.988 | 2.78 | 6.99 |

    At k=1000 HNSW cannot be made cheaper than efSearch = k: its walk keeps a 1000-long candidate
    heap and touches ~ef*M random nodes, while IVF scans a few contiguous lists, so IVF costs
    ~2.2x less CPU per query at the target and builds ~7x faster. The issue's 1M x 128 figures agree (IVF4096 nprobe
    64: 0.956 at 0.63 ms, 28 s build; HNSW ef 1000: 0.945 at p99 3.7 ms, 420 s build). IVF also
    deletes in place, where HNSW needs tombstones and rebuilds. HNSW stays the better choice for
    small k (tens), where efSearch can drop far below 1000.
    """
    cfg = config or IndexConfig()
    if n_items < 0:
        raise ValueError(f"n_items must be >= 0, got {n_items}")
    backend = cfg.backend
    if backend == "auto":
        backend = "flat" if n_items < cfg.exact_below else "ivf"
    common: dict[str, Any] = {"threads": max(1, cfg.threads)}
    if backend == "flat":
        return open_index("flat", dim, **common)
    if backend == "hnsw":
        return open_index("hnsw", dim, m=cfg.hnsw_m, ef_construction=cfg.hnsw_ef_construction,
                          ef_search=cfg.hnsw_ef_search, **common)
    nlist = cfg.ivf_nlist or 0  # 0: chosen at training time from the number of vectors
    if backend == "ivf":
        return open_index("ivf", dim, nlist=nlist, nprobe=cfg.ivf_nprobe, **common)
    if backend == "ivfpq":
        return open_index("ivfpq", dim, nlist=nlist, nprobe=cfg.ivf_nprobe, pq_m=cfg.pq_m,
                          rerank_factor=cfg.rerank_factor, **common)
    if backend == "milvus":
        return open_index("milvus", dim, uri=cfg.milvus_uri)
    raise CandgenError(f"unknown index backend {backend!r}; use auto, flat, hnsw, ivf, ivfpq or milvus")
