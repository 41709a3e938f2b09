"""Background jobs on the state: the L3 refresher, which precomputes candidate lists for the most active users,
and the snapshot job, which folds the shared log into snapshots (candgen.snapshot) and trims it.

    refresher = L3Refresher(store=store, compute=engine_list_bytes, config=cfg.cache).start()
    refresher.note_activity("u42")        # the engine, on every request or event of a user
    ...
    refresher.stop()

Every `config.l3_refresh_s` seconds the thread takes the most active `l3_top_fraction` of the users noted
(counts halve after each round, so activity ages out), calls `compute(user_id) -> bytes` for each and
writes `store.cache("L3")` with a TTL of twice the period, so entries outlive one missed round.

Several workers: activity is counted per worker process. With Redis (shared caches) only the holder of
the `l3` lease (`StateStore.try_lease`, a `SET NX PX` in Redis) refreshes; its counts are a fair sample
of everyone's traffic because requests are spread over the workers. With the embedded backends caches
are per process, so every process refreshes its own (the default lease is always granted).
"""

from __future__ import annotations

import abc
import logging
import math
import threading
from collections.abc import Callable
from typing import Self

from candgen.config import CacheConfig
from candgen.errors import CandgenError
from candgen.state.base import StateStore

log = logging.getLogger(__name__)

LEASE = "l3"


class _PeriodicJob(abc.ABC):
    """A daemon thread that calls `run_once` every `_period()` seconds until `stop`; an exception is logged
    and counted in `errors` and never ends the thread. Subclasses set `_stop`, `_thread` and `errors`."""

    _thread_name: str = "candgen-job"
    _what: str = "background job"
    _stop: threading.Event
    _thread: threading.Thread | None
    errors: int

    @abc.abstractmethod
    def _period(self) -> float:
        """Seconds between two rounds."""

    @abc.abstractmethod
    def run_once(self) -> object:
        """One round of the job (also called directly by tests and commands)."""

    def _loop(self) -> None:
        while not self._stop.wait(self._period()):
            try:
                self.run_once()
            except Exception:  # a broken store or a bad round must not end the thread: try again next period
                self.errors += 1
                log.exception("%s failed", self._what)

    def start(self) -> Self:
        if self._thread is not None:
            raise CandgenError(f"the {self._what} is already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=self._thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask the thread to stop and wait for it (up to `timeout_s`; a round in progress finishes first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None


class L3Refresher(_PeriodicJob):
    """A daemon thread refreshing L3 every `config.l3_refresh_s` seconds; `run_once()` does one round now.

    `note_activity` is thread-safe and O(1). Exceptions raised by `compute` are logged and counted in
    `errors`, and never stop the thread.
    """

    def __init__(self, *, store: StateStore, compute: Callable[[str], bytes], config: CacheConfig | None = None,
                 max_tracked_users: int = 1_000_000) -> None:
        self.config = config or CacheConfig()
        if not self.config.l3_refresh_s > 0:
            raise CandgenError(f"cache.l3_refresh_s must be > 0 seconds, got {self.config.l3_refresh_s}")
        if not 0 <= self.config.l3_top_fraction <= 1:
            raise CandgenError(f"cache.l3_top_fraction must be within [0, 1], got {self.config.l3_top_fraction}")
        self.store, self.compute, self.max_tracked_users = store, compute, max_tracked_users
        self._activity: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.rounds = self.refreshed = self.errors = self.skipped_rounds = 0

    def note_activity(self, user_id: str, weight: float = 1.0) -> None:
        with self._lock:
            self._activity[user_id] = self._activity.get(user_id, 0.0) + weight

    def top_users(self) -> list[str]:
        """The most active `l3_top_fraction` of the users noted, most active first."""
        with self._lock:
            items = list(self._activity.items())
        n = math.ceil(len(items) * self.config.l3_top_fraction)
        items.sort(key=lambda kv: (-kv[1], kv[0]))
        return [u for u, _ in items[:n]]

    def _age(self) -> None:
        # halve every count and forget users whose activity has faded, to bound memory
        with self._lock:
            aged = {u: c / 2 for u, c in self._activity.items() if c / 2 >= 0.25}
            if len(aged) > self.max_tracked_users:
                keep = sorted(aged.items(), key=lambda kv: -kv[1])[: self.max_tracked_users]
                aged = dict(keep)
            self._activity = aged

    def run_once(self) -> int:
        """One refresh round (if this worker holds the lease); returns how many L3 entries were written."""
        period = self.config.l3_refresh_s
        if not self.store.try_lease(LEASE, ttl_s=period * 1.5):
            self.skipped_rounds += 1
            return 0
        cache, ttl = self.store.cache("L3"), 2 * period
        written = 0
        for user in self.top_users():
            if self._stop.is_set():
                break
            try:
                value = self.compute(user)
                cache.set(user, value, ttl_s=ttl)
                written += 1
            except Exception:
                self.errors += 1
                log.exception("L3 refresh failed for user %r", user)
        self._age()
        self.rounds += 1
        self.refreshed += written
        return written

    _thread_name, _what = "candgen-l3-refresh", "L3 refresher"

    def _period(self) -> float:
        return self.config.l3_refresh_s

    def stats(self) -> dict[str, int]:
        with self._lock:
            tracked = len(self._activity)
        return {"rounds": self.rounds, "refreshed": self.refreshed, "errors": self.errors,
                "skipped_rounds": self.skipped_rounds, "tracked_users": tracked}


class SnapshotJob(_PeriodicJob):
    """A daemon thread that snapshots the shared log: every `check_s` seconds, when `due()` says so, it calls
    `take()` (which holds the snapshot lease itself, so one worker at a time snapshots; it returns None when
    another worker holds it). `run_once()` does one check now.

    Exceptions from `due` or `take` are logged and counted in `errors` and never stop the thread.
    """

    def __init__(self, *, due: Callable[[], bool], take: Callable[[], object | None], check_s: float) -> None:
        if not check_s > 0:
            raise CandgenError(f"state.snapshot_check_s must be > 0 seconds, got {check_s}")
        self.due, self.take, self.check_s = due, take, check_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.checks = self.taken = self.busy = self.errors = 0

    def run_once(self) -> bool:
        """One check; True when this call took a snapshot."""
        self.checks += 1
        if not self.due():
            return False
        if self.take() is None:
            self.busy += 1
            return False
        self.taken += 1
        return True

    _thread_name, _what = "candgen-snapshot", "snapshot job"

    def _period(self) -> float:
        return self.check_s

    def stats(self) -> dict[str, int]:
        return {"checks": self.checks, "taken": self.taken, "busy": self.busy, "errors": self.errors}
