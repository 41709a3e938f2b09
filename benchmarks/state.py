"""State backend benchmark: median and p99 microseconds of the log and cache operations the service calls.

For each backend (memory, SQLite with synchronous=NORMAL (the default) and FULL on the local disk, Redis
on 127.0.0.1 db 14 under a throwaway prefix), on a log already holding 10k records: the replay of that log
(per record: what a restarting worker pays), `read_since` with nothing new (the catch-up every worker does
at the start of every request; it also checks the trim mark, so a cursor from before a trim raises
`LogGap`), the same read without that check (the plain query the backends ran before snapshots: the
check's cost is the difference), `append` of 1 and of 100 records, and cache `get` (hit), `get` (miss) and
`set` of an 8 KB value (1000 int64 candidate ids) in L1.

    .venv/bin/python benchmarks/state.py              # about 30 s
    .venv/bin/python benchmarks/state.py --quick      # fewer repetitions

Prints one table; numbers go into benchmarks/README.md, section "state backends".
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from candgen.state import Record, StateStore, open_state
from candgen.state.redis import RedisStore
from candgen.state.sqlite import _READ, SQLiteStore


def timed(fn: Callable[[], object], n: int) -> tuple[float, float]:
    """(median, p99) microseconds of `fn` over n calls, after a few warm-up calls."""
    for _ in range(min(20, n)):
        fn()
    out = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter_ns()
        fn()
        out[i] = time.perf_counter_ns() - t0
    return float(np.median(out) / 1000), float(np.percentile(out, 99) / 1000)


def records(n: int) -> list[Record]:
    return [Record(kind="event", data={"user_id": f"u{i}", "item_id": f"i{i}", "event": "click", "timestamp": 1.7e9})
            for i in range(n)]


def bench(store: StateStore, *, reps: int) -> dict[str, tuple[float, float]]:
    for _ in range(10):
        store.append(records(1000))  # a log that is not empty: the catch-up query must use the index
    cursor = store.tail_cursor()
    value = np.arange(1000, dtype=np.int64).tobytes()
    l1 = store.cache("L1")
    l1.set("hit", value, ttl_s=600)
    n_append = max(50, reps // 10)
    one, hundred = records(1), records(100)  # built once: the timing is the store's, not Record()'s
    n_log = len(store.read_since(None, limit=100_000)[0])

    def replay() -> None:  # what a restarting worker does: the whole log, in pages
        c: str | None = None
        while True:
            page, c = store.read_since(c, limit=10_000)
            if not page:
                return

    med, p99 = timed(replay, 5)
    store.trim(str(int(cursor) - 5000) if cursor and "-" not in cursor else "0-1")  # a trim mark to check
    return {
        "replay, per record": (med / n_log, p99 / n_log),
        "read_since, nothing new": timed(lambda: store.read_since(cursor), reps),
        "same, no trim check": timed(unchecked_read(store, cursor), reps),
        "append 1 record": timed(lambda: store.append(one), n_append),
        "append 100 records": timed(lambda: store.append(hundred), max(20, n_append // 4)),
        "cache get, hit (8 KB)": timed(lambda: l1.get("hit"), reps),
        "cache get, miss": timed(lambda: l1.get("nope"), reps),
        "cache set (8 KB)": timed(lambda: l1.set("k", value, ttl_s=600), reps),
    }


def unchecked_read(store: StateStore, cursor: str | None) -> Callable[[], object]:
    """The catch-up read as the backends ran it before trim marks: the plain query, no LogGap check."""
    if isinstance(store, SQLiteStore):
        conn = store._conn()
        return lambda: conn.execute(_READ, (int(cursor or 0), 10_000)).fetchall()
    if isinstance(store, RedisStore):
        r = store._r
        return lambda: r.xrange(f"{store.tag}:log", min="(" + (cursor or "0-0"), max="+", count=10_000)
    return lambda: store.read_since(cursor)  # memory: the check is a comparison of two ints either way


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    args = ap.parse_args()
    reps = 1000 if args.quick else 5000
    results: dict[str, dict[str, tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:  # the working disk, not a tmpfs
        for name, url in [("memory", "memory://"),
                          ("sqlite NORMAL", f"sqlite:///{tmp}/normal.db"),
                          ("sqlite FULL", f"sqlite:///{tmp}/full.db?synchronous=full")]:
            with open_state(url) as store:
                results[name] = bench(store, reps=reps)
    try:
        store = open_state(f"{args.redis}?prefix=candgen-bench-{uuid.uuid4().hex[:8]}")
    except Exception as e:  # the table still has the embedded backends
        print(f"(redis skipped: {e})")
    else:
        try:
            results["redis"] = bench(store, reps=reps)
        finally:
            assert isinstance(store, RedisStore)
            store.delete_all()
            store.close()
    ops = list(next(iter(results.values())))
    names = list(results)
    print(f"{'operation (µs: median / p99)':<28}" + "".join(f"{n:>20}" for n in names))
    for op in ops:
        cells = "".join(f"{f'{results[n][op][0]:.1f} / {results[n][op][1]:.1f}':>20}" for n in names)
        print(f"{op:<28}{cells}")


if __name__ == "__main__":
    main()
