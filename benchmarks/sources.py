"""Sources benchmark: build time of every source structure and median µs per `retrieve` at 1M items.

A synthetic world (Zipf item popularity, 3 tags per item from 5,000, 50 categories, 50,000 creators, user
segments by age group / country / language, 10 follows per user, the last 5% of items new) goes through
`build_state`; then each source answers the same warm users (history from `RecentActivity`, exclude =
seen + hidden) at k=1000, and cold start answers anonymous users with interests.

    .venv/bin/python benchmarks/sources.py                              # 1M items, 5M events, IVF index
    .venv/bin/python benchmarks/sources.py --interactions 20000000      # the 1M x 20M build-time check
    .venv/bin/python benchmarks/sources.py --index none                 # skip collaborative / similarity
    .venv/bin/python benchmarks/sources.py --index-dir /tmp/ivf_1m      # reuse the IVF index (its build is minutes)

Collaborative uses a stand-in user encoder (weighted mean of the history's item vectors, a few µs) so the
figure is the source's own cost plus the ANN search; the real user tower adds its own time.
Prints one table (median and p99 wall-clock µs, median CPU µs of this process).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from candgen.config import Config, IndexConfig
from candgen.data.dataset import EVENT_CODE, Categorical, Csr, Dataset, IdMap, Interactions
from candgen.sources.base import CandidateSource, UserContext
from candgen.sources.build import SourceState, build_state, make_sources

DAY = 86_400


def make_dataset(n_items: int, n_users: int, n_events: int, seed: int = 0) -> tuple[Dataset, float]:
    rng = np.random.default_rng(seed)
    now = 30.0 * DAY
    item = (rng.zipf(1.3, n_events) - 1) % n_items
    item = rng.permutation(n_items)[item].astype(np.int32)  # popular items spread over the id range
    user = rng.integers(0, n_users, n_events).astype(np.int32)
    ts = np.sort(rng.integers(0, int(now), n_events)).astype(np.int64)
    names = ["view", "click", "like", "share", "impression", "hide"]
    ev = np.array([EVENT_CODE[e] for e in names], np.int8)[
        rng.choice(6, n_events, p=[0.55, 0.15, 0.08, 0.02, 0.19, 0.01])]
    inter = Interactions(user, item, ts, ev, np.full(n_events, np.nan, np.float32))
    tags = IdMap(f"t{i}" for i in range(5000))
    item_tags = Csr(np.arange(0, 3 * n_items + 1, 3, dtype=np.int64),
                    rng.integers(0, 5000, 3 * n_items).astype(np.int32))
    created = rng.integers(-365 * DAY, int(now), n_items).astype(np.int64)
    created[-n_items // 20:] = rng.integers(int(now) - DAY, int(now), n_items // 20)

    def cat(prefix: str, n_vocab: int, n: int) -> Categorical:
        return Categorical(IdMap(f"{prefix}{i}" for i in range(n_vocab)), rng.integers(0, n_vocab, n).astype(np.int32))

    ds = Dataset(
        users=IdMap(f"u{i}" for i in range(n_users)), items=IdMap(f"i{i}" for i in range(n_items)),
        interactions=inter, tags=tags, item_tags=item_tags, item_category=cat("cat", 50, n_items),
        item_creator=cat("c", 50_000, n_items), item_created_at=created,
        user_interests=Csr(np.arange(0, 2 * n_users + 1, 2, dtype=np.int64),
                           rng.integers(0, 5000, 2 * n_users).astype(np.int32)),
        user_attributes={"age_group": cat("a", 6, n_users), "country": cat("C", 50, n_users),
                         "language": cat("L", 20, n_users)},
        social_src=np.repeat(np.arange(n_users, dtype=np.int32), 10),
        social_dst=rng.integers(0, n_users, 10 * n_users).astype(np.int32),
    )
    return ds, now


class MeanEncoder:
    """Stand-in user tower: the weighted mean of the history's item vectors."""

    def __init__(self, dim: int) -> None:
        self.fallback = np.full(dim, 1 / np.sqrt(dim), np.float32)

    def embed_user(self, *, history_weights: np.ndarray, history_item_vectors: np.ndarray | None = None,
                   **_: Any) -> np.ndarray:
        if history_item_vectors is None or not len(history_item_vectors):
            return self.fallback
        v = history_weights[: len(history_item_vectors)] @ history_item_vectors
        return (v / max(float(np.linalg.norm(v)), 1e-9)).astype(np.float32)


def context(ds: Dataset, state: SourceState, user: int, now: float) -> UserContext:
    items, times, weights = state.activity.history(user)
    attrs = {a: c.vocab.id(int(c.codes[user])) for a, c in ds.user_attributes.items()}
    return UserContext(
        user_id=ds.users.id(user), user=user, now=now, history_items=items, history_times=times,
        history_weights=weights, n_engagements=state.activity.n_engagements(user), attributes=attrs,
        interests=ds.tags.ids(ds.user_interests.row(user)), friends=state.social.friends(user)[0],
        exclude=state.activity.exclude(user),
    )


def measure(src: CandidateSource, ctxs: list[UserContext], k: int) -> tuple[float, float, float, float]:
    for c in ctxs[:5]:
        src.retrieve(c, k)  # warm caches (trending's cached top lists, index pages)
    wall, cpu, sizes = [], [], []
    for c in ctxs:
        t, p = time.perf_counter(), time.process_time()
        sizes.append(len(src.retrieve(c, k)))
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - p)
    w = np.array(wall) * 1e6
    return float(np.median(w)), float(np.percentile(w, 99)), float(np.median(cpu) * 1e6), float(np.mean(sizes))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--interactions", type=int, default=5_000_000)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--index", choices=["ivf", "flat", "hnsw", "none"], default="ivf")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--index-dir", help="load the index from here if it exists, else build and save it there")
    a = ap.parse_args()

    t = time.perf_counter()
    ds, now = make_dataset(a.items, a.users, a.interactions)
    print(f"dataset: {a.items:,} items, {a.users:,} users, {a.interactions:,} events ({time.perf_counter() - t:.1f} s)")
    config = Config()
    t, cpu = time.perf_counter(), time.process_time()
    state = build_state(ds, config=config, now=now)
    print(f"build_state: {time.perf_counter() - t:.1f} s wall, {time.process_time() - cpu:.1f} s CPU (all threads)")

    index = vectors = None
    if a.index != "none":
        from candgen.index.registry import choose_index, load_index

        rng = np.random.default_rng(1)
        vectors = rng.normal(size=(a.items, a.dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        t = time.perf_counter()
        if a.index_dir and Path(a.index_dir).exists():
            index = load_index(a.index_dir)
        else:
            index = choose_index(a.items, a.dim, IndexConfig(backend=a.index, ivf_nprobe=64))
            index.add(vectors, np.arange(a.items, dtype=np.int64))
            if a.index_dir:
                index.save(a.index_dir)
        print(f"index ({index.kind}, {len(index):,} vectors): {time.perf_counter() - t:.1f} s")
    sources = make_sources(state, config=config, model=MeanEncoder(a.dim) if index is not None else None,
                           index=index, item_vectors=vectors)

    rng = np.random.default_rng(2)
    counts = np.bincount(ds.interactions.user, minlength=a.users)
    warm = rng.choice(np.flatnonzero(counts >= 5), a.requests)
    ctxs = [context(ds, state, int(u), now) for u in warm]
    print(f"mean history {np.mean([len(c.history_items) for c in ctxs]):.0f}, "
          f"mean exclude {np.mean([len(c.exclude) for c in ctxs]):.0f}, "
          f"mean friends {np.mean([len(c.friends) for c in ctxs]):.0f}")
    cold = [UserContext(user_id=f"new{i}", user=-1, now=now, interests=list(c.interests),
                        context={"country": c.attributes["country"], "age_group": c.attributes["age_group"]})
            for i, c in enumerate(ctxs)]

    print(f"\nsource          k={a.k}  median µs   p99 µs   CPU µs   mean size")
    rows: list[tuple[str, CandidateSource, list[UserContext]]] = [(n, s, ctxs) for n, s in sources.items()]
    rows.append(("cold_start(new)", sources["cold_start"], cold))
    if index is not None:
        from candgen.sources.content import ContentSource

        rows.append(("content(no ANN)", ContentSource(state.tags, state.catalog), ctxs))
    for name, src, cs in rows:
        med, p99, cpu, size = measure(src, cs, a.k)
        print(f"{name:<22} {med:>10.0f} {p99:>8.0f} {cpu:>8.0f} {size:>11.0f}")
    content = sources["content"]
    if hasattr(content, "similar_items"):
        items = rng.integers(0, a.items, a.requests)
        ts = []
        for i in items:
            t = time.perf_counter()
            content.similar_items(int(i), 100)
            ts.append(time.perf_counter() - t)
        print(f"{'similar_items k=100':<22} {np.median(ts) * 1e6:>10.0f} {np.percentile(ts, 99) * 1e6:>8.0f}")
    t = time.perf_counter()
    n_ev = 20_000
    users, items = rng.integers(0, a.users, n_ev), rng.integers(0, a.items, n_ev)
    for u, i in zip(users.tolist(), items.tolist(), strict=True):
        state.record_event(user=u, item=i, event="like", t=now, attributes={"country": "C1", "language": "L1"})
    print(f"\nrecord_event: {(time.perf_counter() - t) / n_ev * 1e6:.1f} µs per positive event (all structures)")


if __name__ == "__main__":
    main()
