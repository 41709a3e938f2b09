"""Baseline recommenders: one contract every baseline passes, then per-baseline correctness on tiny data."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import polars as pl
import pytest

from candgen.config import EventsConfig
from candgen.data.dataset import Dataset
from candgen.errors import CandgenError
from candgen.eval import baselines as b


def dataset(rows: list[tuple[str, str, int, str, float | None]]) -> Dataset:
    schema = {"user_id": pl.String, "item_id": pl.String, "timestamp": pl.Int64, "event": pl.String,
              "value": pl.Float64}
    df = pl.DataFrame(rows, schema=schema, orient="row")
    return Dataset.from_frames(df)


def block_dataset() -> Dataset:
    """Users a0-a3 engage with items A0-A4, users b0-b3 with B0-B4 (three items each, rotating); user
    'lurker' has only an impression (cold); a1 hid B0 and a2 rated A4 badly (negatives)."""
    rows: list[tuple[str, str, int, str, float | None]] = []
    t = 0
    for group in ("a", "b"):
        for u in range(4):
            for j in range(3):
                t += 10
                rows.append((f"{group}{u}", f"{group.upper()}{(u + j) % 5}", t, ("view", "click", "like")[j], None))
    rows += [("lurker", "A0", t + 1, "impression", None), ("a1", "B0", t + 2, "hide", None),
             ("a2", "A4", t + 3, "rating", 1.0)]
    return dataset(rows)


FACTORIES: dict[str, Callable[[], b.Recommender]] = {
    "popular": b.PopularRecommender,
    "recent_popular": b.RecentPopularRecommender,
    "item_knn": lambda: b.ItemKNNRecommender(neighbours=3),
    "als": lambda: b.ALSRecommender(factors=2, iterations=5),
    "ease": lambda: b.EASERecommender(l2=1.0),
}


@pytest.fixture(scope="module")
def ds() -> Dataset:
    return block_dataset()


@pytest.fixture(params=list(FACTORIES), scope="module")
def fitted(request: pytest.FixtureRequest, ds: Dataset) -> b.Recommender:
    return FACTORIES[request.param]().fit(ds, EventsConfig())


# ---------------------------------------------------------------- the contract every baseline passes


def test_shape_types_and_no_duplicates(fitted: b.Recommender, ds: Dataset) -> None:
    users = np.arange(ds.n_users)
    batch = fitted.recommend(users, 4)
    assert batch.ids.shape == (ds.n_users, 4) and batch.scores.shape == (ds.n_users, 4)
    assert batch.ids.dtype == np.int64 and batch.scores.dtype == np.float32
    for row in batch.ids:
        valid = row[row >= 0]
        assert len(set(valid.tolist())) == len(valid)


def test_no_seen_items_when_excluding(fitted: b.Recommender, ds: Dataset) -> None:
    seen = b.seen_matrix(ds)
    batch = fitted.recommend(np.arange(ds.n_users), ds.n_items)
    for u, row in enumerate(batch.ids):
        assert not set(row[row >= 0].tolist()) & set(seen[u].indices.tolist())
        # everything unseen is still reachable (EASE only models engaged items, but all are engaged here)
        n_unseen = ds.n_items - seen[u].nnz
        assert (row >= 0).sum() == n_unseen


def test_scores_sorted_and_padding_at_the_end(fitted: b.Recommender, ds: Dataset) -> None:
    k = ds.n_items + 3
    batch = fitted.recommend(np.arange(ds.n_users), k)
    for ids, scores in zip(batch.ids, batch.scores, strict=True):
        n = int((ids >= 0).sum())
        assert (ids[:n] >= 0).all() and (ids[n:] == -1).all() and n <= ds.n_items
        assert np.all(np.diff(scores[:n]) <= 0)
        assert np.all(np.isneginf(scores[n:]))
    assert (batch.ids[:, -3:] == -1).all()


def test_deterministic(fitted: b.Recommender, ds: Dataset) -> None:
    again = type(fitted)()
    for attr in ("neighbours", "factors", "iterations", "l2"):
        if hasattr(fitted, attr):
            setattr(again, attr, getattr(fitted, attr))
    again.fit(ds, EventsConfig())
    users = np.arange(ds.n_users)
    first, second = fitted.recommend(users, 6), again.recommend(users, 6)
    np.testing.assert_array_equal(first.ids, second.ids)
    np.testing.assert_array_equal(first.scores, second.scores)


def test_cold_users_get_the_popularity_list(fitted: b.Recommender, ds: Dataset) -> None:
    lurker = ds.users.get("lurker")
    beyond = ds.n_users + 5  # a user the train table never saw
    batch = fitted.recommend(np.array([lurker, beyond]), 5)
    np.testing.assert_array_equal(batch.ids[0], batch.ids[1])
    if not isinstance(fitted, b.RecentPopularRecommender):
        popular = b.PopularRecommender().fit(ds, EventsConfig()).recommend(np.array([beyond]), 5)
        np.testing.assert_array_equal(batch.ids[1], popular.ids[0])


def test_bad_arguments(fitted: b.Recommender) -> None:
    with pytest.raises(ValueError, match="1-d"):
        fitted.recommend(np.array([[0]]), 3)
    with pytest.raises(ValueError, match="1-d"):
        fitted.recommend(np.array([0.5]), 3)
    with pytest.raises(ValueError, match=">= 0"):
        fitted.recommend(np.array([-1]), 3)
    with pytest.raises(ValueError, match="positive integer"):
        fitted.recommend(np.array([0]), 0)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_unfitted_recommender_refuses(name: str) -> None:
    rec = FACTORIES[name]()
    assert not rec.fitted
    with pytest.raises(CandgenError, match="not fitted"):
        rec.recommend(np.array([0]), 3)


# ---------------------------------------------------------------- shared matrices


def test_engagement_weights_negatives_and_seen(ds: Dataset) -> None:
    m = b.engagement_matrix(ds, EventsConfig())
    a0, a1, a2 = ds.users.get("a0"), ds.users.get("a1"), ds.users.get("a2")
    item = ds.items.get
    assert m[a0, item("A0")] == 1.0 and m[a0, item("A1")] == 2.0 and m[a0, item("A2")] == 3.0
    assert m[a1, item("B0")] == 0.0  # hide: never engagement
    assert m[a2, item("A4")] == 0.0  # a like of A4 earlier, then a low rating: the pair is dropped
    seen = b.seen_matrix(ds)
    assert seen[a1, item("B0")] and seen[a2, item("A4")]
    assert not seen[ds.users.get("lurker"), item("A0")]  # impressions are not "seen"


def test_fit_needs_items() -> None:
    empty = dataset([])
    with pytest.raises(CandgenError, match="without items"):
        b.PopularRecommender().fit(empty)


# ---------------------------------------------------------------- per-baseline correctness


def test_popular_is_weighted_engagement_count() -> None:
    ds = dataset([("u1", "x", 1, "view", None), ("u2", "y", 2, "share", None), ("u3", "x", 3, "click", None),
                  ("u4", "z", 4, "like", None), ("u5", "w", 5, "impression", None)])
    rec = b.PopularRecommender().fit(ds, EventsConfig())
    batch = rec.recommend(np.array([ds.users.get("u5")]), 4)
    assert ds.items.ids(batch.ids[0][:3]) == ["y", "x", "z"]  # 5 > 1+2 > 3
    np.testing.assert_allclose(batch.scores[0][:3], [5.0, 3.0, 3.0])
    assert batch.ids[0][3] == ds.items.get("w")  # no engagement: last, but still a candidate
    custom = b.PopularRecommender(name="pop2")
    assert custom.name == "pop2"


def test_recent_popular_uses_the_last_window() -> None:
    rows = [(f"u{i}", "old", i, "view", None) for i in range(5)]  # t = 0..4
    rows += [("v1", "new", 95, "view", None), ("v2", "mid", 50, "like", None), ("v3", "x", 100, "view", None)]
    ds = dataset(rows)
    rec = b.RecentPopularRecommender().fit(ds, EventsConfig())  # window: t >= 90
    ids = ds.items.ids(rec.recommend(np.array([ds.n_users + 1]), 4).ids[0])
    assert ids[:2] in (["new", "x"], ["x", "new"])  # both weight 1 in the window
    assert ids[2:] == ["old", "mid"]  # then by overall popularity: 5 views > one like (3)
    with pytest.raises(ValueError, match="window"):
        b.RecentPopularRecommender(window=0.0)


def test_item_knn_cosine_neighbours() -> None:
    # x and y are co-engaged by u1, u2; z only by u3 together with x
    ds = dataset([("u1", "x", 1, "view", None), ("u1", "y", 2, "view", None), ("u2", "x", 3, "view", None),
                  ("u2", "y", 4, "view", None), ("u3", "x", 5, "view", None), ("u3", "z", 6, "view", None),
                  ("u4", "x", 7, "view", None)])
    rec = b.ItemKNNRecommender(neighbours=5).fit(ds, EventsConfig())
    x, y, z = (ds.items.get(i) for i in "xyz")
    sim = rec.similarity.toarray()
    assert sim[x, y] == pytest.approx(2 / (2 * np.sqrt(2)))  # |x| = 2 (4 users), |y| = sqrt(2)
    assert sim[x, z] == pytest.approx(1 / 2) and sim[y, z] == 0.0 and sim[x, x] == 0.0
    batch = rec.recommend(np.array([ds.users.get("u4")]), 2)  # u4 engaged with x only
    assert list(batch.ids[0]) == [y, z]
    np.testing.assert_allclose(batch.scores[0], [sim[x, y], sim[x, z]], rtol=1e-6)
    pruned = b.ItemKNNRecommender(neighbours=1).fit(ds, EventsConfig())
    assert (np.diff(pruned.similarity.indptr) <= 1).all()
    with pytest.raises(ValueError, match="neighbours"):
        b.ItemKNNRecommender(neighbours=0)


def test_als_learns_the_blocks(ds: Dataset) -> None:
    rec = b.ALSRecommender(factors=2, iterations=10).fit(ds, EventsConfig())  # rank 2: two blocks
    assert rec.user_factors.shape == (ds.n_users, 2) and rec.item_factors.shape == (ds.n_items, 2)
    for user, block in (("a0", "A"), ("b3", "B")):
        top = ds.items.ids(rec.recommend(np.array([ds.users.get(user)]), 2).ids[0])
        assert all(i.startswith(block) for i in top), (user, top)
    with pytest.raises(ValueError, match="ALS needs"):
        b.ALSRecommender(factors=0)


def test_ease_matches_the_closed_form(ds: Dataset) -> None:
    rec = b.EASERecommender(l2=2.0).fit(ds, EventsConfig())
    x = b.engagement_matrix(ds, EventsConfig()).toarray().astype(np.float64)
    p = np.linalg.inv(x.T @ x + 2.0 * np.eye(ds.n_items))
    weights = -p / np.diag(p)[None, :]
    np.fill_diagonal(weights, 0.0)
    assert rec.modelled_items == ds.n_items
    np.testing.assert_allclose(rec.weights, weights, rtol=1e-4, atol=1e-6)
    u = ds.users.get("a0")
    batch = rec.recommend(np.array([u]), 2, exclude_seen=False)
    expected = np.argsort(-(x[u] @ weights), kind="stable")[:2]
    assert set(batch.ids[0].tolist()) == set(expected.tolist())


def test_ease_falls_back_to_the_most_popular_items(ds: Dataset) -> None:
    rec = b.EASERecommender(l2=1.0, max_items=4).fit(ds, EventsConfig())
    assert rec.modelled_items == 4
    popular = np.argsort(-rec.data.popularity, kind="stable")[:4]
    np.testing.assert_array_equal(rec.items, np.sort(popular))
    batch = rec.recommend(np.arange(ds.n_users), ds.n_items)
    for u, row in enumerate(batch.ids):
        valid = set(row[row >= 0].tolist())
        if rec.data.warm[u]:
            assert valid <= set(rec.items.tolist())  # unmodelled items are never recommended to warm users
    with pytest.raises(ValueError, match="EASE needs"):
        b.EASERecommender(l2=0.0)


def test_spd_inverse_refuses_a_matrix_that_is_not_positive_definite() -> None:
    with pytest.raises(CandgenError, match="not positive definite"):
        b._spd_inverse(-np.eye(3))
    big = np.random.default_rng(0).normal(size=(23, 23))
    spd = big @ big.T + 23 * np.eye(23)
    # small blocks exercise the mirroring of the upper triangle across block boundaries
    np.testing.assert_allclose(b._spd_inverse(spd.copy(), block=5), np.linalg.inv(spd), rtol=1e-8, atol=1e-12)


def test_make_baselines() -> None:
    assert [r.name for r in b.make_baselines()] == list(b.BASELINES)
    assert [r.name for r in b.make_baselines(["ease", "popular"])] == ["ease", "popular"]
    with pytest.raises(CandgenError, match="unknown baseline"):
        b.make_baselines(["svd"])


def test_top_k_tie_break_never_reorders_distinct_scores() -> None:
    up = np.nextafter(np.float32(1.0), np.float32(2.0))  # the smallest float32 above 1
    scores = np.array([[1.0, 1.0, up, 0.0, np.nan, 0.0]], dtype=np.float32)
    tiebreak = np.array([0.9, 0.1, 0.0, 0.2, 0.99, 0.5])  # item 0 and item 5 are the more popular of their ties
    ids, vals = b.top_k(scores, 7, tiebreak=tiebreak)
    assert ids[0].tolist() == [2, 0, 1, 5, 3, -1, -1]  # NaN is never returned
    assert vals[0][0] == up and np.isneginf(vals[0][-1])
    excluded = b.top_k(scores, 2, tiebreak=tiebreak, exclude=b.sp.csr_matrix(np.array([[0, 0, 1, 0, 0, 0]])))
    assert excluded[0][0].tolist() == [0, 1]
