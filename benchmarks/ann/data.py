"""Benchmark data for the ANN comparison: clustered unit vectors, held-out queries, cached exact truth.

Item embeddings of a trained model are far from uniform noise: items crowd around topics of very
different sizes. `mixture` draws a Gaussian mixture with a few thousand clusters whose sizes follow
a long tail (log-normal weights) and whose spreads differ, then L2-normalises. Queries are held-out
draws from the same mixture, perturbed once more (a user embedding lands near, not on, items).
Exact top-k (FAISS flat, inner product) is computed once and cached under a key of every input.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import faiss
import numpy as np


def mixture(n: int, dim: int, *, clusters: int, seed: int) -> np.ndarray:
    """`n` unit vectors from a `clusters`-component Gaussian mixture with long-tailed sizes."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = rng.lognormal(mean=0.0, sigma=1.0, size=clusters)
    spread = rng.uniform(0.5, 1.5, size=clusters).astype(np.float32)  # tight and loose topics
    which = rng.choice(clusters, size=n, p=weights / weights.sum())
    out = np.empty((n, dim), dtype=np.float32)
    for lo in range(0, n, 200_000):  # chunks keep the float64 temporaries small at 1M x 128
        w = which[lo:lo + 200_000]
        noise = rng.standard_normal((len(w), dim), dtype=np.float32)
        out[lo:lo + len(w)] = centres[w] + (spread[w, None] / np.sqrt(dim)) * noise
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def dataset(n: int, dim: int, n_queries: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(items, queries): one mixture, the last `n_queries` points held out and perturbed."""
    clusters = max(16, min(4000, n // 250))
    x = mixture(n + n_queries, dim, clusters=clusters, seed=seed)
    q = x[n:].copy()
    rng = np.random.default_rng(seed + 1)
    q += (0.3 / np.sqrt(dim)) * rng.standard_normal(q.shape, dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return np.ascontiguousarray(x[:n]), q


def ground_truth(x: np.ndarray, q: np.ndarray, k: int, *, cache_dir: Path, key: str) -> np.ndarray:
    """Exact top-`k` ids (row positions of `x`) per query, from cache when the key matches."""
    digest = hashlib.sha256(f"{key}|{x.shape}|{q.shape}|{k}".encode()).hexdigest()[:16]
    path = cache_dir / f"truth_{digest}.npy"
    if path.exists():
        return np.load(path, allow_pickle=False)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    _, ids = index.search(q, k)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, ids.astype(np.int64))
    tmp.replace(path)
    return ids.astype(np.int64)


def recall_at_k(got: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean over queries of |got[:k] ∩ truth[:k]| / k."""
    return float(np.mean([len(np.intersect1d(g[:k], t[:k])) / k for g, t in zip(got, truth, strict=True)]))
