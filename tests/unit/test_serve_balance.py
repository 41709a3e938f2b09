"""Keep-alive connections spread over workers (`candgen.serve.balance`): the counting, the rule, the header."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from serve_fakes import wait_until_ready

from candgen.bench.service import free_port
from candgen.serve import factory
from candgen.serve.balance import BALANCE_ENV, BalancingMiddleware, ConnectionBalancer

HERE = Path(__file__).parent


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def clients(n: int, port0: int = 40000) -> list[tuple[str, int]]:
    return [("127.0.0.1", port0 + i) for i in range(n)]


def test_a_worker_over_its_fair_share_closes_half_the_excess_per_interval_until_even(tmp_path: Path) -> None:
    clock = Clock()
    busy = ConnectionBalancer(tmp_path, name="busy", clock=clock)
    idle = ConnectionBalancer(tmp_path, name="idle", clock=clock)
    here, there = clients(8), [("10.0.0.1", 1)]
    splits, closes = [], []
    for _ in range(16):  # rounds of one publish interval; every client sends a request each round
        assert not any(idle.note(c) for c in there)
        moved = [c for c in list(here) if busy.note(c)]
        here = [c for c in here if c not in moved]
        there += [("10.0.0.2", 100 + len(there) + i) for i in range(len(moved))]  # they reconnect to the idle one
        splits.append((len(here), len(there)))
        closes.append(len(moved))
        clock.t += 0.25
    assert sum(closes[:4]) == 0  # the first window only counts
    assert 0 < closes[4] <= 2  # then half the excess (8/1: fair 5, excess 3) per interval
    assert abs(splits[-1][0] - splits[-1][1]) <= 1 and sum(closes[-6:]) == 0  # even, and it stays so
    assert busy.closed == sum(closes) <= 5 and idle.closed == 0


def test_balanced_workers_close_nothing_and_a_lone_connection_is_kept(tmp_path: Path) -> None:
    clock = Clock()
    a = ConnectionBalancer(tmp_path, name="a", clock=clock)
    b = ConnectionBalancer(tmp_path, name="b", clock=clock)
    for _ in range(6):
        assert not any(a.note(c) for c in clients(4, 2000))
        assert not any(b.note(c) for c in clients(4, 1000))
        clock.t += 0.25
    (tmp_path / "solo").mkdir()
    (tmp_path / "solo" / "other").write_text("0")
    solo = ConnectionBalancer(tmp_path / "solo", name="s", clock=clock)
    for _ in range(3):
        assert not solo.note(("h", 1))  # one connection is never given up, whatever the share says
        clock.t += 0.25


def test_a_tenth_over_the_fair_share_is_tolerated(tmp_path: Path) -> None:
    clock = Clock()
    w = ConnectionBalancer(tmp_path, name="w", clock=clock)
    (tmp_path / "peer").write_text("45")
    for _ in range(6):  # 55 here, 45 there: fair 50 plus 5 of slack
        os.utime(tmp_path / "peer")
        assert not any(w.note(c) for c in clients(55))
        clock.t += 0.25
    (tmp_path / "peer").write_text("40")
    clock.t += 2.0  # the 55 went quiet; 60 others arrive (the first of them publishes a count of 1)
    assert not any(w.note(c) for c in clients(60, 50000))
    clock.t += 0.25
    closes = sum(w.note(c) for c in clients(60, 50000))  # 60 against 40: fair 50, slack 5, excess 5 → half: 3
    assert closes == 3


def test_idle_connections_leave_the_count_and_stale_or_garbled_workers_are_ignored(tmp_path: Path) -> None:
    clock = Clock()
    w = ConnectionBalancer(tmp_path, name="w", clock=clock, window_s=1.0)
    (tmp_path / "stopped").write_text("50")
    old = time.time() - 10
    os.utime(tmp_path / "stopped", (old, old))  # a worker that stopped publishing: not counted
    (tmp_path / "garbled").write_text("many")  # unreadable: skipped
    assert not any(w.note(c) for c in clients(6))  # alone in effect: 6 is its fair share
    clock.t += 5.0  # those 6 went quiet; one new connection, and a live peer with 3
    (tmp_path / "peer").write_text("3")
    assert not w.note(("h", 9))
    assert int((tmp_path / "w").read_text()) == 1


def test_a_missing_directory_balances_nothing_and_raises_nothing(tmp_path: Path) -> None:
    w = ConnectionBalancer(tmp_path / "gone", name="w", clock=Clock())
    assert not any(w.note(c) for c in clients(8))
    with pytest.raises(ValueError, match="must be > 0"):
        ConnectionBalancer(tmp_path, window_s=0)


class _Stub:
    def __init__(self, answer: bool) -> None:
        self.answer, self.seen = answer, []

    def note(self, client):
        self.seen.append(client)
        return self.answer


async def _run(mw, scope):
    sent = []

    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(m):
        sent.append(m)

    await mw(scope, receive, send)
    return sent


async def _app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"connection", b"keep-alive")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_middleware_adds_connection_close_only_when_told(anyio_backend) -> None:
    scope = {"type": "http", "client": ("127.0.0.1", 5555), "headers": []}
    closing, counted = _Stub(True), []
    sent = await _run(BalancingMiddleware(_app, closing, on_close=lambda: counted.append(1)), scope)  # type: ignore[arg-type]
    assert sent[0]["headers"] == [(b"connection", b"close")] and sent[1]["body"] == b"ok" and counted == [1]
    assert closing.seen == [("127.0.0.1", 5555)]
    sent = await _run(BalancingMiddleware(_app, _Stub(False)), scope)  # type: ignore[arg-type]
    assert sent[0]["headers"] == [(b"connection", b"keep-alive")]
    no_client = _Stub(True)
    sent = await _run(BalancingMiddleware(_app, no_client), {**scope, "client": None})  # type: ignore[arg-type]
    assert sent[0]["headers"] == [(b"connection", b"keep-alive")] and no_client.seen == []


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_heartbeat_publishes_without_requests_and_stops_at_shutdown(anyio_backend, tmp_path: Path) -> None:
    import asyncio

    balancer = ConnectionBalancer(tmp_path, name="w", publish_s=0.01)
    messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    seen: list[str] = []

    async def lifespan_app(scope, receive, send):
        seen.append((await receive())["type"])
        await asyncio.sleep(0.05)  # serving: the heartbeat runs meanwhile
        assert (tmp_path / "w").read_text() == "0"  # published, though no request came
        seen.append((await receive())["type"])

    async def receive():
        return messages.pop(0)

    async def send(m):
        pass

    mw = BalancingMiddleware(lifespan_app, balancer)
    await mw({"type": "lifespan"}, receive, send)
    assert seen == ["lifespan.startup", "lifespan.shutdown"] and mw._heartbeat is None


def test_a_real_worker_over_its_share_answers_with_connection_close(tmp_path: Path) -> None:
    """The wiring end to end: factory → middleware → uvicorn closes the connection → the client reconnects.
    One real worker and a published peer that holds nothing: 8 keep-alive clients are 4 too many here."""
    (tmp_path / "art").mkdir()
    balance = tmp_path / "balance"
    balance.mkdir()
    peer = balance / "peer"
    peer.write_text("0")
    port = free_port()
    env = {**os.environ, factory.ART_ENV: str(tmp_path / "art"), factory.ENGINE_ENV: "serve_fakes:open_fake",
           BALANCE_ENV: str(balance), "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "candgen.serve.factory:make_app", "--factory",
                             "--port", str(port), "--log-level", "warning"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    conns = [httpx.Client(base_url=url, limits=httpx.Limits(max_connections=1), timeout=10) for _ in range(8)]
    try:
        wait_until_ready(url, proc)
        closed = 0
        t_end = time.monotonic() + 3.0  # the first second only counts
        while time.monotonic() < t_end:
            os.utime(peer)  # the peer keeps publishing
            for c in conns:
                r = c.post("/v1/candidates", json={"user_id": "a", "k": 3})
                assert r.status_code == 200  # every answer is whole, closing or not
                closed += r.headers.get("connection") == "close"
        # 8 here, 0 there: from the second second on, 2 answers per publish interval close (half the excess of
        # 4), and the clients reconnect
        assert closed >= 4
        metrics = conns[0].get("/metrics").text
        line = next(x for x in metrics.splitlines() if x.startswith("candgen_connections_rebalanced_total"))
        assert float(line.split()[-1]) >= closed  # every close is counted (the scrape itself may close one more)
    finally:
        for c in conns:
            c.close()
        proc.terminate()
        proc.wait(timeout=30)


def test_two_real_workers_end_with_an_even_split(tmp_path: Path) -> None:
    """`candgen serve --workers 2` (fake engine): 8 keep-alive clients end up 4/4 however the accepts fell,
    as `ss` sees the connections."""
    from candgen.artifacts import Manifest
    from candgen.bench.service import connections_by_process

    if connections_by_process(1) is None:
        pytest.skip("`ss` (iproute2) is not available to count connections per process")
    art = tmp_path / "art"
    art.mkdir()
    Manifest(model_version="m1", dataset_fingerprint="f", data_end_time=0, config={}).write(art)
    port = free_port()
    env = {**os.environ, factory.ENGINE_ENV: "serve_fakes:open_fake",
           "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "candgen.cli.main", "serve", str(art), "--port", str(port),
                             "--workers", "2"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    conns = [httpx.Client(base_url=url, limits=httpx.Limits(max_connections=1), timeout=10) for _ in range(8)]
    splits: list[list[int]] = []
    try:
        wait_until_ready(url, proc)
        t_end = time.monotonic() + 20
        while time.monotonic() < t_end:
            for _ in range(20):
                for c in conns:
                    assert c.post("/v1/candidates", json={"user_id": "a", "k": 3}).status_code == 200
            by = connections_by_process(port) or {}
            splits.append(sorted(by.values(), reverse=True))
            if splits[-1] == [4, 4]:
                break
    finally:
        for c in conns:
            c.close()
        proc.terminate()
        proc.wait(timeout=30)
    assert splits and splits[-1] == [4, 4], splits
