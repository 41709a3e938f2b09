"""Speed of the evaluation metrics at 10k users x k=1000 over a 100k-item catalog (random lists, 20 relevant
items per user, 3 tags per item, 64-d item vectors).

    .venv/bin/python benchmarks/eval_metrics.py      # about 15 s

Prints wall-clock and CPU seconds per call (CPU time is less disturbed by other processes).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from candgen.data.dataset import Csr
from candgen.eval import metrics as m


def timed(name: str, fn: Callable[[], object]) -> None:
    w, c = time.perf_counter(), time.process_time()
    fn()
    print(f"{name:<44} wall {time.perf_counter() - w:6.2f} s   cpu {time.process_time() - c:6.2f} s")


def main() -> None:
    rng = np.random.default_rng(0)
    n_users, n_items, k = 10_000, 100_000, 1000
    rec = np.stack([rng.choice(n_items, size=k, replace=False) for _ in range(n_users)])
    rel = Csr.from_lists([rng.choice(n_items, size=20, replace=False).tolist() for _ in range(n_users)])
    tags = Csr.from_lists([rng.choice(50, size=3, replace=False).tolist() for _ in range(n_items)])
    vectors = rng.normal(size=(n_items, 64)).astype(np.float32)
    p = m.item_probability(rng.integers(0, 1000, n_items), 1000)
    ks = [50, 100, 200, 1000]
    timed("ranking_metrics_per_user, ks=50,100,200,1000", lambda: m.ranking_metrics_per_user(rec, rel, ks))
    timed("recall_at_k k=1000", lambda: m.recall_at_k(rec, rel, 1000))
    timed("catalog_coverage", lambda: m.catalog_coverage(rec, n_items))
    timed("gini(recommendation_counts)", lambda: m.gini(m.recommendation_counts(rec, n_items)))
    timed("novelty", lambda: m.novelty(rec, p))
    timed("intra_list_diversity, tags", lambda: m.intra_list_diversity(rec, item_tags=tags))
    timed("intra_list_diversity, 64-d vectors", lambda: m.intra_list_diversity(rec, item_vectors=vectors))


if __name__ == "__main__":
    main()
