"""The blend on real inputs, with warm and with flushed CPU caches.

    .venv/bin/python benchmarks/blend_replay.py ART [--requests 300] [--repeat 3]

Runs `Engine.candidates` for `--requests` distinct users (as benchmarks/request_path.py does), records the
arguments of every `blend()` call, then replays the recorded calls: CPU µs per call (this thread), median of
`--repeat` passes, once back to back (warm caches) and once with a 128 MB write between calls (the caches
flushed, as in a server where the sources and other requests evict the blend's data between two requests).
"""

from __future__ import annotations

import argparse
import statistics as st
import time
from pathlib import Path
from typing import Any

import numpy as np
from request_path import requests  # a sibling script: benchmarks/ is on sys.path when run as a script

import candgen.engine as engine_module
from candgen.blend.pipeline import blend
from candgen.engine import Engine


def capture(art: Path, n: int) -> list[tuple[Any, dict[str, Any]]]:
    calls: list[tuple[Any, dict[str, Any]]] = []

    def recording(lists: Any, **kw: Any) -> Any:
        calls.append((lists, kw))
        return blend(lists, **kw)

    engine_module.blend = recording  # type: ignore[assignment]
    try:
        eng = Engine.load(art)
        for r in requests(art, n, 1000, 0.1, 1):
            eng.candidates(r)
        eng.close()
    finally:
        engine_module.blend = blend
    return calls[len(calls) // 3:]  # the first third warms up the engine's caches


def replay(calls: list[tuple[Any, dict[str, Any]]], flush: np.ndarray | None) -> float:
    total = 0.0
    for lists, kw in calls:
        if flush is not None:
            flush[::8] += 1  # one write per cache line
        t = time.thread_time()
        blend(lists, **kw)
        total += time.thread_time() - t
    return total / len(calls) * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("art", type=Path)
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    calls = capture(args.art, args.requests)
    flush = np.zeros(16_000_000, dtype=np.int64)
    replay(calls, None)
    warm = [replay(calls, None) for _ in range(args.repeat)]
    cold = [replay(calls, flush) for _ in range(args.repeat)]
    print(f"{args.art}: {len(calls)} blend calls, load average {Path('/proc/loadavg').read_text()[:14]}")
    print(f"warm caches: {st.median(warm):.0f} µs CPU per call ({', '.join(f'{x:.0f}' for x in warm)})")
    print(f"caches flushed between calls: {st.median(cold):.0f} µs ({', '.join(f'{x:.0f}' for x in cold)})")


if __name__ == "__main__":
    main()
