"""`LayeredIndex`: a read-only base index (memory-mapped, shared by every worker) plus a small exact
in-memory *delta* for the vectors written while serving.

Writing into a memory-mapped FAISS index forces a private copy of the whole index first (FAISS aborts
on writes to mapped memory): seconds of stall at 1M items on the first `POST /v1/items`, and one full
copy per worker. With the layered index the base is never written: added or replaced items go to the
delta (a `FlatIndex`, exact), removed or replaced base items are hidden from the base's answers, and a
search merges both. The delta holds only what was written since the artifacts were trained, so it
stays small until the next retrain.

Thread-safety: like the indexes it wraps — searches run concurrently with each other and with writes;
the hidden set is swapped, never mutated in place, so a search sees a consistent one.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from candgen.errors import CandgenError
from candgen.index.base import Exclude, VectorIndex
from candgen.index.flat import FlatIndex
from candgen.types import BatchCandidates


class LayeredIndex(VectorIndex):
    """`base` (never written) + an exact `delta` for writes; same interface as any `VectorIndex`."""

    kind = ""  # a serving-time view, not a storage format: never registered, never saved

    def __init__(self, base: VectorIndex, *, base_ids: np.ndarray | None = None) -> None:
        super().__init__(base.dim)
        self.base = base
        self.delta = FlatIndex(dim=base.dim)
        ids = base_ids if base_ids is not None else getattr(base, "ids", lambda: np.zeros(0, np.int64))()
        self._in_base = np.sort(np.asarray(ids, np.int64))
        self._hidden = np.zeros(0, np.int64)  # base ids removed or replaced since loading (sorted)
        self._lock = threading.Lock()
        self.is_exact = base.is_exact  # type: ignore[misc]  # an instance attribute shadows the class flag

    def _base_members(self, ids: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self._in_base, ids)
        pos = np.minimum(pos, max(len(self._in_base) - 1, 0))
        return ids[(len(self._in_base) > 0) & (self._in_base[pos] == ids)] if len(ids) else ids

    def _hide(self, ids: np.ndarray) -> None:
        hide = self._base_members(np.asarray(ids, np.int64))
        if len(hide):
            with self._lock:
                self._hidden = np.union1d(self._hidden, hide)

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        self.delta.add(vectors, ids)  # validates the input first
        self._hide(ids)

    def remove(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, np.int64)
        self._hide(ids)
        self.delta.remove(ids)

    def search(self, queries: np.ndarray, k: int, exclude: Exclude = None) -> BatchCandidates:
        hidden = self._hidden
        n = len(np.atleast_2d(queries))
        if len(hidden):
            ex = [hidden if e is None or not len(e) else np.union1d(hidden, np.fromiter(e, np.int64)
                  if isinstance(e, set) else np.asarray(e, np.int64)) for e in (exclude or [None] * n)]
        else:
            ex = exclude  # type: ignore[assignment]
        res = self.base.search(queries, k, exclude=ex)
        if len(self.delta) == 0:
            return res
        d = self.delta.search(queries, min(k, len(self.delta)), exclude=exclude)
        ids = np.concatenate([res.ids, d.ids], axis=1)
        scores = np.concatenate([res.scores, d.scores], axis=1)
        scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        ids, scores = np.take_along_axis(ids, order, axis=1), np.take_along_axis(scores, order, axis=1)
        return BatchCandidates(np.where(np.isfinite(scores), ids, -1), scores)

    def __len__(self) -> int:
        return len(self.base) - len(self._hidden) + len(self.delta)

    @property
    def params(self) -> dict[str, Any]:
        return self.base.params

    def set_search_params(self, **params: Any) -> None:
        self.base.set_search_params(**params)

    def save(self, path: str | Path) -> None:
        raise CandgenError("a layered (serving) index is not saved: the state log replays its writes")

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, np.int64)
        out = np.empty((len(ids), self.dim), np.float32)
        in_delta = np.isin(ids, self.delta.ids()) if len(self.delta) else np.zeros(len(ids), bool)
        if in_delta.any():
            out[in_delta] = self.delta.reconstruct(ids[in_delta])
        if (~in_delta).any():
            out[~in_delta] = self.base.reconstruct(ids[~in_delta])
        return out
