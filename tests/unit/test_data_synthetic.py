"""The synthetic world (candgen.data.synthetic): tables, exact sizes, planted structure, determinism."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from candgen.data.io import load_dataset, validate_dataset
from candgen.data.synthetic import WorldSummary, generate_world
from candgen.errors import CandgenError


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, WorldSummary]:
    d = tmp_path_factory.mktemp("world")
    return d, generate_world(d, users=1500, items=3000, days=10, seed=3)


def tables(d: Path) -> dict[str, pl.DataFrame]:
    return {n: pl.read_parquet(d / f"{n}.parquet") for n in ("interactions", "items", "users", "social")}


def test_tables_sizes_and_summary(world: tuple[Path, WorldSummary]) -> None:
    d, s = world
    t = tables(d)
    assert len(t["users"]) == 1500 and len(t["items"]) == 3000
    assert set(t["items"].columns) >= {"item_id", "tags", "category", "creator_id", "created_at"}
    assert set(t["users"].columns) >= {"user_id", "age_group", "country", "language", "interests"}
    assert len(t["interactions"]) == s.interactions and len(t["social"]) == s.social_edges
    assert 15 * 1500 < s.interactions < 25 * 1500  # ~20 per user
    v = validate_dataset(d)
    assert v.users == 1500 and v.items == 3000
    assert v.new_users == s.new_users > 0
    assert v.new_items >= s.new_items > 0  # new items, plus some that nobody happened to pick


def test_event_mix_follows_the_seed(world: tuple[Path, WorldSummary]) -> None:
    ev = tables(world[0])["interactions"]["event"].value_counts()
    share = dict(zip(ev["event"].to_list(), (ev["count"] / ev["count"].sum()).to_list(), strict=True))
    assert share["view"] == pytest.approx(0.55, abs=0.03) and share["click"] == pytest.approx(0.23, abs=0.03)
    assert share["like"] == pytest.approx(0.09, abs=0.02) and share["share"] == pytest.approx(0.045, abs=0.015)
    assert share["impression"] > 0.05 and 0 < share["hide"] < 0.03


def test_interactions_only_after_item_creation_and_within_days(world: tuple[Path, WorldSummary]) -> None:
    d, s = world
    t = tables(d)
    j = t["interactions"].join(t["items"].select("item_id", "created_at"), on="item_id")
    assert len(j) == s.interactions
    assert (j["timestamp"] >= j["created_at"]).all()
    assert s.start <= j["timestamp"].min() and j["timestamp"].max() < s.end  # type: ignore[operator]
    assert (t["items"]["created_at"] > s.start).sum() > 1000  # items keep arriving


def test_long_tail_and_viral_bursts(world: tuple[Path, WorldSummary]) -> None:
    it = tables(world[0])["interactions"]
    counts = it["item_id"].value_counts(sort=True)["count"]
    assert counts[: len(counts) // 100].sum() / counts.sum() >= 0.05
    # a viral item gets much of its engagement within a few hours
    hourly = it.with_columns((pl.col("timestamp") // 3600).alias("h")).group_by("item_id", "h").len()
    peak = hourly.group_by("item_id").agg(pl.col("len").max().alias("peak"), pl.col("len").sum().alias("n"))
    assert peak.filter(pl.col("n") >= 50).select((pl.col("peak") / pl.col("n")).max()).item() > 0.2


def test_friends_share_topics(world: tuple[Path, WorldSummary]) -> None:
    t = tables(world[0])
    # an interest tag reads "<category>-<topic>-<j>": the first one is of the user's main topic
    topic = t["users"].select("user_id", pl.col("interests").str.split("|").list.first().str.split("-")
                              .list.get(1).alias("topic"))
    pairs = t["social"].join(topic, on="user_id").join(topic.rename({"user_id": "friend_id", "topic": "ft"}),
                                                       on="friend_id")
    same = (pairs["topic"] == pairs["ft"]).mean()
    shuffled = (pairs["topic"] == pairs["ft"].shuffle(seed=1)).mean()
    assert same > 0.5 and same > 3 * shuffled  # type: ignore[operator]


def test_item_tags_and_category_come_from_topics(world: tuple[Path, WorldSummary]) -> None:
    items = tables(world[0])["items"]
    first_tag_category = items["tags"].str.split("|").list.first().str.split("-").list.first()
    assert (first_tag_category == items["category"]).all()
    n_tags = items["tags"].str.split("|").list.len()
    assert n_tags.min() >= 1 and n_tags.mean() >= 2.5  # type: ignore[operator]


def test_deterministic_by_seed(tmp_path: Path) -> None:
    a, b, c = (generate_world(tmp_path / n, users=200, items=300, seed=s) for n, s in (("a", 1), ("b", 1), ("c", 2)))
    ta, tb, tc = tables(tmp_path / "a"), tables(tmp_path / "b"), tables(tmp_path / "c")
    for n in ta:
        assert ta[n].equals(tb[n]), n
    assert not ta["interactions"].equals(tc["interactions"])
    assert a.interactions == b.interactions


def test_loads_as_dataset(world: tuple[Path, WorldSummary]) -> None:
    ds = load_dataset(world[0])
    assert ds.n_users == 1500 and ds.n_items == 3000
    assert ds.item_creator is not None and ds.item_category is not None
    assert set(ds.user_attributes) == {"age_group", "country", "language"}
    assert len(ds.user_interests.idx) > 1500


def test_tiny_world(tmp_path: Path) -> None:
    s = generate_world(tmp_path, users=1, items=1, days=1)
    assert s.users == 1 and s.items == 1 and s.social_edges == 0
    load_dataset(tmp_path)


@pytest.mark.parametrize("kwargs", [{"users": 0, "items": 5}, {"users": 5, "items": 0},
                                    {"users": 5, "items": 5, "days": 0},
                                    {"users": 5, "items": 5, "interactions_per_user": 0}])
def test_bad_sizes(tmp_path: Path, kwargs: dict[str, int]) -> None:
    with pytest.raises(CandgenError):
        generate_world(tmp_path, **kwargs)  # type: ignore[arg-type]


def test_friends_engagements_are_followed(world: tuple[Path, WorldSummary]) -> None:
    t = tables(world[0])
    inter = t["interactions"].select("user_id", "item_id", "timestamp")

    def followed(social: pl.DataFrame) -> float:
        theirs = inter.rename({"user_id": "friend_id", "timestamp": "tf"})
        j = inter.with_row_index("row").join(social, on="user_id").join(theirs, on=["friend_id", "item_id"])
        hit = j.filter((pl.col("tf") < pl.col("timestamp")) & (pl.col("tf") >= pl.col("timestamp") - 72 * 3600))
        return hit["row"].n_unique() / len(inter)

    real = followed(t["social"])
    shuffled = followed(t["social"].with_columns(pl.col("friend_id").shuffle(seed=2)))
    assert real > 0.04 and real > 1.5 * shuffled  # 0.36 vs 0.17 at this seed
