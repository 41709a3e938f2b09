"""SegmentPopularity (segment fallback) and ColdStartSource (the 50/30/20 explore mix)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from candgen.config import EventsConfig
from candgen.data.dataset import Dataset
from candgen.errors import ArtifactError
from candgen.sources.base import UserContext
from candgen.sources.catalog import Catalog
from candgen.sources.coldstart import ColdStartSource, SegmentPopularity
from candgen.sources.content import TagIndex


def _dataset() -> Dataset:
    # items p0..p99 are popular with (18-24, US, en) users, q0..q99 with (18-24, US, pt) users,
    # g* globally with everyone else; t0..t199 carry the tag "jazz" and nobody engages with them.
    users = pl.DataFrame({
        "user_id": ["a", "b", "c", "d"], "age_group": ["18-24", "18-24", "65+", "65+"],
        "country": ["US", "US", "FR", "FR"], "language": ["en", "pt", "fr", "fr"],
    })
    rows = [("a", f"p{i}", 100 - i) for i in range(100)] + [("b", f"q{i}", 100 - i) for i in range(100)]
    rows += [(u, f"g{i}", 300 - i) for u in ("c", "d") for i in range(300)]
    inter = pl.DataFrame({"user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows],
                          "timestamp": [0] * len(rows), "event": ["view"] * len(rows)})
    items = pl.DataFrame({"item_id": [f"t{i}" for i in range(200)], "tags": [["jazz"]] * 200})
    ds = Dataset.from_frames(inter, items, users)
    # popularity by repetition: weight rows so that lower index = more popular
    reps = np.array([r[2] for r in rows])
    idx = np.repeat(np.arange(len(rows)), reps)
    return ds.with_interactions(ds.interactions.take(idx))


@pytest.fixture(scope="module")
def world() -> tuple[Dataset, SegmentPopularity, ColdStartSource]:
    ds = _dataset()
    pop = SegmentPopularity.from_dataset(ds, events=EventsConfig(), half_life_hours=720.0, now=0.0)
    cat = Catalog.from_dataset(ds)
    src = ColdStartSource(pop, TagIndex.from_catalog(cat, np.zeros(cat.n_items)), cat, seed=0)
    return ds, pop, src


def test_segment_keys_fall_back_from_specific_to_broad(world):
    _, pop, _ = world
    assert pop.keys_for({"age_group": "18-24", "country": "US", "language": "en"}) == [
        "age_group|country|language=18-24|US|en", "age_group|country=18-24|US", "age_group=18-24"]
    assert pop.keys_for({"country": "US"}) == []  # no age group: straight to global


def test_popular_in_segment_then_fallback(world):
    ds, pop, _ = world
    top = ds.items.ids(pop.top(150, {"age_group": "18-24", "country": "US", "language": "en"}, now=0.0).ids)
    assert top[:100] == [f"p{i}" for i in range(100)]  # the exact segment first, in popularity order
    assert set(top[100:]) <= {f"q{i}" for i in range(100)}  # then (18-24, US) fills up
    pt = ds.items.ids(pop.top(5, {"age_group": "18-24", "country": "US", "language": "pt"}, now=0.0).ids)
    assert pt == [f"q{i}" for i in range(5)]
    unknown = ds.items.ids(pop.top(5, {"age_group": "35-44", "country": "JP"}, now=0.0).ids)
    assert unknown == [f"g{i}" for i in range(5)]  # unseen segment: global


def test_popularity_updates_per_event(world):
    ds, _, _ = world
    pop = SegmentPopularity.from_dataset(ds, events=EventsConfig(), half_life_hours=720.0, now=0.0)
    attrs = {"age_group": "18-24", "country": "US", "language": "en"}
    item = ds.items.get("t7")
    pop.add(item, 1000.0, 0.0, attrs)
    assert pop.top(1, attrs, now=0.0).ids[0] == item


def test_mix_is_50_popular_30_interests_20_random(world):
    ds, _, src = world
    ctx = UserContext(user_id="new", user=-1, now=0.0, interests=["jazz"],
                      attributes={"age_group": "18-24", "country": "US", "language": "en"})
    c = src.retrieve(ctx, 100)
    names = ds.items.ids(c.ids)
    top50 = {f"p{i}" for i in range(50)}
    popular = [n for n in names if n in top50]  # the random share may also draw other "p" items
    jazz = [n for n in names if n.startswith("t")]
    assert len(c) == 100 and len(set(names)) == 100
    assert popular == [f"p{i}" for i in range(50)]
    assert 30 <= len(jazz) <= 30 + 20  # random items may also be jazz items
    assert len(popular) + len(jazz) <= 100
    first20 = ds.items.ids(c.ids[:20])
    assert 7 <= sum(n in top50 for n in first20) <= 13  # every prefix keeps the mix


def test_without_interests_their_share_goes_to_popular(world):
    ds, _, src = world
    ctx = UserContext(user_id="new", user=-1, now=0.0, context={"age_group": "65+", "country": "FR"})
    names = ds.items.ids(src.retrieve(ctx, 100).ids)
    assert sum(n.startswith("g") for n in names) >= 80


def test_is_new_below_the_threshold(world):
    _, _, src = world
    assert src.is_new(UserContext(user_id="x", user=0, now=0.0, n_engagements=9))
    assert not src.is_new(UserContext(user_id="x", user=0, now=0.0, n_engagements=10))


def test_popularity_round_trip(tmp_path, world):
    _, pop, _ = world
    pop.save(tmp_path)
    back = SegmentPopularity.load(tmp_path)
    attrs = {"age_group": "18-24", "country": "US", "language": "pt"}
    assert back.attributes == pop.attributes
    assert pop.top(20, attrs, now=0.0).ids.tolist() == back.top(20, attrs, now=0.0).ids.tolist()
    with pytest.raises(ArtifactError, match="popularity"):
        SegmentPopularity.load(tmp_path / "missing")


def test_users_missing_an_attribute_count_only_at_the_levels_they_have():
    from candgen.sources.trending import TrendingCounter

    users = pl.DataFrame({"user_id": ["a", "b"], "age_group": ["18-24", "18-24"], "country": [None, "US"],
                          "language": ["en", "en"]})
    inter = pl.DataFrame({"user_id": ["a", "a", "b"], "item_id": ["x", "x", "y"], "timestamp": [0, 0, 0]})
    ds = Dataset.from_frames(inter, None, users)
    pop = SegmentPopularity.from_dataset(ds, events=EventsConfig(), half_life_hours=720.0, now=0.0)
    x, y = ds.items.get("x"), ds.items.get("y")
    assert pop.counter.top(5, "age_group=18-24", now=0.0).ids.tolist() == [x, y]
    assert pop.counter.top(5, "age_group|country=18-24|US", now=0.0).ids.tolist() == [y]
    assert "age_group|country|language=18-24|US|en" in pop.counter.segments
    tc = TrendingCounter.from_dataset(ds, events=EventsConfig(), half_life_hours=6.0, now=0.0)
    assert tc.top(5, "country=US", now=0.0).ids.tolist() == [y]
    assert tc.top(5, "language=en", now=0.0).ids.tolist() == [x, y]
    assert tc.top(5, now=0.0).scores.tolist() == [2.0, 1.0]


def _veteran_and_newcomer() -> Dataset:
    # "v" engages with v0..v59 and then x; "n" engages once, with y; one view each, all at t=0
    items = [f"v{i}" for i in range(60)] + ["x"]
    inter = pl.DataFrame({"user_id": ["v"] * 61 + ["n"], "item_id": [*items, "y"], "timestamp": [0] * 62})
    return Dataset.from_frames(inter)


def test_early_boost_weighs_each_users_first_engagements_5x_then_2x():
    ds = _veteran_and_newcomer()
    plain = SegmentPopularity.from_dataset(ds, events=EventsConfig(), half_life_hours=720.0, now=0.0)
    boosted = SegmentPopularity.from_dataset(ds, events=EventsConfig(), half_life_hours=720.0, now=0.0,
                                             early_boost=True)

    def score(pop: SegmentPopularity, name: str) -> float:
        top = pop.counter.top(ds.n_items, now=0.0)
        return float(top.scores[top.ids.tolist().index(ds.items.get(name))])

    assert {score(plain, n) for n in ("v0", "v20", "x", "y")} == {1.0}
    assert [score(boosted, n) for n in ("v0", "v9", "v10", "v49", "v50", "x", "y")] == [5, 5, 2, 2, 1, 1, 5]
    assert boosted.early_boost and not plain.early_boost


def test_boosted_popularity_per_event_matches_the_bulk_build():
    """Replaying the log through record_event gives the same boosted popularity as building from it."""
    from candgen.config import Config
    from candgen.sources.build import build_state

    ds = _veteran_and_newcomer()
    cfg = Config()
    assert cfg.sources.popular_early_boost  # the default
    full = build_state(ds, config=cfg, now=0.0)
    empty = build_state(ds.with_interactions(ds.interactions.take(np.zeros(0, np.int64))), config=cfg, now=0.0)
    inter = ds.interactions
    for u, i in zip(inter.user.tolist(), inter.item.tolist(), strict=True):
        empty.record_event(user=u, item=i, event="view", t=0.0)
    a, b = full.popularity.counter.top(ds.n_items, now=0.0), empty.popularity.counter.top(ds.n_items, now=0.0)
    assert dict(zip(a.ids.tolist(), a.scores.tolist(), strict=True)) == pytest.approx(
        dict(zip(b.ids.tolist(), b.scores.tolist(), strict=True)))
    plain = SegmentPopularity.from_dataset(ds, events=EventsConfig(), half_life_hours=720.0, now=0.0)
    plain.add(ds.items.get("x"), 1.0, 0.0, {}, boosted_weight=5.0)  # not boosted: the plain weight counts
    top = plain.counter.top(ds.n_items, now=0.0)
    assert float(top.scores[top.ids.tolist().index(ds.items.get("x"))]) == 2.0


def test_popularity_load_reads_the_boost_and_the_older_attribute_list(tmp_path):
    ds = _veteran_and_newcomer()
    pop = SegmentPopularity.from_dataset(ds, events=EventsConfig(), half_life_hours=720.0, now=0.0,
                                         early_boost=True)
    pop.save(tmp_path)
    assert SegmentPopularity.load(tmp_path).early_boost
    meta = tmp_path / "popularity_attributes.json"
    meta.write_text('["age_group", "country"]')  # artifacts written before the boost existed
    old = SegmentPopularity.load(tmp_path)
    assert old.attributes == ("age_group", "country") and not old.early_boost
    for broken in ('{"early_boost": true}', "{not json", '{"attributes": 3}'):
        meta.write_text(broken)
        with pytest.raises(ArtifactError, match="popularity"):
            SegmentPopularity.load(tmp_path)
