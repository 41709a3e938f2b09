"""A tiny planted world for the two-tower tests: users of topic t engage with items tagged t."""

from __future__ import annotations

import numpy as np
import polars as pl

from candgen.data.dataset import Dataset


def planted_world(*, n_topics: int = 4, users_per_topic: int = 30, items_per_topic: int = 25, events_per_user: int = 10,
                  seed: int = 0, with_negatives: bool = True) -> Dataset:
    """Users of topic t (attribute `segment` = t, interest tag t) view items of topic t (tag t, category t);
    with_negatives adds one 'dislike' per user of an item of another topic."""
    rng = np.random.default_rng(seed)
    items = pl.DataFrame({
        "item_id": [f"i{t}_{j}" for t in range(n_topics) for j in range(items_per_topic)],
        "tags": [[f"t{t}", f"x{j % 3}"] for t in range(n_topics) for j in range(items_per_topic)],
        "category": [f"c{t}" for t in range(n_topics) for _ in range(items_per_topic)],
        "creator_id": [f"cr{t}_{j % 2}" for t in range(n_topics) for j in range(items_per_topic)],
        "created_at": [1_000_000 + 3600 * j for _ in range(n_topics) for j in range(items_per_topic)],
    })
    users = pl.DataFrame({
        "user_id": [f"u{t}_{k}" for t in range(n_topics) for k in range(users_per_topic)],
        "segment": [f"s{t}" for t in range(n_topics) for _ in range(users_per_topic)],
        "interests": [[f"t{t}"] for t in range(n_topics) for _ in range(users_per_topic)],
    })
    rows: list[tuple[str, str, int, str]] = []
    for t in range(n_topics):
        for k in range(users_per_topic):
            picks = rng.choice(items_per_topic, size=min(events_per_user, items_per_topic), replace=False)
            times = np.sort(rng.integers(2_000_000, 3_000_000, len(picks)))
            rows += [(f"u{t}_{k}", f"i{t}_{j}", int(ts), "view") for j, ts in zip(picks, times, strict=True)]
            if with_negatives:
                other = (t + 1) % n_topics
                rows.append((f"u{t}_{k}", f"i{other}_{int(rng.integers(items_per_topic))}",
                             int(rng.integers(2_000_000, 3_000_000)), "dislike"))
    inter = pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp", "event"], orient="row")
    return Dataset.from_frames(inter, items=items, users=users)


def topic_of_item(ds: Dataset) -> np.ndarray:
    return np.array([int(i.split("_")[0][1:]) for i in ds.items.ids()])


def topic_of_user(ds: Dataset) -> np.ndarray:
    return np.array([int(u.split("_")[0][1:]) for u in ds.users.ids()])
