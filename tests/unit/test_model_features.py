"""Feature encoding of the two-tower model: vocabularies, bags, buckets, sequential history without leakage."""

from __future__ import annotations

import json

import numpy as np
from model_world import planted_world

from candgen.config import EventsConfig
from candgen.data.dataset import MISSING_TIME, Csr
from candgen.model.features import (
    FeatureSpace,
    PositiveLog,
    age_bucket,
    bag_codes,
    history_len_bucket,
    hour_bucket,
    negatives_by_user,
    padded_bags,
    recency_weights,
    stable_hash,
)


def test_buckets():
    day = 86_400
    assert age_bucket(np.array([MISSING_TIME, 0, 0, 0]), np.array([5, 0, 2 * day, 4000 * day])).tolist() == [0, 1, 2, 8]
    assert hour_bucket(np.array([0, 3600 * 25])).tolist() == [1, 2]
    assert history_len_bucket(np.array([0, 1, 2, 3, 4, 10_000])).tolist() == [0, 1, 2, 2, 3, 8]
    np.testing.assert_allclose(recency_weights(np.array([2.0, 1.0]), decay=0.5), [2.0, 0.5])
    assert stable_hash("abc") == stable_hash("abc") != stable_hash("abd")


def test_padded_bags_and_bag_codes():
    csr = Csr.from_lists([[0, 2], [], [1]])
    assert padded_bags(csr).tolist() == [[1, 3], [0, 0], [2, 0]]
    assert padded_bags(csr, np.array([2, 0])).tolist() == [[2, 0], [1, 3]]
    assert padded_bags(Csr.from_lists([list(range(40))])).shape == (1, 32)
    assert bag_codes([["b", "zzz"], []], {"a": 0, "b": 1}).tolist() == [[2], [0]]


def test_feature_space_round_trip_and_new_values():
    ds = planted_world()
    space = FeatureSpace.from_dataset(ds, id_buckets=1_000_000, history_len=5)
    again = FeatureSpace.from_dict(json.loads(json.dumps(space.to_dict())))
    assert again.to_dict() == space.to_dict() and not space.id_hashed and space.id_buckets == ds.n_items + 1
    codes = again.encode_new_items(tags=[["t1", "nope"]], categories=["c1"], creators=["unknown"], created_at=[None])
    assert codes.tags.tolist() == [[again.tag_index["t1"] + 1]]
    assert codes.category[0] == again.categories.index("c1") + 1 and codes.creator[0] == 0
    assert codes.id_bucket[0] == 0 and codes.created_at[0] == MISSING_TIME
    attrs = again.encode_attributes({"segment": "s2", "unknown": "x"})
    assert attrs.tolist() == [again.user_attributes["segment"].index("s2") + 1]
    assert again.encode_attributes({"segment": "never seen"}).tolist() == [0]
    assert again.encode_device("Mobile") == again.devices.index("mobile") + 1 and again.encode_device("car") == 0
    # catalog encoding agrees with the dataset's own codes
    cat = space.encode_catalog(ds)
    assert cat.id_bucket.tolist() == list(range(1, ds.n_items + 1))
    assert (cat.category > 0).all() and (cat.creator > 0).all() and (cat.tags[:, 0] > 0).all()


def test_hashed_id_space_and_items_outside_the_catalog():
    ds = planted_world()
    space = FeatureSpace.from_dataset(ds, id_buckets=16, history_len=5)
    assert space.id_hashed
    b = space.id_buckets_of(np.array([0, 1, ds.n_items, -1]), ds)
    assert 1 <= b[0] < 16 and 1 <= b[1] < 16 and b[2] == 0 and b[3] == 0
    try:
        space.id_buckets_of(np.array([0]))
    except ValueError as e:
        assert "hashed" in str(e)
    else:
        raise AssertionError("a hashed id space without the dataset must raise")


def test_history_holds_only_earlier_positives():
    ds = planted_world()
    ev = EventsConfig()
    log = PositiveLog.build(ds.interactions, ev, ds.n_users)
    u = 3
    rows = np.arange(log.ptr[u], log.ptr[u + 1])
    assert (np.diff(log.timestamp[rows]) >= 0).all() and log.rank[rows].tolist() == list(range(len(rows)))
    hist, w = log.history(np.array([u, u]), np.array([0, 4]), 6, decay=0.5)
    assert (w[0] == 0).all()
    assert hist[1, :4].tolist() == log.item[rows[:4]][::-1].tolist()  # most recent first, strictly before
    np.testing.assert_allclose(w[1], [1, 0.5, 0.25, 0.125, 0, 0])
    assert log.count_before(np.array([u]), None)[0] == len(rows)
    assert log.count_before(np.array([u]), int(log.timestamp[rows[2]]))[0] == 2
    neg = negatives_by_user(ds.interactions, ev, ds.n_users)
    assert len(neg.row(u)) == 1 and len(neg.idx) == ds.n_users  # one dislike each, never a positive
    assert not set(neg.row(u).tolist()) & set(log.item[rows].tolist())
