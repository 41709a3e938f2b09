"""Events accepted while the shared log is unreachable: a local, durable spool that is appended to the log
once the backend answers again, so that an outage of the shared state (Redis down or partitioned) fails no
event write and loses no event.

    spool = EventSpool(art / "spool", worker_id=store.worker_id, max_records=1_000_000)
    spool.add(records)                 # the append failed: keep them here (fsync'd SQLite), apply them locally
    SpoolFlusher(spool, store).start() # every 0.5 s: append what is spooled, oldest first, then forget it

Each worker spools to its own SQLite file (`<worker_id>.sqlite3`) and holds an exclusive `flock` on it while
it lives. A flusher appends its own file and any file whose lock is free: the spool of a worker that died
before the backend came back, so a restart (or any other worker on the machine) delivers it. Records keep
their `origin`, the worker that accepted and applied them: when they reach the log, that worker's follower
skips them (already applied) and every other worker applies them on its next catch-up.

Only events are spooled: they need no validation against what other workers wrote (item and user writes
do, and still answer 503 during an outage). Delivery is at least once: an append whose reply was lost in
the outage (it did reach the log) is appended again, and the record counts twice. Thread-safe.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Self

import orjson

from candgen.errors import CandgenError
from candgen.state.base import Record, StateStore, StateUnavailable
from candgen.state.jobs import _PeriodicJob

log = logging.getLogger(__name__)

BATCH = 1000  # records per append when flushing


class SpoolFull(CandgenError):
    """The spool holds `max_records` already: the write is refused (503), nothing was written."""


def _lock(path: Path) -> IO[bytes] | None:
    """An exclusive, non-blocking flock on `path` (created if missing); None when another process holds it."""
    f = open(path, "ab")  # noqa: SIM115 - held open for the owner's lifetime
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")  # an accepted event survives a power cut, not only a crash
    db.execute("CREATE TABLE IF NOT EXISTS spool (id INTEGER PRIMARY KEY, kind TEXT, origin TEXT, data BLOB)")
    return db


class EventSpool:
    """This worker's spool file in `directory`, and the delivery of every unlocked spool file there."""

    def __init__(self, directory: str | Path, *, worker_id: str, max_records: int = 1_000_000) -> None:
        if max_records < 1:
            raise ValueError(f"max_records must be >= 1, got {max_records}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_records = max_records
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", worker_id)
        self.path = self.directory / f"{name}.sqlite3"
        self._guard = _lock(self.path.with_suffix(".lock"))
        if self._guard is None:
            raise CandgenError(f"spool {self.path} is locked by another process (two workers with one worker id?)")
        self._db = _connect(self.path)
        self._lock = threading.Lock()
        self._count = int(self._db.execute("SELECT COUNT(*) FROM spool").fetchone()[0])
        self.flushed = 0  # records delivered to the log by this process, from any spool file

    def pending(self) -> int:
        """Records in this worker's own spool, not yet in the log."""
        return self._count

    def add(self, records: list[Record]) -> None:
        """Keep `records` (with their origin) durably; raises `SpoolFull` (and keeps none) beyond `max_records`."""
        rows = [(r.kind, r.origin, orjson.dumps(r.data)) for r in records]
        with self._lock:
            if self._count + len(rows) > self.max_records:
                raise SpoolFull(f"the event spool holds {self._count:,} records (max {self.max_records:,}) while "
                                "the state backend is unavailable; nothing was written")
            with self._db:  # one transaction: all or none
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany("INSERT INTO spool (kind, origin, data) VALUES (?, ?, ?)", rows)
            self._count += len(rows)

    def flush(self, store: StateStore) -> int:
        """Append every spooled record to `store`'s log, oldest first: this worker's own, then those of any
        spool file no live process holds (deleted once empty). Stops at the first failed append (the rest
        stays for the next call). Returns how many records were delivered."""
        total = 0
        with self._lock:  # adds wait meanwhile, so the count stays exact
            if self._count:
                try:
                    total = self._drain(self._db, store)
                finally:
                    self._count = int(self._db.execute("SELECT COUNT(*) FROM spool").fetchone()[0])
        for path in sorted(self.directory.glob("*.sqlite3")):
            if path == self.path:
                continue
            guard = _lock(path.with_suffix(".lock"))
            if guard is None:  # a live worker's spool: its own flusher delivers it
                continue
            try:
                db = _connect(path)
                try:
                    total += self._drain(db, store)
                    empty = db.execute("SELECT COUNT(*) FROM spool").fetchone()[0] == 0
                finally:
                    db.close()
                if empty:
                    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), path.with_suffix(".lock")):
                        p.unlink(missing_ok=True)
            finally:
                guard.close()
        return total

    def _drain(self, db: sqlite3.Connection, store: StateStore) -> int:
        n = 0
        while True:
            rows = db.execute("SELECT id, kind, origin, data FROM spool ORDER BY id LIMIT ?", (BATCH,)).fetchall()
            if not rows:
                return n
            store.append([Record(kind=k, data=orjson.loads(d), origin=o) for _, k, o, d in rows])
            db.execute("DELETE FROM spool WHERE id <= ?", (rows[-1][0],))
            n += len(rows)
            self.flushed += len(rows)

    def close(self) -> None:
        with self._lock:
            self._db.close()
            if self._guard is not None:
                self._guard.close()
                self._guard = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SpoolFlusher(_PeriodicJob):
    """Every `period_s`, `spool.flush(store)` (a no-op without spooled records); an outage still in progress
    is expected, not an error: the records wait for the next round."""

    _thread_name = "candgen-spool"
    _what = "event spool flush"

    def __init__(self, spool: EventSpool, store: StateStore, *, period_s: float = 0.5) -> None:
        self.spool, self.store, self.period_s = spool, store, period_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0

    def _period(self) -> float:
        return self.period_s

    def run_once(self) -> int:
        try:
            n = self.spool.flush(self.store)
        except StateUnavailable:
            return 0
        if n:
            log.warning("delivered %d spooled events to the shared log", n)
        return n


def spool_dir(art: Path | None, configured: str) -> Path | None:
    """Where the spool lives: `state.spool_dir` when set, else `<artifacts>/spool`; None without either."""
    if configured:
        return Path(os.path.expanduser(configured))
    return None if art is None else Path(art) / "spool"


class Spooler:
    """What the engine holds: its `EventSpool` and the flusher thread delivering it."""

    def __init__(self, spool: EventSpool, store: StateStore, *, period_s: float = 0.5) -> None:
        self.spool, self.store = spool, store
        self.accepted = 0  # events this process spooled
        self.flusher = SpoolFlusher(spool, store, period_s=period_s).start()

    @staticmethod
    def open(store: StateStore, art: Path | None, *, enabled: bool, directory: str,
             max_records: int) -> Spooler | None:
        """A spooler for this worker, or None (turned off, or no place to keep the spool)."""
        where = spool_dir(art, directory)
        if not enabled or where is None:
            return None
        try:
            spool = EventSpool(where, worker_id=store.worker_id, max_records=max_records)
        except (OSError, sqlite3.Error) as e:  # e.g. read-only artifacts: serve on, without the spool
            log.warning("no event spool in %s (%s): event writes answer 503 while the state backend is down",
                        where, e)
            return None
        return Spooler(spool, store)

    def accept(self, records: list[Record], apply: Callable[[list[Record]], object]) -> int:
        """The append of `records` failed: spool them as this worker's (`SpoolFull` when full; nothing kept),
        then `apply` them here at once. Returns how many."""
        for r in records:
            r.origin = self.store.worker_id  # delivered later, skipped by this worker's follower
        self.spool.add(records)
        apply(records)
        self.accepted += len(records)
        return len(records)

    def flush_now(self) -> int:
        """Deliver what is spooled now (before a reload replays the log); 0 while the backend is down."""
        try:
            return self.spool.flush(self.store)
        except StateUnavailable:
            return 0

    def stats(self) -> dict[str, int]:
        return {"spool_pending": self.spool.pending(), "spool_accepted": self.accepted,
                "spool_delivered": self.spool.flushed, "spool_flush_errors": self.flusher.errors}

    def close(self) -> None:
        """Stop the flusher, deliver what can be delivered, close the file (what is left stays on disk for
        the next worker to deliver)."""
        self.flusher.stop()
        self.flush_now()
        self.spool.close()
