"""Dataset.from_frames (the vectorised id mapping): id order, time order, categoricals and tag lists."""

from __future__ import annotations

import numpy as np
import polars as pl

from candgen.data.dataset import EVENT_CODE, Dataset


def test_ids_follow_first_appearance_tables_then_time_then_social() -> None:
    inter = pl.DataFrame({
        "user_id": ["u3", "u1", "u2", "u1"],
        "item_id": ["b", "z", "a", "y"],
        "timestamp": [30, 10, 20, 5],  # not sorted: from_frames puts the log in time order
        "event": ["like", "view", "click", "share"],
        "value": [None, 1.0, None, 2.0],
    })
    items = pl.DataFrame({"item_id": ["a", "b", "c"], "tags": [["x", "y"], [], ["y", "w"]],
                          "category": ["k", None, "k"], "created_at": [1, None, 3]})
    users = pl.DataFrame({"user_id": ["u2"], "interests": [["w"]], "country": ["DE"]})
    social = pl.DataFrame({"user_id": ["u9", "u1"], "friend_id": ["u1", "u8"]})
    ds = Dataset.from_frames(inter, items=items, users=users, social=social)
    assert ds.items.ids() == ["a", "b", "c", "y", "z"]  # items table, then by time: y (t=5), z (t=10)
    assert ds.users.ids() == ["u2", "u1", "u3", "u9", "u8"]  # users table, by time, then social
    it = ds.interactions
    assert it.timestamp.tolist() == [5, 10, 20, 30]
    assert ds.items.ids(it.item) == ["y", "z", "a", "b"] and ds.users.ids(it.user) == ["u1", "u1", "u2", "u3"]
    assert it.event.tolist() == [EVENT_CODE[e] for e in ("share", "view", "click", "like")]
    assert it.value[0] == 2.0 and np.isnan(it.value[2])
    assert it.user.dtype == np.int32 and it.item.dtype == np.int32
    assert ds.tags.ids() == ["x", "y", "w"]
    assert [ds.tags.ids(ds.item_tags.row(i)) for i in range(ds.n_items)] == [["x", "y"], [], ["y", "w"], [], []]
    assert ds.tags.ids(ds.user_interests.row(0)) == ["w"] and len(ds.user_interests) == ds.n_users
    assert ds.item_category is not None and ds.item_category.codes.tolist() == [0, -1, 0, -1, -1]
    assert ds.user_attributes["country"].codes.tolist() == [0, -1, -1, -1, -1]
    assert ds.users.ids(ds.social_src) == ["u9", "u1"] and ds.users.ids(ds.social_dst) == ["u1", "u8"]
    assert ds.users.get("u3") == 2 and "u8" in ds.users


def test_without_optional_tables_and_columns() -> None:
    inter = pl.DataFrame({"user_id": ["a", "b"], "item_id": ["x", "x"], "timestamp": [1, 2]})
    ds = Dataset.from_frames(inter)
    assert ds.n_users == 2 and ds.n_items == 1
    assert (ds.interactions.event == EVENT_CODE["view"]).all() and np.isnan(ds.interactions.value).all()
    assert len(ds.item_tags) == 1 and len(ds.item_tags.idx) == 0 and len(ds.social_src) == 0
