"""Service benchmark, end to end over HTTP: candgen's service and a hand-built peer side by side, one table.

    .venv/bin/python benchmarks/service/run.py --art 100k=/tmp/a100k --art 1M=/tmp/a1m \\
        [--duration 15] [--concurrency 8] [--k 1000] [--only 1M] [--json out.json]

Every row starts the server on a free port (candgen: `candgen serve ART --workers N [--state redis://]`;
peer: benchmarks/service/peer.py), waits until it is ready, runs the closed-loop load generator of
`candgen bench load` with --cache-miss (every request a distinct user; warm users from the artifacts'
snapshot, 10% cold users, contexts) and stops the server. Columns: client-side QPS of 2xx answers and
latency, the server's own `took_ms`, errors (503 refusals among them), the fraction answered from a stored
list (L1/L3: must be ~0), degraded answers, the server process tree's CPU per 2xx answer and the client's
CPU per request, read from /proc over the measured window. Server CPU per answer is the figure the
machine's load disturbs least: 2 cores x 1000 / (server CPU ms per answer) is the QPS two free cores
would sustain.

The line under each row also gives the keep-alive connections each server process holds one second into
the measured window (`ss`), largest first. The workers share one listening socket, and whichever accepts a
connection serves it to the end; candgen's workers even out the split themselves (`serve/balance.py`; before
that, 8/0 splits served like one worker). Every worker accepts before the load starts (`ServiceProcess`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from pathlib import Path

import redis

from candgen.bench.loadgen import TABLE_HEADER, Workload, run_load, table_row, warm_users_from_artifacts
from candgen.bench.service import ServiceProcess, connections_by_process

REDIS = "redis://127.0.0.1:6379/13"  # this benchmark's own database: flushed before every Redis row
PEER = Path(__file__).with_name("peer.py")


class PeerProcess(ServiceProcess):
    """The peer service (peer.py) started and measured the same way as candgen."""

    def command(self, port: int) -> list[str]:
        return [sys.executable, str(PEER), "--art", str(self.art), "--port", str(port), "--workers",
                str(self.workers), "--redis", REDIS]


def loadavg() -> float:
    return os.getloadavg()[0]


def split_into(out: list[str], port: int) -> None:
    """Append the established connections per server process on `port`, largest first ("5/3")."""
    by = connections_by_process(port)
    out.append("/".join(str(n) for n in sorted(by.values(), reverse=True)) if by else "n/a")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--art", action="append", required=True, help="NAME=ARTIFACTS_DIR (repeatable)")
    ap.add_argument("--duration", type=float, default=15.0)
    # unmeasured load first: caches, allocator and the OS settle (with 2 workers, 186 QPS after 3 s against 428
    # after 60 s was measured before the harness waited for every worker to accept: likely the split, see above)
    ap.add_argument("--warmup", type=float, default=60.0, help="seconds of unmeasured load before each row")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--only", default="", help="comma-separated names of --art to run (default: all)")
    ap.add_argument("--cases", default="ours-1w,ours-2w,ours-1w-redis,ours-2w-redis,peer-1w,peer-2w",
                    help="comma-separated rows per artifacts dir: WHO-Nw[-redis][-cCLIENTS]")
    ap.add_argument("--json", dest="json_out", default="", help="also write the rows as JSON here")
    a = ap.parse_args()
    arts = dict(x.split("=", 1) for x in a.art)
    only = [x for x in a.only.split(",") if x]
    rows: list[dict[str, object]] = []
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, load average "
          f"{loadavg():.1f}; k={a.k}, {a.concurrency} clients, {a.duration:.0f} s per row, cache miss", flush=True)
    print("| items " + TABLE_HEADER + " load avg |")
    print("|" + "---|" * 15, flush=True)
    for name, art in arts.items():
        if only and name not in only:
            continue
        users = warm_users_from_artifacts(Path(art))
        for case in a.cases.split(","):
            who, workers_s, *rest = case.split("-")
            workers = int(workers_s.rstrip("w"))
            state = REDIS if "redis" in rest else None
            clients = int(next((r[1:] for r in rest if r.startswith("c")), a.concurrency))
            if state:
                redis.Redis.from_url(REDIS).flushdb()
            cls = PeerProcess if who == "peer" else ServiceProcess
            svc = cls(Path(art), workers=workers, state=state)
            workload = Workload(warm_users=users, k=a.k, cold_fraction=0.1, cache_miss=True, seed=len(rows))
            load0 = loadavg()
            split: list[str] = []
            with svc:
                timer = threading.Timer(a.warmup + 1.0, split_into, (split, svc.endpoint.port))
                timer.start()
                res = asyncio.run(run_load(svc.endpoint, workload, concurrency=clients, duration_s=a.duration,
                                           warmup_s=a.warmup, server_cpu=svc.cpu_seconds))
                timer.cancel()
            label = (f"peer {workers}w faiss+redis zset" if who == "peer"
                     else f"candgen {workers}w {'redis' if state else 'embedded'}") + f" c={clients}"
            print(f"| {name} " + table_row(label, res) + f" {load0:.0f}-{loadavg():.0f} |", flush=True)
            conns = split[0] if split else "n/a"
            print(f"|   | (degraded: {res.degraded_sources}; cache levels {res.cache_levels}; connections per "
                  f"process {conns}) |", file=sys.stderr)
            rows.append({"items": name, "case": label, **res.as_dict(), "load_avg": [load0, loadavg()],
                         "connections_per_process": conns})
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
