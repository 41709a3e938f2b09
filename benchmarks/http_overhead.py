"""HTTP overhead of the candgen app: a real uvicorn (1 worker, loopback) serving an engine that costs ~nothing.

    .venv/bin/python benchmarks/http_overhead.py [--requests 2000] [--k 1000]

The engine returns a precomputed list, so the server time (read from the `Server-Timing` header the app
sets on every answer) is the cost of the HTTP layer itself: parsing, validation, auth, metrics, the
threadpool hop and JSON serialisation of k candidates. "server CPU/req" is the CPU time the server
process spent per request (all threads, from /proc, so it includes uvicorn's HTTP parsing and is not
inflated by waiting for a core on a busy machine). The client time adds loopback and httpx. Rows:
GET /healthz (the uvicorn + FastAPI floor), POST /v1/candidates with k=K and k=10, GET
/v1/candidates/{user}?k=10, POST /v1/events with 100 events; once with the engine called in the
threadpool (the default) and once directly on the event loop.

Then a concurrency check: an engine that takes --work-ms (3) ms and releases the GIL (as FAISS does), 8
clients in parallel, threadpool vs direct call: throughput and the latency of /healthz probes meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from typing import Any

import httpx
import numpy as np


class ConstEngine:
    """An engine whose answers are precomputed: k candidates from 3 sources; `work_ms` sleeps (GIL released)."""

    ready = True
    model_version = "bench"

    def __init__(self, k: int, work_ms: float = 0.0) -> None:
        from candgen.serve.protocol import CandidatesResult

        ids = [f"item{j:07d}" for j in range(k)]
        srcs = [["collaborative"], ["content", "trending"], ["trending"]]
        index = np.arange(k) % 3
        self.result = CandidatesResult(
            item_ids=ids, scores=np.linspace(1.0, 0.1, k, dtype=np.float32), sources=[srcs[j] for j in index],
            source_groups=(srcs, index),  # as the real engine gives them
            model_version="bench", timings={"collaborative": 0.001, "blend": 0.0002},
            source_counts={"collaborative": k // 3, "content": k // 3, "trending": 2 * k // 3, "social": 0},
            quality={"diversity": 0.7},
        )
        self.by_k: dict[int, Any] = {}
        self.work_s = work_ms / 1000.0

    def candidates(self, req: Any) -> Any:
        from candgen.serve.protocol import CandidatesResult

        if self.work_s:
            time.sleep(self.work_s)
        if req.k >= len(self.result.item_ids):
            return self.result
        if req.k not in self.by_k:
            r = self.result
            self.by_k[req.k] = CandidatesResult(
                item_ids=r.item_ids[: req.k], scores=r.scores[: req.k], sources=r.sources[: req.k],
                source_groups=None if r.source_groups is None else (r.source_groups[0], r.source_groups[1][: req.k]),
                model_version="bench", timings=r.timings, source_counts=r.source_counts, quality=r.quality)
        return self.by_k[req.k]

    def similar(self, item_id: str, k: int) -> Any:
        return self.result

    def ingest_events(self, events: list[Any]) -> int:
        return len(events)

    def add_items(self, items: list[Any]) -> int:
        return len(items)

    def delete_item(self, item_id: str) -> None:
        return None

    def put_user(self, user_id: str, profile: Any) -> None:
        return None

    def reload(self, art_path: str | None) -> str:
        return self.model_version

    def stats(self) -> dict[str, Any]:
        return {"index_size": len(self.result.item_ids)}


def serve(port: int, k: int, threadpool: bool, work_ms: float) -> None:
    import uvicorn

    from candgen.serve.app import create_app
    from candgen.serve.factory import tune_gc

    engine = ConstEngine(k, work_ms)
    tune_gc()  # as `candgen serve` does once its engine is loaded
    app = create_app(engine, api_key=None, engine_in_threadpool=threadpool)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(k: int, threadpool: bool, work_ms: float = 0.0) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port), "--k", str(k),
                             "--threadpool", str(int(threadpool)), "--work-ms", str(work_ms)])
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.terminate()
    raise RuntimeError("server did not start")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(c: httpx.Client, pid: int, method: str, path: str, body: Any, n: int) -> str:
    """One table row: server time (Server-Timing), server CPU per request, client round trip."""
    server, client = [], []
    cpu0 = 0.0
    for i in range(n + n // 10):  # the first tenth warms up
        if i == n // 10:
            cpu0 = cpu_seconds(pid)
        t0 = time.perf_counter()
        r = c.request(method, path, json=body)
        dt = time.perf_counter() - t0
        if r.status_code >= 300:
            raise RuntimeError(f"{method} {path}: {r.status_code} {r.text[:200]}")
        if i >= n // 10:
            client.append(dt * 1000.0)
            server.append(float(r.headers["server-timing"].partition(";dur=")[2]))
    cpu_ms = (cpu_seconds(pid) - cpu0) * 1000.0 / n
    p = np.percentile
    return (f"| {method} {path.split('?')[0]}{'' if body is None else ' ' + _short(body)} | {p(server, 50):.3f} "
            f"| {p(server, 99):.3f} | {cpu_ms:.3f} | {p(client, 50):.3f} | {p(client, 99):.3f} |")


def _short(body: Any) -> str:
    return f"({len(body['events'])} events)" if "events" in body else f"k={body.get('k')}"


async def concurrent(url: str, clients: int, per_client: int) -> tuple[float, float, float]:
    """QPS of `clients` parallel candidate requesters, and the p50 and p99 of /healthz probes (ms) meanwhile."""
    probes: list[float] = []
    done = False

    async def requester(c: httpx.AsyncClient) -> None:
        for _ in range(per_client):
            r = await c.post("/v1/candidates", json={"user_id": "u"})
            r.raise_for_status()

    async def prober(c: httpx.AsyncClient) -> None:
        while not done:
            t0 = time.perf_counter()
            await c.get("/healthz")
            probes.append((time.perf_counter() - t0) * 1000.0)
            await asyncio.sleep(0.005)

    limits = httpx.Limits(max_connections=clients + 1)
    async with httpx.AsyncClient(base_url=url, limits=limits) as c, httpx.AsyncClient(base_url=url) as pc:
        probe_task = asyncio.create_task(prober(pc))
        t0 = time.perf_counter()
        await asyncio.gather(*(requester(c) for _ in range(clients)))
        elapsed = time.perf_counter() - t0
        done = True
        await probe_task
    return clients * per_client / elapsed, float(np.percentile(probes, 50)), float(np.percentile(probes, 99))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--threadpool", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--work-ms", type=float, default=3.0, help="engine time in the concurrency check")
    ap.add_argument("--skip-overhead", action="store_true", help="only the concurrency check")
    ap.add_argument("--post-only", action="store_true",
                    help="only the POST /v1/candidates k=K row in the threadpool (for alternated base/new runs)")
    a = ap.parse_args()
    if a.serve:
        serve(a.serve, a.k, bool(a.threadpool), a.work_ms)
        return

    n, k = a.requests, a.k
    events = {"events": [{"user_id": f"u{j}", "item_id": f"i{j}", "event": "click"} for j in range(100)]}
    print(f"HTTP overhead, 1 uvicorn worker on loopback, keep-alive httpx client, {n} requests per row (ms); "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n")
    for threadpool in () if a.skip_overhead else (True,) if a.post_only else (True, False):
        print(f"engine called {'in the threadpool' if threadpool else 'directly on the event loop'}:")
        print("| request | server p50 | server p99 | server CPU/req | client p50 | client p99 |")
        print("|---|---|---|---|---|---|")
        proc, url = start_server(k, threadpool)
        try:
            with httpx.Client(base_url=url) as c:
                if a.post_only:
                    print(measure(c, proc.pid, "POST", "/v1/candidates", {"user_id": "u1", "k": k}, n))
                    continue
                print(measure(c, proc.pid, "GET", "/healthz", None, n))
                print(measure(c, proc.pid, "POST", "/v1/candidates", {"user_id": "u1", "k": k}, n))
                print(measure(c, proc.pid, "POST", "/v1/candidates", {"user_id": "u1", "k": 10}, n))
                print(measure(c, proc.pid, "GET", "/v1/candidates/u1?k=10", None, n))
                print(measure(c, proc.pid, "POST", "/v1/events", events, n))
            print()
        finally:
            proc.terminate()
            proc.wait()
    if a.post_only:
        return

    print(f"\nEngine taking {a.work_ms:g} ms (GIL released), 8 concurrent clients x 150 requests, k=100")
    print("| engine call | QPS | /healthz p50 ms meanwhile | /healthz p99 ms |")
    print("|---|---|---|---|")
    for threadpool in (True, False):
        proc, url = start_server(100, threadpool, work_ms=a.work_ms)
        try:
            qps, probe_p50, probe_p99 = asyncio.run(concurrent(url, clients=8, per_client=150))
        finally:
            proc.terminate()
            proc.wait()
        print(f"| {'threadpool' if threadpool else 'direct'} | {qps:.0f} | {probe_p50:.2f} | {probe_p99:.2f} |")


if __name__ == "__main__":
    main()
