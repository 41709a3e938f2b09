"""NewItemBandit (Thompson sampling, Beta updates, budget, age) and NewItemSource."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from candgen.config import EventsConfig
from candgen.data.dataset import Dataset
from candgen.errors import ArtifactError
from candgen.sources.base import UserContext
from candgen.sources.newitems import NewItemBandit, NewItemSource

H = 3600.0


def test_beta_posterior_counts_successes_and_failures():
    b = NewItemBandit(budget=100, max_age_hours=48.0)
    b.add_item(1, created_at=0.0)
    assert b.posterior(1) == (1.0, 1.0)
    for _ in range(4):
        b.record_impression(1)
    b.record_engagement(1)
    assert b.posterior(1) == (2.0, 4.0)  # 1 success, 3 impressions without one
    b.record_impression(99)  # unknown items are ignored
    b.record_engagement(99)
    with pytest.raises(KeyError):
        b.posterior(99)


def test_successful_items_are_drawn_more_often():
    b = NewItemBandit(budget=10_000, max_age_hours=48.0)
    b.add_item(1, created_at=0.0)
    b.add_item(2, created_at=0.0)
    for _ in range(50):
        b.record_impression(1)
        b.record_impression(2)
    b.record_engagement(1, 20)
    b.record_engagement(2, 2)
    rng = np.random.default_rng(0)
    first = [int(b.sample(1, now=0.0, rng=rng).ids[0]) for _ in range(500)]
    assert first.count(1) > 450  # Beta(21, 31) vs Beta(3, 49)


def test_budget_exhaustion_and_age_remove_items():
    b = NewItemBandit(budget=3, max_age_hours=1.0)
    b.add_item(1, created_at=0.0)
    b.add_item(2, created_at=0.0)
    b.add_item(3, created_at=2 * H)
    for _ in range(3):
        b.record_impression(1)
    assert 1 not in b and len(b) == 2
    rng = np.random.default_rng(0)
    assert set(b.sample(5, now=2 * H, rng=rng).ids.tolist()) == {3}  # item 2 is too old to be drawn
    assert b.expire(now=2 * H) == 1 and len(b) == 1
    b.add_item(3, created_at=0.0)  # already there: no-op
    b.remove(3)
    b.remove(3)
    assert len(b) == 0 and len(b.sample(5, now=0.0, rng=rng)) == 0


def test_pool_grows_and_swap_removal_keeps_counts():
    b = NewItemBandit(budget=1000, max_age_hours=48.0)
    for i in range(100):
        b.add_item(i, created_at=float(i))
        b.record_engagement(i, i)
    for i in range(0, 100, 3):
        b.remove(i)
    assert all(b.posterior(i)[0] == 1 + i for i in range(100) if i % 3)


def test_build_from_dataset_takes_fresh_items_with_budget_left():
    inter = pl.DataFrame({
        "user_id": ["u"] * 7, "item_id": ["new", "new", "new", "spent", "spent", "spent", "old"],
        "timestamp": [10, 11, 12, 10, 11, 12, 12],
        "event": ["impression", "like", "impression", "impression", "impression", "impression", "view"],
    })
    items = pl.DataFrame({"item_id": ["new", "spent", "old", "future"],
                          "created_at": [0, 0, -100 * int(H), 10_000]})
    ds = Dataset.from_frames(inter, items)
    b = NewItemBandit.from_dataset(ds, events=EventsConfig(), budget=3, max_age_hours=48.0, now=20.0)
    assert len(b) == 1 and ds.items.get("new") in b
    assert b.posterior(ds.items.get("new")) == (2.0, 2.0)


def test_source_skips_excluded_and_deleted(tmp_path):
    from candgen.sources.catalog import Catalog

    ds = Dataset.from_frames(pl.DataFrame({"user_id": ["u"], "item_id": ["a"], "timestamp": [0]}),
                             pl.DataFrame({"item_id": ["a", "b", "c"]}))
    cat = Catalog.from_dataset(ds)
    b = NewItemBandit(budget=10, max_age_hours=48.0)
    for i in range(3):
        b.add_item(i, created_at=0.0)
    src = NewItemSource(b, cat, seed=1)
    cat.delete(0)
    ctx = UserContext(user_id="u", user=0, now=0.0, exclude=np.array([1]))
    assert src.retrieve(ctx, 5).ids.tolist() == [2]
    b.save(tmp_path)
    back = NewItemBandit.load(tmp_path)
    assert back.posterior(2) == b.posterior(2) and len(back) == 3 and back.budget == 10
    with pytest.raises(ArtifactError):
        NewItemBandit.load(tmp_path / "missing")


def test_large_pools_are_cut_to_the_optimistic_items_before_drawing():
    b = NewItemBandit(budget=10_000, max_age_hours=48.0)
    for i in range(5000):
        b.add_item(i, created_at=0.0)
        b.record_impression(i, 100)
    for i in range(10):  # ten items that clearly work
        b.record_engagement(i, 60)
    rng = np.random.default_rng(0)
    got = b.sample(10, now=0.0, rng=rng, max_draws=50)
    assert len(got) == 10 and set(got.ids.tolist()) == set(range(10))
    fresh = NewItemBandit(budget=10, max_age_hours=48.0)
    for i in range(3000):  # identical posteriors: the cut must still be random, not the first ids
        fresh.add_item(i, created_at=0.0)
    seen = set()
    for _ in range(20):
        seen.update(fresh.sample(5, now=0.0, rng=rng, max_draws=100).ids.tolist())
    assert max(seen) > 1000


def test_requests_share_one_cut_that_writes_patch_instead_of_resetting(monkeypatch):
    from candgen.sources import newitems

    # the cut lives CUT_TTL_S of wall-clock time: on a slow machine the steps below could outlive it
    monkeypatch.setattr(newitems, "CUT_TTL_S", 3600.0)
    b = NewItemBandit(budget=100, max_age_hours=48)
    for i in range(5000):
        b.add_item(i, created_at=0.0)
    rng = np.random.default_rng(0)
    first = b.sample(10, now=60.0, rng=rng)
    cut = b._cut
    assert cut is not None and len(cut[3]) == 2048 and len(first) == 10
    b.sample(10, now=60.5, rng=rng)
    assert b._cut is cut  # the second request reused the cut
    b.add_item(99999, created_at=60.0)
    assert b._cut is not None and b._cut[3][-1] == 99999  # a new item joins the shared cut at once
    every = {"k": 3000, "max_draws": 2048}  # the whole shared cut, drawn
    assert 99999 in set(b.sample(now=60.5, rng=rng, **every).ids.tolist())  # within the cut's 1 s of "now"
    assert b._cut[3][-1] == 99999  # still the patched cut, not a new one
    spent = int(b._cut[3][0])
    b.record_impression(spent, 100)  # its budget is used up: out of the pool and of the shared cut
    assert spent not in b and spent not in set(b.sample(now=60.5, rng=rng, **every).ids.tolist())
    b.remove(99999)
    assert 99999 not in set(b._cut[3].tolist())


def test_the_maintained_bounds_match_the_posteriors_after_writes_and_removals():
    from candgen.sources.newitems import TIE_BREAK, optimistic, posterior_ab

    b = NewItemBandit(budget=50, max_age_hours=48)
    rng = np.random.default_rng(1)
    for i in range(300):
        b.add_item(i, created_at=0.0)
    for _ in range(2000):
        item = int(rng.integers(0, 320))
        if rng.random() < 0.7:
            b.record_impression(item, int(rng.integers(1, 5)))
        else:
            b.record_engagement(item)
        if rng.random() < 0.02:
            b.remove(int(rng.integers(0, 300)))
        if rng.random() < 0.02:
            b.add_item(int(rng.integers(300, 320)), created_at=0.0)
    n = len(b)
    want = optimistic(*posterior_ab(b._succ[:n], b._imp[:n]))
    assert np.all(np.abs(b._opt[:n] - want) <= TIE_BREAK) and np.all(b._imp[:n] < 50)


def test_a_new_cut_takes_the_most_optimistic_eligible_items():
    b = NewItemBandit(budget=1000, max_age_hours=1.0)
    for i in range(100):
        b.add_item(i, created_at=0.0 if i < 90 else -7200.0)  # the last ten are too old
        b.record_impression(i, 50)
    for i in range(80, 100):
        b.record_engagement(i, 40)  # 80..89 work; 90..99 would too but are too old
    items, a, _ = b._candidates(now=60.0, cap=10)
    assert sorted(items.tolist()) == list(range(80, 90)) and np.all(a == 41.0)


def test_exclusions_are_dropped_from_the_best_draws():
    b = NewItemBandit(budget=10_000, max_age_hours=48.0)
    for i in range(50):
        b.add_item(i, created_at=0.0)
        b.record_impression(i, 200)
    for i in range(5):
        b.record_engagement(i, 150)  # 0..4 win every draw
    rng = np.random.default_rng(0)
    got = b.sample(3, now=0.0, rng=rng, exclude=np.array([0, 1, 2, 77]))
    assert {3, 4} <= set(got.ids.tolist()) and got.ids[0] in (3, 4)
    assert len(got) == 3 and not {0, 1, 2} & set(got.ids.tolist())
    assert np.all(np.diff(got.scores) <= 0)
