"""The uncached request path in-process (no HTTP): CPU and wall time per request and per engine stage.

Every request names a distinct user (90% warm users of the artifacts' snapshot, 10% cold, a context from
the load generator's mix), k=1000, through `Engine.candidates` with deadlines on and no list caches, so
each one computes its list. One client (sequential calls): "CPU" is this process's CPU time per request
(all threads), the figure the machine's load disturbs least.

    .venv/bin/python benchmarks/request_path.py ART [--requests 2000] [--k 1000] [--profile prof.txt]

`--profile FILE` also writes cProfile's cumulative table of the run (slower calls; for reading, not timing).
`--served` opens the engine as `candgen serve` does (`open_engine`: the embedded state store, the list caches,
the L2 user-embedding cache and the online ANN-recall sampling), instead of the artifacts alone. Every request
still names a distinct user, so the list caches store but never hit.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np

from candgen.bench.loadgen import CONTEXTS, warm_users_from_artifacts
from candgen.engine import Engine, open_engine
from candgen.types import Request


def requests(art: Path, n: int, k: int, cold_fraction: float, seed: int) -> list[Request]:
    rng = random.Random(seed)
    warm = warm_users_from_artifacts(art)
    rng.shuffle(warm)
    out = []
    for i in range(n):
        user = f"cold-{seed}-{i}" if rng.random() < cold_fraction or i >= len(warm) else warm[i]
        out.append(Request(user_id=user, k=k, context=dict(CONTEXTS[rng.randrange(len(CONTEXTS))])))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("art", type=Path)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--k", type=int, default=1000)
    p.add_argument("--cold-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", type=Path, default=None)
    p.add_argument("--served", action="store_true", help="open the engine as candgen serve does")
    args = p.parse_args()

    engine = open_engine(str(args.art)) if args.served else Engine.load(args.art)
    reqs = requests(args.art, args.warmup + args.requests, args.k, args.cold_fraction, args.seed)
    for r in reqs[: args.warmup]:
        engine.candidates(r)
    wall, cpu, degraded = [], [], 0
    stages: dict[str, list[float]] = {}
    prof = None
    if args.profile is not None:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    c0 = time.process_time()
    t_all = time.perf_counter()
    for r in reqs[args.warmup:]:
        t, c = time.perf_counter(), time.process_time()
        res = engine.candidates(r)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        degraded += bool(res.degraded)
        for name, v in res.timings.items():
            stages.setdefault(name, []).append(v)
    elapsed = time.perf_counter() - t_all
    total_cpu = time.process_time() - c0
    if prof is not None:
        import pstats

        prof.disable()
        with args.profile.open("w") as f:
            pstats.Stats(prof, stream=f).sort_stats("cumulative").print_stats(60)
    engine.close()
    n = len(wall)
    ms = lambda a, q: float(np.percentile(np.asarray(a) * 1000.0, q))  # noqa: E731
    load = Path("/proc/loadavg").read_text()[:14]
    how = "as served (state store, caches, sampling)" if args.served else "artifacts only"
    print(f"{args.art} {how}: {n} requests, k={args.k}, {elapsed:.1f} s, load average {load}")
    print("| figure | p50 ms | p99 ms | mean ms |")
    print("|---|---|---|---|")
    print(f"| wall per request | {ms(wall, 50):.3f} | {ms(wall, 99):.3f} | {1000 * np.mean(wall):.3f} |")
    print(f"| CPU per request (all threads) | {ms(cpu, 50):.3f} | {ms(cpu, 99):.3f} | {1000 * total_cpu / n:.3f} |")
    for name in sorted(stages, key=lambda s: -float(np.mean(stages[s]))):
        v = stages[name]
        print(f"| stage {name} ({len(v)} requests) | {ms(v, 50):.3f} | {ms(v, 99):.3f} | {1000 * np.mean(v):.3f} |")
    print(f"degraded answers: {degraded} of {n}")


if __name__ == "__main__":
    main()
