"""Overhead of candgen's `VectorIndex.search` over the raw FAISS call it wraps (goal: <= 10%).

For IVF-PQ the raw call is FAISS's `IndexRefineFlat` around the very IVF-PQ inside candgen's index (PQ
search of k * rerank_factor, then exact inner products): the same work as candgen's re-ranking.

Same index, same single queries (k=1000, 1 OpenMP thread), raw and wrapped calls interleaved query
by query (rotating which goes first, since a repeated query hits warm caches) so machine noise
hits both alike; reports medians and their ratio per backend.

    .venv/bin/python benchmarks/index_overhead.py --n 100000 --dim 64 --k 1000 --queries 300
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np
from index_choice import clustered

from candgen.index.registry import open_index
from candgen.index.tune import perturbed_queries


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--kinds", default="flat,ivf,hnsw,ivfpq")
    a = ap.parse_args()
    x = clustered(a.n, a.dim, clusters=max(50, a.n // 500))
    q = perturbed_queries(x, a.queries, seed=1)
    build = {"flat": {}, "ivf": {"nprobe": 64}, "hnsw": {"m": 16, "ef_construction": 100, "ef_search": 1000},
             "ivfpq": {"nprobe": 64, "pq_m": 16}}
    print(f"n={a.n} dim={a.dim} k={a.k} queries={a.queries} (single queries, 1 thread, medians)")
    print("| backend | raw FAISS ms | candgen ms | overhead | raw CPU ms | candgen CPU ms | CPU overhead "
          "| with exclude (10 ids) ms | its CPU ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for kind in a.kinds.split(","):
        idx = open_index(kind, a.dim, threads=2, **build[kind])
        idx.add(x, np.arange(a.n))
        raw_index = idx._index  # type: ignore[attr-defined]  # the FAISS object the wrapper calls
        if kind == "ivfpq":  # the same work as candgen's re-ranking: FAISS's refine around the very same IVF-PQ
            raw_index = faiss.IndexRefineFlat(raw_index, faiss.swig_ptr(np.ascontiguousarray(x, dtype=np.float32)))
            raw_index.k_factor = float(idx.params["rerank_factor"])
        raw: list[tuple[float, float]] = []
        ours: list[tuple[float, float]] = []
        excl: list[tuple[float, float]] = []
        faiss.omp_set_num_threads(1)
        calls = [
            (raw, lambda qi, i, r=raw_index: r.search(qi, a.k)),
            (ours, lambda qi, i, x=idx: x.search(qi, a.k)),
            (excl, lambda qi, i, x=idx: x.search(qi, a.k, exclude=[np.arange(i, i + 10)])),
        ]
        for i in range(a.queries):
            qi = q[i : i + 1]
            # rotate who goes first: the second call of a query finds its data in cache
            for times, call in calls[i % 3 :] + calls[: i % 3]:
                t, c = time.perf_counter(), time.thread_time()
                call(qi, i)
                times.append((time.perf_counter() - t, time.thread_time() - c))
        (r, rc), (o, oc), (e, ec) = (np.median(np.array(v), axis=0) * 1e3 for v in (raw, ours, excl))
        print(f"| {kind} | {r:.3f} | {o:.3f} | {100 * (o / r - 1):+.1f}% | {rc:.3f} | {oc:.3f} | "
              f"{100 * (oc / rc - 1):+.1f}% | {e:.3f} | {ec:.3f} |")


if __name__ == "__main__":
    main()
