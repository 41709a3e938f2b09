"""The online state interface: an ordered log of write records shared by all workers, plus caches.

Every worker process appends its writes (events, new items, deletions, user profiles) to the log with
`StateStore.append` and applies them to its own in-process structures; at the start of every request it
calls `read_since(cursor)` once to apply what other workers appended since. The log is also the journal
replayed on restart. Caches (L1 candidate lists, L2 user embeddings, L3 precomputed lists) hold bytes.

Backends are opened by URL through a small registry (gorse's `storage/cache/database.go` is the model):

    store = open_state(None, art_dir="art")            # embedded: SQLite journal art/journal.sqlite3
    store = open_state("redis://127.0.0.1:6379/0?prefix=shop", worker_id="w1")
    seqs = store.append([Record(kind="event", data={"user_id": "u1", "item_id": "i9", "event": "like"})])
    records, cursor = store.read_since(cursor)         # by any worker, strictly after `cursor`, in order
    store.cache("L1").set("u1", payload, ttl_s=300.0)
    store.put_blob("snapshot-x", data)                 # snapshots (candgen.snapshot) beside the log
    store.trim(upto)                                   # then read_since(older cursor) raises LogGap

Compaction: `candgen.snapshot` folds the log into a snapshot stored as a blob, then `trim`s the log. A
worker whose cursor falls before the trimmed range gets `LogGap` from `read_since` (never a silent skip)
and reloads from the snapshot.

Thread-safety: every method of `StateStore` and `Cache` may be called from several threads at once.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

from candgen.config import CacheConfig
from candgen.errors import CandgenError

CACHE_LEVELS = ("L1", "L2", "L3")
"""L1 candidate lists, L2 user embeddings, L3 lists precomputed for the most active users."""

JOURNAL_NAME = "journal.sqlite3"
"""The embedded default's journal file, beside the artifacts."""

_BLOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


class StateUnavailable(CandgenError):
    """The state backend cannot be reached; writes should answer 503, reads serve from what they have."""


class LogGap(CandgenError):
    """`read_since(cursor)` was asked for records that `trim` already deleted: the reader missed them.

    `cursor` is what the reader passed, `trimmed_upto` the seq up to which the log was trimmed. The reader
    must rebuild its state from a snapshot taken at or after `trimmed_upto` (the engine reloads).
    """

    def __init__(self, cursor: str, trimmed_upto: str) -> None:
        super().__init__(f"the state log was trimmed up to {trimmed_upto}, past this reader's cursor {cursor}: "
                         "records were folded into a snapshot; reload from it")
        self.cursor, self.trimmed_upto = cursor, trimmed_upto


def check_blob_name(name: str) -> str:
    """Blob names are file-name safe: letters, digits, '.', '_', '-' (not first), at most 200 characters."""
    if not isinstance(name, str) or not _BLOB_NAME.fullmatch(name):
        raise CandgenError(f"bad blob name {name!r}: expected letters, digits, '.', '_' or '-' (at most 200)")
    return name


def key(*parts: object) -> str:
    """Join key parts with ':' (one key helper for every backend): `key("L1", "u1") == "L1:u1"`."""
    return ":".join(str(p) for p in parts)


def default_worker_id() -> str:
    """A writer id unique to this process: host, pid and a random suffix (pids repeat across restarts)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass(slots=True)
class Record:
    """One write in the shared log.

    `kind` is "event" | "item" | "delete" | "user" (or any string the engine defines), `data` a
    JSON-serialisable dict, `origin` the writer's id (a worker skips records it applied itself), and
    `seq` the position the store assigned on append (opaque; compare only through the store).
    """

    kind: str
    data: dict[str, Any] = field(default_factory=dict)
    origin: str = ""
    seq: str = ""


class Cache(ABC):
    """One cache level. Values are bytes (numpy `.tobytes()` or JSON; never pickle).

    Every method is thread-safe. `get`/`get_many` count hits and misses for `stats()`; on a backend
    failure they return None (a miss) and count an error instead of raising, so a cache never turns a
    request into an error.
    """

    level: str

    @abstractmethod
    def get(self, key: str) -> bytes | None:
        """The value, or None when missing or expired."""

    @abstractmethod
    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Values in the order of `keys` (None where missing), in one round trip."""

    @abstractmethod
    def set(self, key: str, value: bytes, ttl_s: float) -> None:
        """Store `value` for `ttl_s` seconds (must be > 0)."""

    @abstractmethod
    def delete(self, *keys: str) -> None:
        """Remove these keys (missing keys are ignored)."""

    @abstractmethod
    def clear(self) -> None:
        """Remove every key of this level (e.g. on a model swap)."""

    @abstractmethod
    def stats(self) -> dict[str, int]:
        """`{"hits", "misses", "errors", "size"}`; size -1 when the backend cannot count cheaply."""


class StateStore(ABC):
    """The shared, ordered, durable log of writes plus the caches of one backend.

    Contract (tests/contract/test_state_contract.py checks it for every backend):
    - `append(records)` is atomic per call, durable and visible to every reader (every worker) before it
      returns; it assigns each record's `seq` (also set on the objects passed) and returns the seqs.
    - `read_since(cursor)` returns the records strictly after `cursor` in log order (cursor None: from the
      beginning), at most `limit`, and the cursor to pass next time (unchanged when nothing is new).
      It is one cheap round trip: the per-request catch-up of every worker.
    - `tail_cursor()` is the cursor of the newest record (None for an empty log).
    - `trim(upto)` deletes the records up to `upto`; afterwards `read_since(c)` with a cursor c before
      `trimmed_upto()` raises `LogGap` (in the same round trip: the per-request read stays one call).
      `read_since(None)` still returns what is left (a full replay of a trimmed log: the caller checks
      `trimmed_upto()`).
    - `appended()` counts every record ever appended (trimmed ones included); `seq_key(seq)` orders seqs.
    - Blobs (`put_blob`, `get_blob`, `list_blobs`, `delete_blob`) hold snapshots where every worker of
      the log reaches them; `put_blob` replaces a blob atomically (a reader gets the old or the new bytes).
    - `try_log_lease(name, ttl_s)` is one holder at a time among every worker of the log (any backend).
    - Backend failures raise `StateUnavailable` (a `CandgenError`) from `append` and `read_since`;
      `health()` never raises.
    All methods are safe to call from several threads at once.
    """

    url: str
    worker_id: str

    @abstractmethod
    def append(self, records: list[Record]) -> list[str]:
        """Append records atomically; durable and visible everywhere on return. Returns their seqs."""

    @abstractmethod
    def read_since(self, cursor: str | None, limit: int = 10_000) -> tuple[list[Record], str | None]:
        """Records strictly after `cursor`, in order, and the new cursor."""

    @abstractmethod
    def tail_cursor(self) -> str | None:
        """The seq of the newest record, or None when the log is empty."""

    @abstractmethod
    def trim(self, upto: str) -> int:
        """Delete the records with seq <= `upto` (compaction); returns how many were deleted.

        Only for records already folded into a snapshot that restarts load before replaying the rest.
        `trimmed_upto()` becomes max(its old value, min(`upto`, the newest seq)), and `read_since` from a
        cursor before it raises `LogGap`. Seqs are never reused after a trim.
        """

    @abstractmethod
    def trimmed_upto(self) -> str | None:
        """The seq up to which the log was trimmed (None: never trimmed)."""

    @abstractmethod
    def appended(self) -> int:
        """How many records were ever appended to this log, trimmed ones included (monotonic)."""

    def seq_key(self, seq: str) -> tuple[int, ...]:
        """A sort key of a seq this store returned: a < b in log order iff seq_key(a) < seq_key(b)."""
        return (parse_int_cursor(seq),)

    def origin_cursor(self) -> str:
        """A cursor before every record ever appended: `read_since` from it returns the whole log, or raises
        `LogGap` once the log was trimmed (unlike None, which reads whatever is left)."""
        return "0"

    @abstractmethod
    def put_blob(self, name: str, data: bytes) -> None:
        """Store `data` under `name` (replacing it atomically), durable and visible to every worker on return."""

    @abstractmethod
    def get_blob(self, name: str) -> bytes | None:
        """The bytes stored under `name`, or None."""

    @abstractmethod
    def list_blobs(self, prefix: str = "") -> list[str]:
        """Names of the stored blobs starting with `prefix`, sorted."""

    @abstractmethod
    def delete_blob(self, name: str) -> None:
        """Remove a blob (a missing one is ignored)."""

    @abstractmethod
    def try_log_lease(self, name: str, ttl_s: float) -> bool:
        """Hold the lease `name` for `ttl_s` seconds among every worker of this log, whatever the backend
        (renewed when this worker holds it already). For jobs on the shared log itself (snapshots)."""

    @abstractmethod
    def release_log_lease(self, name: str) -> None:
        """Give up the lease `name` if this worker holds it (someone else's is left alone)."""

    @abstractmethod
    def cache(self, level: str) -> Cache:
        """The cache of one level ("L1", "L2", "L3")."""

    @abstractmethod
    def close(self) -> None:
        """Release connections; the store is unusable afterwards."""

    @abstractmethod
    def health(self) -> bool:
        """Cheap reachability check; False (never an exception) when the backend is down."""

    def try_lease(self, name: str, ttl_s: float) -> bool:
        """Hold the lease `name` for `ttl_s` seconds (renewing it if this worker holds it already).

        The default is per process (always True): right for backends whose caches are per process.
        Shared backends override it so that only one worker at a time runs a job (the L3 refresh).
        """
        return True

    def _stamp(self, records: list[Record]) -> None:
        """Fill in the origin of records that have none."""
        for r in records:
            if not isinstance(r, Record):
                raise TypeError(f"append takes Record objects, got {type(r).__name__}")
            if not r.origin:
                r.origin = self.worker_id

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_level(level: str) -> str:
    if level not in CACHE_LEVELS:
        raise CandgenError(f"unknown cache level {level!r}; expected one of {', '.join(CACHE_LEVELS)}")
    return level


def parse_int_cursor(cursor: str | None) -> int:
    """An integer seq ("1", "2", ...: the memory and SQLite backends); None or "" is 0 (before everything)."""
    if cursor is None or cursor == "":
        return 0
    try:
        value = int(cursor)
    except (TypeError, ValueError):
        raise CandgenError(f"bad state cursor {cursor!r}: expected a seq returned by this store") from None
    if value < 0:
        raise CandgenError(f"bad state cursor {cursor!r}: expected a seq returned by this store")
    return value


class LocalLeases:
    """Leases held in one process (the memory backend's `try_log_lease`): name -> (holder, expiry)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._held: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def take(self, name: str, holder: str, ttl_s: float) -> bool:
        if not ttl_s > 0:
            raise CandgenError(f"lease ttl_s must be > 0 seconds, got {ttl_s}")
        now = self._clock()
        with self._lock:
            cur = self._held.get(name)
            if cur is not None and cur[0] != holder and cur[1] > now:
                return False
            self._held[name] = (holder, now + ttl_s)
            return True

    def release(self, name: str, holder: str) -> None:
        with self._lock:
            if self._held.get(name, ("", 0.0))[0] == holder:
                del self._held[name]


def check_limit(limit: int) -> int:
    if limit < 1:
        raise CandgenError(f"read_since limit must be >= 1, got {limit}")
    return limit


Opener = Callable[..., StateStore]
"""`opener(url_parts, *, url, art_dir, worker_id, cache_config) -> StateStore`."""

_OPENERS: dict[str, Opener] = {}
_LOCK = threading.Lock()


def register(scheme: str, opener: Opener) -> None:
    """Make `open_state` open URLs of `scheme` with `opener` (a later registration replaces an earlier one)."""
    with _LOCK:
        _OPENERS[scheme] = opener


def _load_builtins() -> None:
    # imported here, not at module top, because the backends import this module
    from candgen.state import memory, redis, sqlite  # noqa: F401


def open_state(
    url: str | None,
    *,
    art_dir: str | Path | None = None,
    worker_id: str | None = None,
    cache_config: CacheConfig | None = None,
) -> StateStore:
    """Open the state backend named by `url`.

    - None or "": the embedded default, a SQLite journal at `art_dir/journal.sqlite3`;
    - `sqlite:///abs/path.db` or `file:///abs/path.db`: a SQLite journal at that path;
    - `memory://` (private to this store) or `memory://NAME` (shared by the stores of this process
      opened with the same NAME): no durability, for tests and throwaway runs;
    - `redis://host:port/db[?prefix=NAME]` (and `rediss://`): shared by every worker and machine.
    Unknown schemes, unreachable servers and unwritable paths raise `CandgenError`.
    """
    _load_builtins()
    wid = worker_id or default_worker_id()
    cfg = cache_config or CacheConfig()
    if not url:
        if art_dir is None:
            raise CandgenError("the embedded state journal needs an artifacts directory (art_dir) or a --state URL")
        url = "sqlite:///" + str((Path(art_dir) / JOURNAL_NAME).resolve()).lstrip("/")
    try:
        parts = urlsplit(url)
    except ValueError as e:
        raise CandgenError(f"bad state URL {url!r}: {e}") from None
    with _LOCK:
        opener = _OPENERS.get(parts.scheme)
        known = sorted(_OPENERS)
    if opener is None:
        schemes = ", ".join(s + "://" for s in known)
        raise CandgenError(f"unknown state URL scheme in {url!r}; expected one of: {schemes}")
    return opener(parts, url=url, art_dir=art_dir, worker_id=wid, cache_config=cfg)


def url_path(parts: SplitResult, url: str) -> Path:
    """The file path of a `sqlite:///abs/path` or `file:///abs/path` URL."""
    if parts.netloc not in ("", "localhost"):
        raise CandgenError(f"state URL {url!r}: expected {parts.scheme}:///absolute/path (three slashes)")
    if not parts.path or parts.path == "/":
        raise CandgenError(f"state URL {url!r} names no file")
    return Path(parts.path)


def chunks(items: Iterable[str], size: int) -> Iterable[list[str]]:
    batch: list[str] = []
    for it in items:
        batch.append(it)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
