"""Admission control for the uncached request path: at most N list computations at once, the rest queued in
arrival order, and a request refused at once (503 + Retry-After) when its wait would eat its deadline.

Why: a worker is one Python process, so its sources and blend share one GIL and the machine's cores. With
more computations in flight than that, each one runs slower in proportion, and every source misses the
deadline that would have been ample alone: under 8 concurrent clients most answers came back degraded (a
source dropped). Queueing *before* a computation starts costs the same wall time, but each admitted
computation then runs at full speed and keeps its sources; a queue too deep to drain within the request's
deadline means the worker is overloaded, and refusing the request lets the client (or the load balancer)
retry elsewhere instead of getting a late or partial list.

    gate = AdmissionGate(slots=2, budget_s=0.1)
    with gate.admit():           # EngineOverloadedError when the expected wait exceeds the budget
        compute()

Thread-safety: every method may be called from many threads at once.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from candgen.serve.protocol import EngineOverloadedError

EWMA_WEIGHT = 0.05  # weight of the newest computation in the running mean of computation times


class AdmissionGate:
    """`slots` computations at once; later arrivals wait first come, first served.

    A request is refused with `EngineOverloadedError` when, on arrival, the expected wait (the computations
    queued ahead of it, plus itself, times the running mean computation time, divided by the slots) plus one
    computation exceeds `budget_s`, or when it has waited `budget_s` without being admitted. `slots=0`
    admits everything at once (no gate).
    """

    def __init__(self, slots: int, budget_s: float, *, initial_service_s: float = 0.005) -> None:
        if slots < 0:
            raise ValueError(f"slots must be >= 0, got {slots}")
        if budget_s <= 0:
            raise ValueError(f"budget_s must be > 0, got {budget_s}")
        self.slots, self.budget_s = slots, budget_s
        self.service_s = initial_service_s  # running mean of a computation's wall time
        self._lock = threading.Lock()
        self._busy = 0
        self._queue: collections.deque[threading.Event] = collections.deque()
        self.admitted = 0
        self.queued = 0  # admitted after waiting
        self.shed = 0
        self.wait_s = 0.0  # total time admitted requests waited

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def expected_wait(self) -> float:
        """Seconds a request arriving now would wait (0 with a free slot and nobody queued)."""
        with self._lock:
            return self._expected_wait()

    def _expected_wait(self) -> float:
        if self.slots == 0 or (self._busy < self.slots and not self._queue):
            return 0.0
        return (len(self._queue) + 1) * self.service_s / self.slots

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Hold a slot for the duration of the block (waiting for one first, or refused)."""
        if self.slots == 0:
            yield
            return
        t_arrive = time.perf_counter()
        self._acquire(t_arrive)
        t_start = time.perf_counter()
        try:
            yield
        finally:
            self._release(time.perf_counter() - t_start)

    def _acquire(self, t_arrive: float) -> None:
        with self._lock:
            if self._busy < self.slots and not self._queue:
                self._busy += 1
                self.admitted += 1
                return
            wait = self._expected_wait()
            if wait + self.service_s > self.budget_s:
                self.shed += 1
                raise EngineOverloadedError(
                    f"overloaded: {len(self._queue)} requests queued for {self.slots} computation slots "
                    f"(~{1000 * wait:.0f} ms wait, deadline {1000 * self.budget_s:.0f} ms); retry shortly")
            turn = threading.Event()
            self._queue.append(turn)
        if not turn.wait(self.budget_s):
            with self._lock:
                if not turn.is_set():  # still queued: give up our place
                    self._queue.remove(turn)
                    self.shed += 1
                    raise EngineOverloadedError(
                        f"overloaded: no computation slot within {1000 * self.budget_s:.0f} ms; retry shortly")
        with self._lock:  # the slot was handed over by `_release` (busy count unchanged)
            self.admitted += 1
            self.queued += 1
            self.wait_s += time.perf_counter() - t_arrive

    def _release(self, took_s: float) -> None:
        with self._lock:
            self.service_s += EWMA_WEIGHT * (took_s - self.service_s)
            if self._queue:
                self._queue.popleft().set()  # hand this slot straight to the longest waiter
            else:
                self._busy -= 1

    def stats(self) -> dict[str, float]:
        with self._lock:
            return {"admission_slots": self.slots, "admission_busy": self._busy, "admission_waiting": len(self._queue),
                    "admission_admitted": self.admitted, "admission_queued": self.queued,
                    "admission_shed": self.shed, "admission_wait_seconds": self.wait_s,
                    "admission_service_seconds": self.service_s}
