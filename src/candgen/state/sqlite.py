"""The embedded default: the write log as a SQLite journal file (beside the artifacts unless told otherwise).

Several worker processes (`candgen serve --workers N`) share one file safely: SQLite's WAL mode lets
readers run while one writer appends, and `BEGIN IMMEDIATE` serialises appends across processes (a
writer waits up to `busy_timeout` for the lock). Each append commits before it returns, so the very next
`read_since` of any process sees it: `SELECT ... WHERE seq > ?` on the INTEGER PRIMARY KEY (the rowid
B-tree, no extra index needed) returns nothing most of the time, in a few microseconds.

Durability: `synchronous=NORMAL` by default. In WAL mode a commit then writes the WAL file without an
fsync: an acknowledged write is in the OS page cache, which survives kill -9 or any crash of the server
process (the kernel still writes it out; tests/unit/test_state_sqlite.py kills a writer with SIGKILL and
finds every acknowledged record), but not a power loss or kernel crash. That is the promise candgen
makes ("nothing lost across restarts"), the same as Redis' default `appendfsync everysec`, and it costs
~20 µs per append instead of the ~7.5 ms fsync of `synchronous=FULL` on this machine's disk (which would
also serialise every worker's writes behind the fsync). `sqlite:///path?synchronous=full` fsyncs every
commit and survives power loss too (benchmarks/state.py measures both).

Caches are in-process `LocalCache`s: each worker process has its own L1/L2/L3 (use Redis to share them).
sqlite3 connections are not shared between threads: each thread gets its own, opened on first use.

Trimming records the trimmed seq in the `marks` table; `read_since` checks it in the same statement, so a
cursor from before a trim raises `LogGap` at no extra round trip. Snapshots are blobs: plain files in the
directory `<journal>-blobs/` beside the journal (written to a temporary file, fsynced, renamed into
place), so a multi-hundred-megabyte snapshot never holds the journal's write lock. The log lease of the
snapshot job lives in the `leases` table, shared by every process on the file.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, parse_qs

import orjson

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
    parse_int_cursor,
    register,
    url_path,
)
from candgen.state.memory import check_ttl, encode, local_caches


@contextlib.contextmanager
def _immediate(conn: sqlite3.Connection) -> Any:
    """A write transaction taken at once (`BEGIN IMMEDIATE`: one writer across processes); committed on
    success, rolled back on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _is_busy(e: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED: another connection holds a lock; trying again later may succeed."""
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(e) or "busy" in str(e)


SCHEMA = """
CREATE TABLE IF NOT EXISTS log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: a seq is never reused, even after deletes
    kind TEXT NOT NULL,
    origin TEXT NOT NULL,
    data TEXT NOT NULL,                     -- the record's data as JSON
    at REAL NOT NULL                        -- wall-clock time of the append (for operators)
);
CREATE TABLE IF NOT EXISTS marks (name TEXT PRIMARY KEY, value INTEGER NOT NULL);  -- 'trimmed': seq
CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, until REAL NOT NULL);
"""
# the catch-up read: a row (-1, mark) first when the cursor is before the trimmed range, then the records
_READ_CHECKED = """
SELECT -1, '', '', value FROM marks WHERE name = 'trimmed' AND value > ?1
UNION ALL
SELECT * FROM (SELECT seq, kind, origin, data FROM log WHERE seq > ?1 ORDER BY seq LIMIT ?2)
"""
_READ = "SELECT seq, kind, origin, data FROM log WHERE seq > ? ORDER BY seq LIMIT ?"
STALE_TMP_S = 3600.0  # a blob's temporary file older than this was left by a crashed writer
SYNCHRONOUS = ("normal", "full")


class SQLiteStore(StateStore):
    """The log in one SQLite file (WAL mode); one connection per thread; caches per process."""

    def __init__(self, path: str | Path, *, worker_id: str = "sqlite", synchronous: str = "normal",
                 busy_timeout_s: float = 10.0, cache_config: CacheConfig | None = None) -> None:
        if synchronous not in SYNCHRONOUS:
            raise CandgenError(f"sqlite synchronous must be one of {', '.join(SYNCHRONOUS)}, got {synchronous!r}")
        self.path = Path(path)
        self.url = f"sqlite:///{str(self.path.resolve()).lstrip('/')}"
        self.worker_id, self.synchronous, self.busy_timeout_s = worker_id, synchronous, busy_timeout_s
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._open_schema()
        except (OSError, sqlite3.Error) as e:
            self.close()
            raise CandgenError(f"cannot open the state journal {self.path}: {e}") from None
        self._caches = local_caches(cache_config or CacheConfig())
        self.blob_dir = self.path.with_name(self.path.name + "-blobs")

    def _open_schema(self) -> None:
        """Open this thread's connection and create the tables. SQLite may answer SQLITE_BUSY here without
        waiting on its busy handler (in WAL mode, while the last connection of another process is cleaning
        up the WAL at its close), so a busy open is retried until `busy_timeout_s` is spent."""
        deadline = time.monotonic() + self.busy_timeout_s
        pause = 0.005
        while True:
            try:
                conn = self._conn()
                with _immediate(conn):  # several processes may open a new journal at once
                    for stmt in SCHEMA.split(";"):
                        if stmt.strip():
                            conn.execute(stmt)
                return
            except sqlite3.OperationalError as e:
                if not _is_busy(e) or time.monotonic() + pause > deadline:
                    raise
                self._drop_thread_conn()
                time.sleep(pause)
                pause = min(pause * 2, 0.2)

    def _drop_thread_conn(self) -> None:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            return
        self._local.conn = None
        with self._conns_lock:
            self._conns.remove(conn)
        with contextlib.suppress(sqlite3.Error):
            conn.close()

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        if self._closed:
            raise CandgenError(f"state store {self.url} is closed")
        # isolation_level=None: we issue BEGIN/COMMIT ourselves; check_same_thread=False only so that
        # close() may close every thread's connection; each is used by its own thread alone.
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
        self._local.conn = conn
        with self._conns_lock:
            self._conns.append(conn)
        return conn

    def append(self, records: list[Record]) -> list[str]:
        self._stamp(records)
        now = time.time()
        rows = [(r.kind, r.origin, encode(r).decode(), now) for r in records]
        if not rows:
            return []
        conn = self._conn()
        try:
            # IMMEDIATE takes the write lock up front, so the rowids of this call are consecutive: with
            # AUTOINCREMENT each new seq is one more than the largest ever, and nobody else can insert.
            with _immediate(conn):
                conn.executemany("INSERT INTO log (kind, origin, data, at) VALUES (?, ?, ?, ?)", rows)
                last = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
        except sqlite3.Error as e:
            raise StateUnavailable(f"state backend unavailable: cannot append to {self.path}: {e}") from None
        seqs = [str(s) for s in range(last - len(rows) + 1, last + 1)]
        for r, s in zip(records, seqs, strict=True):
            r.seq = s
        return seqs

    def read_since(self, cursor: str | None, limit: int = 10_000) -> tuple[list[Record], str | None]:
        after = parse_int_cursor(cursor)
        check_limit(limit)
        try:
            rows = self._conn().execute(_READ_CHECKED if cursor else _READ, (after, limit)).fetchall()
        except sqlite3.Error as e:
            raise StateUnavailable(f"state backend unavailable: cannot read {self.path}: {e}") from None
        if not rows:
            return [], cursor
        if rows[0][0] == -1:
            raise LogGap(str(cursor), str(rows[0][3]))
        out = [Record(kind=k, data=orjson.loads(d), origin=o, seq=str(s)) for s, k, o, d in rows]
        return out, out[-1].seq

    def tail_cursor(self) -> str | None:
        try:
            row = self._conn().execute("SELECT max(seq) FROM log").fetchone()
        except sqlite3.Error as e:
            raise StateUnavailable(f"state backend unavailable: cannot read {self.path}: {e}") from None
        return None if row[0] is None else str(row[0])

    def trim(self, upto: str) -> int:
        last = parse_int_cursor(upto)
        try:
            conn = self._conn()
            with _immediate(conn):
                newest = conn.execute("SELECT max(seq) FROM log").fetchone()[0]
                if newest is None:
                    return 0
                upto_seq = min(last, int(newest))  # never mark seqs not yet assigned as trimmed
                n = conn.execute("DELETE FROM log WHERE seq <= ?", (upto_seq,)).rowcount
                conn.execute("INSERT INTO marks (name, value) VALUES ('trimmed', ?) ON CONFLICT(name) "
                             "DO UPDATE SET value = max(value, excluded.value)", (upto_seq,))
        except sqlite3.Error as e:
            raise StateUnavailable(f"state backend unavailable: cannot trim {self.path}: {e}") from None
        return int(n)

    def _scalar(self, sql: str, what: str) -> Any:
        try:
            row = self._conn().execute(sql).fetchone()
        except sqlite3.Error as e:
            raise StateUnavailable(f"state backend unavailable: cannot {what} {self.path}: {e}") from None
        return None if row is None else row[0]

    def trimmed_upto(self) -> str | None:
        value = self._scalar("SELECT value FROM marks WHERE name = 'trimmed'", "read")
        return None if value is None else str(value)

    def appended(self) -> int:
        # AUTOINCREMENT keeps the largest seq ever assigned; appends are consecutive (one writer at a time)
        return int(self._scalar("SELECT seq FROM sqlite_sequence WHERE name = 'log'", "read") or 0)

    # -- blobs: files beside the journal --------------------------------------------------------------

    def put_blob(self, name: str, data: bytes) -> None:
        check_blob_name(name)
        d = self.blob_dir
        tmp = d / f".{name}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            d.mkdir(parents=True, exist_ok=True)
            self._sweep_tmp()
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, d / name)  # atomic: readers see the old or the new file, never half of one
            fd = os.open(d, os.O_RDONLY)
            try:
                os.fsync(fd)  # the rename itself survives a crash
            finally:
                os.close(fd)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise StateUnavailable(f"state backend unavailable: cannot write {d / name}: {e}") from None

    def _sweep_tmp(self) -> None:
        cutoff = time.time() - STALE_TMP_S
        for f in self.blob_dir.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                if f.stat().st_mtime < cutoff:
                    f.unlink()

    def get_blob(self, name: str) -> bytes | None:
        path = self.blob_dir / check_blob_name(name)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StateUnavailable(f"state backend unavailable: cannot read {path}: {e}") from None

    def list_blobs(self, prefix: str = "") -> list[str]:
        try:
            names = os.listdir(self.blob_dir)
        except FileNotFoundError:
            return []
        except OSError as e:
            raise StateUnavailable(f"state backend unavailable: cannot list {self.blob_dir}: {e}") from None
        return sorted(n for n in names if n.startswith(prefix) and not n.startswith("."))

    def delete_blob(self, name: str) -> None:
        path = self.blob_dir / check_blob_name(name)
        try:
            path.unlink(missing_ok=True)
        except OSError as e:
            raise StateUnavailable(f"state backend unavailable: cannot delete {path}: {e}") from None

    # -- the log lease (shared by every process on the file) ------------------------------------------

    def try_log_lease(self, name: str, ttl_s: float) -> bool:
        """One holder at a time among the processes sharing this journal; False when it cannot be read."""
        ttl = check_ttl(ttl_s)
        now = time.time()  # wall clock: the processes share no monotonic clock
        try:
            conn = self._conn()
            with _immediate(conn):
                row = conn.execute("SELECT holder, until FROM leases WHERE name = ?", (name,)).fetchone()
                if row is not None and row[0] != self.worker_id and row[1] > now:
                    return False
                conn.execute("INSERT INTO leases (name, holder, until) VALUES (?, ?, ?) ON CONFLICT(name) DO UPDATE "
                             "SET holder = excluded.holder, until = excluded.until", (name, self.worker_id, now + ttl))
        except (sqlite3.Error, CandgenError):
            return False
        return True

    def release_log_lease(self, name: str) -> None:
        with contextlib.suppress(sqlite3.Error, CandgenError):
            conn = self._conn()
            with _immediate(conn):
                conn.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, self.worker_id))

    def cache(self, level: str) -> Cache:
        return self._caches[check_level(level)]

    def close(self) -> None:
        self._closed = True
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for c in conns:
            # another thread may be mid-statement: its connection then dies with the process
            with contextlib.suppress(sqlite3.Error):
                c.close()
        self._local = threading.local()

    def health(self) -> bool:
        try:
            self._conn().execute("SELECT 1").fetchone()
            return True
        except (sqlite3.Error, CandgenError):
            return False


def _open(parts: SplitResult, *, url: str, worker_id: str, cache_config: CacheConfig, **_: Any) -> StateStore:
    path = url_path(parts, url)
    query = parse_qs(parts.query)
    unknown = set(query) - {"synchronous"}
    if unknown:
        raise CandgenError(f"state URL {url!r}: unknown option(s) {sorted(unknown)}; known: synchronous")
    sync = query.get("synchronous", ["normal"])[-1].lower()
    return SQLiteStore(path, worker_id=worker_id, synchronous=sync, cache_config=cache_config)


register("sqlite", _open)
register("file", _open)
