"""`HNSWIndex`: graph-based ANN search (FAISS IndexHNSWFlat, inner product) with M, efConstruction, efSearch.

HNSW cannot delete: a removed or replaced vector is tombstoned (its slot leaves the live bitmap
that every search passes to FAISS as an `IDSelectorBitmap`, so the graph walk skips it while still
traversing through it), and once tombstones exceed `compact_fraction` of the graph the index is
rebuilt from the live vectors, which the flat storage keeps in full.
"""

from __future__ import annotations

from typing import Any, ClassVar

import faiss
import numpy as np

from candgen.index.faiss_base import FaissIndex, faiss_params


class HNSWIndex(FaissIndex):
    """Hierarchical navigable small-world graph over full float32 vectors.

    `m` (links per node, FAISS's M) and `ef_construction` shape the graph (set at build);
    `ef_search` (the candidate list of a query, FAISS uses max(ef_search, k)) trades recall for
    latency and is the parameter `tune-index` sweeps. Thread-safety as in `FaissIndex`; `add` and
    the rebuild after many removals hold the exclusive lock and use `threads` OpenMP threads. The
    rebuild re-inserts every live vector, so searches wait for it (minutes at 1M vectors: the build
    rate in benchmarks/README.md); with heavy churn raise `compact_fraction` and call `rebuild()`
    at a quiet time, or prefer IVF, which deletes in place.

        >>> idx = HNSWIndex(dim=64, m=32, ef_construction=200, ef_search=1000)  # doctest: +SKIP
    """

    kind: ClassVar[str] = "hnsw"
    appends_only: ClassVar[bool] = True
    search_param_names: ClassVar[tuple[str, ...]] = ("ef_search",)

    def __init__(
        self, dim: int, *, m: int = 32, ef_construction: int = 200, ef_search: int = 1000, threads: int = 1,
        compact_fraction: float = 0.2,
    ) -> None:
        for name, value in (("m", m), ("ef_construction", ef_construction), ("ef_search", ef_search)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.m, self.ef_construction, self.ef_search = int(m), int(ef_construction), int(ef_search)
        super().__init__(dim, threads=threads, compact_fraction=compact_fraction)

    def _new_faiss_index(self) -> Any:
        index = faiss.IndexHNSWFlat(self.dim, self.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.ef_construction
        index.hnsw.efSearch = self.ef_search
        return index

    @property
    def params(self) -> dict[str, Any]:
        return {**super().params, "m": self.m, "ef_construction": self.ef_construction, "ef_search": self.ef_search}

    def _apply_search_params(self, params: dict[str, Any]) -> None:
        super()._apply_search_params(params)
        self._index.hnsw.efSearch = self.ef_search

    def _after_copy(self) -> None:
        self._index.hnsw.efSearch = self.ef_search

    def _search_parameters(self, sel: Any, widen: int = 0) -> Any:
        return faiss_params("HNSW", sel=sel, efSearch=self.ef_search)

    def _faiss_add(self, vectors: np.ndarray, slots: np.ndarray) -> None:
        # HNSW labels are insertion positions; FaissIndex hands out slots in that same order
        self._index.add(vectors)

    def _faiss_search(self, queries: np.ndarray, k: int, sel: Any, widen: int = 0) -> tuple[Any, Any]:
        if widen:
            # the graph walk reached too few live vectors (heavy filtering): scan the flat storage,
            # whose row i is HNSW label i, so selectors over slots apply unchanged
            storage = faiss.downcast_index(self._index.storage)
            return storage.search(queries, k, params=faiss_params(sel=sel))
        return super()._faiss_search(queries, k, sel)

    def _reconstruct_slots(self, slots: np.ndarray) -> np.ndarray:
        storage = faiss.downcast_index(self._index.storage)
        return np.asarray(storage.reconstruct_batch(slots), dtype=np.float32)
