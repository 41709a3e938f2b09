"""Keeps one worker's in-process structures in step with the shared log (the engine's side of the protocol).

    follower = LogFollower(store, apply=engine.apply_record)
    follower.replay()                        # at start: every record, whoever wrote it
    follower.write([Record(kind="event", data={...})])   # a write endpoint: append, then apply here
    follower.catch_up()                      # at the start of every request: what other workers wrote

`write` applies the records locally right after the store acknowledged them, and `catch_up` skips records
whose origin is this worker, so nothing is applied twice. `catch_up` holds a lock while it reads and
applies, so a request that starts after another worker's append returned always sees it. Requests that
queue behind the lock share reads: when the read that just finished began after this request arrived,
it already covers every write acknowledged before the request, so the request does not read again
(under load, one round trip serves many requests).

After a snapshot, the log is trimmed. A follower whose cursor falls before the trimmed range (a worker that
lagged behind) gets `LogGap` from the store: `catch_up` then returns -1 (served from what it has, like an
outage), sets `gap` and calls `on_gap(gap)` (on every such read: the owner starts one recovery at a time),
so that the owner reloads from the snapshot in the background and sets a fresh `cursor` (which clears
`gap`). `replay` lets `LogGap` propagate.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from candgen.state.base import LogGap, Record, StateStore, StateUnavailable

log = logging.getLogger(__name__)


class LogFollower:
    """Replays and follows `store`'s log into `apply(record)`; thread-safe, and calls `apply` from one
    thread at a time (under its lock), though not always the same thread.

    A record whose `apply` raises is logged, counted in `apply_errors` and skipped (one bad record must
    not wedge every later request); a backend outage makes `catch_up` return -1 and count
    `read_errors` (the request is served from what this worker has), while `write` raises
    `StateUnavailable` so the HTTP layer answers 503.
    """

    def __init__(self, store: StateStore, apply: Callable[[Record], None], *, page: int = 10_000,
                 on_gap: Callable[[LogGap], None] | None = None) -> None:
        self.store, self.apply, self.page, self.on_gap = store, apply, page, on_gap
        self._cursor: str | None = None
        self._lock = threading.Lock()
        self.applied = self.apply_errors = self.read_errors = self.gaps = 0
        self.reads = self.shared_reads = 0
        self.gap: LogGap | None = None  # set while this follower's cursor is before the trimmed range
        self._last_read_started = 0  # time.monotonic_ns() when the latest catch-up read began

    @property
    def cursor(self) -> str | None:
        """The seq of the last record read; setting it (after a reload from a snapshot) clears `gap`."""
        return self._cursor

    @cursor.setter
    def cursor(self, value: str | None) -> None:
        self._cursor, self.gap = value, None

    @property
    def lock(self) -> threading.Lock:
        """Held while records are read and applied: hold it to swap what `apply` writes to."""
        return self._lock

    @property
    def records_read(self) -> int:
        """Records handed to `apply`, applied or not (a snapshot counts the records it folds in)."""
        return self.applied + self.apply_errors

    def _apply_all(self, records: list[Record], *, skip_own: bool) -> int:
        n = 0
        for r in records:
            if skip_own and r.origin == self.store.worker_id:
                continue
            try:
                self.apply(r)
                n += 1
            except Exception:
                self.apply_errors += 1
                log.exception("could not apply state record %s (%s)", r.seq, r.kind)
        self.applied += n
        return n

    def apply_local(self, records: list[Record]) -> int:
        """Apply records that are not (yet) in the log here, under the lock (events spooled in an outage)."""
        with self._lock:
            return self._apply_all(records, skip_own=False)

    def replay(self) -> int:
        """Apply the log after `cursor` (None: all of it that is left, at start-up); returns how many records
        were applied. Afterwards `cursor` is never None, so that a later trim of records this follower has
        not read is noticed (`LogGap`) rather than skipped: on an empty log it is the trim mark read before
        the first read (what was trimmed then is knowingly left out), or the store's origin cursor."""
        with self._lock:
            floor = None if self._cursor is not None else (self.store.trimmed_upto() or self.store.origin_cursor())
            total = 0
            while True:
                records, cursor = self.store.read_since(self._cursor, limit=self.page)
                if not records:
                    if self._cursor is None:
                        self._cursor = floor
                    return total
                total += self._apply_all(records, skip_own=False)
                self._cursor = cursor

    def catch_up(self) -> int:
        """Apply what other workers appended since the last call; -1 when the backend is unreachable."""
        arrived = time.monotonic_ns()
        with self._lock:
            if self._last_read_started > arrived:  # a read that began after we arrived has just finished
                self.shared_reads += 1
                return 0
            self._last_read_started = time.monotonic_ns()
            self.reads += 1
            total = 0
            while True:
                try:
                    records, cursor = self.store.read_since(self._cursor, limit=self.page)
                except StateUnavailable:
                    self.read_errors += 1
                    self._last_read_started = 0  # a failed read covers nobody: queued requests try again
                    return -1
                except LogGap as gap:
                    self._last_read_started = 0
                    self._gap(gap)
                    return -1
                if not records:
                    return total
                total += self._apply_all(records, skip_own=True)
                self._cursor = cursor
                if len(records) < self.page:
                    return total

    def _gap(self, gap: LogGap) -> None:
        if self.gap is None:
            self.gaps += 1
            log.warning("%s", gap)
        self.gap = gap
        if self.on_gap is not None:
            try:
                self.on_gap(gap)
            except Exception:  # the owner's recovery failing to start must not fail the request
                log.exception("the log-gap handler failed")

    def write(self, records: list[Record]) -> list[str]:
        """Append (durable and visible to every worker on return), then apply here. Returns the seqs."""
        seqs = self.store.append(records)
        with self._lock:  # one thread applies at a time, so `apply` need not be thread-safe itself
            self._apply_all(records, skip_own=False)
        return seqs
