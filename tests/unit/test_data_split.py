"""Time and random splits (candgen.data.split): sizes, cutoffs, warm/cold users, determinism, bad arguments."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from candgen.data.dataset import Dataset
from candgen.data.split import random_split, time_split
from candgen.errors import CandgenError


@pytest.fixture
def ds() -> Dataset:
    # u0 active throughout, u1 only early, u2 only late (cold in a time split), 10 timestamps 0..9
    rows = [("u0", "a", t) for t in range(0, 10, 2)] + [("u1", "b", 1), ("u1", "c", 3)]
    rows += [("u2", "a", 7), ("u2", "d", 9), ("u0", "d", 5)]
    inter = pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp"], orient="row")
    inter = inter.with_columns(pl.lit("view").alias("event"))
    items = pl.DataFrame({"item_id": ["a", "b", "c", "d", "new"]})
    return Dataset.from_frames(inter, items=items)


def test_time_split_until(ds: Dataset) -> None:
    s = time_split(ds, until=6)
    assert s.cutoff == 6
    assert s.train.interactions.timestamp.max() < 6 <= s.test.timestamp.min()
    assert len(s.train.interactions) + len(s.test) == len(ds.interactions)
    assert s.train.n_items == ds.n_items == 5 and s.train.n_users == ds.n_users  # catalog kept
    u2 = ds.users.get("u2")
    assert s.cold_users.tolist() == [u2]
    assert s.warm_users.tolist() == [ds.users.get("u0")]


def test_time_split_fraction_is_a_quantile(ds: Dataset) -> None:
    s = time_split(ds, fraction=0.5)
    ts = ds.interactions.timestamp
    assert s.cutoff is not None and s.cutoff in ts
    assert (ts < s.cutoff).mean() <= 0.5 <= (ts <= s.cutoff).mean()
    assert set(s.warm_users) | set(s.cold_users) == set(np.unique(s.test.user))


def test_random_split_deterministic_and_sized(ds: Dataset) -> None:
    a, b = random_split(ds, test_fraction=0.3, seed=1), random_split(ds, test_fraction=0.3, seed=1)
    assert len(a.test) == 3 and a.cutoff is None  # 30% of 10
    assert np.array_equal(a.test.item, b.test.item) and np.array_equal(a.test.timestamp, b.test.timestamp)
    assert not set(a.warm_users) & set(a.cold_users)


@pytest.mark.parametrize(
    "kwargs, match",
    [({}, "exactly one"), ({"until": 3, "fraction": 0.5}, "exactly one"), ({"fraction": 1.0}, "between 0 and 1"),
     ({"fraction": 0.0}, "between 0 and 1"), ({"until": 0}, "empty train"), ({"until": 100}, "empty test")],
)
def test_time_split_errors(ds: Dataset, kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(CandgenError, match=match):
        time_split(ds, **kwargs)  # type: ignore[arg-type]


def test_time_split_empty_dataset(ds: Dataset) -> None:
    with pytest.raises(CandgenError, match="without interactions"):
        time_split(ds.with_interactions(ds.interactions.take(np.zeros(len(ds.interactions), bool))), fraction=0.5)


@pytest.mark.parametrize("f", [0.0, 1.0, 0.01])
def test_random_split_errors(ds: Dataset, f: float) -> None:
    with pytest.raises(CandgenError):
        random_split(ds, test_fraction=f)
