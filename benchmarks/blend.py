"""Blend benchmark: median and p99 microseconds per request to blend 4 sources x 1000 candidates into k=1000.

Synthetic requests over a 1M-item catalog (overlapping source lists, 200 seen items, a deleted-items mask,
3 blocked creators) through each step alone and the whole `blend` pipeline with several configs.

    .venv/bin/python benchmarks/blend.py            # about 20 s
    .venv/bin/python benchmarks/blend.py --mmr      # adds MMR (k=1000 of a 2000 pool, dim 64; slow by design)

Prints one table (wall-clock median and p99, and median CPU time of this process, which a busy machine
disturbs less); numbers go into benchmarks/README.md, section "blend".
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from collections.abc import Callable

import numpy as np

from candgen.blend.experiments import Experiment, assign
from candgen.blend.filters import apply_filters
from candgen.blend.merge import quota_merge, weighted_merge
from candgen.blend.pipeline import blend
from candgen.config import BlendConfig
from candgen.types import Candidates

MIX = {"collaborative": 0.4, "content": 0.3, "trending": 0.2, "social": 0.1}


@dataclasses.dataclass
class World:
    item_creator: np.ndarray
    item_category: np.ndarray
    deleted: np.ndarray
    item_vectors: np.ndarray


@dataclasses.dataclass
class Req:
    lists: list[Candidates]
    exclude: np.ndarray
    blocked: set[int]
    explore: Candidates
    fallback: Candidates


def make_world(n_items: int, rng: np.random.Generator, dim: int) -> World:
    deleted = np.zeros(n_items, dtype=bool)
    deleted[rng.choice(n_items, n_items // 1000, replace=False)] = True
    return World(
        item_creator=rng.integers(0, n_items // 20, n_items).astype(np.int32),
        item_category=rng.integers(0, 20, n_items).astype(np.int32),
        deleted=deleted,
        item_vectors=rng.normal(size=(n_items, dim)).astype(np.float32),
    )


def make_request(n_items: int, per_source: int, rng: np.random.Generator) -> Req:
    popular = rng.choice(n_items, 5000, replace=False)  # sources overlap on a shared head of items
    lists = []
    for name in MIX:
        shared = rng.choice(popular, per_source // 5, replace=False)
        own = rng.choice(n_items, per_source, replace=False)
        ids = np.unique(np.concatenate([shared, own]))[:per_source]
        ids = rng.permutation(ids).astype(np.int64)
        scores = np.sort(rng.random(len(ids)).astype(np.float32))[::-1].copy()
        lists.append(Candidates(ids, scores, name))
    return Req(
        lists=lists,
        exclude=rng.choice(n_items, 200, replace=False).astype(np.int64),
        blocked=set(rng.integers(0, n_items // 20, 3).tolist()),
        explore=Candidates(rng.choice(n_items, 200, replace=False).astype(np.int64), np.ones(200, np.float32), "new"),
        fallback=Candidates(popular[:1000].astype(np.int64), np.linspace(1, 0, 1000).astype(np.float32), "popular"),
    )


def timeit(fn: Callable[[Req], object], reqs: list[Req], repeat: int) -> tuple[float, float, float]:
    """Median and p99 wall-clock µs, and median CPU µs (this process only: robust on a shared machine)."""
    for r in reqs[:3]:
        fn(r)  # warm-up
    wall, cpu = [], []
    for i in range(repeat):
        r = reqs[i % len(reqs)]
        c, t = time.process_time(), time.perf_counter()
        fn(r)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    us = np.array(wall) * 1e6
    return float(np.median(us)), float(np.percentile(us, 99)), float(np.median(cpu) * 1e6)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--per-source", type=int, default=1000)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=1000)
    ap.add_argument("--mmr", action="store_true", help="also time MMR (about 20-60 ms per request)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    world = make_world(args.items, rng, dim=64)
    reqs = [make_request(args.items, args.per_source, rng) for _ in range(50)]
    k = args.k
    exp = Experiment("bench", {"a": 0.5, "b": 0.5}, {"b": MIX})

    def run_blend(config: BlendConfig) -> Callable[[Req], object]:
        def fn(r: Req) -> object:
            return blend(
                r.lists, k=k, config=config, mix=MIX, exclude=r.exclude, deleted=world.deleted,
                blocked_creators=r.blocked, item_creator=world.item_creator, item_category=world.item_category,
                explore=r.explore, item_vectors=world.item_vectors, fallback=r.fallback,
                rng=np.random.default_rng(1),
            )
        return fn

    cases: list[tuple[str, Callable[[Req], object]]] = [
        ("filters only (apply_filters)", lambda r: apply_filters(
            r.lists, exclude=r.exclude, deleted=world.deleted, blocked_creators=r.blocked,
            item_creator=world.item_creator)),
        ("quota_merge only", lambda r: quota_merge(r.lists, MIX, k)),
        ("weighted_merge only", lambda r: weighted_merge(r.lists, MIX, k, rng=np.random.default_rng(1))),
        ("blend: filters+quota (no exploration)", run_blend(BlendConfig(exploration_fraction=0.0))),
        ("blend: weighted", run_blend(BlendConfig(strategy="weighted", exploration_fraction=0.0))),
        ("blend: caps creator 5 / category 100", run_blend(
            BlendConfig(max_per_creator=5, max_per_category=100, exploration_fraction=0.0))),
        ("blend: exploration 5%", run_blend(BlendConfig(exploration_fraction=0.05))),
        ("blend: caps + exploration 5% + provenance list", lambda r: run_blend(
            BlendConfig(max_per_creator=5, max_per_category=100, exploration_fraction=0.05))(r).source_lists()),
        ("experiments.assign (one user)", lambda r: assign(str(id(r)), exp)),
    ]
    if args.mmr:
        mmr_config = BlendConfig(mmr_lambda=0.7, exploration_fraction=0.0)
        cases.append(("blend: MMR lambda 0.7 (pool 2000)", run_blend(mmr_config)))
    print(f"blend benchmark: {len(MIX)} sources x {args.per_source} candidates, k={k}, catalog {args.items:,}")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'case':48s} {'median us':>10s} {'p99 us':>10s} {'cpu us':>10s}")
    for name, fn in cases:
        repeat = args.repeat if "MMR" not in name else max(20, args.repeat // 50)
        med, p99, cpu = timeit(fn, reqs, repeat)
        print(f"{name:48s} {med:10.0f} {p99:10.0f} {cpu:10.0f}")


if __name__ == "__main__":
    main()
