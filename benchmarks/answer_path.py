"""The HTTP answer path outside the engine: encoding a k=1000 answer, and the hop to the engine's thread.

    .venv/bin/python benchmarks/answer_path.py [--k 1000] [--repeat 3]

1. Encoding: per-candidate dicts + `orjson.dumps` (the old path) against `candgen.serve.encode.answer_json`
   (columns encoded by orjson and interleaved, from the engine's `source_groups`). Median µs per answer
   over 400 encodings; the outputs are checked byte-equal first.
2. The hop: an async handler calling a function directly, through `loop.run_in_executor(ThreadPoolExecutor)`
   (what the app does), or through a SimpleQueue + `call_soon_threadsafe` hand-off, under uvloop with 1 and
   4 concurrent callers; CPU and wall µs per call for an empty function and one of ~40 µs.
"""

from __future__ import annotations

import argparse
import asyncio
import queue
import statistics as st
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from candgen.serve.encode import answer_json, candidate_dicts
from candgen.serve.protocol import CandidatesResult

HEAD = {"user_id": "u1", "model_version": "m", "variant": "default"}
GROUPS = [["collaborative"], ["content"], ["trending"], ["social"], ["cold_start"], ["new_items"],
          ["collaborative", "content"], ["content", "trending"]]


def median_us(f: Callable[[], object], reps: int = 400) -> float:
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return st.median(ts) * 1e6


def encoding(k: int, repeat: int) -> None:
    rng = np.random.default_rng(0)
    ids = [f"item-{int(x)}" for x in rng.integers(0, 1_000_000, k)]
    scores = np.sort(rng.random(k).astype(np.float32))[::-1]
    index = rng.integers(0, len(GROUPS), k)
    sources = [GROUPS[int(i)] for i in index]
    grouped = CandidatesResult(item_ids=ids, scores=scores, sources=sources, source_groups=(GROUPS, index))
    plain = CandidatesResult(item_ids=ids, scores=scores, sources=sources)

    def tail() -> dict[str, Any]:
        return {"degraded": [], "cache": "miss", "took_ms": 1.234}

    cases: dict[str, Callable[[], bytes]] = {
        "dicts + orjson (old)": lambda: orjson.dumps({**HEAD, "candidates": candidate_dicts(plain, False), **tail()}),
        "columns, source_groups": lambda: answer_json(HEAD, grouped, tail()),
    }
    outs = {f() for f in cases.values()}
    assert len(outs) == 1, "the encodings differ"
    runs: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeat):
        for name, f in cases.items():
            runs[name].append(median_us(f))
    print(f"| encoding a k={k} answer | median µs per answer (runs) |\n|---|---|")
    for name, v in runs.items():
        print(f"| {name} | {st.median(v):.0f} ({', '.join(f'{x:.0f}' for x in v)}) |")


class QueueHop:
    """Worker threads fed by a SimpleQueue; each result is handed back with one call_soon_threadsafe."""

    def __init__(self, n: int) -> None:
        self.q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for _ in range(n):
            threading.Thread(target=self._work, daemon=True).start()

    def _work(self) -> None:
        while True:
            fn, loop, fut = self.q.get()
            loop.call_soon_threadsafe(_settle, fut, fn())

    def run(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.q.put((fn, loop, fut))
        return fut


def _settle(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.cancelled():
        fut.set_result(value)


def busy(n: int) -> int:
    s = 0
    for i in range(n):
        s += i
    return s


async def hop_case(kind: str, n: int, conc: int, ex: ThreadPoolExecutor, qh: QueueHop, reps: int = 3000
                   ) -> tuple[float, float]:
    loop = asyncio.get_running_loop()

    def fn() -> int:
        return busy(n)

    async def client(m: int) -> None:
        for _ in range(m):
            if kind == "executor":
                await loop.run_in_executor(ex, fn)
            elif kind == "queue":
                await qh.run(fn)
            else:
                fn()

    c, t = time.process_time(), time.perf_counter()
    await asyncio.gather(*[client(reps // conc) for _ in range(conc)])
    return (time.process_time() - c) / reps * 1e6, (time.perf_counter() - t) / reps * 1e6


async def hops(repeat: int) -> None:
    ex, qh = ThreadPoolExecutor(32), QueueHop(4)
    print("\n| hop | work | callers | CPU µs per call | wall µs per call |\n|---|---|---|---|---|")
    for n in (0, 2000):
        for conc in (1, 4):
            got: dict[str, list[tuple[float, float]]] = {"direct": [], "executor": [], "queue": []}
            for _ in range(repeat):
                for kind in got:
                    got[kind].append(await hop_case(kind, n, conc, ex, qh))
            for kind, v in got.items():
                print(f"| {kind} | {'empty' if n == 0 else 'busy ~40 µs'} | {conc} "
                      f"| {st.median(c for c, _ in v):.1f} | {st.median(w for _, w in v):.1f} |")
    ex.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--k", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    print(f"load average {Path('/proc/loadavg').read_text()[:14]}")
    encoding(args.k, args.repeat)
    import uvloop

    uvloop.run(hops(args.repeat))


if __name__ == "__main__":
    main()
