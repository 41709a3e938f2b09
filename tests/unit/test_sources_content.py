"""TagIndex and ContentSource: tags, categories, creators, interests, item-to-item similarity, fresh items."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from candgen.data.dataset import Dataset
from candgen.errors import ArtifactError
from candgen.sources.base import UserContext
from candgen.sources.catalog import Catalog
from candgen.sources.content import ContentSource, TagIndex

ITEMS = pl.DataFrame({
    "item_id": ["cat1", "cat2", "cat3", "dog1", "dog2", "car1", "car2", "misc"],
    "tags": [["cats"], ["cats"], ["cats", "cute"], ["dogs"], ["dogs", "cute"], ["cars"], ["cars"], []],
    "category": ["pets", "pets", "pets", "pets", "pets", "autos", "autos", "other"],
    "creator_id": ["ann", "bob", "ann", "bob", "cid", "dan", "ann", "eve"],
})


def _catalog() -> tuple[Dataset, Catalog]:
    inter = pl.DataFrame({"user_id": ["x"], "item_id": ["misc"], "timestamp": [0]})
    ds = Dataset.from_frames(inter, ITEMS)
    return ds, Catalog.from_dataset(ds)


def _ctx(ds: Dataset, items: list[str], interests: list[str] | None = None) -> UserContext:
    ids = ds.items.lookup(items)
    return UserContext(user_id="u", user=0, now=10.0, history_items=ids, history_times=np.full(len(ids), 10.0),
                       history_weights=np.ones(len(ids), np.float32), interests=interests or [])


def test_tag_index_ranks_by_popularity():
    ds, cat = _catalog()
    pop = np.zeros(cat.n_items)
    pop[ds.items.get("cat3")] = 5.0
    ti = TagIndex.from_catalog(cat, pop)
    assert ds.items.ids(ti.items("tag", cat.tags.get("cats"), 10)) == ["cat3", "cat1", "cat2"]
    assert ds.items.ids(ti.items("creator", cat.creators.get("ann"), 2)) == ["cat3", "cat1"]
    assert len(ti.items("tag", 999, 10)) == 0


def test_content_follows_tags_and_creators_of_the_history():
    ds, cat = _catalog()
    src = ContentSource(TagIndex.from_catalog(cat, np.zeros(cat.n_items)), cat)
    got = ds.items.ids(src.retrieve(_ctx(ds, ["cat1"]), 10).ids)
    assert "cat1" not in got  # the user's own history is never returned
    assert set(got[:2]) == {"cat2", "cat3"}  # same tag (and cat3 also same creator)
    assert got[0] == "cat3"
    assert "car2" in got  # same creator, other tag
    assert "misc" not in got


def test_interests_alone_are_enough():
    ds, cat = _catalog()
    src = ContentSource(TagIndex.from_catalog(cat, np.zeros(cat.n_items)), cat)
    got = ds.items.ids(src.retrieve(_ctx(ds, [], ["cars", "unknown-tag"]), 10).ids)
    assert set(got) == {"car1", "car2"}
    assert len(src.retrieve(_ctx(ds, []), 10)) == 0


def test_similarity_over_item_vectors_joins_in():
    ds, cat = _catalog()

    class Nearest:  # a minimal VectorIndex stand-in: exact search over fixed vectors
        def __init__(self, v: np.ndarray) -> None:
            self.v = v

        def __len__(self) -> int:
            return len(self.v)

        def search(self, q, k, exclude=None):
            from candgen.types import BatchCandidates

            s = (q @ self.v.T)[0]
            if exclude and exclude[0] is not None:
                s[np.asarray(exclude[0])] = -np.inf
            top = np.argsort(-s)[:k]
            top = top[np.isfinite(s[top])]
            return BatchCandidates(top[None, :], s[top][None, :].astype(np.float32))

        def reconstruct(self, ids):
            return self.v[ids]

    v = np.eye(cat.n_items, dtype=np.float32)
    v[ds.items.get("misc")] = v[ds.items.get("dog1")]  # misc looks like dog1 but shares no tag
    src = ContentSource(TagIndex.from_catalog(cat, np.zeros(cat.n_items)), cat, index=Nearest(v), item_vectors=v)
    got = ds.items.ids(src.retrieve(_ctx(ds, ["dog1"]), 10).ids)
    assert "misc" in got and "dog2" in got
    sim = src.similar_items(ds.items.get("dog1"), 3)
    assert sim.source == "similar" and ds.items.get("dog1") not in sim.ids
    assert ds.items.get("misc") in sim.ids
    assert len(src.similar_items(999, 3)) == 0


def test_items_added_while_serving_are_found_at_once():
    ds, cat = _catalog()
    ti = TagIndex.from_catalog(cat, np.ones(cat.n_items))
    new = cat.add_item("cat4", tags=["cats", "brand-new-tag"], category="pets", creator="zoe", created_at=5)
    ti.add_item(new, tags=cat.tags_of(new), category=int(cat.category[new]), creator=int(cat.creator[new]))
    assert ti.items("tag", cat.tags.get("cats"), 2)[0] == new
    src = ContentSource(ti, cat)
    assert new in src.retrieve(_ctx(ds, ["cat1"]), 5).ids
    cat.delete(new)
    assert new not in src.retrieve(_ctx(ds, ["cat1"]), 5).ids


def test_tag_index_round_trip(tmp_path):
    ds, cat = _catalog()
    ti = TagIndex.from_catalog(cat, np.arange(cat.n_items, dtype=np.float64))
    ti.add_item(3, tags=np.array([0], np.int32), category=0, creator=-1)
    ti.save(tmp_path)
    back = TagIndex.load(tmp_path)
    for kind, key in (("tag", 0), ("category", 0), ("creator", 1)):
        assert ti.items(kind, key, 10).tolist() == back.items(kind, key, 10).tolist()
    with pytest.raises(ArtifactError):
        TagIndex.load(tmp_path / "missing")


def test_catalog_grows_deletes_and_round_trips(tmp_path):
    ds, cat = _catalog()
    n = cat.n_items
    for j in range(40):  # several capacity doublings
        cat.add_item(f"new{j}", tags=[f"t{j}"], category="fresh", creator="zed", created_at=100 + j)
    assert cat.n_items == n + 40 and cat.categories.id(int(cat.category[n + 39])) == "fresh"
    assert cat.tags.ids(cat.tags_of(n + 39)) == ["t39"]
    cat.delete(n)
    cat.delete(10_000)  # unknown: ignored
    assert cat.live(np.array([n, n + 1, -1, 10_000])).tolist() == [False, True, False, False]
    cat.save(tmp_path)
    back = Catalog.load(tmp_path)
    assert back.n_items == cat.n_items and back.is_deleted.tolist() == cat.is_deleted.tolist()
    assert back.tags.ids(back.tags_of(n + 5)) == ["t5"] and back.items.id(n + 5) == "new5"
    with pytest.raises(ArtifactError, match="catalog"):
        Catalog.load(tmp_path / "missing")
