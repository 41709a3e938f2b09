"""`VectorIndex`: the one interface every ANN backend implements (exact flat, HNSW, IVF, IVF-PQ, Milvus).

Vectors are float32 rows, L2-normalised by the caller; the score is the inner product (higher is
better). Ids are non-negative int64 (dense item indices, possibly sparse after removals). A
brute-force `is_exact` backend (`FlatIndex`) always ships and ANN recall is tested against it.

    >>> idx = open_index("hnsw", dim=4, M=16)                 # doctest: +SKIP
    >>> idx.add(vectors, ids)                                 # visible to the next search
    >>> res = idx.search(queries, k=10, exclude=[{3, 5}])     # BatchCandidates(ids, scores)
    >>> res.ids.shape                                         # (n_queries, 10), -1 / -inf padded
    >>> idx.save("art/index"); idx = load_index("art/index", mmap=True)

Every backend returns exactly `min(k, available)` results per query, where `available` is the
number of live vectors not in that query's `exclude`; the rest of the row is id -1, score -inf.

Thread-safety: `search` may run concurrently with other `search` calls and with `add`/`remove`;
each method's docstring says how. Backends share `ReadWriteLock` below: searches hold it shared,
writes hold it exclusively, so a search sees an index either before or after a write, never half.

This module also holds the input checks every backend uses (so that all of them reject a wrong
dimension, NaN vectors, k <= 0 or mismatched ids with the same clear `ValueError`) and the
kind -> class registry that `load_index` reads.
"""

from __future__ import annotations

import abc
import functools
import json
import math
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from candgen.types import BatchCandidates

METADATA_FILE = "metadata.json"
FORMAT_VERSION = 1
# ids index a dense array (slot of each id); this bound keeps a typo from allocating terabytes
MAX_ID = 2**31 - 1

Exclude = Sequence[set[int] | frozenset[int] | np.ndarray | list[int] | None] | None

_REGISTRY: dict[str, type[VectorIndex]] = {}


@functools.cache
def _zeros(dim: int) -> np.ndarray:
    z = np.zeros(dim, dtype=np.float32)
    z.flags.writeable = False
    return z


class ReadWriteLock:
    """Many concurrent readers or one writer; writers are preferred so a stream of searches cannot
    starve an add. Not re-entrant."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    # the read side takes the bare mutex (the Condition's `with` costs a Python-level call each way) and wakes
    # waiters only when a writer waits: a search pays two lock operations and nothing else
    def acquire_read(self) -> None:
        """Shared acquire; pair with `release_read` in try/finally (cheaper than `read()` on hot paths)."""
        self._mutex.acquire()
        try:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        finally:
            self._mutex.release()

    def release_read(self) -> None:
        self._mutex.acquire()
        try:
            self._readers -= 1
            if self._readers == 0 and self._writers_waiting:
                self._cond.notify_all()
        finally:
            self._mutex.release()

    @contextmanager
    def read(self) -> Iterator[None]:
        self.acquire_read()
        try:
            yield
        finally:
            self.release_read()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class VectorIndex(abc.ABC):
    """Base of every ANN backend. Subclasses set `kind` (the name `open_index`/`load_index` use),
    `is_exact`, and `search_param_names` (the parameters `set_search_params` and tuning change)."""

    kind: ClassVar[str] = ""
    is_exact: ClassVar[bool] = False
    search_param_names: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind and not getattr(cls, "__abstractmethods__", None):
            _REGISTRY[cls.kind] = cls

    def __init__(self, dim: int) -> None:
        if not isinstance(dim, int | np.integer) or dim <= 0:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        self.dim = int(dim)

    # ---- the interface ------------------------------------------------------------------------
    @abc.abstractmethod
    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add (or replace) vectors under `ids`; visible to the next `search`."""

    @abc.abstractmethod
    def remove(self, ids: np.ndarray) -> None:
        """Remove `ids`; never returned by a later `search`. Unknown ids are ignored."""

    @abc.abstractmethod
    def search(self, queries: np.ndarray, k: int, exclude: Exclude = None) -> BatchCandidates:
        """Top-`k` ids by inner product per query row; `exclude[i]` ids are never returned for query i.
        Rows with fewer than k results are padded with id -1 and score -inf."""

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of live vectors."""

    @property
    @abc.abstractmethod
    def params(self) -> dict[str, Any]:
        """Build and search parameters (saved beside the index)."""

    @abc.abstractmethod
    def set_search_params(self, **params: Any) -> None:
        """Change search-time parameters (efSearch, nprobe, ...)."""

    @abc.abstractmethod
    def save(self, path: str | Path) -> None:
        """Write a self-describing directory (metadata.json + data) that `load_index` restores."""

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors for `ids` (for exact re-ranking and item-to-item similarity)."""
        raise NotImplementedError(f"{type(self).__name__} does not store raw vectors")

    @classmethod
    def load(cls, path: Path, metadata: dict[str, Any], *, mmap: bool = False) -> VectorIndex:
        """Restore an index that `save` wrote to `path` (called by `load_index`, which read `metadata`)."""
        raise NotImplementedError(f"{cls.__name__} cannot be loaded from disk")

    @property
    def search_params(self) -> dict[str, Any]:
        """The subset of `params` that `set_search_params` accepts."""
        p = self.params
        return {name: p[name] for name in self.search_param_names if name in p}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim}, count={len(self)}, {self.params})"

    # ---- shared input checks ------------------------------------------------------------------
    def _check_vectors(self, vectors: np.ndarray, what: str = "vectors") -> np.ndarray:
        """A C-contiguous float32 (n, dim) array, or ValueError naming the problem."""
        a = np.asarray(vectors)
        if a.ndim == 1 and a.shape[0] == self.dim:
            a = a[None, :]
        if a.ndim != 2 or a.shape[1] != self.dim:
            raise ValueError(f"{what} must have shape (n, {self.dim}), got {a.shape}")
        if a.dtype != np.float32:  # the common case skips the slower dtype checks
            if not np.issubdtype(a.dtype, np.number):
                raise ValueError(f"{what} must be numeric, got dtype {a.dtype}")
            a = a.astype(np.float32)
        if not a.flags.c_contiguous:
            a = np.ascontiguousarray(a)
        # a dot product with zeros is the cheapest NaN/inf probe for a single query (NaN*0 and
        # inf*0 are NaN, finite*0 is 0, nothing overflows; ufunc reductions cost more on a cold
        # cache); batches check every value
        if a.shape[0] == 1:
            # (an inf query also raises numpy's "invalid value" RuntimeWarning here, just before
            # the ValueError; np.errstate to silence it would cost ~10 us on every query)
            finite = not math.isnan(float(np.dot(a[0], _zeros(self.dim))))
        else:
            finite = bool(np.isfinite(a).all())
        if not finite:
            bad = int(np.flatnonzero(~np.isfinite(a).all(axis=1))[0])
            raise ValueError(f"{what} row {bad} contains NaN or infinite values")
        return a

    def _check_ids(self, ids: np.ndarray, n: int) -> np.ndarray:
        """int64 ids, one per vector, non-negative, unique, below MAX_ID."""
        a = np.asarray(ids)
        if a.ndim != 1 or a.shape[0] != n:
            raise ValueError(f"ids must be a 1-d array of length {n} (one per vector), got shape {a.shape}")
        if a.size == 0:
            return a.astype(np.int64)
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"ids must be integers, got dtype {a.dtype}")
        a = a.astype(np.int64, copy=False)
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > MAX_ID:
            raise ValueError(f"ids must be in [0, {MAX_ID}] (dense item indices), got {lo if lo < 0 else hi}")
        if len(np.unique(a)) != len(a):
            raise ValueError("ids contain duplicates; each id may appear once per add")
        return a

    @staticmethod
    def _check_k(k: int) -> int:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k <= 0:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        return int(k)

    @staticmethod
    def _check_exclude(exclude: Exclude, n_queries: int) -> list[np.ndarray] | None:
        """One sorted unique int64 array per query, or None when nothing is excluded."""
        if exclude is None:
            return None
        if isinstance(exclude, np.ndarray) and exclude.ndim == 1 and n_queries == 1:
            exclude = [exclude]  # a flat array for a single query is unambiguous
        if len(exclude) != n_queries:
            raise ValueError(f"exclude must hold one entry per query ({n_queries}), got {len(exclude)}")
        out: list[np.ndarray] = []
        for e in exclude:
            if e is None:
                out.append(np.empty(0, dtype=np.int64))
                continue
            arr = np.fromiter(e, dtype=np.int64) if isinstance(e, set | frozenset) else np.asarray(e)
            if arr.size and not np.issubdtype(arr.dtype, np.integer):
                raise ValueError(f"exclude entries must be integer ids, got dtype {arr.dtype}")
            arr = np.sort(arr.astype(np.int64, copy=False).ravel())
            if len(arr) > 1 and (arr[1:] == arr[:-1]).any():  # np.unique only when needed (slow in numpy 2.4)
                arr = np.unique(arr)
            out.append(arr)
        return out if any(len(e) for e in out) else None

    # ---- self-describing save -----------------------------------------------------------------
    def _metadata(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        from candgen import __version__

        p = self.params
        meta: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "class": type(self).__name__,
            "dim": self.dim,
            "metric": "inner_product",
            "count": len(self),
            "is_exact": self.is_exact,
            "build_params": {k: v for k, v in p.items() if k not in self.search_param_names},
            "search_params": self.search_params,
            "versions": {"candgen": __version__, "numpy": np.__version__},
        }
        meta.update(extra or {})
        return meta


def write_metadata(path: str | Path, metadata: dict[str, Any]) -> None:
    """Write `metadata.json` atomically (write a temp file, then rename), so a reader never sees half."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    tmp = p / f".{METADATA_FILE}.{os.getpid()}.{threading.get_ident()}.tmp"
    tmp.write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, p / METADATA_FILE)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The parsed `metadata.json` of a saved index, or `ArtifactError` naming what is missing."""
    from candgen.errors import ArtifactError

    f = Path(path) / METADATA_FILE
    if not f.is_file():
        raise ArtifactError(f"{path} is not a saved index: {METADATA_FILE} is missing")
    try:
        meta = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{f} is not valid JSON: {e}") from None
    for key in ("kind", "dim"):
        if key not in meta:
            raise ArtifactError(f"{f} lacks the field '{key}'")
    return meta


def registered_kinds() -> dict[str, type[VectorIndex]]:
    """kind -> class of every backend imported so far."""
    return dict(_REGISTRY)


def pad_results(ids: list[np.ndarray], scores: list[np.ndarray], k: int) -> BatchCandidates:
    """Stack per-query results (each sorted, at most k long) into (n, k) arrays padded with -1 / -inf."""
    n = len(ids)
    out_ids = np.full((n, k), -1, dtype=np.int64)
    out_scores = np.full((n, k), -np.inf, dtype=np.float32)
    for i, (a, s) in enumerate(zip(ids, scores, strict=True)):
        m = min(len(a), k)
        out_ids[i, :m] = a[:m]
        out_scores[i, :m] = s[:m]
    return BatchCandidates(out_ids, out_scores)
