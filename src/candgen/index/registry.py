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
    items, else IVF-Flat.

    Why IVF-Flat by default (measured on this 2-core machine class, clustered data, k=1000; see
    benchmarks/ann and the figures in candgen.index.ivf): at 1M x 128 IVF4096,Flat with nprobe 64
    reaches recall@1000 0.956 at 0.63 ms and builds in 28 s, while HNSW M=32 needs efSearch 1000
    for 0.945 at p99 3.7 ms and takes 420 s to build. HNSW's graph walk at k=1000 visits ~ef
    nodes with random memory access; IVF scans a few contiguous lists, which wins at large k.
    HNSW also cannot delete (tombstones + rebuilds), which matters for a live catalog.
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
