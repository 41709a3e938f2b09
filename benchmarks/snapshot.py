"""Start-up time of a worker with and without a snapshot of the state log, and what taking a snapshot costs.

For each N (default 100k and 1M): a fresh log holding N logged writes (events of known and new users with
the service's event mix, 1% new items, 0.2% deletions, 0.5% profiles with friends), copied to a second log
without snapshots; a snapshot is taken of the first (`take_snapshot`: its time and size), then `--tail`
more writes go to both. Then, alternating in this one process, `--repeat` times each:

- full:     `Engine.open` on the copy: loads the artifacts and replays all N + tail records;
- snapshot: `Engine.open` on the first log: loads the artifacts and the snapshot, replays the tail only;
- load:     `Runtime.load` alone (the floor both pay).

Prints one row per N and backend (medians, seconds) and the ratio; the numbers go into benchmarks/README.md,
section "state backends".

    .venv/bin/python benchmarks/snapshot.py ART [--events 100000,1000000] [--tail 1000] [--repeat 3]
                                                [--redis redis://127.0.0.1:6379/14]
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from candgen.artifacts import Manifest, load_dataset_snapshot
from candgen.engine import Engine
from candgen.runtime import Runtime
from candgen.snapshot import take_snapshot
from candgen.state import Record, StateStore, open_state
from candgen.state.redis import RedisStore

EVENTS = ["view"] * 60 + ["click"] * 20 + ["like"] * 10 + ["share"] * 3 + ["impression"] * 5 + ["hide", "dislike"]


def writes(art: Path, n: int, seed: int) -> Iterator[Record]:
    """n records as the write endpoints log them, in a plausible order (an item exists before its events)."""
    rng = np.random.default_rng(seed)
    ds = load_dataset_snapshot(art / "dataset")
    users, items = ds.users.ids(), ds.items.ids()
    t = float(Manifest.read(art).data_end_time)
    new_items: list[str] = []
    deleted: set[str] = set()
    for i in range(n):
        t += 0.05
        r = rng.random()
        if r < 0.01:
            iid = f"new-item-{seed}-{i}"
            new_items.append(iid)
            yield Record(kind="item", data={"item_id": iid, "tags": [f"tag{rng.integers(200)}"],
                                            "category": f"cat{rng.integers(20)}",
                                            "creator_id": f"cr{rng.integers(500)}", "title": None, "created_at": t})
        elif r < 0.012 and new_items:
            iid = new_items[int(rng.integers(len(new_items)))]
            deleted.add(iid)
            yield Record(kind="delete", data={"item_id": iid})
        elif r < 0.017:
            uid = f"new-user-{seed}-{rng.integers(n // 20 + 1)}"
            yield Record(kind="user", data={"user_id": uid, "attributes": {"country": "FR"}, "interests": ["tag1"],
                                            "friends": [users[int(rng.integers(len(users)))]]})
        else:
            known = rng.random() < 0.9
            uid = users[int(rng.integers(len(users)))] if known else f"new-user-{seed}-{rng.integers(n // 20 + 1)}"
            pool = new_items if new_items and rng.random() < 0.2 else items
            yield Record(kind="event", data={"user_id": uid, "item_id": pool[int(rng.integers(len(pool)))],
                                             "event": EVENTS[int(rng.integers(len(EVENTS)))], "timestamp": t,
                                             "value": None})


def fill(stores: list[StateStore], records: Iterator[Record], batch: int = 1000) -> int:
    n, buf = 0, []
    for r in records:
        buf.append(r)
        if len(buf) == batch:
            for s in stores:
                s.append([Record(kind=x.kind, data=x.data) for x in buf])
            n, buf = n + len(buf), []
    for s in stores:
        if buf:
            s.append([Record(kind=x.kind, data=x.data) for x in buf])
    return n + len(buf)


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    gc.collect()
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def start(art: Path, url: str) -> tuple[float, int, bool]:
    """Seconds to open a serving engine on `url`, the records it replayed, whether it loaded a snapshot."""
    took, e = timed(lambda: Engine.open(art, state_url=url))
    assert isinstance(e, Engine)
    rep = e.replayed
    e.close()
    return took, rep.records, rep.snapshot is not None


def pair_of_logs(backend: str, tmp: Path, redis_url: str | None) -> tuple[str, str]:
    if backend == "sqlite":
        return f"sqlite:///{tmp}/with.db", f"sqlite:///{tmp}/without.db"
    assert redis_url is not None
    sep = "&" if "?" in redis_url else "?"
    tag = uuid.uuid4().hex[:8]
    return f"{redis_url}{sep}prefix=bench-snap-{tag}-a", f"{redis_url}{sep}prefix=bench-snap-{tag}-b"


def run(art: Path, n: int, backend: str, *, tail: int, repeat: int, redis_url: str | None) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="candgen-bench-snap-") as d:
        tmp = Path(d)
        with_url, without_url = pair_of_logs(backend, tmp, redis_url)
        a, b = open_state(with_url), open_state(without_url)
        try:
            t_fill, _ = timed(lambda: fill([a, b], writes(art, n, seed=1)))
            t_snap, res = timed(lambda: take_snapshot(art, a, trim=False))
            size = res.meta.size if res.meta is not None else 0  # type: ignore[attr-defined]
            fill([a, b], writes(art, tail, seed=2))
            full, snap, load = [], [], []
            for _ in range(repeat):
                t, replayed, from_snap = start(art, without_url)
                assert replayed == n + tail and not from_snap
                full.append(t)
                t, replayed, from_snap = start(art, with_url)
                assert replayed == tail and from_snap
                snap.append(t)
                load.append(timed(lambda: Runtime.load(art))[0])
        finally:
            for s in (a, b):
                if isinstance(s, RedisStore):
                    s.delete_all()
                s.close()
    f, s, ld = statistics.median(full), statistics.median(snap), statistics.median(load)
    return {"n": n, "backend": backend, "full": f, "snapshot": s, "load": ld, "ratio": f / s,
            "take": t_snap, "size_mb": size / 1e6, "fill": t_fill, "runs": repeat}


def machine() -> str:
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{platform.node()}: {os.cpu_count()} cores ({model}), Python {platform.python_version()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("art", type=Path)
    ap.add_argument("--events", default="100000,1000000")
    ap.add_argument("--tail", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--redis", default=None, help="also measure the Redis backend at this URL")
    args = ap.parse_args()
    print(machine(), time.strftime("%Y-%m-%d %H:%M"), "load", " ".join(f"{x:.1f}" for x in os.getloadavg()))
    backends = ["sqlite"] + (["redis"] if args.redis else [])
    print("| logged writes | backend | start, full replay (s) | start, snapshot + tail (s) | ratio | "
          "Runtime.load alone (s) | take snapshot (s) | snapshot size (MB) |")
    print("|---|---|---|---|---|---|---|---|")
    for n in (int(x) for x in args.events.split(",")):
        for backend in backends:
            r = run(args.art, n, backend, tail=args.tail, repeat=args.repeat, redis_url=args.redis)
            print(f"| {n:,} | {backend} | {r['full']:.2f} | {r['snapshot']:.2f} | {r['ratio']:.1f}x | "
                  f"{r['load']:.2f} | {r['take']:.1f} | {r['size_mb']:.0f} |", flush=True)
    print("load", " ".join(f"{x:.1f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
