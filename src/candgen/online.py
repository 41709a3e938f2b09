"""Online helpers of the engine that sit beside the request path: the L2 user-embedding cache and the
online-quality monitor (sampled ANN recall against exact search, intra-list diversity).

L2 caches the user tower's output keyed by a digest of everything the tower reads (model version,
attributes, interests, device/hour, the history and its weights), so an entry can never be stale: new
engagements change the key. With Redis the cache is shared by the workers; a hit saves the tower's
forward pass (~0.1 ms here, much more for a large user tower).

The quality monitor takes every Nth request and, on a background thread (never on the request path),
searches the same user vector exactly and compares it with the ANN answer; the next response carries
the figure to /metrics. An exact search reads every item vector (~50 ms of CPU at 1M items), which would
cost more than the requests themselves at high QPS, so after each one the monitor stays quiet long enough
that the searches use at most `max_share` of one core (2% by default: at 1M items one sample every ~2.5 s,
at 100k items every ~0.2 s).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class CachedUserEncoder:
    """The user tower behind an L2 cache (a `candgen.state` Cache); same call as `TwoTowerModel.embed_user`."""

    def __init__(self, model: Any, cache: Any, ttl_s: float) -> None:
        self.model, self.cache, self.ttl_s = model, cache, ttl_s
        self.hits = self.misses = 0

    def embed_user(self, *, attributes: Mapping[str, str], interests: Sequence[str], context: Mapping[str, str],
                   history_items: np.ndarray, history_weights: np.ndarray,
                   history_item_vectors: np.ndarray | None = None, now: int | None = None) -> np.ndarray:
        h = hashlib.blake2b(digest_size=16)
        hour = context.get("hour")
        h.update(repr((self.model.version, sorted(attributes.items()), list(interests), context.get("device"),
                       hour if hour is not None else (None if now is None else (int(now) // 3600) % 24))).encode())
        h.update(np.ascontiguousarray(history_items, np.int64).tobytes())
        h.update(np.ascontiguousarray(history_weights, np.float32).tobytes())
        key = h.hexdigest()
        raw = self.cache.get(key)
        if raw is not None and len(raw) == 4 * self.model.dim:
            self.hits += 1
            return np.frombuffer(raw, np.float32).copy()
        self.misses += 1
        vec = np.asarray(self.model.embed_user(
            attributes=attributes, interests=interests, context=context, history_items=history_items,
            history_weights=history_weights, history_item_vectors=history_item_vectors, now=now,
        ), np.float32)
        self.cache.set(key, vec.tobytes(), self.ttl_s)
        return vec


def intra_list_diversity(vectors: np.ndarray) -> float:
    """Mean pairwise cosine distance of L2-normalised rows, in O(n·d): 1 - (|Σv|² - n) / (n(n-1))."""
    n = len(vectors)
    if n < 2:
        return 0.0
    s = vectors.sum(axis=0, dtype=np.float64)
    sq = float(np.einsum("ij,ij->", vectors, vectors, dtype=np.float64))
    return float(1.0 - (float(s @ s) - sq) / (n * (n - 1)))


def exact_top_k(vectors: np.ndarray, q: np.ndarray, k: int, *, exclude: np.ndarray, live: np.ndarray,
                extra_ids: np.ndarray | None = None, extra_vectors: np.ndarray | None = None) -> np.ndarray:
    """Ids of the k best items by inner product among live, non-excluded items: the (memory-mapped) catalog
    `vectors` in chunks, plus items added since (`extra_ids`, `extra_vectors`)."""
    n = len(vectors)
    total = n + (0 if extra_ids is None else len(extra_ids))
    scores = np.full(max(total, len(live)), -np.inf, np.float32)
    for s in range(0, n, 262_144):
        chunk = vectors[s: s + 262_144]
        scores[s: s + len(chunk)] = chunk @ q
    if extra_ids is not None and extra_vectors is not None and len(extra_ids):
        scores[extra_ids] = extra_vectors @ q
    scores[: len(live)][~live] = -np.inf
    if len(exclude):
        scores[exclude[exclude < len(scores)]] = -np.inf
    k = min(k, int(np.isfinite(scores).sum()))
    if k <= 0:
        return np.zeros(0, np.int64)
    return np.argpartition(-scores, k - 1)[:k].astype(np.int64)


class QualityMonitor:
    """Every `every`-th request: ANN recall@k of the collaborative search against exact search (background,
    one at a time, and at most `max_share` of one core over time) and the intra-list diversity of the answer
    (cheap, inline). `take()` hands the latest figures out once."""

    def __init__(self, every: int, *, max_share: float = 0.02, clock: Callable[[], float] = time.monotonic) -> None:
        if not 0.0 < max_share <= 1.0:
            raise ValueError(f"max_share must be in (0, 1], got {max_share}")
        self.every = max(0, int(every))
        self.max_share, self._clock = max_share, clock
        self._n = 0
        self._pending: dict[str, float] = {}
        self._lock = threading.Lock()
        self._busy = False
        self._quiet_until = float("-inf")  # no exact search before this time (see max_share)
        self.ann_samples = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="candgen-quality")

    def sampled(self) -> bool:
        if self.every <= 0:
            return False
        with self._lock:
            self._n += 1
            return self._n % self.every == 0

    def observe(self, rt: Any, ctx: Any, answer_ids: np.ndarray, k: int) -> None:
        """Called on sampled requests, after the answer is built."""
        if len(answer_ids) >= 2:
            div = intra_list_diversity(rt.vector_lookup(answer_ids[:1000]))
            with self._lock:
                self._pending["diversity"] = div
        collab = rt.sources.get("collaborative")
        with self._lock:
            if collab is None or rt.index.is_exact or self._busy or self._clock() < self._quiet_until:
                return
            self._busy = True
        self._pool.submit(self._ann_recall, rt, collab, ctx, k)

    def _ann_recall(self, rt: Any, collab: Any, ctx: Any, k: int) -> None:
        t0 = self._clock()
        try:
            q = collab.user_vector(ctx)
            if q is None:
                return
            ann = rt.index.search(q, k, exclude=[ctx.exclude if len(ctx.exclude) else None])[0].ids
            catalog = rt.state.catalog
            base = rt.item_vectors
            extra = np.arange(len(base), catalog.n_items, dtype=np.int64)
            truth = exact_top_k(base, q[0], k, exclude=ctx.exclude, live=~catalog.is_deleted, extra_ids=extra,
                                extra_vectors=rt.vector_lookup(extra) if len(extra) else None)
            if len(truth):
                with self._lock:
                    self._pending["ann_recall"] = len(np.intersect1d(ann, truth)) / len(truth)
        except Exception:
            log.exception("online ANN recall sample failed")
        finally:
            took = self._clock() - t0
            with self._lock:
                self.ann_samples += 1
                self._quiet_until = t0 + took / self.max_share  # took busy, then took x (1/share - 1) quiet
                self._busy = False

    def take(self) -> dict[str, float]:
        with self._lock:
            out, self._pending = self._pending, {}
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
