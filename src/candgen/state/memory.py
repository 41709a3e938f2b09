"""In-process state: a bounded LRU+TTL cache (also used by the SQLite backend) and the `memory://` store.

`memory://` keeps the log in a Python list: no durability, visible only inside this process. Stores
opened with the same name (`memory://shared`) share one log and one set of caches, which lets tests
play several "workers" in one process; a bare `memory://` is private to its store.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any
from urllib.parse import SplitResult

import orjson

from candgen.config import CacheConfig
from candgen.errors import CandgenError
from candgen.state.base import (
    CACHE_LEVELS,
    Cache,
    LocalLeases,
    LogGap,
    Record,
    StateStore,
    check_blob_name,
    check_level,
    check_limit,
    parse_int_cursor,
    register,
)


def max_entries(config: CacheConfig, level: str) -> int:
    return {"L1": config.l1_max_entries, "L2": config.l2_max_entries, "L3": config.l3_max_entries}[level]


def check_ttl(ttl_s: float) -> float:
    if not ttl_s > 0:
        raise CandgenError(f"cache ttl_s must be > 0 seconds, got {ttl_s}")
    return float(ttl_s)


class LocalCache(Cache):
    """A thread-safe LRU cache with a TTL per entry, bounded to `max_entries` (the oldest-used goes first).

    Expired entries are dropped when read and, as the cache fills, by LRU order; `size` counts entries
    held, which may include some expired ones not yet touched.
    """

    def __init__(self, level: str, max_entries: int, clock: Any = time.monotonic) -> None:
        if max_entries < 1:
            raise CandgenError(f"cache {level}: max_entries must be >= 1, got {max_entries}")
        self.level, self.max_entries, self._clock = level, max_entries, clock
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def _get(self, key: str, now: float) -> bytes | None:
        hit = self._data.get(key)
        if hit is None:
            self.misses += 1
            return None
        if hit[0] <= now:
            del self._data[key]
            self.misses += 1
            return None
        self._data.move_to_end(key)
        self.hits += 1
        return hit[1]

    def get(self, key: str) -> bytes | None:
        with self._lock:
            return self._get(key, self._clock())

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        with self._lock:
            now = self._clock()
            return [self._get(k, now) for k in keys]

    def set(self, key: str, value: bytes, ttl_s: float) -> None:
        expires = self._clock() + check_ttl(ttl_s)
        value = bytes(value)
        with self._lock:
            self._data[key] = (expires, value)
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def delete(self, *keys: str) -> None:
        with self._lock:
            for k in keys:
                self._data.pop(k, None)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"hits": self.hits, "misses": self.misses, "errors": 0, "size": len(self._data)}


def local_caches(config: CacheConfig) -> dict[str, LocalCache]:
    return {lv: LocalCache(lv, max_entries(config, lv)) for lv in CACHE_LEVELS}


def encode(record: Record) -> bytes:
    """The record's data as JSON bytes; a clear error for data that JSON cannot hold."""
    try:
        return orjson.dumps(record.data)
    except TypeError as e:
        raise CandgenError(f"record {record.kind!r}: data is not JSON-serialisable ({e})") from None


class _MemoryLog:
    """The list of (kind, origin, json) rows and the caches one or more MemoryStores share."""

    def __init__(self, config: CacheConfig) -> None:
        self.rows: list[tuple[str, str, bytes]] = []
        self.base = 0  # records trimmed off the front: rows[i] has seq base + i + 1
        self.lock = threading.Lock()
        self.caches = local_caches(config)
        self.blobs: dict[str, bytes] = {}
        self.leases = LocalLeases()


_NAMED: dict[str, _MemoryLog] = {}
_NAMED_LOCK = threading.Lock()


class MemoryStore(StateStore):
    """The log in a list guarded by a lock; seqs are "1", "2", ... Caches are `LocalCache`s."""

    def __init__(self, *, name: str = "", worker_id: str = "memory", cache_config: CacheConfig | None = None) -> None:
        cfg = cache_config or CacheConfig()
        self.url = f"memory://{name}"
        self.worker_id = worker_id
        if name:
            with _NAMED_LOCK:
                self._log = _NAMED.setdefault(name, _MemoryLog(cfg))
        else:
            self._log = _MemoryLog(cfg)
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise CandgenError(f"state store {self.url} is closed")

    def append(self, records: list[Record]) -> list[str]:
        self._check_open()
        self._stamp(records)
        rows = [(r.kind, r.origin, encode(r)) for r in records]  # encode all first: all or nothing
        log = self._log
        with log.lock:
            start = log.base + len(log.rows)
            log.rows.extend(rows)
        seqs = [str(start + i + 1) for i in range(len(rows))]
        for r, s in zip(records, seqs, strict=True):
            r.seq = s
        return seqs

    def read_since(self, cursor: str | None, limit: int = 10_000) -> tuple[list[Record], str | None]:
        self._check_open()
        after = parse_int_cursor(cursor)
        check_limit(limit)
        log = self._log
        with log.lock:
            if cursor and after < log.base:
                raise LogGap(cursor, str(log.base))
            if not log.rows or after >= log.base + len(log.rows):  # the common case: nothing new
                return [], cursor
            first = max(after, log.base)
            rows = log.rows[first - log.base:first - log.base + limit]
        out = [Record(kind=k, data=orjson.loads(d), origin=o, seq=str(first + i + 1))
               for i, (k, o, d) in enumerate(rows)]
        return out, out[-1].seq

    def tail_cursor(self) -> str | None:
        self._check_open()
        with self._log.lock:
            rows, n = self._log.rows, self._log.base + len(self._log.rows)
            return str(n) if rows else None  # like the other backends: None once everything is trimmed

    def trim(self, upto: str) -> int:
        self._check_open()
        last = parse_int_cursor(upto)
        log = self._log
        with log.lock:
            n = max(0, min(last - log.base, len(log.rows)))
            del log.rows[:n]
            log.base += n
        return n

    def trimmed_upto(self) -> str | None:
        self._check_open()
        with self._log.lock:
            return str(self._log.base) if self._log.base else None

    def appended(self) -> int:
        self._check_open()
        with self._log.lock:
            return self._log.base + len(self._log.rows)

    def put_blob(self, name: str, data: bytes) -> None:
        self._check_open()
        self._log.blobs[check_blob_name(name)] = bytes(data)

    def get_blob(self, name: str) -> bytes | None:
        self._check_open()
        return self._log.blobs.get(check_blob_name(name))

    def list_blobs(self, prefix: str = "") -> list[str]:
        self._check_open()
        return sorted(n for n in list(self._log.blobs) if n.startswith(prefix))

    def delete_blob(self, name: str) -> None:
        self._check_open()
        self._log.blobs.pop(check_blob_name(name), None)

    def try_log_lease(self, name: str, ttl_s: float) -> bool:
        return self._log.leases.take(name, self.worker_id, ttl_s)

    def release_log_lease(self, name: str) -> None:
        self._log.leases.release(name, self.worker_id)

    def cache(self, level: str) -> Cache:
        return self._log.caches[check_level(level)]

    def close(self) -> None:
        self._closed = True

    def health(self) -> bool:
        return not self._closed


def forget(name: str) -> None:
    """Drop the shared in-process log `memory://name` (tests)."""
    with _NAMED_LOCK:
        _NAMED.pop(name, None)


def _open(parts: SplitResult, *, url: str, worker_id: str, cache_config: CacheConfig, **_: Any) -> StateStore:
    if parts.path.strip("/") or parts.query:
        raise CandgenError(f"state URL {url!r}: expected memory:// or memory://NAME")
    return MemoryStore(name=parts.netloc, worker_id=worker_id, cache_config=cache_config)


register("memory", _open)
