"""Shared state in Redis: the write log as a Redis Stream, caches as string keys with a TTL.

Keys of one store share the prefix in braces, a Redis Cluster hash tag, so that every key lands in one
slot and multi-key commands (MGET, DEL, MULTI/EXEC) work on a cluster too:

    {candgen}:log            the stream; XADD assigns the ids that are our seqs ("1732712345678-0")
    {candgen}:trimmed        the id up to which `trim` deleted the stream (read_since checks it)
    {candgen}:L1:<key>       cache entries, SET ... PX <ttl>
    {candgen}:lease:<name>   job leases (one L3 refresher, one snapshot job at a time across workers)
    {candgen}:blobs          the set of blob names (snapshots)
    {candgen}:blob:<name>    a blob's head (hash: id, n, size); its bytes are in n chunks
                             {candgen}:blob:<name>:<id>:<i> of at most 4 MiB, so a large snapshot never
                             needs one huge value; a new version is published atomically over the old one

`append` runs its XADDs in one Lua script, so a call is atomic (Redis runs a script alone); once it
returns, every client's next XRANGE sees the records. Durability is the server's: with the default
`appendfsync everysec` a Redis crash may lose the last second of acknowledged writes; run Redis with
`appendonly yes` and `appendfsync always` (or replicas) when that matters. Restarting candgen loses
nothing: it replays the stream, which only `trim` (after a snapshot) shortens. `read_since(cursor)` reads
the stream and the trim mark in one script (one round trip) and raises `LogGap` for a cursor from before
a trim. Blobs move over a second connection pool with a long timeout (megabytes per call), so the request
path's short timeouts and circuit breaker are unaffected.

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

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from candgen.config import CacheConfig
from candgen.errors import CandgenError
from candgen.state.base import (
    Cache,
    LogGap,
    Record,
    StateStore,
    StateUnavailable,
    check_blob_name,
    check_level,
    check_limit,
    chunks,
    register,
)
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

# the catch-up read with the trim check, atomically: {trim mark or nil, entries after the cursor}
_READ_LUA = """
local rows = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])
return {redis.call('GET', KEYS[2]), rows}
"""

# trim up to min(ARGV id, the newest id) and raise the mark to it; returns the number of entries deleted
_TRIM_LUA = """
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last == 0 then return 0 end
local lid = last[1][1]
local dash = string.find(lid, '-', 1, true)
local lms, ln = tonumber(string.sub(lid, 1, dash - 1)), tonumber(string.sub(lid, dash + 1))
local ums, un = tonumber(ARGV[1]), tonumber(ARGV[2])
local ms, n, upto = ARGV[1], un, ARGV[1] .. '-' .. ARGV[2]
if lms < ums or (lms == ums and ln < un) then
  ms, n, upto = string.sub(lid, 1, dash - 1), ln, lid
end
local deleted = redis.call('XTRIM', KEYS[1], 'MINID', ms .. '-' .. (n + 1))
local old = redis.call('GET', KEYS[2])
if old then
  local od = string.find(old, '-', 1, true)
  local oms, on = tonumber(string.sub(old, 1, od - 1)), tonumber(string.sub(old, od + 1))
  if oms > tonumber(ms) or (oms == tonumber(ms) and on >= n) then return deleted end
end
redis.call('SET', KEYS[2], upto)
return deleted
"""

_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

BLOB_CHUNK = 4 << 20  # bytes per chunk of a blob
BLOB_BATCH = 8  # chunks per round trip
BLOB_TIMEOUT_S = 60.0
ORPHAN_TTL_MS = 3_600_000  # chunks of a put that never published expire after an hour

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
        self._mark = f"{self.tag}:trimmed"
        self._blobs = f"{self.tag}:blobs"
        self._lease = self._r.register_script(_LEASE_LUA)
        self._release = self._r.register_script(_RELEASE_LUA)
        self._append = self._r.register_script(_APPEND_LUA)
        self._read = self._r.register_script(_READ_LUA)
        self._trim = self._r.register_script(_TRIM_LUA)
        self._bulk_url = url  # blobs go over their own pool (long timeout), opened on first use
        self._bulk_client: redis.Redis | None = None
        self._bulk_lock = threading.Lock()
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

    def seq_key(self, seq: str) -> tuple[int, ...]:
        ms, _, n = str(seq).partition("-")
        if not (ms.isdigit() and n.isdigit()):
            raise CandgenError(f"bad state cursor {seq!r}: expected a seq returned by this store")
        return int(ms), int(n)

    def origin_cursor(self) -> str:
        return "0-0"

    def read_since(self, cursor: str | None, limit: int = 10_000) -> tuple[list[Record], str | None]:
        self._check_open()
        check_limit(limit)
        try:
            if not cursor:  # from the beginning: nothing can have been missed
                rows: Any = self._b.call(self._r.xrange, self._log, min="-", max="+", count=limit)
                out = [Record(kind=f[b"k"].decode(), data=orjson.loads(f[b"d"]), origin=f[b"o"].decode(),
                              seq=i.decode()) for i, f in rows]
            else:
                after = self.seq_key(cursor)
                # "(" makes the start exclusive (Redis >= 6.2)
                mark, rows = self._b.call(self._read, keys=[self._log, self._mark], args=["(" + cursor, limit])
                if mark is not None and after < self.seq_key(mark.decode()):
                    raise LogGap(cursor, mark.decode())
                out = [_record(i, f) for i, f in rows]
        except redis.ResponseError as e:
            raise CandgenError(f"bad state cursor {cursor!r}: expected a seq returned by this store ({e})") from None
        except redis.RedisError as e:
            raise self._unavailable("read from", e) from None
        if not out:
            return [], cursor
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
        ms, n = self.seq_key(upto)
        try:  # XTRIM MINID deletes ids below its argument: the id right after `upto` (or the newest id)
            return int(self._b.call(self._trim, keys=[self._log, self._mark], args=[ms, n]))
        except redis.RedisError as e:
            raise self._unavailable("trim", e) from None

    def trimmed_upto(self) -> str | None:
        self._check_open()
        try:
            mark: Any = self._b.call(self._r.get, self._mark)
        except redis.RedisError as e:
            raise self._unavailable("read from", e) from None
        return None if mark is None else mark.decode()

    def appended(self) -> int:
        self._check_open()
        try:
            info: Any = self._b.call(self._r.xinfo_stream, self._log)
        except redis.ResponseError:  # no stream yet
            return 0
        except redis.RedisError as e:
            raise self._unavailable("read from", e) from None
        # entries-added: Redis >= 7.0 counts every XADD; older servers only know the current length
        return int(info.get("entries-added", info.get("length", 0)))

    # -- blobs: chunked, published atomically ---------------------------------------------------------

    def _bulk(self) -> redis.Redis:
        with self._bulk_lock:
            if self._bulk_client is None:
                pool = redis.ConnectionPool.from_url(self._bulk_url, socket_timeout=BLOB_TIMEOUT_S,
                                                     socket_connect_timeout=2.0, retry=Retry(NoBackoff(), 0))
                self._bulk_client = redis.Redis(connection_pool=pool)
            return self._bulk_client

    def _head(self, name: str) -> str:
        return f"{self.tag}:blob:{check_blob_name(name)}"

    def put_blob(self, name: str, data: bytes) -> None:
        self._check_open()
        head, bid = self._head(name), uuid.uuid4().hex[:12]
        parts = [data[i:i + BLOB_CHUNK] for i in range(0, len(data), BLOB_CHUNK)] or [b""]
        keys = [f"{head}:{bid}:{i}" for i in range(len(parts))]
        r = self._bulk()
        try:
            old: Any = r.hgetall(head)
            for start in range(0, len(parts), BLOB_BATCH):  # with a TTL until published: a crash leaks nothing
                pipe = r.pipeline(transaction=False)
                for k, part in zip(keys[start:start + BLOB_BATCH], parts[start:start + BLOB_BATCH], strict=True):
                    pipe.set(k, part, px=ORPHAN_TTL_MS)
                pipe.execute()
            pipe = r.pipeline(transaction=True)  # publish: MULTI/EXEC, readers see the old or the new head
            for k in keys:
                pipe.persist(k)
            pipe.delete(head)
            pipe.hset(head, mapping={"id": bid, "n": len(parts), "size": len(data)})
            pipe.sadd(self._blobs, name)
            pipe.execute()
            self._drop_chunks(r, head, old)
        except redis.RedisError as e:
            raise self._unavailable("write a blob to", e) from None

    @staticmethod
    def _drop_chunks(r: redis.Redis, head: str, meta: Any) -> None:
        if meta:
            bid, n = meta[b"id"].decode(), int(meta[b"n"])
            for batch in chunks((f"{head}:{bid}:{i}" for i in range(n)), 500):
                r.unlink(*batch)

    def get_blob(self, name: str) -> bytes | None:
        self._check_open()
        head, r = self._head(name), self._bulk()
        try:
            for _ in range(3):  # a put that publishes meanwhile deletes the chunks being read: read again
                meta: Any = r.hgetall(head)
                if not meta:
                    return None
                bid, n = meta[b"id"].decode(), int(meta[b"n"])
                parts: list[Any] = []
                for start in range(0, n, BLOB_BATCH):
                    pipe = r.pipeline(transaction=False)
                    for i in range(start, min(n, start + BLOB_BATCH)):
                        pipe.get(f"{head}:{bid}:{i}")
                    parts += pipe.execute()
                if all(p is not None for p in parts):
                    return b"".join(parts)
                if r.hget(head, "id") == meta[b"id"]:
                    raise CandgenError(f"blob {name!r} in Redis at {self.url} is incomplete (a chunk is missing)")
        except redis.RedisError as e:
            raise self._unavailable("read a blob from", e) from None
        raise CandgenError(f"blob {name!r} in Redis at {self.url} kept changing while being read")

    def list_blobs(self, prefix: str = "") -> list[str]:
        self._check_open()
        try:
            names: Any = self._bulk().smembers(self._blobs)
        except redis.RedisError as e:
            raise self._unavailable("list blobs in", e) from None
        return sorted(n for n in (m.decode() for m in names) if n.startswith(prefix))

    def delete_blob(self, name: str) -> None:
        self._check_open()
        head, r = self._head(name), self._bulk()
        try:
            meta: Any = r.hgetall(head)
            pipe = r.pipeline(transaction=True)
            pipe.delete(head)
            pipe.srem(self._blobs, name)
            pipe.execute()
            self._drop_chunks(r, head, meta)
        except redis.RedisError as e:
            raise self._unavailable("delete a blob from", e) from None

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

    def try_log_lease(self, name: str, ttl_s: float) -> bool:
        return self.try_lease(name, ttl_s)  # Redis leases are shared by every worker already

    def release_log_lease(self, name: str) -> None:
        with contextlib.suppress(redis.RedisError):  # otherwise it expires by itself
            self._b.call(self._release, keys=[f"{self.tag}:lease:{name}"], args=[self.worker_id])

    def close(self) -> None:
        self._closed = True
        self._pool.disconnect()
        with self._bulk_lock:
            if self._bulk_client is not None:
                self._bulk_client.connection_pool.disconnect()

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


def _record(seq: bytes, fields: list[bytes]) -> Record:
    """One stream entry as an EVAL script returns it: id, [field, value, field, value, ...]."""
    f = dict(zip(fields[::2], fields[1::2], strict=True))
    return Record(kind=f[b"k"].decode(), data=orjson.loads(f[b"d"]), origin=f[b"o"].decode(), seq=seq.decode())


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
