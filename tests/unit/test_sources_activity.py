"""RecentActivity: bounded newest-first history, seen/hidden/blocked, early-engagement boost, persistence."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from candgen.config import EventsConfig
from candgen.data.dataset import Dataset
from candgen.errors import ArtifactError
from candgen.sources.activity import RecentActivity, early_weights


def test_early_engagement_weights_are_5x_then_2x_then_1x():
    w = early_weights(np.arange(60))
    assert (w[:10] == 5).all() and (w[10:50] == 2).all() and (w[50:] == 1).all()
    ra = RecentActivity.empty()
    got = [ra.record_engagement(7, item=i, weight=2.0, t=float(i)) for i in range(55)]
    assert got[:10] == [10.0] * 10 and got[10:50] == [4.0] * 40 and got[50:] == [2.0] * 5
    assert ra.n_engagements(7) == 55


def test_history_is_bounded_and_newest_first():
    ra = RecentActivity.empty(capacity=3)
    for i in range(5):
        ra.record_engagement(0, item=i, weight=1.0, t=float(i))
    items, times, _ = ra.history(0)
    assert items.tolist() == [4, 3, 2] and times.tolist() == [4.0, 3.0, 2.0]
    assert ra.seen(0).tolist() == [0, 1, 2, 3, 4]
    assert len(ra.history(99)[0]) == 0 and ra.n_engagements(99) == 0


def test_negative_feedback_and_blocks():
    ra = RecentActivity.empty()
    ra.record_negative(1, 9)
    ra.block_creator(1, 4)
    ra.block_creator(1, -1)  # an item without a creator blocks nothing
    assert ra.hidden(1).tolist() == [9] and 9 in ra.exclude(1)
    assert ra.blocked_creators(1).tolist() == [4]
    assert len(ra.blocked_creators(2)) == 0


def _dataset() -> Dataset:
    n = 60
    inter = pl.DataFrame({
        "user_id": ["a"] * n + ["b", "b", "b"],
        "item_id": [f"i{j % 30}" for j in range(n)] + ["i1", "i2", "i3"],
        "timestamp": list(range(n)) + [100, 101, 102],
        "event": ["view"] * n + ["like", "hide", "block"],
    })
    items = pl.DataFrame({"item_id": [f"i{j}" for j in range(30)], "creator_id": [f"c{j % 3}" for j in range(30)]})
    return Dataset.from_frames(inter, items)


def test_bulk_build_matches_per_event_updates():
    ds = _dataset()
    ev = EventsConfig()
    built = RecentActivity.from_dataset(ds, events=ev, capacity=20)
    live = RecentActivity.empty(capacity=20)
    inter = ds.interactions
    for u, i, t, w in zip(inter.user.tolist(), inter.item.tolist(), inter.timestamp.tolist(),
                          inter.weights(ev).tolist(), strict=True):
        if w > 0:
            live.record_engagement(u, i, w, float(t))
    a = ds.users.get("a")
    for x, y in zip(built.history(a), live.history(a), strict=True):
        assert np.allclose(x, y)
    assert built.history(a)[2][-1] == 2.0  # 41st engagement: 2x; the 60th: 1x at the head
    assert built.history(a)[2][0] == 1.0
    assert built.n_engagements(a) == 60
    b = ds.users.get("b")
    assert ds.items.ids(built.hidden(b)) == ["i2", "i3"]
    assert built.blocked_creators(b).tolist() == [ds.item_creator.vocab.get("c0")]  # i3's creator
    assert set(ds.items.ids(built.seen(b))) == {"i1", "i2", "i3"}


def test_build_ignores_events_after_now():
    ds = _dataset()
    ra = RecentActivity.from_dataset(ds, events=EventsConfig(), now=50)
    assert ra.n_engagements(ds.users.get("b")) == 0 and ra.n_engagements(ds.users.get("a")) == 51


def test_save_load_round_trip_with_live_updates(tmp_path):
    ds = _dataset()
    ra = RecentActivity.from_dataset(ds, events=EventsConfig(), capacity=5)
    ra.record_engagement(0, 29, 3.0, 200.0)
    ra.record_engagement(5, 7, 1.0, 201.0)  # a user the log never saw
    ra.record_negative(1, 4)
    ra.save(tmp_path)
    back = RecentActivity.load(tmp_path)
    for u in (0, 1, 5):
        for x, y in zip(ra.history(u), back.history(u), strict=True):
            assert np.allclose(x, y)
        assert ra.exclude(u).tolist() == back.exclude(u).tolist()
        assert ra.n_engagements(u) == back.n_engagements(u)
        assert ra.blocked_creators(u).tolist() == back.blocked_creators(u).tolist()


def test_load_of_missing_state_raises(tmp_path):
    with pytest.raises(ArtifactError, match="activity"):
        RecentActivity.load(tmp_path)


def test_engagement_ranks_count_each_users_rows_in_order():
    from candgen.sources.activity import engagement_ranks

    assert engagement_ranks(np.array([1, 0, 1, 1, 0, 7])).tolist() == [0, 0, 1, 2, 1, 0]
    assert engagement_ranks(np.zeros(0, np.int64)).tolist() == []
