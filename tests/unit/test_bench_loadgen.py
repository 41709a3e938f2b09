"""The load generator's client, request mix and statistics against a tiny in-test HTTP server, and the
`candgen bench` argument errors (one line, exit 2). No timing assertions."""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import socket
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from candgen.bench.freshness import FreshnessProbe, freshness_row, summarize_lags, unengaged_items_from_artifacts
from candgen.bench.http import Connection, Endpoint, HttpError, parse_url
from candgen.bench.loadgen import (
    SHED_PAUSE_S,
    RequestMix,
    Sample,
    Workload,
    parse_answer,
    run_load,
    summarize,
    table_row,
    warm_users_from_artifacts,
)
from candgen.bench.service import ServiceProcess, free_port, tree_cpu_seconds
from candgen.cli.main import main
from candgen.errors import CandgenError


def answer(user: str, cache: str = "miss", k: int = 3, degraded: list[str] | None = None) -> bytes:
    return json.dumps({
        "user_id": user, "model_version": "m", "variant": "",
        "candidates": [{"item_id": f"i{j}", "score": 1.0, "sources": ["trending"]} for j in range(k)],
        "degraded": degraded or [], "cache": cache, "took_ms": 1.5,
    }).encode()


Handler = Callable[[bytes], tuple[int, bytes, bool]]


@asynccontextmanager
async def fake_server(handler: Handler) -> AsyncIterator[Endpoint]:
    """HTTP/1.1 keep-alive server: handler(body) → (status, body, chunked?)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                status, data, chunked = handler(body)
                if chunked:
                    half = len(data) // 2
                    payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (data[:half], data[half:]) if p)
                    writer.write(b"HTTP/1.1 %d X\r\nTransfer-Encoding: chunked\r\n\r\n%s0\r\n\r\n" % (status, payload))
                else:
                    writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(data), data))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield Endpoint("127.0.0.1", port)
    finally:
        server.close()
        await server.wait_closed()


def test_parse_url_accepts_base_urls_and_refuses_the_rest() -> None:
    assert parse_url("http://127.0.0.1:8000") == Endpoint("127.0.0.1", 8000)
    assert parse_url("http://localhost/").port == 80
    for bad, words in [("https://h:1", "https is not supported"), ("http://:80", "no host"),
                       ("http://h:1/v1/candidates", "without a path"), ("http://h:notaport", "Port"),
                       ("ftp://h", "expected http://")]:
        with pytest.raises(CandgenError, match=words):
            parse_url(bad)


def test_workload_refuses_bad_arguments() -> None:
    for kwargs, words in [({"hit_ratio": 1.5}, "hit ratio: got 1.5"), ({"cold_fraction": -0.1}, "cold fraction"),
                          ({"hit_ratio": 0.2, "cache_miss": True}, "contradicts --cache-miss"),
                          ({"k": 0}, "--k: got 0"), ({"k": 10_001}, "--k: got 10001")]:
        with pytest.raises(CandgenError, match=words):
            Workload(warm_users=["u"], **kwargs)  # type: ignore[arg-type]
    with pytest.raises(CandgenError, match="no warm users"):
        Workload(warm_users=[])
    assert Workload(warm_users=[], cold_fraction=1.0).k == 1000


def test_cache_miss_mix_never_repeats_a_user_and_falls_back_to_cold_users() -> None:
    mix = RequestMix(Workload(warm_users=[f"u{i}" for i in range(50)], cold_fraction=0.2, cache_miss=True), "t")
    users = [json.loads(mix.next_body())["user_id"] for _ in range(200)]
    assert len(set(users)) == 200
    assert mix.kinds["warm"] == 50 and mix.kinds["cold"] == 150
    assert 80 < mix.kinds["warm_exhausted"] < 150  # ~0.8 of the 150 drawn after the 50 warm users ran out
    assert all(u.startswith("bench-cold-t-") for u in users if not u.startswith("u"))


def test_no_warm_user_counts_as_exhausted_while_warm_users_remain() -> None:
    mix = RequestMix(Workload(warm_users=[f"u{i}" for i in range(1000)], cold_fraction=0.3, cache_miss=True), "t")
    for _ in range(500):
        mix.next_body()
    assert mix.kinds["warm_exhausted"] == 0 and 100 < mix.kinds["cold"] < 200


def test_hit_ratio_repeats_users_and_bodies_carry_k_and_a_context() -> None:
    mix = RequestMix(Workload(warm_users=[f"u{i}" for i in range(1000)], k=7, hit_ratio=0.5, seed=1), "t")
    bodies = [json.loads(mix.next_body()) for _ in range(400)]
    assert 120 < mix.kinds["repeat"] < 280  # ~0.5 of 400
    assert len({b["user_id"] for b in bodies}) == 400 - mix.kinds["repeat"]
    assert {b["k"] for b in bodies} == {7} and all(isinstance(b["context"], dict) for b in bodies)


def test_parse_answer_reads_the_tail_and_survives_garbage() -> None:
    assert parse_answer(answer("u", "L1", k=5, degraded=["social"])) == (1.5, "L1", ("social",), 5)
    took, cache, degraded, n = parse_answer(b"not json")
    assert math.isnan(took) and cache == "" and degraded == () and n == 0
    # another field order still parses
    body = json.dumps({"degraded": [], "took_ms": 2, "cache": "L2", "candidates": [{"item_id": "a"}]}).encode()
    assert parse_answer(body) == (2.0, "L2", (), 1)


def test_summarize_percentiles_errors_and_fractions() -> None:
    samples = [Sample(float(i), 200, took_ms=float(i) / 2, cache="miss" if i % 4 else "L1",
                      degraded=("social",) if i == 3 else (), n_candidates=10) for i in range(1, 101)]
    samples += [Sample(999.0, 503), Sample(5.0, 0)]
    samples[1].cache = "L2"  # the user embedding was cached, the list computed: not a list-cache hit
    r = summarize(samples, duration_s=2.0, concurrency=4, client_cpu_s=0.102, server_cpu_s=0.204)
    assert r.requests == 102 and r.qps == 51.0 and r.errors == 2
    assert r.p50_ms == pytest.approx(50.5) and r.max_ms == 100.0  # errors are not latencies
    assert r.took_p50_ms == pytest.approx(25.25)
    assert r.cache_hit_fraction == pytest.approx(25 / 100)
    assert r.cache_levels == {"miss": 74, "L2": 1, "L1": 25} and r.degraded_sources == {"social": 1}
    assert r.degraded_fraction == pytest.approx(0.01)
    assert r.client_cpu_ms_per_req == pytest.approx(1.0) and r.server_cpu_ms_per_req == pytest.approx(2.0)
    assert r.statuses == {"200": 100, "503": 1, "0": 1} and r.shed == 1 and r.answered_qps == 50.0
    assert r.server_cpu_ms_per_answer == pytest.approx(2.04)
    row = table_row("c", r)  # the table counts 2xx answers only
    assert row.startswith("| c | 50 |") and "| 2.04 |" in row
    empty = summarize([], duration_s=1.0, concurrency=1, client_cpu_s=0.0)
    assert empty.requests == 0 and math.isnan(empty.p99_ms) and math.isnan(empty.cache_hit_fraction)


def test_run_load_counts_answers_hits_and_errors() -> None:
    calls = {"n": 0}

    def handler(body: bytes) -> tuple[int, bytes, bool]:
        calls["n"] += 1
        user = json.loads(body)["user_id"]
        if calls["n"] % 10 == 0:
            return 500, b'{"error": {"code": "internal"}}', False
        return 200, answer(user, "L1" if calls["n"] % 2 else "miss"), calls["n"] % 3 == 0

    async def go() -> None:
        async with fake_server(handler) as ep:
            w = Workload(warm_users=[f"u{i}" for i in range(10)], cold_fraction=0.5, cache_miss=True)
            r = await run_load(ep, w, concurrency=3, duration_s=0, max_requests=60, warmup_s=0)
            assert 60 <= r.requests <= 62  # clients already in flight finish their request
            assert r.errors == sum(v for s, v in r.statuses.items() if s != "200") > 0
            assert r.first_error.startswith("HTTP 500")
            assert 0 < r.cache_hit_fraction < 1 and r.mean_candidates == 3
            assert r.server_cpu_ms_per_req is None and r.mix["warm"] == 10

    asyncio.run(go())


def test_a_shedding_server_is_not_met_with_a_tight_retry_loop() -> None:
    async def go() -> None:
        async with fake_server(lambda b: (503, b'{"error": {"code": "overloaded"}}', False)) as ep:
            w = Workload(warm_users=[], cold_fraction=1.0)
            r = await run_load(ep, w, concurrency=2, duration_s=0.2, warmup_s=0)
            assert r.shed == r.requests == r.errors > 0 and r.answered_qps == 0
            # each client pauses SHED_PAUSE_S after a refusal: at most 0.2 s / 10 ms (+1) requests each
            assert r.requests <= 2 * (0.2 / SHED_PAUSE_S + 1)
            assert r.first_error.startswith("HTTP 503")

    asyncio.run(go())


def test_run_load_refuses_bad_arguments_and_a_dead_server() -> None:
    w = Workload(warm_users=[], cold_fraction=1.0)
    dead = Endpoint("127.0.0.1", free_port())
    for kwargs, words in [({"concurrency": 0}, "--concurrency"), ({"duration_s": 0}, "--duration or --requests"),
                          ({"warmup_s": -1}, "--warmup")]:
        with pytest.raises(CandgenError, match=words):
            asyncio.run(run_load(dead, w, **kwargs))  # type: ignore[arg-type]
    with pytest.raises(CandgenError, match="every request failed: .*cannot connect"):
        asyncio.run(run_load(dead, w, concurrency=1, duration_s=0.2, warmup_s=0))


def test_connection_reads_chunked_answers_and_reports_bad_http() -> None:
    async def go() -> None:
        async with fake_server(lambda b: (200, answer("u"), True)) as ep:
            conn = Connection(ep)
            status, data = await conn.request("POST", "/v1/candidates", b"{}")
            assert status == 200 and json.loads(data)["cache"] == "miss"
            await conn.close()

        async def bad(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"SSH-2.0-nope\r\n\r\n")
            await writer.drain()

        server = await asyncio.start_server(bad, "127.0.0.1", 0)
        conn = Connection(Endpoint("127.0.0.1", server.sockets[0].getsockname()[1]))
        with pytest.raises(HttpError, match="not an HTTP/1.1 answer"):
            await conn.request("GET", "/healthz")
        server.close()

    asyncio.run(go())


def _snapshot(tmp_path: Path) -> Path:
    art = tmp_path / "art"
    snap = art / "dataset"
    snap.mkdir(parents=True)
    (art / "manifest.json").write_text("{}")
    pq.write_table(pa.table({"id": ["a", "b", "c"]}), snap / "users.parquet")
    pq.write_table(pa.table({"id": ["x", "y", "z", "w"]}), snap / "items.parquet")
    np.savez(str(snap / "arrays.npz"), user=np.array([0, 2, 2]), item=np.array([1, 1, 3]))
    return art


def test_warm_users_and_unengaged_items_come_from_the_snapshot(tmp_path: Path) -> None:
    art = _snapshot(tmp_path)
    assert warm_users_from_artifacts(art) == ["a", "c"]
    assert unengaged_items_from_artifacts(art) == ["x", "z"]
    with pytest.raises(CandgenError, match="no dataset snapshot"):
        warm_users_from_artifacts(tmp_path)


def test_service_process_refuses_non_artifacts_and_bad_workers(tmp_path: Path) -> None:
    with pytest.raises(CandgenError, match="not an artifacts directory"):
        ServiceProcess(tmp_path)
    with pytest.raises(CandgenError, match="--workers: got 0"):
        ServiceProcess(_snapshot(tmp_path), workers=0)
    assert tree_cpu_seconds(os.getpid()) > 0


class _Crashing(ServiceProcess):
    def command(self, port: int) -> list[str]:
        return [sys.executable, "-c", "import sys; print('no artifacts here', file=sys.stderr); sys.exit(3)"]


def test_service_process_reports_a_server_that_exits(tmp_path: Path) -> None:
    svc = _Crashing(_snapshot(tmp_path), log=tmp_path / "serve.log")
    with pytest.raises(CandgenError, match="exited with code 3: no artifacts here"):
        svc.start()
    svc.stop()  # stopping a dead server is a no-op


def test_freshness_statistics_and_argument_errors() -> None:
    r = summarize_lags("seen", [10.0, 20.0, 30.0], [1.0, 3.0], [True, False, True], failed=1)
    assert r.trials == 4 and r.p50_ms == 20.0 and r.max_ms == 30.0 and r.write_p50_ms == 2.0
    assert r.first_read_fraction == pytest.approx(2 / 3) and "| seen | 4 | 20.0 |" in freshness_row(r)
    assert math.isnan(summarize_lags("delete", [], [], [], failed=2).p50_ms)
    probe = FreshnessProbe(Endpoint("127.0.0.1", free_port()), warm_users=[])
    try:
        with pytest.raises(CandgenError, match="--repeat: got 0"):
            probe.run(repeat=0)
        with pytest.raises(CandgenError, match="unknown scenario 'nope'"):
            probe.run(["nope"])
        with pytest.raises(CandgenError, match="ran out of warm users"):
            probe.trial("seen", 0)
    finally:
        probe.close()


@pytest.mark.parametrize(("argv", "words"), [
    (["bench", "load", "https://127.0.0.1:1"], "https is not supported"),
    (["bench", "load", "/no/such/dir"], "expected http://HOST:PORT or an artifacts directory"),
    (["bench", "load", "http://127.0.0.1:1", "--hit-ratio", "2"], "hit ratio: got 2.0"),
    (["bench", "load", "http://127.0.0.1:1", "--cold-fraction", "1", "--concurrency", "0"], "--concurrency"),
    (["bench", "load", "http://127.0.0.1:1", "--art", "/no/such/dir"], "--art /no/such/dir: not an artifacts"),
    (["bench", "freshness", "http://127.0.0.1:1"], "need warm users: pass --art"),
])
def test_cli_argument_errors_exit_2_with_one_line(argv: list[str], words: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert words in " ".join(err.split()) and "Traceback" not in err


def test_cli_load_against_a_dead_url_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["bench", "load", f"http://127.0.0.1:{free_port()}", "--cold-fraction", "1", "--duration", "0.2",
              "--warmup", "0", "--concurrency", "1"])
    assert e.value.code == 2 and "cannot connect" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs `ss` (iproute2) to read connections per process")
def test_connections_by_process_counts_accepted_connections_only() -> None:
    from candgen.bench.service import accepting_processes, connections_by_process

    with socket.socket() as idle:  # listens but never accepts: a worker still loading its engine
        idle.bind(("127.0.0.1", 0))
        idle.listen(16)
        port = idle.getsockname()[1]
        assert accepting_processes(port, 4) == 0 and connections_by_process(port) == {}
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(16)
        port = lsock.getsockname()[1]
        accepted: list[socket.socket] = []

        def accept(n: int) -> None:
            for _ in range(n):
                accepted.append(lsock.accept()[0])

        t = threading.Thread(target=accept, args=(3,))
        t.start()
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        t.join(5)
        try:
            assert connections_by_process(port) == {os.getpid(): 3}
        finally:
            for s in clients + accepted:
                s.close()
