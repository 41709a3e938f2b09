"""evaluate(): ground truth, cohorts, fitting, beyond-accuracy metrics and the report's three outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from rich.console import Console

from candgen.config import EventsConfig
from candgen.data.dataset import Dataset
from candgen.data.split import Split, time_split
from candgen.eval.baselines import EASERecommender, PopularRecommender
from candgen.eval.evaluate import EvalReport, evaluate, ground_truth
from candgen.types import BatchCandidates, Progress

Row = tuple[str, str, int, str, float | None]


def dataset(rows: list[Row], tags: dict[str, list[str]] | None = None) -> Dataset:
    schema = {"user_id": pl.String, "item_id": pl.String, "timestamp": pl.Int64, "event": pl.String,
              "value": pl.Float64}
    items = None
    if tags is not None:
        items = pl.DataFrame({"item_id": list(tags), "tags": list(tags.values())})
    return Dataset.from_frames(pl.DataFrame(rows, schema=schema, orient="row"), items=items)


# train: t < 100; test: t >= 100
ROWS: list[Row] = [
    ("w1", "a", 1, "view", None), ("w1", "b", 2, "hide", None), ("w2", "c", 3, "like", None),
    ("w2", "a", 4, "view", None), ("w3", "a", 5, "view", None),
    ("w1", "c", 100, "click", None),  # relevant
    ("w1", "a", 101, "view", None),  # seen in train: not relevant
    ("w1", "b", 102, "view", None),  # hidden in train (seen): not relevant
    ("w1", "d", 103, "impression", None),  # exposure only: not relevant
    ("w2", "d", 104, "rating", 1.0),  # a low rating: not relevant
    ("w3", "e", 105, "rating", 4.0),
    ("c1", "b", 106, "view", None), ("c1", "d", 107, "share", None),  # cold user
]
TAGS = {"a": ["x"], "b": ["x", "y"], "c": ["y"], "d": ["z"], "e": ["x"]}


@pytest.fixture
def split() -> Split:
    return time_split(dataset(ROWS, TAGS), until=100)


class Oracle:
    """Recommends exactly the ground truth (perfect recall), or nothing at all."""

    def __init__(self, truth: list[np.ndarray], *, empty: bool = False) -> None:
        self.name = "empty" if empty else "oracle"
        self.truth, self.empty = truth, empty
        self.calls: list[int] = []

    def recommend(self, users: np.ndarray, k: int) -> BatchCandidates:
        self.calls.append(len(users))
        ids = np.full((len(users), k), -1, dtype=np.int64)
        if not self.empty:
            for row, u in enumerate(users):
                t = self.truth[int(u)][:k]
                ids[row, : len(t)] = t
        return BatchCandidates(ids, np.zeros((len(users), k), dtype=np.float32))


def test_ground_truth(split: Split) -> None:
    ds = split.train
    truth = ground_truth(split, EventsConfig())
    by_user = {ds.users.id(u): ds.items.ids(truth.row(u)) for u in range(ds.n_users)}
    assert by_user == {"w1": ["c"], "w2": [], "w3": ["e"], "c1": ["b", "d"]}


def test_oracle_and_empty_recommenders(split: Split) -> None:
    truth = ground_truth(split, EventsConfig())
    rows = [truth.row(u) for u in range(split.train.n_users)]
    oracle, empty = Oracle(rows), Oracle(rows, empty=True)
    progress = Recording()
    report = evaluate(split, [oracle, empty], ks=[2, 1], progress=progress, batch_users=2)
    assert report.ks == [1, 2]
    assert report.cohort_users == {"warm": 2, "cold": 1}  # w2 has no ground truth: left out
    assert sum(oracle.calls) == 3 and max(oracle.calls) <= 2  # batched
    ok, nothing = report.results
    assert ok.metrics["warm"]["recall@1"] == 1.0 and ok.metrics["warm"]["ndcg@2"] == 1.0
    assert ok.metrics["cold"]["recall@1"] == 0.5 and ok.metrics["cold"]["recall@2"] == 1.0
    assert ok.metrics["cold"]["precision@2"] == 1.0 and ok.metrics["warm"]["precision@2"] == 0.5
    assert nothing.metrics["warm"]["hit_rate@2"] == 0.0 and nothing.metrics["cold"]["recall@2"] == 0.0
    assert ok.stderr["warm"]["recall@1"] == 0.0  # both warm users at 1.0
    assert np.isnan(ok.stderr["cold"]["recall@1"])  # one cold user: no spread to estimate
    assert ok.beyond["coverage@2"] == pytest.approx(4 / 5)  # c, e, b, d of five items
    # only c1's list has two items: b {x, y} and d {z} share no tag -> distance 1
    assert ok.beyond["diversity@2"] == pytest.approx(1.0) and ok.beyond["novelty@2"] > 0
    assert progress.events[-1] == ("done", "evaluate")


def test_unfitted_baselines_are_fitted_on_train(split: Split) -> None:
    pop = PopularRecommender()
    report = evaluate(split, [pop], ks=[3])
    assert pop.fitted and report.results[0].fit_seconds >= 0
    # train popularity: a (3 views) > c (like = 3, later) ... w3 gets c, b, d; e never engaged in train
    assert report.results[0].metrics["warm"]["recall@3"] == pytest.approx(0.5)  # w1 finds c, w3 misses e


def test_ease_note_when_items_are_capped(split: Split) -> None:
    report = evaluate(split, [EASERecommender(l2=1.0, max_items=1)], ks=[2])
    assert any("max_items" in n for n in report.results[0].notes)


def test_report_outputs(split: Split, tmp_path: Path) -> None:
    report = evaluate(split, [PopularRecommender()], ks=[1, 2])
    d = report.to_dict()
    assert d["cohort_users"] == {"warm": 2, "cold": 1} and d["results"][0]["name"] == "popular"
    json.dumps(d, allow_nan=False)  # NaN would not be valid JSON
    paths = report.write(tmp_path / "rep")
    assert [p.name for p in paths] == ["report.md", "report.json", "recall_at_k.png"]
    md = paths[0].read_text()
    assert "## warm users (2)" in md and "| popular |" in md and "recall@2" in md
    assert " ±" in md  # recall carries its standard error over users
    assert json.loads(paths[1].read_text())["ks"] == [1, 2]
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    console = Console(record=True, width=250)
    console.print(report.to_table())
    text = console.export_text()
    assert "cold users (1)" in text and "popular" in text and "coverage" in text and "all test users, at k=2" in text


class ScoredSource:
    """A source-like recommender whose lists carry scores (evaluate samples them for the report)."""

    reports_scores = True

    def __init__(self) -> None:
        self.name = "scored"

    def recommend(self, users: np.ndarray, k: int) -> BatchCandidates:
        ids = np.full((len(users), k), -1, dtype=np.int64)
        scores = np.full((len(users), k), -np.inf, dtype=np.float32)
        ids[:, :2] = [0, 2]  # two candidates each; the padding's -inf scores are not samples
        scores[:, :2] = [0.9, 0.1]
        return BatchCandidates(ids, scores)


def test_score_distributions_of_sources_that_report_scores(split: Split, tmp_path: Path) -> None:
    report = evaluate(split, [ScoredSource(), PopularRecommender()], ks=[2])
    scored, pop = report.results
    assert pop.scores is None and pop.score_summary() == {}
    assert sorted(scored.scores.tolist()) == pytest.approx([0.1, 0.1, 0.1, 0.9, 0.9, 0.9])  # 3 users x 2
    summary = scored.score_summary()
    assert summary["n"] == 6 and summary["min"] == pytest.approx(0.1) and summary["max"] == pytest.approx(0.9)
    d = report.to_dict()
    assert d["results"][0]["scores"]["p50"] == pytest.approx(0.5) and "scores" not in d["results"][1]
    paths = report.write(tmp_path / "rep")
    assert [p.name for p in paths][-1] == "score_distributions.png"
    assert paths[-1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = paths[0].read_text()
    assert "## score distributions" in md and "| scored |" in md and "score_distributions.png" in md


def test_plot_scores_needs_scores(split: Split, tmp_path: Path) -> None:
    from candgen.eval.plots import plot_scores

    with pytest.raises(ValueError, match="no recommender reported scores"):
        plot_scores(evaluate(split, [PopularRecommender()], ks=[2]), tmp_path / "x.png")


def test_missing_cohort_shows_na(tmp_path: Path) -> None:
    rows = [r for r in ROWS if r[0] != "c1"]
    report = evaluate(time_split(dataset(rows), until=100), [PopularRecommender()], ks=[2])
    assert report.cohort_users["cold"] == 0
    assert np.isnan(report.results[0].metrics["cold"]["recall@2"])
    assert "diversity@2" not in report.results[0].beyond  # no item tags
    assert report.to_dict()["results"][0]["metrics"]["cold"]["recall@2"] is None
    assert "n/a" in report.to_markdown()
    report.write(tmp_path)  # a plot without a cold line still works


def test_bad_arguments(split: Split) -> None:
    with pytest.raises(ValueError, match="ks"):
        evaluate(split, [PopularRecommender()], ks=[])
    with pytest.raises(ValueError, match="ks"):
        evaluate(split, [PopularRecommender()], ks=[0, 5])
    with pytest.raises(ValueError, match="at least one recommender"):
        evaluate(split, [], ks=[5])


class Short:
    """Answers fewer columns than asked (allowed: the rest counts as empty), or the wrong number of rows."""

    def __init__(self, rows_off: int = 0) -> None:
        self.name, self.rows_off = "short", rows_off

    def recommend(self, users: np.ndarray, k: int) -> BatchCandidates:
        n = len(users) + self.rows_off
        return BatchCandidates(np.full((n, 1), 2, np.int64), np.zeros((n, 1), np.float32))


def test_short_lists_are_padded_and_wrong_row_counts_refused(split: Split) -> None:
    assert split.train.items.id(2) == "c"
    report = evaluate(split, [Short()], ks=[3])
    assert report.results[0].metrics["warm"]["recall@3"] == 0.5  # w1 wants c (hit), w3 wants e (miss)
    assert report.results[0].metrics["warm"]["precision@3"] == pytest.approx(1 / 6)  # empty slots are misses
    with pytest.raises(ValueError, match="answered"):
        evaluate(split, [Short(rows_off=1)], ks=[3])


def test_report_is_a_plain_dataclass() -> None:
    report = EvalReport(ks=[5], cohort_users={"warm": 0, "cold": 0}, split={}, results=[])
    assert report.to_dict()["results"] == []


class Recording(Progress):
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def task(self, name: str, total: float | None = None) -> None:
        self.events.append(("task", name))

    def advance(self, name: str, n: float = 1, **fields: object) -> None:
        self.events.append(("advance", name))

    def done(self, name: str) -> None:
        self.events.append(("done", name))
