"""The engine's blend and sources as evaluation rows, against a fake engine with its own id numbering."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest

from candgen.data.dataset import Dataset, IdMap
from candgen.data.split import time_split
from candgen.errors import CandgenError
from candgen.eval.engine_adapter import BlendRecommender, SourceRecommender, engine_recommenders
from candgen.eval.evaluate import evaluate
from candgen.types import Candidates, Request


def eval_dataset() -> Dataset:
    rows = [("u1", "a", 1, "view"), ("u2", "b", 2, "view"), ("u1", "c", 10, "like"), ("u2", "d", 11, "view")]
    df = pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp", "event"], orient="row")
    return Dataset.from_frames(df)


@dataclass
class FakeSource:
    ids: list[int]
    asked: list[int] = field(default_factory=list)

    def retrieve(self, ctx: object, k: int) -> Candidates:
        self.asked.append(k)
        ids = np.array(self.ids[:k], dtype=np.int64)
        return Candidates(ids, np.linspace(1.0, 0.5, len(ids)).astype(np.float32), "trending")


class FakeEngine:
    """Numbers items differently from the evaluation dataset: engine item 0 is 'd', 1 'c', 2 'b', 3 'a', 4 'zz'."""

    def __init__(self) -> None:
        self.manifest = SimpleNamespace(data_end_time=5)
        self.catalog_items = IdMap(["d", "c", "b", "a", "zz"])
        self.state = SimpleNamespace(catalog=SimpleNamespace(items=self.catalog_items))
        self.sources = {"trending": FakeSource([3, 0, 4, 1, 2])}
        self.requests: list[Request] = []

    def candidates(self, req: Request) -> SimpleNamespace:
        self.requests.append(req)
        items = ["zz", "c", "d"][: req.k]  # 'zz' is unknown to the evaluation dataset
        return SimpleNamespace(item_ids=items, scores=np.array([0.9, 0.8, 0.7][: len(items)], dtype=np.float32))

    def user_context(self, req: Request, now: float) -> SimpleNamespace:
        # u1 has seen 'a' (engine item 3)
        exclude = np.array([3] if req.user_id == "u1" else [], dtype=np.int64)
        return SimpleNamespace(exclude=exclude)


def test_blend_rows_map_items_by_string_id() -> None:
    ds, engine = eval_dataset(), FakeEngine()
    rec = BlendRecommender(engine, users=ds.users, items=ds.items, name="blend")
    batch = rec.recommend(np.array([ds.users.get("u1")]), 3)
    assert ds.items.ids(batch.ids[0][:2]) == ["c", "d"] and batch.ids[0][2] == -1
    np.testing.assert_allclose(batch.scores[0][:2], [0.8, 0.7])
    assert engine.requests[0].user_id == "u1" and engine.requests[0].now == 5.0 and engine.requests[0].k == 3


def test_source_rows_drop_excluded_items_and_over_fetch() -> None:
    ds, engine = eval_dataset(), FakeEngine()
    rec = SourceRecommender(engine, "trending", users=ds.users, items=ds.items)
    assert rec.name == "trending"
    batch = rec.recommend(np.array([ds.users.get("u1"), ds.users.get("u2")]), 2)
    assert engine.sources["trending"].asked == [3, 2]  # k + one excluded item for u1
    # u1: engine items 3, 0, 4 = a (seen: dropped), d, zz (unknown to the evaluation catalog: skipped)
    assert ds.items.ids(batch.ids[0][:1]) == ["d"] and batch.ids[0][1] == -1
    assert ds.items.ids(batch.ids[1]) == ["a", "d"]


def test_engine_recommenders_lists_blend_and_present_sources() -> None:
    ds, engine = eval_dataset(), FakeEngine()
    rows = engine_recommenders(engine, ds)
    assert [r.name for r in rows] == ["blend", "trending"]
    with pytest.raises(CandgenError, match="no source 'social'"):
        engine_recommenders(engine, ds, sources=("social",))


def test_bad_arguments() -> None:
    ds, engine = eval_dataset(), FakeEngine()
    rec = BlendRecommender(engine, users=ds.users, items=ds.items, name="blend")
    with pytest.raises(ValueError, match="1-d"):
        rec.recommend(np.array([[0]]), 2)
    with pytest.raises(ValueError, match="positive integer"):
        rec.recommend(np.array([0]), 0)


def test_engine_rows_join_the_evaluation_table() -> None:
    ds = eval_dataset()
    split = time_split(ds, until=10)
    report = evaluate(split, engine_recommenders(FakeEngine(), ds), ks=[2])
    blend, trending = report.results
    assert blend.name == "blend" and trending.name == "trending"
    # ground truth: u1 -> c, u2 -> d; asked for k=2 the blend answers zz (unknown here), c: half the users hit
    assert blend.metrics["warm"]["recall@2"] == 0.5
    assert trending.metrics["warm"]["recall@2"] == 0.5  # u1 gets d (a is seen), u2 gets a, d
