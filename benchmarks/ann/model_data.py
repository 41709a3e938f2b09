"""Benchmark data from a trained model: two-tower item embeddings as the base, user-tower queries.

`model_dataset` generates a synthetic world (`candgen.data.synthetic.generate_world`: topics, Zipf
popularity, creators, homophilous friends), trains candgen's two-tower model on all of its
interactions for a fixed number of epochs (no held-out slice, no early stopping: the point is a
realistic embedding geometry, not the best recall), and returns

- base: the item-tower embeddings of every item (L2-normalised, as the model serves them),
- queries: the user-tower embeddings of `n_queries` users drawn at random from those with at least
  one positive engagement (the real query distribution: attributes, interests and history).

World, model and embeddings are cached under `cache_dir` keyed by every parameter, so a second
benchmark run (or one with another --queries) reuses them. Exact truth: `data.ground_truth`.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def model_dataset(n: int, dim: int, n_queries: int, *, seed: int, users: int, epochs: int,
                  batch_size: int, cache_dir: Path, world: Path | None = None
                  ) -> tuple[np.ndarray, np.ndarray, dict[str, object]]:
    """(items (n, dim), queries (n_queries, dim), info) from a two-tower model trained on a world of
    `n` items and `users` users. Cached per parameter set; info says what was trained and how long."""
    key = f"model-v1|n={n}|users={users}|dim={dim}|epochs={epochs}|batch={batch_size}|seed={seed}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    base = cache_dir / f"model_{digest}"
    items_path, users_path, info_path = base / "items.npy", base / "users.npy", base / "info.json"
    if not (items_path.exists() and users_path.exists() and info_path.exists()):
        _build(base, n=n, dim=dim, seed=seed, users=users, epochs=epochs, batch_size=batch_size, key=key,
               world=world)
    info = json.loads(info_path.read_text())
    x = np.load(items_path, mmap_mode="r", allow_pickle=False)
    u = np.load(users_path, mmap_mode="r", allow_pickle=False)
    rng = np.random.default_rng(seed + 1)
    pick = np.sort(rng.choice(len(u), size=min(n_queries, len(u)), replace=False))
    return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(u[pick], dtype=np.float32), info


class _LogProgress:
    """A `candgen.types.Progress` that logs the training rate to stderr once a minute."""

    def __init__(self) -> None:
        self.last = time.perf_counter()

    def task(self, name: str, total: float | None = None) -> None:
        _log(f"{name}: {total or 0:,.0f} examples in all")

    def advance(self, name: str, n: float = 1, **fields: object) -> None:
        if time.perf_counter() - self.last > 60:
            self.last = time.perf_counter()
            _log(f"{name}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in fields.items()))

    def done(self, name: str) -> None:
        pass


def _build(base: Path, *, n: int, dim: int, seed: int, users: int, epochs: int, batch_size: int, key: str,
           world: Path | None) -> None:
    from candgen.config import EventsConfig, ModelConfig
    from candgen.data.io import load_dataset
    from candgen.data.synthetic import generate_world
    from candgen.model.features import PositiveLog
    from candgen.model.train import train_two_tower

    base.mkdir(parents=True, exist_ok=True)
    world = world or base / "world"  # an existing world must have been generated with these parameters
    t = time.perf_counter()
    if not (world / "items.parquet").exists():
        _log(f"generating a world of {users:,} users and {n:,} items in {world} ...")
        generate_world(world, users=users, items=n, seed=seed)
    ds = load_dataset(world)
    gen_s = time.perf_counter() - t
    events = EventsConfig()
    config = ModelConfig(dim=dim, epochs=epochs, batch_size=batch_size, seed=seed)
    _log(f"training the two-tower model (dim {dim}, {epochs} epochs, batch {config.batch_size}) on "
         f"{len(ds.interactions.user):,} interactions ...")
    t = time.perf_counter()
    # an empty validation slice: train on everything for exactly `epochs` epochs
    model = train_two_tower(ds, config=config, events=events,
                            valid=ds.interactions.take(np.zeros(len(ds.interactions.user), dtype=bool)),
                            progress=_LogProgress())  # type: ignore[arg-type]
    train_s = time.perf_counter() - t
    items = model.item_embeddings(ds)
    log = PositiveLog.build(ds.interactions, events, ds.n_users)
    warm = np.flatnonzero(np.diff(log.ptr) > 0)  # users with at least one positive engagement
    user_vecs = model.embed_users(ds, warm, events=events, item_vectors=items)
    info = {"key": key, "items": int(ds.n_items), "users": int(ds.n_users), "warm_users": int(len(warm)),
            "interactions": int(len(ds.interactions.user)), "dim": dim, "epochs": epochs,
            "batch_size": config.batch_size, "generate_s": gen_s, "train_s": train_s,
            "train": model.info.get("train", {})}
    for path, arr in ((base / "items.npy", items), (base / "users.npy", user_vecs)):
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, np.ascontiguousarray(arr, dtype=np.float32))
        tmp.replace(path)
    (base / "info.json").write_text(json.dumps(info, indent=2, default=str))
    _log(f"model data: {items.shape} items, {user_vecs.shape} users, trained in {train_s:.0f} s")
