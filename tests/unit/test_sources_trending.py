"""TrendingCounter (forward decay, segments, cached top) and TrendingSource on hand-made events."""

from __future__ import annotations

import numpy as np
import pytest

from candgen.errors import ArtifactError
from candgen.sources.base import UserContext
from candgen.sources.catalog import Catalog
from candgen.sources.decayed import SparseScores
from candgen.sources.trending import TrendingCounter, TrendingSource

H = 3600.0


def test_a_burst_of_shares_overtakes_a_steady_item_then_fades():
    tc = TrendingCounter(half_life_hours=6.0, t0=0.0)
    for h in range(48):  # item 1: one view every hour for two days
        tc.add(1, 1.0, h * H)
    assert tc.top(2, now=47 * H).ids.tolist() == [1]
    for _ in range(5):  # item 2: five shares in the last hour
        tc.add(2, 5.0, 47 * H)
    assert tc.top(2, now=47 * H).ids.tolist() == [2, 1]
    before = tc.score(np.array([2]), now=47 * H)[0]
    after = tc.score(np.array([2]), now=47 * H + 4 * 6 * H)[0]  # four half-lives later
    assert after == pytest.approx(before / 16)
    for h in range(48, 72):  # the steady item keeps going, the burst does not
        tc.add(1, 1.0, h * H)
    assert tc.top(2, now=72 * H).ids.tolist() == [1, 2]


def test_decayed_score_halves_every_half_life():
    tc = TrendingCounter(half_life_hours=2.0, t0=0.0)
    tc.add(0, 8.0, 0.0)
    assert tc.score(np.array([0]), now=2 * H)[0] == pytest.approx(4.0)
    assert tc.top(1, now=6 * H).scores[0] == pytest.approx(1.0)


def test_renormalisation_keeps_order_and_values():
    tc = TrendingCounter(half_life_hours=1.0, t0=0.0)
    tc.add(0, 1.0, 0.0)
    tc.add(1, 3.0, 0.0)
    far = 100 * H  # beyond the renormalisation threshold: t0 moves
    tc.add(2, 1.0, far)
    assert tc.t0 == far
    top = tc.top(3, now=far)
    assert top.ids.tolist() == [2, 1, 0]
    assert top.scores[0] == pytest.approx(1.0)


def test_segments_are_counted_separately():
    tc = TrendingCounter(half_life_hours=6.0, t0=0.0)
    tc.add(0, 5.0, 0.0, ["country=US"])
    tc.add(1, 1.0, 0.0, ["country=BR"])
    tc.add(1, 1.0, 0.0, ["country=BR"])
    assert tc.top(5, "country=BR", now=0.0).ids.tolist() == [1]
    assert tc.top(5, now=0.0).ids.tolist() == [0, 1]
    assert len(tc.top(5, "country=XX", now=0.0)) == 0
    assert tc.segments == ["country=BR", "country=US"]


def test_half_life_must_be_positive():
    with pytest.raises(ValueError, match="half_life_hours"):
        TrendingCounter(half_life_hours=0.0, t0=0.0)


def test_updates_never_rescan(monkeypatch):
    """Structural: an event is a binary search plus a dict insert; top() reuses its cached list."""
    n = 10_000
    sc = SparseScores(np.arange(n), np.random.default_rng(0).random(n))
    sc.top(10)  # first call builds the cached list
    rebuilds = []
    monkeypatch.setattr(SparseScores, "_rebuild", lambda self, size: rebuilds.append(size))
    monkeypatch.setattr(SparseScores, "_all", lambda self: pytest.fail("an update or top() scanned every item"))
    rng = np.random.default_rng(1)
    for _ in range(500):
        sc.add(int(rng.integers(0, n + 100)), float(rng.random()))
        sc.top(10)
    assert rebuilds == []
    assert len(sc._dirty) <= 500


def test_cached_top_stays_exact_under_random_increments():
    rng = np.random.default_rng(2)
    sc = SparseScores(np.arange(0, 2000, 2), rng.random(1000))
    truth = dict(zip(range(0, 2000, 2), sc.vals.tolist(), strict=True))
    for step in range(3000):
        item, v = int(rng.integers(0, 2100)), float(rng.random() * 3)
        sc.add(item, v)
        truth[item] = truth.get(item, 0.0) + v
        if step % 100 == 0:
            ids, vals = sc.top(25)
            best = sorted(truth.values(), reverse=True)[:25]
            assert np.allclose(vals, best)
            assert all(truth[i] == pytest.approx(x) for i, x in zip(ids.tolist(), vals.tolist(), strict=True))


def test_an_untouched_top_is_a_prefix_of_the_sorted_cache_and_a_copy():
    rng = np.random.default_rng(3)
    vals = rng.random(5000)
    sc = SparseScores(np.arange(5000), vals.copy(), cache=64)
    ids, got = sc.top(10)
    assert ids.tolist() == np.argsort(-vals)[:10].tolist() and np.all(np.diff(got) <= 0)
    ids[:] = -1  # the caller owns what it got: the cached list is untouched
    got[:] = 0.0
    sc.scale(0.5)  # renormalisation keeps the order
    ids2, got2 = sc.top(20)
    assert ids2.tolist() == np.argsort(-vals)[:20].tolist() and np.allclose(got2, np.sort(vals)[::-1][:20] / 2)


def test_top_larger_than_the_cache_grows_it():
    sc = SparseScores(np.arange(5000), np.arange(5000, dtype=np.float64), cache=16)
    ids, _ = sc.top(3000)
    assert len(ids) == 3000 and ids[0] == 4999 and ids[-1] == 2000


def test_from_events_builds_global_and_segments():
    tc = TrendingCounter.from_events(
        items=np.array([0, 1, 1, 2]), weights=np.array([1.0, 1.0, 1.0, 5.0]),
        timestamps=np.array([0, 0, 0, -6 * H]), half_life_hours=6.0, now=0.0,
        segment_codes={"country": (np.array([0, 1, 1, -1]), ["US", "BR"])},
    )
    assert tc.top(3, now=0.0).ids.tolist() == [2, 1, 0]  # 5 * 1/2 = 2.5 > 2 > 1
    assert tc.top(3, "country=BR", now=0.0).ids.tolist() == [1]


def test_save_load_round_trip(tmp_path):
    tc = TrendingCounter(half_life_hours=6.0, t0=5.0)
    tc.add(3, 2.0, 10.0, ["language=en"])
    tc.add(1, 1.0, 10.0)
    tc.save(tmp_path)
    back = TrendingCounter.load(tmp_path)
    assert back.t0 == 5.0 and back.half_life_s == tc.half_life_s
    for seg in (None, "language=en"):
        a, b = tc.top(5, seg, now=20.0), back.top(5, seg, now=20.0)
        assert a.ids.tolist() == b.ids.tolist() and np.allclose(a.scores, b.scores)


def test_load_of_missing_state_names_the_problem(tmp_path):
    with pytest.raises(ArtifactError, match="trending"):
        TrendingCounter.load(tmp_path)


def _catalog(categories: list[str]) -> Catalog:
    from candgen.data.dataset import Csr, IdMap

    cats = IdMap(sorted(set(categories)))
    n = len(categories)
    return Catalog(items=IdMap(str(i) for i in range(n)), tags=IdMap(), categories=cats, creators=IdMap(),
                   category=np.array([cats.get(c) for c in categories], np.int32), creator=np.full(n, -1, np.int32),
                   created_at=np.zeros(n, np.int64), deleted=np.zeros(n, bool),
                   item_tags=Csr(np.zeros(n + 1, np.int64), np.zeros(0, np.int32)))


def test_trending_source_blends_global_with_the_users_segments():
    catalog = _catalog(["news", "news", "sport", "sport"])
    tc = TrendingCounter(half_life_hours=6.0, t0=0.0)
    tc.add(0, 10.0, 0.0, ["country=US", "category=news"])  # globally hot, US
    tc.add(2, 2.0, 0.0, ["country=BR", "category=sport"])  # hot in BR
    tc.add(3, 1.0, 0.0, ["country=BR", "category=sport"])
    src = TrendingSource(tc, catalog)
    br = UserContext(user_id="x", user=-1, now=0.0, context={"country": "BR"})
    assert src.retrieve(br, 3).ids[0] == 2
    us = UserContext(user_id="y", user=-1, now=0.0, context={"country": "US"})
    assert src.retrieve(us, 3).ids[0] == 0
    sport_fan = UserContext(user_id="z", user=-1, now=0.0, history_items=np.array([3]),
                            history_weights=np.ones(1, np.float32), history_times=np.zeros(1))
    assert [k for k, _ in src.segments_for(sport_fan)] == [None, "category=sport"]
    catalog.delete(2)
    assert 2 not in src.retrieve(br, 3).ids


def test_bulk_build_ignores_events_beyond_the_horizon():
    tc = TrendingCounter.from_events(
        items=np.array([0, 1]), weights=np.array([1.0, 1.0]), timestamps=np.array([-41 * H, -39 * H]),
        half_life_hours=1.0, now=0.0, segment_codes={"country": (np.array([0, 0]), ["US"])},
    )
    assert tc.top(5, now=0.0).ids.tolist() == [1]
    assert tc.top(5, "country=US", now=0.0).ids.tolist() == [1]
