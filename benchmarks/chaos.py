"""A Redis outage in the middle of load: `candgen serve --workers 2 --state redis://...` on a private
redis-server, which is killed (SIGKILL) and later restarted while clients read candidates and write events.

    .venv/bin/python benchmarks/chaos.py ART [--up 4] [--down 5] [--back 5] [--readers 2] [--writers 1]

Prints, per phase (before, during, after the outage), the answers by kind: candidate reads (200, of which
degraded, and failures) and event writes (202 and failures), then checks that every accepted event is in
the shared log once the spool has been delivered (count of log entries against the 202s). Redis runs
with `appendfsync always` so that what it acknowledged survives its own SIGKILL: the check is about
candgen, not about Redis's fsync policy. Needs `redis-server` on PATH; ART is copied (the spool lives in
the copy).
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from candgen.artifacts import Manifest
from candgen.bench.redisproc import start_redis
from candgen.bench.service import ServiceProcess, free_port
from candgen.state import open_state


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("art", type=Path)
    ap.add_argument("--up", type=float, default=4.0, help="seconds of load before the outage")
    ap.add_argument("--down", type=float, default=5.0, help="seconds Redis stays down")
    ap.add_argument("--back", type=float, default=5.0, help="seconds of load after Redis is back")
    ap.add_argument("--readers", type=int, default=2)
    ap.add_argument("--writers", type=int, default=1)
    args = ap.parse_args()
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is not on PATH")

    work = Path(tempfile.mkdtemp(prefix="candgen-chaos-"))
    art = work / "art"
    shutil.copytree(args.art, art)
    Manifest.read(art)  # a clear error now when ART is no artifacts directory
    users = [f"u{i}" for i in range(1000)]
    items = _item_ids(art)
    rport = free_port()
    (work / "redis").mkdir()
    rproc = start_redis(rport, work / "redis", fsync_always=True)
    url = f"redis://127.0.0.1:{rport}/0"
    os.environ["CANDGEN_API_KEY"] = ""  # the server inherits it: no auth for this local run
    server = ServiceProcess(art, workers=2, state=url, ready_timeout_s=180, log=work / "serve.log")
    try:
        base = server.start().url
        stats: collections.Counter[tuple[str, str, str]] = collections.Counter()
        phase, stop = ["up"], threading.Event()

        def client(kind: str, seed: int) -> None:
            rng = random.Random(seed)
            with httpx.Client(base_url=base, timeout=10) as c:
                while not stop.is_set():
                    try:
                        if kind == "read":
                            r = c.post("/v1/candidates", json={"user_id": rng.choice(users), "k": 100})
                            ok = r.status_code == 200
                            outcome = ("degraded" if r.json().get("degraded") else "200") if ok else str(r.status_code)
                        else:
                            r = c.post("/v1/events", json={"events": [
                                {"user_id": rng.choice(users), "item_id": rng.choice(items), "event": "click"}]})
                            outcome = str(r.status_code)
                    except httpx.HTTPError as e:
                        outcome = type(e).__name__
                    stats[(phase[0], kind, outcome)] += 1

        threads = [threading.Thread(target=client, args=("read", i)) for i in range(args.readers)]
        threads += [threading.Thread(target=client, args=("write", 100 + i)) for i in range(args.writers)]
        for t in threads:
            t.start()
        time.sleep(args.up)
        phase[0] = "down"
        rproc.kill()
        rproc.wait()
        time.sleep(args.down)
        phase[0] = "back"
        rproc = start_redis(rport, work / "redis", fsync_always=True)
        time.sleep(args.back)
        stop.set()
        for t in threads:
            t.join()
        accepted = sum(n for (_, kind, outcome), n in stats.items() if kind == "write" and outcome == "202")
        delivered = _wait_delivered(url, accepted)
    finally:
        server.stop()
        rproc.kill()
        shutil.rmtree(work, ignore_errors=True)

    print("| phase | reads 200 | of which degraded | reads failed | writes 202 | writes failed |")
    print("|---|---:|---:|---:|---:|---:|")
    for ph in ("up", "down", "back"):
        reads = {o: n for (p, k, o), n in stats.items() if p == ph and k == "read"}
        writes = {o: n for (p, k, o), n in stats.items() if p == ph and k == "write"}
        ok = reads.get("200", 0) + reads.get("degraded", 0)
        print(f"| {ph} | {ok} | {reads.get('degraded', 0)} | {sum(reads.values()) - ok} | {writes.get('202', 0)} | "
              f"{sum(writes.values()) - writes.get('202', 0)} |")
    print(f"\naccepted events: {accepted}; in the shared log after delivery: {delivered}")


def _item_ids(art: Path) -> list[str]:
    import polars as pl

    return pl.read_parquet(art / "dataset" / "items.parquet", columns=["id"])["id"].head(2000).to_list()


def _wait_delivered(url: str, expected: int, timeout_s: float = 30.0) -> int:
    """Entries added to the shared log, once they reach `expected` (the spool delivers every 0.5 s)."""
    store = open_state(url)
    try:
        deadline = time.monotonic() + timeout_s
        n = store.appended()
        while n < expected and time.monotonic() < deadline:
            time.sleep(0.2)
            n = store.appended()
        return n
    finally:
        store.close()


if __name__ == "__main__":
    main()
