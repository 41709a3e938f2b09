"""AdmissionGate: slots, first-come-first-served queueing, refusal on arrival and after waiting too long."""

from __future__ import annotations

import threading
import time

import pytest

from candgen.admission import AdmissionGate
from candgen.serve.protocol import EngineOverloadedError


def hold(gate: AdmissionGate, release: threading.Event, log: list[str], name: str) -> threading.Thread:
    """A thread that takes a slot, logs its name and keeps the slot until `release` is set."""

    def run() -> None:
        try:
            with gate.admit():
                log.append(name)
                release.wait(timeout=5.0)
        except EngineOverloadedError:
            log.append(f"{name} refused")

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def wait_until(cond, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        time.sleep(0.001)


def test_no_slots_means_no_gate():
    gate = AdmissionGate(0, budget_s=0.01)
    with gate.admit(), gate.admit(), gate.admit():
        assert gate.expected_wait() == 0.0
    assert gate.stats()["admission_shed"] == 0


def test_waiters_are_admitted_in_arrival_order_as_slots_free():
    gate = AdmissionGate(1, budget_s=5.0, initial_service_s=0.001)
    releases = [threading.Event() for _ in range(3)]
    log: list[str] = []
    threads = [hold(gate, releases[0], log, "a")]
    wait_until(lambda: log == ["a"])
    for i, name in ((1, "b"), (2, "c")):  # queue b, then c
        threads.append(hold(gate, releases[i], log, name))
        wait_until(lambda i=i: gate.waiting == i)
    assert gate.expected_wait() == pytest.approx(3 * gate.service_s)
    releases[0].set()
    wait_until(lambda: log == ["a", "b"])
    releases[1].set()
    wait_until(lambda: log == ["a", "b", "c"])
    releases[2].set()
    for t in threads:
        t.join(timeout=5.0)
    st = gate.stats()
    assert st["admission_admitted"] == 3 and st["admission_queued"] == 2 and st["admission_busy"] == 0
    assert st["admission_wait_seconds"] > 0


def test_a_request_is_refused_on_arrival_when_the_queue_is_deeper_than_the_budget():
    gate = AdmissionGate(1, budget_s=0.1, initial_service_s=0.04)
    release = threading.Event()
    log: list[str] = []
    t = hold(gate, release, log, "a")
    wait_until(lambda: log == ["a"])
    waiter = hold(gate, release, log, "b")  # expected wait 40 ms + 40 ms of its own: within 100 ms, queued
    wait_until(lambda: gate.waiting == 1)
    # 2 x 40 ms queued ahead + 40 ms of its own > 100 ms
    with pytest.raises(EngineOverloadedError, match="1 requests queued for 1 computation slots"), gate.admit():
        pass
    assert gate.stats()["admission_shed"] == 1 and gate.waiting == 1
    release.set()
    t.join(timeout=5.0)
    waiter.join(timeout=5.0)
    assert log == ["a", "b"]


def test_a_waiter_gives_up_its_place_after_the_budget():
    gate = AdmissionGate(1, budget_s=0.05, initial_service_s=0.001)
    release = threading.Event()
    log: list[str] = []
    t = hold(gate, release, log, "a")
    wait_until(lambda: log == ["a"])
    with pytest.raises(EngineOverloadedError, match="no computation slot within 50 ms"), gate.admit():
        pass
    assert gate.waiting == 0 and gate.stats()["admission_shed"] == 1
    release.set()
    t.join(timeout=5.0)
    with gate.admit():  # the slot came back although its waiter had left
        assert gate.stats()["admission_busy"] == 1


def test_the_mean_computation_time_follows_the_computations():
    gate = AdmissionGate(2, budget_s=1.0, initial_service_s=1.0)
    for _ in range(100):
        with gate.admit():
            pass
    assert gate.service_s < 0.01


def test_bad_arguments():
    with pytest.raises(ValueError, match="slots"):
        AdmissionGate(-1, budget_s=1.0)
    with pytest.raises(ValueError, match="budget_s"):
        AdmissionGate(1, budget_s=0.0)
