"""`FaissIndex`: what every FAISS backend shares: the id map, replace/remove, exclusion, threads, save/load.

FAISS labels are *slots* (int64 positions we hand out), not item ids: `_ext[slot]` is the item id
stored there (-1 when the slot is free or tombstoned) and `_slot_of[item_id]` the slot holding an id
(-1 when absent). Slots let HNSW, which cannot delete, tombstone an old vector and store its
replacement elsewhere, while backends that can delete (flat, IVF) remove physically and reuse slots.

Exclusion: tombstones become a FAISS `IDSelectorBitmap` in the search parameters (filtered inside
the search, so k results still come back). A query's `exclude` of up to max(64, k/2) ids is
over-fetched (k + the largest such exclude of the batch, one FAISS call) and filtered in numpy:
on IVF a selector costs a hash lookup per scanned vector (+45% at k=1000 with 10 ids), more than
a slightly longer result heap. Larger excludes get their own call with
`IDSelectorNot(IDSelectorBatch)`, since over-fetching by thousands costs more. Any row still short
of `min(k, available)` (an ANN probe that reached too few live vectors) is searched again with
a widened probe (IVF: 4x nprobe per step up to nlist; HNSW: a scan of its flat storage), so the
count is guaranteed.

Threads: FAISS parallelises with OpenMP. `search` and `add` call `faiss.omp_set_num_threads`
right before the FAISS call: 1 thread for a single query or a small batch, and
`threads` only for batches of at least `PARALLEL_MIN_QUERIES` queries or `PARALLEL_MIN_VECTORS`
added vectors. On this busy 2-core machine class 2 threads make one query 3-6x slower, and a
3-query batch or a 400-vector IVF-PQ build 10-40x slower (OpenMP threads spin waiting for a core
another process holds). The setting is per calling thread in libgomp, so concurrent callers do
not fight over it.

Memory-mapped load (`mmap=True`) reads the FAISS file with `IO_FLAG_MMAP_IFC`, which in faiss 1.15
maps the vector/code storage of IndexFlat (+IDMap2), IndexHNSWFlat, IndexIVFFlat and IndexIVFPQ, so
worker processes share one page-cache copy. FAISS aborts the process (not an exception) when a
mapped index grows, so the first write copies the index into private memory (copy-on-write for
the whole index: the writer then holds its own copy; readers in other processes keep the mapping).
"""

from __future__ import annotations

import abc
import math
import warnings
from pathlib import Path
from typing import Any, ClassVar

import faiss
import numpy as np

from candgen.index.base import Exclude, ReadWriteLock, VectorIndex, write_metadata
from candgen.types import BatchCandidates

PARALLEL_MIN_QUERIES = 32  # smaller batches search on 1 OpenMP thread (see the module docstring)
PARALLEL_MIN_VECTORS = 2048  # smaller adds build on 1 OpenMP thread
OVERFETCH_MIN = 64  # excludes up to max(this, k/2) ids are over-fetched and filtered, larger use a selector
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.npy"
_FAISS_EMPTY = -np.finfo(np.float32).max  # what FAISS returns as the score of a missing result


def faiss_params(kind: str = "", **fields: Any) -> Any:
    """`faiss.SearchParameters{kind}(**fields)`; faiss's bundled type stubs lack these keywords."""
    return getattr(faiss, f"SearchParameters{kind}")(**fields)


def _isin_sorted(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """`np.isin(values, sorted_set)` for a sorted, non-empty set by binary search: ~10x faster than
    numpy 2.4's `isin` on a 1000-long row and a small set (the exclude hot path)."""
    pos = np.searchsorted(sorted_set, values)
    np.minimum(pos, len(sorted_set) - 1, out=pos)
    return sorted_set[pos] == values


def _grow(a: np.ndarray, size: int, fill: float | int) -> np.ndarray:
    """`a` with room for at least `size` rows (amortised doubling), new rows set to `fill`."""
    if size <= a.shape[0]:
        return a
    new = np.full((max(size, 2 * a.shape[0], 16), *a.shape[1:]), fill, dtype=a.dtype)
    new[: a.shape[0]] = a
    return new


class FaissIndex(VectorIndex):
    """Base of the FAISS backends. Subclasses build the FAISS index and say how to search it."""

    # True when the FAISS index cannot store arbitrary labels nor delete (HNSW): slots are
    # appended in order, removal tombstones, and a rebuild compacts.
    appends_only: ClassVar[bool] = False

    def __init__(self, dim: int, *, threads: int = 1, compact_fraction: float = 0.2) -> None:
        super().__init__(dim)
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if not 0.0 < compact_fraction <= 1.0:
            raise ValueError(f"compact_fraction must be in (0, 1], got {compact_fraction}")
        self.threads = int(threads)
        self.compact_fraction = float(compact_fraction)
        self._lock = ReadWriteLock()
        self._index: Any = self._new_faiss_index()
        # slot -> item id (-1: free or tombstone). Always one spare -1 past the last used slot, so
        # `_ext[slots]` maps FAISS's -1 ("no result") to -1 without a mask (hot path of search)
        self._ext = np.full(1, -1, dtype=np.int64)
        self._slot_of = np.full(0, -1, dtype=np.int64)  # item id -> slot (-1: absent)
        self._bitmap = np.zeros(0, dtype=np.uint8)  # live slots, LSB-first as IDSelectorBitmap reads it
        self._n_slots = 0  # slots handed out so far (high-water mark)
        self._count = 0  # live vectors
        self._dead = 0  # tombstoned slots still inside the FAISS index (appends_only backends)
        self._free: list[int] = []  # removed slots ready for reuse (backends that delete)
        self._mapped = False  # FAISS storage is a read-only file mapping until the first write

    # ---- hooks for subclasses -----------------------------------------------------------------
    @abc.abstractmethod
    def _new_faiss_index(self) -> Any:
        """A new, empty FAISS index of this backend (with its build parameters)."""

    # how many widening steps `_faiss_search(widen=...)` has before it is exhaustive
    def _max_widen(self) -> int:
        return 1

    def _search_parameters(self, sel: Any, widen: int = 0) -> Any:
        """FAISS SearchParameters carrying this backend's search settings and the selector."""
        return faiss_params(sel=sel)

    def _is_trained(self) -> bool:
        return bool(self._index.is_trained)

    def _train(self, vectors: np.ndarray) -> None:
        self._index.train(vectors)

    def _faiss_add(self, vectors: np.ndarray, slots: np.ndarray) -> None:
        self._index.add_with_ids(vectors, slots)

    def _faiss_remove(self, slots: np.ndarray) -> None:
        """Delete slots in place; never called on `appends_only` backends, which tombstone instead."""
        self._index.remove_ids(faiss.IDSelectorBatch(slots))

    def _faiss_search(self, queries: np.ndarray, k: int, sel: Any, widen: int = 0) -> tuple[Any, Any]:
        """(scores, slots) of the top k; `widen` > 0 probes more (rows that came back short).
        IVF-PQ overrides it to re-rank, HNSW to scan its storage when widened."""
        # straight to the SWIG method (`search_c`): faiss's Python `search` wrapper re-checks what
        # `search` already validated and costs ~10 us per call, a few % of an IVF query at k=1000
        n = queries.shape[0]
        scores = np.empty((n, k), dtype=np.float32)
        slots = np.empty((n, k), dtype=np.int64)
        params = None if sel is None and not widen else self._search_parameters(sel, widen)
        self._index.search_c(n, faiss.swig_ptr(queries), k, faiss.swig_ptr(scores), faiss.swig_ptr(slots), params)
        return scores, slots

    def _reconstruct_slots(self, slots: np.ndarray) -> np.ndarray:
        return np.asarray(self._index.reconstruct_batch(slots), dtype=np.float32)

    def _extra_files(self, path: Path) -> dict[str, Any]:
        """Write backend-specific files beside the index; return metadata fields describing them."""
        return {}

    def _load_extra(self, path: Path, metadata: dict[str, Any], mmap: bool) -> None:
        pass

    def _after_copy(self) -> None:
        """Re-bind anything that pointed into the old FAISS object after a copy-on-write."""

    # ---- public interface ---------------------------------------------------------------------
    def __len__(self) -> int:
        """Live vectors. Thread-safe (reads one int)."""
        return self._count

    @property
    def params(self) -> dict[str, Any]:
        """Build and search parameters. Thread-safe (reads plain attributes)."""
        return {"compact_fraction": self.compact_fraction}

    def set_search_params(self, **params: Any) -> None:
        """Change search settings. Thread-safe: waits for running searches (exclusive lock)."""
        unknown = set(params) - set(self.search_param_names)
        if unknown:
            raise ValueError(f"{self.kind} has no search parameter(s) {sorted(unknown)}; "
                             f"known: {list(self.search_param_names)}")
        with self._lock.write():
            self._apply_search_params(params)

    def _apply_search_params(self, params: dict[str, Any]) -> None:
        for name, value in params.items():
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
            setattr(self, name, int(value))

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add vectors under item ids; an id already present is replaced. Visible to the next search.

        Thread-safe: holds the exclusive lock, so it waits for running searches and blocks new ones
        for its duration. Uses `threads` OpenMP threads from PARALLEL_MIN_VECTORS vectors on. Trains the
        index on the first add if needed.
        """
        v = self._check_vectors(vectors)
        ids = self._check_ids(ids, v.shape[0])
        if len(ids) == 0:
            return
        with self._lock.write():
            self._copy_on_write()
            faiss.omp_set_num_threads(self.threads if len(ids) >= PARALLEL_MIN_VECTORS else 1)
            if not self._is_trained():
                self._train(v)
            self._slot_of = _grow(self._slot_of, int(ids.max()) + 1, -1)
            old = self._slot_of[ids]
            replaced = old >= 0
            if self.appends_only:
                if replaced.any():
                    self._tombstone(old[replaced])
                slots = np.arange(self._n_slots, self._n_slots + len(ids), dtype=np.int64)
            else:
                if replaced.any():
                    self._faiss_remove(old[replaced])
                slots = old.copy()
                n_new = int((~replaced).sum())
                take = [self._free.pop() for _ in range(min(n_new, len(self._free)))]
                fresh = np.arange(self._n_slots, self._n_slots + n_new - len(take), dtype=np.int64)
                slots[~replaced] = np.concatenate([np.asarray(take, dtype=np.int64), fresh])
            hi = int(slots.max()) + 1
            self._ext = _grow(self._ext, hi + 1, -1)
            self._bitmap = _grow(self._bitmap, (hi + 7) // 8, 0)
            self._store_vectors(v, slots)
            self._faiss_add(v, slots)
            self._ext[slots] = ids
            self._slot_of[ids] = slots
            np.bitwise_or.at(self._bitmap, slots >> 3, (1 << (slots & 7)).astype(np.uint8))
            self._n_slots = max(self._n_slots, hi)
            self._count += int((~replaced).sum())
            self._maybe_compact()

    def _store_vectors(self, vectors: np.ndarray, slots: np.ndarray) -> None:
        """Keep full vectors beside the FAISS index (IVF-PQ re-ranking); nothing by default."""

    def remove(self, ids: np.ndarray) -> None:
        """Remove item ids; unknown ids are ignored. Never returned by a later search.

        Thread-safe: exclusive lock. HNSW tombstones (filtered at search) and rebuilds the graph
        once tombstones exceed `compact_fraction` of its slots; flat and IVF delete in place.
        """
        a = np.asarray(ids)
        if a.ndim != 1 or (a.size and not np.issubdtype(a.dtype, np.integer)):
            raise ValueError(f"ids to remove must be a 1-d integer array, got shape {a.shape} dtype {a.dtype}")
        a = np.unique(a.astype(np.int64, copy=False))
        with self._lock.write():
            a = a[(a >= 0) & (a < len(self._slot_of))]
            slots = self._slot_of[a]
            keep = slots >= 0
            a, slots = a[keep], slots[keep]
            if len(a) == 0:
                return
            self._copy_on_write()
            if self.appends_only:
                self._tombstone(slots)
            else:
                self._faiss_remove(slots)
                self._ext[slots] = -1
                self._clear_bits(slots)
                self._free.extend(int(s) for s in slots)
            self._slot_of[a] = -1
            self._count -= len(a)
            self._maybe_compact()

    def _tombstone(self, slots: np.ndarray) -> None:
        self._ext[slots] = -1
        self._clear_bits(slots)
        self._dead += len(slots)

    def _clear_bits(self, slots: np.ndarray) -> None:
        np.bitwise_and.at(self._bitmap, slots >> 3, (~(1 << (slots & 7))).astype(np.uint8))

    def _maybe_compact(self) -> None:
        if self._dead and self._dead > self.compact_fraction * self._n_slots:
            self._compact()

    def _compact(self) -> None:
        """Rebuild the FAISS index from the live vectors (drops tombstones). Caller holds the write lock."""
        live = np.flatnonzero(self._ext[: self._n_slots] >= 0)
        vectors = self._reconstruct_slots(live) if len(live) else np.zeros((0, self.dim), np.float32)
        ids = self._ext[live].copy()
        self._index = self._new_faiss_index()
        self._ext = np.full(len(ids) + 1, -1, dtype=np.int64)
        self._slot_of[:] = -1
        self._bitmap = np.zeros((len(ids) + 7) // 8, dtype=np.uint8)
        self._n_slots = self._count = self._dead = 0
        self._free = []
        if len(ids):
            slots = np.arange(len(ids), dtype=np.int64)
            if not self._is_trained():
                self._train(vectors)
            self._store_vectors(vectors, slots)
            self._faiss_add(vectors, slots)
            self._ext[: len(ids)] = ids
            self._slot_of[ids] = slots
            np.bitwise_or.at(self._bitmap, slots >> 3, (1 << (slots & 7)).astype(np.uint8))
            self._n_slots = self._count = len(ids)

    def rebuild(self) -> None:
        """Compact now (drop tombstones, rebuild the graph). Thread-safe: exclusive lock."""
        with self._lock.write():
            self._copy_on_write()
            faiss.omp_set_num_threads(self.threads)
            self._compact()

    def ids(self) -> np.ndarray:
        """The live item ids, sorted. Thread-safe: shared lock."""
        with self._lock.read():
            ext = self._ext[: self._n_slots]
            return np.sort(ext[ext >= 0])

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors of item ids, (n, dim) float32; KeyError-like ValueError on an absent id.
        Thread-safe: shared lock, runs concurrently with searches."""
        a = np.asarray(ids, dtype=np.int64).ravel()
        with self._lock.read():
            ok = (a >= 0) & (a < len(self._slot_of))
            slots = np.where(ok, self._slot_of[np.where(ok, a, 0)], -1)
            if (slots < 0).any():
                raise ValueError(f"id {int(a[slots < 0][0])} is not in the index")
            return self._reconstruct_slots(slots)

    def search(self, queries: np.ndarray, k: int, exclude: Exclude = None) -> BatchCandidates:
        """Top-k item ids by inner product per query, exactly min(k, available) per row, -1/-inf padded.

        Thread-safe: shared lock; any number of searches run in parallel (FAISS releases the GIL)
        and see each write either wholly or not at all. One query (or a batch below
        PARALLEL_MIN_QUERIES) uses 1 OpenMP thread, a larger batch `threads`.
        """
        if (exclude is None and type(k) is int and k > 0 and type(queries) is np.ndarray
                and queries.dtype == np.float32 and queries.shape == (1, self.dim) and queries.flags.c_contiguous):
            # the serving case (one float32 query, a plain k, no exclude) validates its query lazily: the up-front
            # checks cost ~20 us on the caches a search leaves cold (~5% of an IVF query at 1M items). A NaN or
            # infinite query scores every candidate NaN or +-inf, so its answer is a short row or a non-finite
            # top score, and only then is the query checked (and rejected, before anything is returned).
            self._lock.acquire_read()
            try:
                res = self._search_locked(queries, k, None)
            finally:
                self._lock.release_read()
            if res.ids[0, -1] < 0 or not math.isfinite(res.scores[0, 0]):
                self._check_vectors(queries, "queries")
            return res
        q = self._check_vectors(queries, "queries")
        k = self._check_k(k)
        excl = self._check_exclude(exclude, q.shape[0])
        self._lock.acquire_read()
        try:
            return self._search_locked(q, k, excl)
        finally:
            self._lock.release_read()

    def _search_locked(self, q: np.ndarray, k: int, excl: list[np.ndarray] | None) -> BatchCandidates:
        nq = q.shape[0]
        if nq == 0 or self._count == 0:
            return BatchCandidates(np.full((nq, k), -1, np.int64), np.full((nq, k), -np.inf, np.float32))
        faiss.omp_set_num_threads(self.threads if nq >= PARALLEL_MIN_QUERIES else 1)
        base_sel = faiss.IDSelectorBitmap(self._n_slots, faiss.swig_ptr(self._bitmap)) if self._dead else None
        if excl is None:
            fetch = min(k, self._count)
            scores, slots = self._faiss_search(q, fetch, base_sel)
            ids = self._ext[slots]  # -1 stays -1 via the spare slot
            # FAISS puts missing results last in a row (tombstones never come back: the selector
            # drops them), so the last column tells whether every row is full
            if fetch == k and (ids[0, -1] >= 0 if nq == 1 else bool((ids[:, -1] >= 0).all())):
                return BatchCandidates(ids, scores)
            return self._finish(q, k, scores, slots, np.full(nq, fetch), None, base_sel)
        ex_slots = [self._present_slots(e) for e in excl]
        want = np.array([min(k, self._count - len(s)) for s in ex_slots])
        # small excludes: over-fetch by the largest and drop them here (one batched call, cheap);
        # large ones: a FAISS selector per query (over-fetching thousands would cost more)
        limit = max(OVERFETCH_MIN, k // 2)
        big = np.array([len(s) > limit for s in ex_slots])
        small_max = max((len(s) for s, b in zip(ex_slots, big, strict=True) if not b), default=0)
        fetch = min(k + small_max, self._count)
        if nq == 1 and not big[0]:  # the serving case: one user, a few seen/blocked items
            sc, sl = self._faiss_search(q, fetch, base_sel)
            keep = ~_isin_sorted(sl[0], ex_slots[0]) if len(ex_slots[0]) else np.ones(fetch, dtype=bool)
            keep &= sl[0] >= 0
            got = self._ext[sl[0][keep][:k]]
            if len(got) >= want[0]:
                out_ids = np.full((1, k), -1, dtype=np.int64)
                out_scores = np.full((1, k), -np.inf, dtype=np.float32)
                out_ids[0, : len(got)] = got
                out_scores[0, : len(got)] = sc[0][keep][: len(got)]
                return BatchCandidates(out_ids, out_scores)
        width = max(fetch, int(want.max(initial=1)), 1)
        scores = np.full((nq, width), -np.inf, dtype=np.float32)
        slots = np.full((nq, width), -1, dtype=np.int64)
        rows = np.flatnonzero(~big)
        if len(rows):
            sc, sl = self._faiss_search(q[rows] if len(rows) < nq else q, fetch, base_sel)
            for j, i in enumerate(rows):
                if len(ex_slots[i]):
                    sl[j, _isin_sorted(sl[j], ex_slots[i])] = -1
            scores[rows, :fetch], slots[rows, :fetch] = sc, sl
        for i in np.flatnonzero(big):
            w = max(int(want[i]), 1)
            sc, sl = self._faiss_search(q[i : i + 1], w, self._exclude_selector(ex_slots[i], base_sel))
            scores[i, :w], slots[i, :w] = sc[0], sl[0]
        return self._finish(q, k, scores, slots, want, ex_slots, base_sel)

    # ---- search internals ---------------------------------------------------------------------
    def _present_slots(self, ids: np.ndarray) -> np.ndarray:
        ids = ids[(ids >= 0) & (ids < len(self._slot_of))]
        s = self._slot_of[ids]
        return np.sort(s[s >= 0])

    @staticmethod
    def _exclude_selector(ex_slots: np.ndarray, base_sel: Any) -> Any:
        if len(ex_slots) == 0:
            return base_sel
        sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(ex_slots))
        return sel if base_sel is None else faiss.IDSelectorAnd(base_sel, sel)

    def _finish(
        self, q: np.ndarray, k: int, scores: Any, slots: Any, want: np.ndarray,
        ex_slots: list[np.ndarray] | None, base_sel: Any,
    ) -> BatchCandidates:
        """Map slots to item ids, compact each row to its valid hits, pad, and complete short rows."""
        ids = self._ext[slots]  # -1 stays -1 via the spare slot
        if ids.shape[1] >= k and ids[:, :k].min() >= 0:
            return BatchCandidates(ids[:, :k], scores[:, :k])  # the common case: nothing to fix
        scores = np.asarray(scores, dtype=np.float32)
        valid = ids >= 0
        nq = len(q)
        out_ids = np.full((nq, k), -1, dtype=np.int64)
        out_scores = np.full((nq, k), -np.inf, dtype=np.float32)
        for i in range(nq):
            row = valid[i]
            got = ids[i][row][:k]
            if len(got) < want[i]:
                sel = self._exclude_selector(ex_slots[i], base_sel) if ex_slots is not None else base_sel
                for widen in range(1, self._max_widen() + 1):
                    s, sl = self._faiss_search(q[i : i + 1], int(want[i]), sel, widen=widen)
                    if (np.asarray(sl) >= 0).sum() >= want[i]:
                        break
                sl = np.asarray(sl[0])
                keep = sl >= 0
                got, sc = self._ext[sl[keep]], np.asarray(s[0], dtype=np.float32)[keep]
            else:
                sc = scores[i][row][:k]
            out_ids[i, : len(got)] = got
            out_scores[i, : len(got)] = sc
        return BatchCandidates(out_ids, out_scores)

    # ---- save / load --------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write `path/` with metadata.json, index.faiss (labels are slots) and ids.npy (slot -> id).

        Thread-safe: shared lock (searches continue; writes wait). Files are written to temporary
        names and renamed, so processes that memory-mapped an older save keep a consistent copy.
        """
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        with self._lock.read():
            if self._index is not None:  # None: an IVF index never trained (nothing added yet)
                tmp = p / f".{INDEX_FILE}.tmp"
                faiss.write_index(self._index, str(tmp))
                tmp.replace(p / INDEX_FILE)
            tmp_ids = p / f".{IDS_FILE}.tmp.npy"
            np.save(tmp_ids, self._ext[: self._n_slots])
            tmp_ids.replace(p / IDS_FILE)
            extra = self._extra_files(p)
            meta = self._metadata({"files": [INDEX_FILE, IDS_FILE, *extra.pop("files", [])],
                                   "slots": self._n_slots, "tombstones": self._dead, **extra})
            meta["versions"]["faiss"] = faiss.__version__
            meta["faiss_class"] = type(faiss.downcast_index(self._index)).__name__ if self._index else None
        write_metadata(p, meta)

    @classmethod
    def load(cls, path: Path, metadata: dict[str, Any], *, mmap: bool = False) -> VectorIndex:
        """Restore a saved index. With `mmap`, FAISS storage stays a shared read-only mapping until
        the first write copies it (see the module docstring)."""
        params = {**metadata.get("build_params", {}), **metadata.get("search_params", {})}
        obj = cls(dim=int(metadata["dim"]), **params)
        flags = faiss.IO_FLAG_MMAP_IFC if mmap else 0
        if (path / INDEX_FILE).exists() or metadata.get("faiss_class") is not None:
            obj._index = faiss.read_index(str(path / INDEX_FILE), flags)
            obj._mapped = mmap
        ext = np.array(np.load(path / IDS_FILE, allow_pickle=False), dtype=np.int64)
        ntotal = int(obj._index.ntotal) if obj._index is not None else 0
        if ntotal != int((ext >= 0).sum()) + int(metadata.get("tombstones", 0)):
            warnings.warn(f"{path}: FAISS holds {ntotal} vectors but ids.npy maps "
                          f"{int((ext >= 0).sum())} (+{metadata.get('tombstones', 0)} tombstones)", stacklevel=2)
        obj._ext = np.append(ext, -1)  # the spare -1 slot (see __init__)
        obj._n_slots = len(ext)
        live = np.flatnonzero(ext >= 0)
        obj._slot_of = np.full(int(ext.max(initial=-1)) + 1, -1, dtype=np.int64)
        obj._slot_of[ext[live]] = live
        obj._bitmap = np.zeros((len(ext) + 7) // 8, dtype=np.uint8)
        np.bitwise_or.at(obj._bitmap, live >> 3, (1 << (live & 7)).astype(np.uint8))
        obj._count = len(live)
        obj._dead = int(metadata.get("tombstones", 0))
        if not obj.appends_only:
            obj._free = [int(s) for s in np.flatnonzero(ext < 0)]
        obj._load_extra(path, metadata, mmap)
        obj._apply_search_params(metadata.get("search_params", {}))
        return obj

    def _copy_on_write(self) -> None:
        """Before the first write to a memory-mapped index, copy it into private memory."""
        if self._mapped:
            self._index = faiss.deserialize_index(faiss.serialize_index(self._index))
            self._mapped = False
            self._after_copy()

