"""Blend quality on real data: recall@k of each source alone and of the blend strategies over them.

Until the real sources are wired into the engine, the offline baselines (popular, recent-popular,
item-kNN, ALS) stand in for four sources. MovieLens latest-small, time split (last 20% of the log is the
test; few users are warm across it in latest-small) or a random 20% of interactions held out, warm test
users with at least one relevant item; every source returns 1000 candidates per user.

    .venv/bin/python benchmarks/blend_quality.py --split random    # ~600 users, about 30 s
    .venv/bin/python benchmarks/blend_quality.py --split time      # ~30 users

Prints one table; numbers go into benchmarks/README.md, section "blend".
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from candgen.blend.merge import Blended, quota_merge, weighted_merge
from candgen.config import EventsConfig
from candgen.data.io import load_dataset
from candgen.data.movielens import import_movielens
from candgen.data.split import random_split, time_split
from candgen.eval.baselines import make_baselines
from candgen.eval.evaluate import ground_truth
from candgen.eval.metrics import recall_at_k
from candgen.types import Candidates

SOURCES = {"item_knn": "collaborative-like", "als": "collaborative", "recent_popular": "trending", "popular": "popular"}


def as_matrix(blends: list[Blended], k: int) -> np.ndarray:
    out = np.full((len(blends), k), -1, dtype=np.int64)
    for i, b in enumerate(blends):
        out[i, : min(k, len(b))] = b.ids[:k]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--movielens", type=Path, default=Path("/work/shared/data/ml-latest-small"))
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--split", choices=["time", "random"], default="random")
    args = ap.parse_args()
    k = args.k
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="candgen-blendq-") as tmp:
        import_movielens(args.movielens, tmp)
        ds = load_dataset(tmp)
    if args.split == "time":
        split = time_split(ds, fraction=1.0 - args.test_fraction)
    else:
        split = random_split(ds, test_fraction=args.test_fraction, seed=0)
    events = EventsConfig()
    gt = ground_truth(split, events)
    users = np.array([u for u in split.warm_users.tolist() if u < len(gt) and len(gt.row(u))], dtype=np.int64)
    relevant = [gt.row(int(u)) for u in users]
    recs = {r.name: r for r in make_baselines(list(SOURCES))}
    lists: dict[str, np.ndarray] = {}
    scores: dict[str, np.ndarray] = {}
    for name, rec in recs.items():
        rec.fit(split.train, events)
        batch = rec.recommend(users, k)
        lists[name], scores[name] = batch.ids, batch.scores
    print(f"MovieLens {args.movielens.name}, {args.split} split: {len(users)} warm test users, "
          f"{split.train.n_items} items, "
          f"fit {time.perf_counter() - t0:.0f} s")

    mixes = {
        "knn .4 / als .3 / recent .2 / popular .1": {
            "item_knn": 0.4, "als": 0.3, "recent_popular": 0.2, "popular": 0.1,
        },
        "knn .5 / als .5": {"item_knn": 0.5, "als": 0.5},
    }
    rows: list[tuple[str, np.ndarray]] = [(f"source {n}", lists[n]) for n in SOURCES]
    for label, mix in mixes.items():
        per_user = []
        for i in range(len(users)):
            cands = [Candidates(lists[n][i][lists[n][i] >= 0], scores[n][i][lists[n][i] >= 0], n) for n in SOURCES]
            per_user.append(cands)
        t = time.process_time()
        quota = [quota_merge(c, mix, k) for c in per_user]
        dt_q = (time.process_time() - t) / len(users) * 1e6  # CPU time: the machine is shared
        rng = np.random.default_rng(0)
        weighted = [weighted_merge(c, mix, k, rng=rng) for c in per_user]
        rows.append((f"quota    {label} ({dt_q:.0f} cpu us/user)", as_matrix(quota, k)))
        rows.append((f"weighted {label}", as_matrix(weighted, k)))
    cuts = [c for c in (50, 100, 200, 1000) if c <= k]
    print(f"{'list':58s} " + " ".join(f"{'R@' + str(c):>7s}" for c in cuts))
    for label, mat in rows:
        print(f"{label:58s} " + " ".join(f"{recall_at_k(mat, relevant, c):7.4f}" for c in cuts))


if __name__ == "__main__":
    main()
