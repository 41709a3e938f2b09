"""The engine's list caches: L1 (candidate lists, TTL 5 min) and L3 (lists precomputed for the most active
users), kept in the state store's caches so that with Redis every worker shares them.

An entry is one JSON document per user: the k it was computed for (a request for fewer takes a prefix),
the A/B variant, the model version and a *generation* of the catalog and trending state. A hit needs
all of them to match, so a model swap, a new or deleted item, or a change of the trending head
invalidates every list at once without touching the cache; an engagement deletes that user's entries.
Hits are re-filtered against the user's current exclusions by the engine, so even a list from just
before a write never shows a seen, hidden or deleted item.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from candgen.config import CacheConfig

if TYPE_CHECKING:
    from candgen.runtime import Runtime
    from candgen.serve.protocol import CandidatesResult

TRENDING_HEAD = 50  # a change in these top trending items invalidates the cached lists
TRENDING_CHECK_S = 0.1  # the trending head is re-read at most this often after events


@dataclass(slots=True)
class CachedList:
    item_ids: list[str]
    scores: np.ndarray
    sources: list[list[str]]
    variant: str
    level: str


class ListCaches:
    """L1 and L3 over the store's caches; disabled (always a miss) without a store."""

    def __init__(self, store: Any | None, config: CacheConfig) -> None:
        self.config = config
        self.enabled = store is not None
        self.l1 = store.cache("L1") if store is not None else None
        self.l3 = store.cache("L3") if store is not None else None
        self.shared = bool(store is not None and str(getattr(store, "url", "")).startswith("redis"))
        self.hits = {"L1": 0, "L3": 0}
        self.misses = 0
        self._items_gen = 0
        self._trending_sig = ""
        self._trending_dirty = True
        self._trending_checked = 0.0
        self._lock = threading.Lock()
        self.refresher: Any = None

    # -- generation ----------------------------------------------------------------------------------

    def generation(self, rt: Runtime) -> str:
        with self._lock:
            now = time.monotonic()
            if self._trending_dirty and now - self._trending_checked >= TRENDING_CHECK_S:
                head = rt.state.trending.top(TRENDING_HEAD, now=time.time())
                self._trending_sig = str(hash(tuple(np.sort(head.ids).tolist())))
                self._trending_dirty = False
                self._trending_checked = now
            return f"{self._items_gen}:{self._trending_sig}"

    def after_write(self, rt: Runtime, kind: str, data: dict[str, Any], *, own: bool) -> None:
        if not self.enabled:
            return
        if kind in ("item", "delete"):
            with self._lock:
                self._items_gen += 1
        elif kind in ("event", "user"):
            with self._lock:
                self._trending_dirty = True
            # a shared cache is cleared once, by the worker that took the write; a per-process one by all
            if (own or not self.shared) and self.l1 is not None and self.l3 is not None:
                self.l1.delete(data["user_id"])
                self.l3.delete(data["user_id"])

    # -- lookups -------------------------------------------------------------------------------------

    def _decode(self, raw: bytes | None, level: str) -> dict[str, Any] | None:
        if raw is None:
            return None
        try:
            d: dict[str, Any] = json.loads(raw)
            return d
        except ValueError:
            return None

    def lookup(self, rt: Runtime, user_id: str, k: int, variant: str) -> CachedList | None:
        if not self.enabled or self.l1 is None or self.l3 is None:
            return None
        gen = self.generation(rt)
        for level, cache in (("L1", self.l1), ("L3", self.l3)):
            d = self._decode(cache.get(user_id), level)
            if (d is not None and d["model"] == rt.model_version and d["variant"] == variant and d["k"] >= k
                    and (level == "L3" or d["gen"] == gen) and d["items_gen"] == self._items_gen):
                self.hits[level] += 1
                return CachedList(d["ids"], np.asarray(d["scores"], np.float32), d["sources"], variant, level)
        self.misses += 1
        return None

    def encode(self, rt: Runtime, k: int, variant: str, res: CandidatesResult) -> bytes:
        return json.dumps({
            "k": k, "variant": variant, "model": rt.model_version, "gen": self.generation(rt),
            "items_gen": self._items_gen, "ids": res.item_ids,
            "scores": np.round(np.asarray(res.scores, np.float64), 6).tolist(), "sources": res.sources,
        }, separators=(",", ":")).encode()

    def store(self, rt: Runtime, user_id: str, k: int, variant: str, res: CandidatesResult) -> None:
        if self.enabled and self.l1 is not None:
            self.l1.set(user_id, self.encode(rt, k, variant, res), self.config.l1_ttl_s)

    def clear(self) -> None:
        for c in (self.l1, self.l3):
            if c is not None:
                c.clear()
        with self._lock:
            self._trending_dirty = True

    def stats(self) -> dict[str, Any]:
        total = self.misses + sum(self.hits.values())
        return {f"cache_{lvl}_hits": n for lvl, n in self.hits.items()} | {
            "cache_misses": self.misses, "cache_hit_rate": (sum(self.hits.values()) / total) if total else 0.0,
        }

    def stop(self) -> None:
        if self.refresher is not None:
            self.refresher.stop()
