"""candgen's own retrieval in the evaluation table: the blend, each source alone, and the blend without
each source (its marginal contribution), all as `RecommenderLike`s that `evaluate` measures beside the
baselines.

    >>> engine = train_engine(split.train, config=cfg, workdir=tmp)          # doctest: +SKIP
    >>> recs = funnel_recommenders(engine, now=split.cutoff)
    >>> evaluate(split, baselines + recs, ks=(50, 100, 200))

Every recommender goes through the same `Engine` the service runs (user context, sources, blend with
its filters), at the split's cutoff time, with deadlines off so that a busy machine never changes the
figures.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from candgen.blend.filters import apply_filters
from candgen.config import Config
from candgen.data.dataset import Dataset
from candgen.engine import Engine
from candgen.types import NO_PROGRESS, BatchCandidates, Progress, Request

BLEND = "candgen"


def train_engine(train: Dataset, *, config: Config, workdir: str | Path, progress: Progress = NO_PROGRESS) -> Engine:
    """Train candgen on `train` into `workdir/art` and open it for offline evaluation."""
    from candgen.pipeline import train_artifacts

    art = Path(workdir) / "art"
    train_artifacts(train, art, config=config, progress=progress, force=True)
    return Engine.load(art, config=config, deadlines=False)


def _batch(rows: list[np.ndarray], scores: list[np.ndarray], k: int) -> BatchCandidates:
    ids = np.full((len(rows), k), -1, np.int64)
    sc = np.full((len(rows), k), -np.inf, np.float32)
    for r, (i, s) in enumerate(zip(rows, scores, strict=True)):
        n = min(k, len(i))
        ids[r, :n], sc[r, :n] = i[:n], s[:n]
    return BatchCandidates(ids, sc)


class BlendRecommender:
    """The whole engine (sources + blend), optionally without some sources."""

    def __init__(self, engine: Engine, *, now: float, without: tuple[str, ...] = (), name: str | None = None) -> None:
        self.now = now
        self.name = name or (BLEND if not without else f"{BLEND} - {'-'.join(without)}")
        if without:
            cfg = copy.deepcopy(engine.config)
            cfg.sources.mix = {s: w for s, w in cfg.sources.mix.items() if s not in without}
            cfg.sources.cold_user_mix = {s: w for s, w in cfg.sources.cold_user_mix.items() if s not in without}
            engine = Engine(engine.rt.with_config(cfg), deadlines=False)
        self.engine = engine

    def recommend(self, users: np.ndarray, k: int) -> BatchCandidates:
        e = self.engine
        items = e.state.catalog.items
        rows, scores = [], []
        for u in users:
            res = e.candidates(Request(user_id=e.dataset.users.id(int(u)), k=k, now=self.now))
            rows.append(items.lookup(res.item_ids))
            scores.append(np.asarray(res.scores, np.float32))
        return _batch(rows, scores, k)


class SourceRecommender:
    """One source alone, with the same filters (seen, hidden, deleted) the blend applies."""

    reports_scores = True  # `evaluate` samples its raw scores for the report's score distributions

    def __init__(self, engine: Engine, source: str, *, now: float) -> None:
        self.engine, self.source, self.now, self.name = engine, source, now, source

    def recommend(self, users: np.ndarray, k: int) -> BatchCandidates:
        e = self.engine
        src = e.sources[self.source]
        rows, scores = [], []
        for u in users:
            ctx = e.user_context(Request(user_id=e.dataset.users.id(int(u)), k=k), self.now)
            c = src.retrieve(ctx, k)
            (c,) = apply_filters([c], exclude=ctx.exclude, deleted=e.state.catalog.is_deleted)
            rows.append(np.asarray(c.ids, np.int64))
            scores.append(np.asarray(c.scores, np.float32))
        return _batch(rows, scores, k)


def funnel_recommenders(engine: Engine, *, now: float, ablations: bool = True) -> list[object]:
    """The blend, every source alone (the new-item source only fills exploration slots: not ranked alone),
    and (with `ablations`) the blend without each warm-mix source."""
    cfg = engine.config.sources
    names = [s for s in dict.fromkeys([*cfg.mix, *cfg.cold_user_mix, *engine.sources])
             if s in engine.sources and s != "new_items"]
    recs: list[object] = [BlendRecommender(engine, now=now)]
    recs += [SourceRecommender(engine, s, now=now) for s in names]
    if ablations:
        recs += [BlendRecommender(engine, now=now, without=(s,)) for s in cfg.mix if s in engine.sources]
    return recs
