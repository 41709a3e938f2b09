"""`FlatIndex`: exact inner-product search (FAISS IndexFlatIP), the ground truth every ANN backend is
measured against and the right choice for small catalogs (below `IndexConfig.exact_below`)."""

from __future__ import annotations

from typing import Any, ClassVar

import faiss

from candgen.index.faiss_base import FaissIndex


class FlatIndex(FaissIndex):
    """Brute-force search over every stored vector: exact, O(n * dim) per query.

    Wraps IndexFlatIP in IndexIDMap2 so labels (slots) survive removals, which FAISS's flat index
    implements by shifting rows. Removal is physical (O(n) memmove) and frees the slot for reuse.
    Thread-safety as in `FaissIndex`: searches in parallel, writes exclusive.

        >>> idx = FlatIndex(dim=64); idx.add(vectors, ids)    # doctest: +SKIP
        >>> idx.search(queries, k=1000).ids                   # exact top 1000
    """

    kind: ClassVar[str] = "flat"
    is_exact: ClassVar[bool] = True
    search_param_names: ClassVar[tuple[str, ...]] = ()

    def _new_faiss_index(self) -> Any:
        return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
