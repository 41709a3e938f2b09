"""`VectorIndex`: the one interface every ANN backend implements (exact flat, HNSW, IVF-PQ, Milvus).

Vectors are float32 rows, L2-normalised by the caller; the score is the inner product (higher is
better). Ids are non-negative int64 (dense item indices). A brute-force `is_exact` backend always
ships and ANN recall is tested against it.

    >>> idx = open_index("flat", dim=4)                       # doctest: +SKIP
    >>> idx.add(vectors, ids)
    >>> res = idx.search(queries, k=10, exclude=[{3, 5}])     # BatchCandidates(ids, scores)

Thread-safety: `search` may run concurrently with other `search` calls and with `add`/`remove`;
implementations document how (a lock around writes, copy-on-write, or the library's own guarantee).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from candgen.types import BatchCandidates


class VectorIndex(abc.ABC):
    """Base of every ANN backend."""

    kind: ClassVar[str] = ""
    is_exact: ClassVar[bool] = False

    def __init__(self, dim: int) -> None:
        self.dim = dim

    @abc.abstractmethod
    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add (or replace) vectors under `ids`; visible to the next `search`."""

    @abc.abstractmethod
    def remove(self, ids: np.ndarray) -> None:
        """Remove `ids`; never returned by a later `search`. Unknown ids are ignored."""

    @abc.abstractmethod
    def search(
        self, queries: np.ndarray, k: int, exclude: Sequence[set[int] | np.ndarray | None] | None = None
    ) -> BatchCandidates:
        """Top-`k` ids by inner product per query row; `exclude[i]` ids are never returned for query i.
        Rows with fewer than k results are padded with id -1 and score -inf."""

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of live vectors."""

    @property
    @abc.abstractmethod
    def params(self) -> dict[str, Any]:
        """Search and build parameters (saved beside the index)."""

    @abc.abstractmethod
    def set_search_params(self, **params: Any) -> None:
        """Change search-time parameters (efSearch, nprobe, ...)."""

    @abc.abstractmethod
    def save(self, path: str | Path) -> None:
        """Write a self-describing directory (metadata.json + data) that `load_index` restores."""

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors for `ids` (for exact re-ranking and item-to-item similarity)."""
        raise NotImplementedError(f"{type(self).__name__} does not store raw vectors")
