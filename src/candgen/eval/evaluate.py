"""Time-split evaluation: every recommender (the baselines, and candgen's blend and sources through
`candgen.eval.funnel`) in one table of recall/precision/NDCG/hit rate at several k, for warm and cold test
users separately, plus coverage, intra-list diversity, Gini and novelty at the largest k.

Ground truth of a test user: the items of their test interactions with positive engagement weight,
minus the items they already interacted with in train (the "seen" items every baseline filters out).
Test users without such items are left out. Cohorts follow the split: warm users have >= 1 train
interaction, cold users none. Any object with a `name` and a batched `recommend(users, k)` returning
`BatchCandidates` can be evaluated; unfitted `Recommender`s are fitted on the train part here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from candgen.config import EventsConfig
from candgen.data.dataset import Csr
from candgen.data.split import Split
from candgen.eval import metrics as m
from candgen.eval.baselines import EASERecommender, Recommender, engagement_matrix, seen_matrix
from candgen.types import NO_PROGRESS, BatchCandidates, Progress

COHORTS = ("warm", "cold")


class RecommenderLike(Protocol):
    """What `evaluate` needs: a name and batched top-k recommendations by dense user index."""

    name: str

    def recommend(self, users: np.ndarray, k: int) -> BatchCandidates: ...


MAX_SCORE_SAMPLE = 50_000


@dataclass
class RecommenderResult:
    """One row group of the report: accuracy per cohort, beyond-accuracy over all test users."""

    name: str
    metrics: dict[str, dict[str, float]]  # cohort -> {"recall@50": ..., "ndcg@100": ...}
    beyond: dict[str, float]  # coverage@K, diversity@K (when items have tags), gini@K, novelty@K
    fit_seconds: float
    recommend_seconds: float
    notes: list[str] = field(default_factory=list)
    # cohort -> {"recall@50": standard error of the mean over users, ...}: small cohorts are noisy
    stderr: dict[str, dict[str, float]] = field(default_factory=dict)
    # raw scores of the candidates it returned (a sample), for recommenders that set `reports_scores`
    # (candgen's sources): their distributions show whether the blend's normalisation has work to do
    scores: np.ndarray | None = None

    def score_summary(self) -> dict[str, float]:
        """Count, min, max and the 1/10/50/90/99th percentiles of `scores` (empty without scores)."""
        if self.scores is None or len(self.scores) == 0:
            return {}
        q = np.percentile(self.scores, [1, 10, 50, 90, 99])
        return {"n": float(len(self.scores)), "min": float(self.scores.min()), "p1": float(q[0]),
                "p10": float(q[1]), "p50": float(q[2]), "p90": float(q[3]), "p99": float(q[4]),
                "max": float(self.scores.max())}


@dataclass
class EvalReport:
    """Results of `evaluate`: `to_table()` for the terminal, `to_dict()` for JSON, `write(dir)` for files."""

    ks: list[int]
    cohort_users: dict[str, int]  # test users with >= 1 ground-truth item, per cohort
    split: dict[str, Any]  # cutoff, train/test interactions, users, items
    results: list[RecommenderResult]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return _jsonable({
            "ks": self.ks, "cohort_users": self.cohort_users, "split": self.split, "notes": self.notes,
            "results": [
                {"name": r.name, "metrics": r.metrics, "stderr": r.stderr, "beyond": r.beyond,
                 **({"scores": r.score_summary()} if r.scores is not None else {}),
                 "fit_seconds": round(r.fit_seconds, 3),
                 "recommend_seconds": round(r.recommend_seconds, 3), "notes": r.notes}
                for r in self.results
            ],
        })

    def metric_names(self) -> list[str]:
        return [f"{metric}@{k}" for metric in m.RANKING_METRICS for k in self.ks]

    def to_table(self) -> Any:
        """A rich renderable that fits 80 columns: per cohort, one row per (recommender, k) with recall,
        precision, NDCG and hit rate; then the beyond-accuracy table."""
        from rich.console import Group
        from rich.table import Table

        tables = []
        for cohort in COHORTS:
            n = self.cohort_users.get(cohort, 0)
            t = Table(title=f"{cohort} users ({n:,})", title_justify="left")
            t.add_column("recommender")
            t.add_column("k", justify="right")
            for metric in m.RANKING_METRICS:
                t.add_column(metric.replace("_", " "), justify="right")
            for r in self.results:
                for i, k in enumerate(self.ks):
                    t.add_row(r.name if i == 0 else "", str(k),
                              *(_fmt(r.metrics[cohort].get(f"{metric}@{k}"),
                                     r.stderr.get(cohort, {}).get(f"{metric}@{k}") if metric == "recall" else None)
                                for metric in m.RANKING_METRICS),
                              end_section=i == len(self.ks) - 1)
            tables.append(t)
        k_max = max(self.ks)
        t = Table(title=f"all test users, at k={k_max}", title_justify="left")
        t.add_column("recommender")
        for name in self._beyond_names():
            t.add_column(name.removesuffix(f"@{k_max}"), justify="right")
        t.add_column("fit s", justify="right")
        t.add_column("rec s", justify="right")
        for r in self.results:
            t.add_row(r.name, *(_fmt(r.beyond.get(name)) for name in self._beyond_names()),
                      f"{r.fit_seconds:.1f}", f"{r.recommend_seconds:.1f}")
        tables.append(t)
        return Group(*tables)

    def _beyond_names(self) -> list[str]:
        names: list[str] = []
        for r in self.results:
            names += [n for n in r.beyond if n not in names]
        return names

    def to_markdown(self) -> str:
        s = self.split
        lines = ["# candgen evaluation", ""]
        lines.append(f"Split: cutoff {s.get('cutoff')}, {s.get('train_interactions'):,} train and "
                     f"{s.get('test_interactions'):,} test interactions, {s.get('items'):,} items. "
                     f"Test users with ground truth: {self.cohort_users.get('warm', 0):,} warm, "
                     f"{self.cohort_users.get('cold', 0):,} cold.")
        lines.append("")
        for cohort in COHORTS:
            lines += [f"## {cohort} users ({self.cohort_users.get(cohort, 0):,})", ""]
            lines += _md_table(["recommender", *self.metric_names()],
                               [[r.name, *(_fmt(r.metrics[cohort].get(n),
                                                r.stderr.get(cohort, {}).get(n) if n.startswith("recall") else None)
                                           for n in self.metric_names())]
                                for r in self.results])
            lines.append("")
        lines += [f"## beyond accuracy (all test users, k={max(self.ks)})", ""]
        lines += _md_table(["recommender", *self._beyond_names(), "fit s", "recommend s"],
                           [[r.name, *(_fmt(r.beyond.get(n)) for n in self._beyond_names()),
                             f"{r.fit_seconds:.1f}", f"{r.recommend_seconds:.1f}"] for r in self.results])
        notes = self.notes + [f"{r.name}: {n}" for r in self.results for n in r.notes]
        if notes:
            lines += ["", "## notes", ""] + [f"- {n}" for n in notes]
        lines += ["", "![recall@k](recall_at_k.png)", ""]
        scored = [r for r in self.results if r.score_summary()]
        if scored:
            cols = ["n", "min", "p1", "p10", "p50", "p90", "p99", "max"]
            lines += ["## score distributions (each source's own scores of what it returned)", ""]
            lines += _md_table(["source", *cols], [[r.name, *(f"{r.score_summary()[c]:.4g}" for c in cols)]
                                                   for r in scored])
            lines += ["", "![score distributions](score_distributions.png)", ""]
        return "\n".join(lines)

    def write(self, report_dir: str | Any) -> list[Any]:
        """Write report.md, report.json and recall_at_k.png into `report_dir` (created); returns the paths."""
        import json
        from pathlib import Path

        d = Path(report_dir)
        d.mkdir(parents=True, exist_ok=True)
        md, js, png = d / "report.md", d / "report.json", d / "recall_at_k.png"
        md.write_text(self.to_markdown())
        js.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        self.plot(png)
        out = [md, js, png]
        if any(r.score_summary() for r in self.results):
            from candgen.eval.plots import plot_scores

            plot_scores(self, d / "score_distributions.png")
            out.append(d / "score_distributions.png")
        return out

    def plot(self, path: Any) -> None:
        """Recall@k against k, one line per recommender, one panel per cohort (error bars: standard error)."""
        from candgen.eval.plots import plot_recall

        plot_recall(self, path)


def ground_truth(split: Split, events: EventsConfig) -> Csr:
    """Relevant items per user (all users of the train table): test items with positive engagement
    weight that the user did not already interact with in train."""
    train = split.train
    n_users, n_items = train.n_users, train.n_items
    test = split.test
    pos = test.weights(events) > 0
    keys = np.unique(test.user[pos].astype(np.int64) * n_items + test.item[pos])
    seen = seen_matrix(train).tocoo()
    seen_keys = seen.row.astype(np.int64) * n_items + seen.col
    keys = keys[~np.isin(keys, seen_keys)]
    users = keys // n_items
    ptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(users, minlength=n_users), out=ptr[1:])
    return Csr(ptr, (keys % n_items).astype(np.int32))


def evaluate(
    split: Split,
    recommenders: list[Recommender] | list[RecommenderLike],
    *,
    ks: tuple[int, ...] | list[int] = (50, 100, 200),
    events: EventsConfig | None = None,
    progress: Progress = NO_PROGRESS,
    batch_users: int = 4096,
) -> EvalReport:
    """Fit (if needed) and evaluate every recommender on the split; see the module docstring."""
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    if not recommenders:
        raise ValueError("evaluate needs at least one recommender")
    events = events or EventsConfig()
    train = split.train
    truth = ground_truth(split, events)
    n_relevant = np.diff(truth.ptr)
    cohorts = {"warm": split.warm_users, "cold": split.cold_users}
    cohorts = {c: np.asarray(u, dtype=np.int64)[n_relevant[u] > 0] for c, u in cohorts.items()}
    users = np.concatenate([cohorts[c] for c in COHORTS])
    relevant = [truth.row(int(u)) for u in users]
    k_max = ks[-1]

    eng = engagement_matrix(train, events)
    engaged_users = np.diff(eng.tocsc().indptr)
    p_item = m.item_probability(engaged_users, int((np.diff(eng.indptr) > 0).sum()))
    has_tags = len(train.item_tags) == train.n_items and len(train.item_tags.idx) > 0

    results = []
    progress.task("evaluate", total=len(recommenders))
    for rec in recommenders:
        fit_s = 0.0
        if isinstance(rec, Recommender) and not rec.fitted:
            t0 = time.perf_counter()
            rec.fit(train, events)
            fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ids = np.full((len(users), k_max), -1, dtype=np.int64)
        score_parts: list[np.ndarray] = []
        for start in range(0, len(users), batch_users):
            chunk = users[start : start + batch_users]
            batch = rec.recommend(chunk, k_max)
            got = np.asarray(batch.ids)
            if getattr(rec, "reports_scores", False):
                sc = np.asarray(batch.scores, np.float32)
                score_parts.append(sc[(got >= 0) & np.isfinite(sc)])
            if got.ndim != 2 or got.shape[0] != len(chunk):
                raise ValueError(f"recommender '{rec.name}' answered {got.shape} ids for {len(chunk)} users; "
                                 f"expected ({len(chunk)}, {k_max})")
            width = min(k_max, got.shape[1])
            ids[start : start + len(chunk), :width] = got[:, :width]
        rec_s = time.perf_counter() - t0
        per_user = m.ranking_metrics_per_user(ids, relevant, ks)
        offset, by_cohort, stderr = 0, {}, {}
        for c in COHORTS:
            n = len(cohorts[c])
            by_cohort[c] = {name: m.mean_over_users(v[offset : offset + n]) for name, v in per_user.items()}
            stderr[c] = {name: _stderr(v[offset : offset + n]) for name, v in per_user.items()}
            offset += n
        beyond = {}
        if len(users):
            beyond[f"coverage@{k_max}"] = m.catalog_coverage(ids, train.n_items)
            if has_tags:
                beyond[f"diversity@{k_max}"] = m.intra_list_diversity(ids, item_tags=train.item_tags)
            beyond[f"gini@{k_max}"] = m.gini(m.recommendation_counts(ids, train.n_items))
            beyond[f"novelty@{k_max}"] = m.novelty(ids, p_item)
        notes = []
        if isinstance(rec, EASERecommender) and rec.modelled_items < int((engaged_users > 0).sum()):
            notes.append(f"EASE modelled only the {rec.modelled_items:,} most popular items (max_items)")
        scores = None
        if score_parts:
            scores = np.concatenate(score_parts)
            if len(scores) > MAX_SCORE_SAMPLE:  # a fixed-seed sample keeps the report small and reproducible
                scores = np.random.default_rng(0).choice(scores, MAX_SCORE_SAMPLE, replace=False)
        results.append(RecommenderResult(rec.name, by_cohort, beyond, fit_s, rec_s, notes, stderr, scores))
        progress.advance("evaluate", 1, recommender=rec.name)
    progress.done("evaluate")
    return EvalReport(
        ks=ks,
        cohort_users={c: len(cohorts[c]) for c in COHORTS},
        split={
            "cutoff": split.cutoff, "train_interactions": len(train.interactions),
            "test_interactions": len(split.test), "users": train.n_users, "items": train.n_items,
        },
        results=results,
        notes=["baselines give cold users (no positive train engagement) their popularity list"],
    )


def _fmt(v: float | None, stderr: float | None = None) -> str:
    if v is None or np.isnan(v):
        return "n/a"
    if stderr is None or np.isnan(stderr):
        return f"{v:.4f}"
    return f"{v:.4f} ±{stderr:.3f}"


def _stderr(per_user: np.ndarray) -> float:
    """Standard error of the mean over users with a defined value; NaN below two users."""
    v = per_user[~np.isnan(per_user)]
    return float(v.std(ddof=1) / np.sqrt(v.size)) if v.size >= 2 else float("nan")


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return out + ["| " + " | ".join(r) + " |" for r in rows]


def _jsonable(x: Any) -> Any:
    """NaN -> None (JSON has no NaN), numpy scalars -> Python numbers."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and np.isnan(x):
        return None
    return x
