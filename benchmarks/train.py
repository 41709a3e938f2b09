"""Training benchmark of the two-tower model: throughput (examples/s), embed_user latency, and recall@k of the
two-tower model against ALS (implicit) on a time split of MovieLens latest-small (or any dataset dir).

    .venv/bin/python benchmarks/train.py --movielens /work/shared/data/ml-latest-small
    .venv/bin/python benchmarks/train.py --data DATASET_DIR --epochs 5

Prints one table; numbers go into benchmarks/README.md, section "training".
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import polars as pl

from candgen.config import Config, EventsConfig, ModelConfig
from candgen.data.dataset import Dataset, Interactions
from candgen.data.split import time_split
from candgen.model.export import TwoTowerModel


def load_movielens(src: Path) -> Dataset:
    """ratings.csv + movies.csv of a MovieLens latest(-small) dir as a Dataset (event "rating", genres -> tags)."""
    r = pl.read_csv(src / "ratings.csv")
    inter = pl.DataFrame({
        "user_id": r["userId"].cast(pl.String), "item_id": r["movieId"].cast(pl.String),
        "timestamp": r["timestamp"].cast(pl.Int64), "event": ["rating"] * len(r), "value": r["rating"],
    })
    m = pl.read_csv(src / "movies.csv")
    tags = [[] if g == "(no genres listed)" else g.split("|") for g in m["genres"].to_list()]
    items = pl.DataFrame({"item_id": m["movieId"].cast(pl.String), "title": m["title"],
                          "tags": pl.Series(tags, dtype=pl.List(pl.String))})
    return Dataset.from_frames(inter, items=items)


def truth_sets(train: Dataset, test: Interactions, users: np.ndarray, events: EventsConfig) -> list[set[int]]:
    """Per user: positive test items not seen (any event) in train."""
    pos = test.take(test.weights(events) > 0)
    seen = set(zip(train.interactions.user.tolist(), train.interactions.item.tolist(), strict=True))
    t: dict[int, set[int]] = {}
    for u, i in zip(pos.user.tolist(), pos.item.tolist(), strict=True):
        if (u, i) not in seen:
            t.setdefault(u, set()).add(i)
    return [t.get(int(u), set()) for u in users]


def recall(ids: np.ndarray, truth: list[set[int]], k: int) -> float:
    vals = [len(tr.intersection(ids[r, :k].tolist())) / len(tr) for r, tr in enumerate(truth) if tr]
    return float(np.mean(vals)) if vals else float("nan")


def als_topk(train: Dataset, users: np.ndarray, k: int, events: EventsConfig, *, factors: int, reg: float,
             iterations: int, alpha: float) -> np.ndarray:
    import implicit
    from scipy.sparse import csr_matrix

    inter = train.interactions
    w = inter.weights(events)
    keep = w > 0
    m = csr_matrix((w[keep].astype(np.float32) * alpha, (inter.user[keep], inter.item[keep])),
                   shape=(train.n_users, train.n_items))
    m.sum_duplicates()
    seen = csr_matrix((np.ones(len(inter), np.float32), (inter.user, inter.item)), shape=m.shape)
    model = implicit.als.AlternatingLeastSquares(factors=factors, regularization=reg, iterations=iterations,
                                                 random_state=0)
    model.fit(m, show_progress=False)
    ids, _ = model.recommend(users, m[users], N=k, filter_already_liked_items=False)
    # exclude everything seen (any event), not just positives
    out = np.full((len(users), k), -1, np.int64)
    for r, u in enumerate(users):
        s = set(seen[u].indices.tolist())
        full, _ = model.recommend(u, m[u], N=k + len(s), filter_already_liked_items=False)
        row = [int(i) for i in full if int(i) not in s][:k]
        out[r, : len(row)] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--movielens", type=Path, default=Path("/work/shared/data/ml-latest-small"))
    ap.add_argument("--data", type=Path, default=None, help="a candgen dataset dir instead of MovieLens")
    ap.add_argument("--fraction", type=float, default=0.8)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--loss", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--set", action="append", default=[], help="ModelConfig override NAME=VALUE (repeatable)")
    ap.add_argument("--no-refit", action="store_true")
    ap.add_argument("--throughput-only", action="store_true", help="only the training-step throughput table")
    ap.add_argument("--no-als", action="store_true")
    ap.add_argument("--only-als", action="store_true")
    args = ap.parse_args()

    from candgen.model.train import train_two_tower

    if args.data is not None:
        from candgen.data.io import load_dataset
        ds = load_dataset(args.data)
    else:
        ds = load_movielens(args.movielens)
    events = EventsConfig()
    split = time_split(ds, fraction=args.fraction)
    cfg = ModelConfig()
    if args.epochs is not None:
        cfg.epochs = args.epochs
    if args.loss is not None:
        cfg.loss = args.loss
    if args.threads is not None:
        cfg.threads = args.threads
    for kv in args.set:
        name, _, value = kv.partition("=")
        cfg = Config.from_dict({"model": {**asdict(cfg), name: value}}).model
    warm = split.warm_users.astype(np.int64)
    truth = truth_sets(split.train, split.test, warm, events)
    rows: list[tuple[str, str]] = [
        ("data", f"{args.data or args.movielens.name}: {ds.n_users} users, {ds.n_items} items, "
                 f"{len(ds.interactions)} interactions"),
        ("split", f"time quantile {args.fraction}: {len(split.train.interactions)} train rows, "
                  f"{sum(1 for t in truth if t)} warm test users with ground truth"),
    ]
    for threads, prefetch in ((1, "none"), (1, "thread"), (1, "process"), (2, "process")):
        wall, cpu = step_throughput(split.train, cfg, events, threads=threads, prefetch=prefetch)
        ahead = {"none": "", "thread": ", batches made in a thread", "process": ", batches made in a process"}
        rows.append((f"training steps, {threads} torch thread(s){ahead[prefetch]}",
                     f"{wall:,.0f} examples/s wall, {cpu:,.0f} per CPU-second"))
    if args.throughput_only:
        args.only_als = args.no_als = True
    if not args.only_als:
        rows += two_tower_rows(split, cfg, events, warm, truth, args.k, train_two_tower, not args.no_refit)
    if not args.no_als:
        for factors, reg, iters, alpha in [(64, 0.05, 15, 1.0), (64, 0.05, 15, 10.0), (128, 0.1, 15, 10.0),
                                           (32, 0.05, 15, 10.0), (64, 1.0, 15, 20.0)]:
            ids = als_topk(split.train, warm, args.k, events, factors=factors, reg=reg, iterations=iters,
                           alpha=alpha)
            rows.append((f"ALS f={factors} reg={reg} it={iters} alpha={alpha}", f"{recall(ids, truth, args.k):.4f}"))
    width = max(len(a) for a, _ in rows)
    for a, b in rows:
        print(f"{a:<{width}}  {b}")


def two_tower_rows(split, cfg, events, warm, truth, k, train_two_tower, refit):  # type: ignore[no-untyped-def]
    rows = []
    t0 = time.perf_counter()
    model = train_two_tower(split.train, config=cfg, events=events, refit=refit)
    wall = time.perf_counter() - t0
    rep = model.info["train"]
    rows += [
        ("two-tower config", f"dim {cfg.dim}, batch {cfg.batch_size}, {cfg.random_negatives} random negatives, "
                             f"loss {cfg.loss}, history {cfg.history_len}"),
        ("training", f"{rep['epochs_run']} epochs (best {rep['best_epoch']}), {rep['examples']} examples in "
                     f"{rep['seconds']:.1f} s incl. validation; total wall {wall:.1f} s"),
        ("throughput (examples/s)", f"{rep['examples_per_s']:,.0f}"),
        ("valid recall@k per epoch", " ".join(f"{r:.3f}" for r in rep["valid_recalls"])),
    ]
    rec = model.recommend(split.train, warm, k, events=events)
    rows.append((f"two-tower recall@{k} (warm)", f"{recall(rec.ids, truth, k):.4f}"))
    rows.append(("embed_user median latency", f"{embed_user_latency(model, split.train, events) * 1e3:.3f} ms"))
    return rows


def step_throughput(ds: Dataset, cfg: ModelConfig, events: EventsConfig, *, threads: int, prefetch: str,
                    steps: int = 200) -> tuple[float, float]:
    """Examples per second of plain training steps (no validation) with the given config, wall and per CPU-second
    (all threads of the process, and the batch process's). `prefetch`: "none" (each step assembles its own batch
    first), "thread" (assembled ahead in a background thread, which also pools the history) or "process" (in a
    forked process, as `train_two_tower` does on Linux)."""
    import resource

    import torch

    from candgen.model.features import FeatureSpace, PositiveLog, negatives_by_user
    from candgen.model.prefetch import Prefetch, ProcessPrefetch
    from candgen.model.train import _log_q_table, _Trainer, batch_bytes

    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        space = FeatureSpace.from_dataset(ds, id_buckets=cfg.id_buckets, history_len=cfg.history_len)
        tr = _Trainer(ds, space, cfg, events)
        log = PositiveLog.build(ds.interactions, events, ds.n_users)
        neg = negatives_by_user(ds.interactions, events, ds.n_users)
        bs = cfg.batch_size
        log_q = _log_q_table(log, ds.n_items, bs, cfg.random_negatives)
        perm = np.random.default_rng(0).permutation(len(log.item))
        tr.refresh_bank()
        batches = [perm[(i * bs) % (len(perm) - bs):][:bs] for i in range(steps + 5)]
        for b in batches[:5]:  # warm-up
            tr.step(log, b, log_q_table=log_q, neg=neg, weight_scale=1.0)
        inv_q = tr.inv_q(log_q)
        made = (tr.batches.make(log, b, neg, inv_q) for b in batches[5:])

        def children_cpu() -> float:
            r = resource.getrusage(resource.RUSAGE_CHILDREN)
            return r.ru_utime + r.ru_stime

        t, c, cc = time.perf_counter(), time.process_time(), children_cpu()
        if prefetch == "none":
            for b in batches[5:]:
                tr.step(log, b, log_q_table=log_q, neg=neg, weight_scale=1.0)
        else:
            stream = (ProcessPrefetch(made, slot_bytes=batch_bytes(cfg)) if prefetch == "process"
                      else Prefetch(map(tr.pool_history, made)))
            with stream:
                for batch in stream:
                    tr.train_batch(batch, log_q_table=log_q, weight_scale=1.0)
        wall, cpu = time.perf_counter() - t, time.process_time() - c + children_cpu() - cc
        return steps * bs / wall, steps * bs / cpu
    finally:
        torch.set_num_threads(prev)


def embed_user_latency(model: TwoTowerModel, ds: Dataset, events: EventsConfig, n: int = 2000) -> float:
    """Median seconds of one `embed_user` call with a full history."""
    rng = np.random.default_rng(0)
    vecs = model.catalog_vectors
    hist = rng.integers(0, ds.n_items, model.space.history_len)
    hw = np.ones(len(hist), np.float32)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        model.embed_user(attributes={"age_group": "25-34"}, interests=["Comedy", "Drama"],
                         context={"device": "mobile"}, history_items=hist, history_weights=hw,
                         history_item_vectors=vecs[hist], now=1_500_000_000)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


if __name__ == "__main__":
    main()
