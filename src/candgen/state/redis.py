"""Shared state in Redis: the write log as a Redis Stream, caches as string keys with a TTL.

Keys of one store share the prefix in braces, a Redis Cluster hash tag, so that every key lands in one
slot and multi-key commands (MGET, DEL, MULTI/EXEC) work on a cluster too:

    {candgen}:log            the stream; XADD assigns the ids that are our seqs ("1732712345678-0")
    {candgen}:L1:<key>       cache entries, SET ... PX <ttl>
    {candgen}:lease:<name>   job leases (one L3 refresher at a time across workers)

`append` runs its XADDs in one Lua script, so a call is atomic (Redis runs a script alone); once it
returns, every client's next XRANGE sees the records. Durability is the server's: with the default
`appendfsync everysec` a Redis crash may lose the last second of acknowledged writes; run Redis with
`appendonly yes` and `appendfsync always` (or replicas) when that matters. Restarting candgen loses
nothing: it replays the stream, which only `trim` (after a snapshot) shortens.

Redis being down never crashes a request: cache reads return None and writes are skipped (both count an
error), `health()` is False, and `append`/`read_since` raise `StateUnavailable` (HTTP 503 for writes;
the engine serves reads from what it has). Socket timeouts are short (0.5 s) and commands are not
retried (a retry could append a record twice). After a connection failure or timeout the store fails
fast for `retry_after_s` (1 s) without touching the network (a circuit breaker), so a Redis that hangs
costs one timeout per second per worker, not one per request. redis-py checks a pooled connection
before reuse and reconnects, so service resumes by itself within a second of Redis coming back
(`health()` always probes, and closes the breaker when Redis answers).

Hit/miss/error counters are kept per worker process (not in Redis: an INCR per lookup would double the
round trips); Prometheus sums them over workers.
`Cache.clear()` deletes the level's keys with SCAN MATCH + UNLINK (keys expire anyway, but a model swap
must not serve the old model's lists); it scans the node holding the hash tag's slot.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from candgen.config import CacheConfig
from candgen.errors import CandgenError
from candgen.state.base import Cache, Record, StateStore, StateUnavailable, check_level, check_limit, chunks, register
from candgen.state.memory import check_ttl, encode

# all XADDs of one append in one script: atomic like MULTI/EXEC, but one command to pack and one reply to
# parse instead of one per record (100 records: see benchmarks/README.md, "state backends")
_APPEND_LUA = """
local ids = {}
for i = 1, #ARGV, 3 do
  ids[#ids + 1] = redis.call('XADD', KEYS[1], '*', 'k', ARGV[i], 'o', ARGV[i + 1], 'd', ARGV[i + 2])
end
return ids
"""

_LEASE_LUA = """
local v = redis.call('GET', KEYS[1])
if (not v) or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""


T = TypeVar("T")


class Breaker:
    """Fail fast for `pause_s` after a connection failure or timeout (shared by a store and its caches)."""

    def __init__(self, pause_s: float) -> None:
        self.pause_s, self.until = pause_s, 0.0

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if time.monotonic() < self.until:
            raise redis.ConnectionError(f"Redis failed less than {self.pause_s:g} s ago; not retrying yet")
        try:
            return fn(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError):
            self.trip()
            raise

    def trip(self) -> None:
        self.until = time.monotonic() + self.pause_s

    def reset(self) -> None:
        self.until = 0.0


def hash_tag(prefix: str) -> str:
    """`shop` -> `{shop}`: the Redis Cluster hash tag every key of the store starts with."""
    if not prefix:
        raise CandgenError("redis state prefix must not be empty")
    return prefix if prefix.startswith("{") and prefix.endswith("}") else "{" + prefix + "}"


def _glob_escape(s: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in s)


def _safe(url: str) -> str:
    """The URL without a password, for error messages."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


class RedisCache(Cache):
    """One level's keys in Redis; per-process hit/miss/error counters; failures are misses, never errors."""

    def __init__(self, level: str, client: redis.Redis, tag: str, breaker: Breaker) -> None:
        self.level, self._r, self._b = level, client, breaker
        self._prefix = f"{tag}:{level}:"
        self._lock = threading.Lock()
        self.hits = self.misses = self.errors = 0

    def _count(self, hits: int = 0, misses: int = 0, errors: int = 0) -> None:
        with self._lock:
            self.hits += hits
            self.misses += misses
            self.errors += errors

    def get(self, key: str) -> bytes | None:
        try:
            value: Any = self._b.call(self._r.get, self._prefix + key)
        except redis.RedisError:
            self._count(misses=1, errors=1)
            return None
        self._count(hits=value is not None, misses=value is None)
        return value

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        try:
            values: Any = self._b.call(self._r.mget, [self._prefix + k for k in keys])
        except redis.RedisError:
            self._count(misses=len(keys), errors=1)
            return [None] * len(keys)
        found = sum(v is not None for v in values)
        self._count(hits=found, misses=len(values) - found)
        return values

    def set(self, key: str, value: bytes, ttl_s: float) -> None:
        ms = max(1, int(check_ttl(ttl_s) * 1000))
        try:
            self._b.call(self._r.set, self._prefix + key, bytes(value), px=ms)
        except redis.RedisError:
            self._count(errors=1)

    def delete(self, *keys: str) -> None:
        if not keys:
            return
        try:
            self._b.call(self._r.unlink, *[self._prefix + k for k in keys])
        except redis.RedisError:
            self._count(errors=1)

    def _clear(self) -> None:
        found = self._r.scan_iter(match=_glob_escape(self._prefix) + "*", count=1000)
        for batch in chunks((k.decode() if isinstance(k, bytes) else k for k in found), 500):
            self._r.unlink(*batch)

    def clear(self) -> None:
        try:
            self._b.call(self._clear)
        except redis.RedisError:
            self._count(errors=1)

    def stats(self) -> dict[str, int]:
        # size -1: counting a level's keys needs a full SCAN, too dear for every metrics scrape
        with self._lock:
            return {"hits": self.hits, "misses": self.misses, "errors": self.errors, "size": -1}


class RedisStore(StateStore):
    """The log as the stream `{prefix}:log`, caches as `{prefix}:<level>:<key>`; a pooled redis-py client."""

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, prefix: str = "candgen", worker_id: str = "redis",
                 cache_config: CacheConfig | None = None, socket_timeout_s: float = 0.5,
                 retry_after_s: float = 1.0) -> None:
        self.tag = hash_tag(prefix)
        self.url, self.worker_id = _safe(url), worker_id  # never show a password in logs
        parts = urlsplit(url)
        if parts.scheme in ("redis", "rediss") and not (parts.path.strip("/") or "0").isdigit():
            raise CandgenError(f"bad redis state URL {_safe(url)!r}: the path must be a database number, like /0")
        try:
            self._pool = redis.ConnectionPool.from_url(
                url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s,
                retry=Retry(NoBackoff(), 0),
            )
        except ValueError as e:
            raise CandgenError(f"bad redis state URL {_safe(url)!r}: {e}") from None
        self._r = redis.Redis(connection_pool=self._pool)
        self._log = f"{self.tag}:log"
        self._lease = self._r.register_script(_LEASE_LUA)
        self._append = self._r.register_script(_APPEND_LUA)
        self._b = Breaker(retry_after_s)
        self._caches = {lv: RedisCache(lv, self._r, self.tag, self._b) for lv in ("L1", "L2", "L3")}
        self._closed = False

    def _unavailable(self, what: str, e: Exception) -> StateUnavailable:
        return StateUnavailable(f"state backend unavailable: cannot {what} Redis at {self.url}: {e}")

    def _check_open(self) -> None:
        if self._closed:
            raise CandgenError(f"state store {self.url} is closed")

    def append(self, records: list[Record]) -> list[str]:
        self._check_open()
        self._stamp(records)
        args: list[str | bytes] = []
        for r in records:
            args += (r.kind, r.origin, encode(r))
        if not args:
            return []
        try:
            ids: Any = self._b.call(self._append, keys=[self._log], args=args)
        except redis.RedisError as e:
            raise self._unavailable("append to", e) from None
        seqs = [i.decode() if isinstance(i, bytes) else str(i) for i in ids]
        for r, s in zip(records, seqs, strict=True):
            r.seq = s
        return seqs

    def read_since(self, cursor: str | None, limit: int = 10_000) -> tuple[list[Record], str | None]:
        self._check_open()
        check_limit(limit)
        start = "-" if not cursor else "(" + cursor  # "(" makes the start exclusive (Redis >= 6.2)
        try:
            rows: Any = self._b.call(self._r.xrange, self._log, min=start, max="+", count=limit)
        except redis.ResponseError as e:
            raise CandgenError(f"bad state cursor {cursor!r}: expected a seq returned by this store ({e})") from None
        except redis.RedisError as e:
            raise self._unavailable("read from", e) from None
        if not rows:
            return [], cursor
        out = [Record(kind=f[b"k"].decode(), data=orjson.loads(f[b"d"]), origin=f[b"o"].decode(), seq=i.decode())
               for i, f in rows]
        return out, out[-1].seq

    def tail_cursor(self) -> str | None:
        self._check_open()
        try:
            rows: Any = self._b.call(self._r.xrevrange, self._log, max="+", min="-", count=1)
        except redis.RedisError as e:
            raise self._unavailable("read from", e) from None
        return rows[0][0].decode() if rows else None

    def trim(self, upto: str) -> int:
        self._check_open()
        ms, _, n = upto.partition("-")
        if not (ms.isdigit() and n.isdigit()):
            raise CandgenError(f"bad state cursor {upto!r}: expected a seq returned by this store")
        try:  # XTRIM MINID deletes ids below its argument: the id right after `upto`
            return int(self._b.call(self._r.xtrim, self._log, minid=f"{ms}-{int(n) + 1}", approximate=False))
        except redis.RedisError as e:
            raise self._unavailable("trim", e) from None

    def cache(self, level: str) -> Cache:
        return self._caches[check_level(level)]

    def try_lease(self, name: str, ttl_s: float) -> bool:
        """One holder at a time across workers: `SET {prefix}:lease:<name> <worker> PX ttl` unless someone
        else holds it (the holder renews). False when Redis is down (no job runs then)."""
        try:
            got = self._b.call(self._lease, keys=[f"{self.tag}:lease:{name}"],
                              args=[self.worker_id, max(1, int(check_ttl(ttl_s) * 1000))])
        except redis.RedisError:
            return False
        return bool(got)

    def close(self) -> None:
        self._closed = True
        self._pool.disconnect()

    def health(self) -> bool:
        if self._closed:
            return False
        try:
            ok = bool(self._r.ping())  # always probes, even while the breaker is open
        except redis.RedisError:
            self._b.trip()
            return False
        self._b.reset()
        return ok

    def delete_all(self) -> int:
        """Delete every key of this store (the log, caches, leases): tests and `reset` tooling."""
        n = 0
        for batch in chunks((k.decode() for k in self._r.scan_iter(match=_glob_escape(self.tag) + ":*", count=1000)),
                            500):
            n += int(self._r.unlink(*batch))
        return n


def _open(parts: SplitResult, *, url: str, worker_id: str, cache_config: CacheConfig, **_: Any) -> StateStore:
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = next((v for k, v in query if k == "prefix"), "candgen")
    rest = [(k, v) for k, v in query if k != "prefix"]
    plain = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(rest), ""))
    store = RedisStore(plain, prefix=prefix, worker_id=worker_id, cache_config=cache_config)
    if not store.health():
        store.close()
        raise CandgenError(f"cannot reach the Redis state backend at {_safe(plain)} (is redis-server running?)")
    return store


register("redis", _open)
register("rediss", _open)
register("unix", _open)
