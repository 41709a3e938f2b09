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
import struct
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from candgen.blend.merge import Blended
from candgen.config import CacheConfig

if TYPE_CHECKING:
    from candgen.runtime import Runtime

TRENDING_HEAD = 50  # a change in these top trending items invalidates the cached lists
TRENDING_CHECK_S = 0.1  # the trending head is re-read at most this often after events


@dataclass(slots=True)
class CachedList:
    """A cached answer as the blend made it: dense ids, scores, provenance bitmasks over `names`."""

    blended: Blended
    variant: str
    level: str


_HEAD = struct.Struct("<I")


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
            # the catalog's generation is the number of item and delete records applied: the same on every
            # worker at the same log position, whether it replayed the log or loaded a snapshot
            return f"{rt.catalog_writes}:{self._trending_sig}"

    def after_write(self, rt: Runtime, kind: str, data: dict[str, Any], *, own: bool) -> None:
        if not self.enabled:
            return
        if kind in ("event", "user"):  # items and deletes move `rt.catalog_writes`, part of the generation
            with self._lock:
                self._trending_dirty = True
            # a shared cache is cleared once, by the worker that took the write; a per-process one by all
            if (own or not self.shared) and self.l1 is not None and self.l3 is not None:
                self.l1.delete(data["user_id"])
                self.l3.delete(data["user_id"])

    # -- lookups -------------------------------------------------------------------------------------

    def _decode(self, rt: Runtime, raw: bytes | None) -> tuple[dict[str, Any], Blended] | None:
        """Binary entry → (header, Blended); None when unreadable. Items added while serving are stored by
        their string id: their dense index may differ between workers that applied writes in another order."""
        if raw is None or len(raw) < _HEAD.size:
            return None
        try:
            (n_head,) = _HEAD.unpack_from(raw)
            head: dict[str, Any] = json.loads(raw[_HEAD.size: _HEAD.size + n_head])
            n, off = int(head["n"]), _HEAD.size + n_head
            ids = np.frombuffer(raw, np.int32, n, off).astype(np.int64)
            scores = np.frombuffer(raw, np.float32, n, off + 4 * n).copy()
            masks = np.frombuffer(raw, np.uint64, n, off + 8 * n).copy()
        except (ValueError, KeyError, struct.error):
            return None
        for pos, item_id in head.get("extra", []):
            ids[pos] = rt.state.catalog.items.get(item_id)
        return head, Blended(ids=ids, scores=scores, source_mask=masks, source_names=tuple(head["names"]),
                             source_scores={})

    def lookup(self, rt: Runtime, user_id: str, k: int, variant: str) -> CachedList | None:
        if not self.enabled or self.l1 is None or self.l3 is None:
            return None
        gen = self.generation(rt)
        for level, cache in (("L1", self.l1), ("L3", self.l3)):
            got = self._decode(rt, cache.get(user_id))
            if got is None:
                continue
            d, blended = got
            if (d["model"] == rt.model_version and d["variant"] == variant and d["k"] >= k
                    and (level == "L3" or d["gen"] == gen) and d["items_gen"] == rt.catalog_writes):
                self.hits[level] += 1
                return CachedList(blended, variant, level)
        self.misses += 1
        return None

    def encode(self, rt: Runtime, k: int, variant: str, blended: Blended) -> bytes:
        """Compact binary: a small JSON header, then int32 dense ids, float32 scores, uint64 source masks."""
        ids = np.asarray(blended.ids, np.int64)
        base = len(rt.item_vectors)  # the trained catalog: the same dense ids in every worker
        extra = np.flatnonzero(ids >= base)
        head = json.dumps({
            "k": k, "variant": variant, "model": rt.model_version, "gen": self.generation(rt),
            "items_gen": rt.catalog_writes, "n": len(ids), "names": list(blended.source_names),
            "extra": [[int(p), rt.state.catalog.items.id(int(ids[p]))] for p in extra],
        }, separators=(",", ":")).encode()
        return b"".join((_HEAD.pack(len(head)), head, np.where(ids < base, ids, -1).astype(np.int32).tobytes(),
                         np.asarray(blended.scores, np.float32).tobytes(),
                         np.asarray(blended.source_mask, np.uint64).tobytes()))

    def store(self, rt: Runtime, user_id: str, k: int, variant: str, blended: Blended) -> None:
        if self.enabled and self.l1 is not None:
            self.l1.set(user_id, self.encode(rt, k, variant, blended), self.config.l1_ttl_s)

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
