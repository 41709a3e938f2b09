"""Which ANN backend should `choose_index` pick above `exact_below` items? HNSW vs IVF vs IVF-PQ at k=1000.

Builds each backend over the same clustered unit vectors, sweeps its search parameter with
`candgen.index.tune.sweep` (single queries, 1 thread, recall@k against exact search) and prints
build time and the cheapest setting reaching the target recall.

    .venv/bin/python benchmarks/index_choice.py --n 200000 --dim 64 --k 1000 --queries 200
"""

from __future__ import annotations

import argparse
import json
import time

import faiss
import numpy as np

from candgen.index.registry import open_index
from candgen.index.tune import exact_ground_truth, markdown_table, perturbed_queries, pick_cheapest, sweep


def clustered(n: int, dim: int, *, clusters: int, rank: int = 8, seed: int = 0) -> np.ndarray:
    """Unit vectors shaped like learned item embeddings: topic centres with long-tailed sizes, and
    within a topic variation along a few latent directions (low intrinsic dimension) plus a little
    isotropic noise. Uniform or isotropic-Gaussian data makes every ANN look bad and is not what
    a two-tower model produces."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    sizes = 1.0 / np.arange(1, clusters + 1) ** 0.8  # long tail, no single giant topic
    which = rng.choice(clusters, n, p=sizes / sizes.sum())
    basis = rng.standard_normal((clusters, rank, dim)).astype(np.float32) / np.sqrt(dim)
    z = rng.standard_normal((n, rank)).astype(np.float32) * 0.5
    x = centres[which] + np.einsum("nr,nrd->nd", z, basis[which])
    x += 0.05 / np.sqrt(dim) * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--target", type=float, default=0.95)
    ap.add_argument("--threads", type=int, default=2, help="OpenMP threads for building")
    ap.add_argument("--kinds", default="ivf,hnsw,ivfpq")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    x = clustered(a.n, a.dim, clusters=max(50, a.n // 500))
    q = perturbed_queries(x, a.queries, noise=0.3, seed=1)
    t = time.perf_counter()
    faiss.omp_set_num_threads(a.threads)
    truth = exact_ground_truth(x, q, k=a.k)
    print(f"ground truth {time.perf_counter() - t:.1f}s; n={a.n} dim={a.dim} k={a.k} queries={a.queries}")
    configs = {
        "hnsw": ("hnsw", {"m": 32, "ef_construction": 200}, {"ef_search": [1000, 1250, 1500, 2000, 3000, 4000]}),
        "ivf": ("ivf", {}, {"nprobe": [16, 32, 64, 96, 128, 192, 256, 384]}),
        "ivfpq": ("ivfpq", {"pq_m": a.dim // 4, "rerank_factor": 4},
                  {"nprobe": [16, 32, 64, 96, 128, 192, 256, 384]}),
    }
    results = {}
    for name in a.kinds.split(","):
        kind, build, grid = configs[name]
        idx = open_index(kind, a.dim, threads=a.threads, **build)
        t = time.perf_counter()
        idx.add(x, np.arange(a.n))
        build_s = time.perf_counter() - t
        points = sweep(idx, x, q, k=a.k, param_grid=grid, ground_truth=truth, stop_at_recall=0.995)
        best = pick_cheapest(points, a.target)
        print(f"\n## {name} {idx.params}: built in {build_s:.1f}s")
        print(markdown_table(points, k=a.k, target_recall=a.target, chosen=best))
        results[name] = {"build_s": build_s, "params": idx.params, "points": [p.to_dict() for p in points],
                         "chosen": best.to_dict() if best else None}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
