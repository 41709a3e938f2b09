"""The one place that wires a request: user context → sources in parallel (deadlines) → blend → answer.

    >>> engine = Engine.load("art")                                          # doctest: +SKIP
    >>> res = engine.candidates(Request(user_id="u1", k=1000))
    >>> res.item_ids[:3], res.sources[:3], res.degraded

Per request: resolve the `UserContext` once (history, attributes, interests, friends, exclusions);
pick the sources and the mix (warm users: the configured mix, with the A/B variant's mix when an
experiment runs; new users: the cold-start mix); run every source on a thread pool, each with its
own deadline inside the request deadline — a late or failing source is dropped and named in
`degraded`; blend (filters, normalisation, quota or weighted merge with provenance, diversity,
exploration slots for new items, popular fallback). numpy and FAISS release the GIL, so the sources
really overlap.

Thread-safety: `candidates` and `similar` may be called from many threads at once; the structures
they read lock internally (see `candgen.sources`).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from candgen.artifacts import Manifest, load_dataset_snapshot
from candgen.blend.experiments import choose_mix, experiment_from_config
from candgen.blend.merge import Blended
from candgen.blend.pipeline import blend
from candgen.config import Config
from candgen.data.dataset import Dataset
from candgen.errors import CandgenError, UnknownIdError
from candgen.index.base import VectorIndex
from candgen.serve.protocol import CandidatesResult
from candgen.sources.base import CandidateSource, UserContext
from candgen.sources.build import SourceSet, SourceState, load_state, make_sources
from candgen.types import Candidates, Request

log = logging.getLogger(__name__)

WARM_SOURCES = ("collaborative", "content", "trending", "social")
FALLBACK_REFRESH_S = 5.0  # the popular fallback list is recomputed at most this often


@dataclass(frozen=True, slots=True)
class Plan:
    """Which sources a request runs and how the blend weighs them."""

    mix: dict[str, float]
    variant: str
    cold: bool


class Engine:
    """Serves candidates from one artifacts directory (model, item vectors, index, source state)."""

    def __init__(
        self, *, config: Config, manifest: Manifest, dataset: Dataset, model: Any, item_vectors: np.ndarray,
        index: VectorIndex, state: SourceState, sources: SourceSet, art: Path | None = None,
        deadlines: bool = True,
    ) -> None:
        self.config, self.manifest, self.dataset, self.model = config, manifest, dataset, model
        self.item_vectors, self.index, self.state, self.sources, self.art = item_vectors, index, state, sources, art
        self.experiment = experiment_from_config(config.blend.experiment, known_sources=list(sources))
        self.deadlines = deadlines  # False for offline work (recommend, evaluate): wait for every source
        self.now_default = float(manifest.data_end_time)
        self._started = time.time()
        self._pool = ThreadPoolExecutor(max_workers=max(2, len(sources)), thread_name_prefix="candgen-source")
        self._fallback: tuple[float, Candidates] | None = None
        self._fallback_lock = threading.Lock()

    # -- loading -------------------------------------------------------------------------------------

    @staticmethod
    def load(art: str | Path, *, config: Config | None = None, mmap: bool = True, deadlines: bool = True) -> Engine:
        """Open an artifacts directory written by `candgen train` (memory-mapped vectors and index)."""
        from candgen.index.registry import load_index
        from candgen.model.export import TwoTowerModel

        art = Path(art)
        manifest = Manifest.read(art)
        cfg = config if config is not None else Config.from_dict(manifest.config)
        try:
            dataset = load_dataset_snapshot(art / "dataset")
            model = TwoTowerModel.load(art / "model")
            vectors = np.load(art / "item_embeddings.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
            index = load_index(art / "index", mmap=mmap)
            state = load_state(art / "state")
        except FileNotFoundError as e:
            raise CandgenError(f"{art} is incomplete: {e}") from None
        # items added while serving extend the vectors: keep a growable in-memory copy only when needed
        sources = make_sources(state, config=cfg, model=model, index=index, item_vectors=vectors)
        return Engine(config=cfg, manifest=manifest, dataset=dataset, model=model, item_vectors=vectors,
                      index=index, state=state, sources=sources, art=art, deadlines=deadlines)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- properties the HTTP layer reads -------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return True

    @property
    def model_version(self) -> str:
        return self.manifest.model_version

    def stats(self) -> dict[str, Any]:
        return {"index_size": len(self.index), "items": self.state.catalog.n_items, "users": len(self.dataset.users)}

    # -- the request path ----------------------------------------------------------------------------

    def user_context(self, req: Request, now: float) -> UserContext:
        """Everything the sources read about this user, resolved once."""
        ds, state = self.dataset, self.state
        u = ds.users.get(req.user_id)
        ctx = UserContext(user_id=req.user_id, user=u, now=now, context=dict(req.context))
        if u >= 0:
            ctx.history_items, ctx.history_times, ctx.history_weights = state.activity.history(u)
            ctx.n_engagements = state.activity.n_engagements(u)
            ctx.attributes = {
                name: col.vocab.id(int(col.codes[u]))
                for name, col in ds.user_attributes.items() if u < len(col.codes) and col.codes[u] >= 0
            }
            if u < len(ds.user_interests):
                ctx.interests = ds.tags.ids(ds.user_interests.row(u))
            ctx.friends = state.social.friends(u)[0]
            ctx.exclude = state.activity.exclude(u)
        if req.exclude:
            extra = state.catalog.items.lookup(req.exclude)
            extra = extra[extra >= 0]
            if len(extra):
                ctx.exclude = np.union1d(ctx.exclude, extra)
        return ctx

    def plan(self, ctx: UserContext) -> Plan:
        cold_src = self.sources.get("cold_start")
        cold = bool(cold_src is not None and cold_src.is_new(ctx))  # type: ignore[attr-defined]
        if cold:
            mix = dict(self.config.sources.cold_user_mix)
            return Plan({s: w for s, w in mix.items() if s in self.sources and w > 0}, "", True)
        variant, mix = choose_mix(ctx.user_id, self.experiment, self.config.sources.mix)
        return Plan({s: w for s, w in mix.items() if s in self.sources and w > 0}, variant, False)

    def fallback(self, now: float) -> Candidates:
        """Globally popular items (cached a few seconds): what fills a list that the sources left short."""
        with self._fallback_lock:
            if self._fallback is None or now - self._fallback[0] > FALLBACK_REFRESH_S or now < self._fallback[0]:
                n = min(self.config.serve.max_k * 2, self.state.catalog.n_items)
                top = self.state.popularity.top(n, {}, now=now)
                self._fallback = (now, Candidates(top.ids, top.scores, "popular"))
            return self._fallback[1]

    def _retrieve(self, source: CandidateSource, ctx: UserContext, k: int) -> tuple[Candidates, float]:
        t = time.perf_counter()
        return source.retrieve(ctx, k), time.perf_counter() - t

    def run_sources(
        self, names: list[str], ctx: UserContext, k: int, t_start: float,
    ) -> tuple[list[Candidates], list[str], dict[str, float]]:
        """Every named source in parallel; those that fail or miss their deadline are named in `degraded`."""
        deadlines = self.config.sources.deadline_ms
        request_end = t_start + self.config.serve.request_deadline_ms / 1000.0
        futures: dict[str, Future[tuple[Candidates, float]]] = {
            n: self._pool.submit(self._retrieve, self.sources[n], ctx, k) for n in names
        }
        lists: list[Candidates] = []
        degraded: list[str] = []
        timings: dict[str, float] = {}
        for n, f in futures.items():
            end = min(t_start + deadlines.get(n, 50.0) / 1000.0, request_end)
            try:
                cands, took = f.result(timeout=max(0.0, end - time.perf_counter()) if self.deadlines else None)
            except FutureTimeout:
                f.cancel()
                degraded.append(n)
                continue
            except Exception:  # a failing source never fails the request
                log.exception("source %s failed for user %s", n, ctx.user_id)
                degraded.append(n)
                continue
            lists.append(cands)
            timings[n] = took
        return lists, degraded, timings

    def candidates(self, req: Request) -> CandidatesResult:
        """Personalised candidates for one request; unknown users take the cold-start path."""
        t0 = time.perf_counter()
        if req.k < 1:
            raise CandgenError(f"k must be >= 1, got {req.k}")
        now = float(req.now) if req.now is not None else self.clock()
        ctx = self.user_context(req, now)
        plan = self.plan(ctx)
        t_ctx = time.perf_counter()
        names = list(plan.mix)
        explores = self.config.blend.exploration_fraction > 0 and "new_items" in self.sources
        explore_name = "new_items" if explores else None
        if explore_name:
            names.append(explore_name)
        # each source is asked for k: unused quota of a short source flows to the others
        lists, degraded, timings = self.run_sources(names, ctx, req.k, t0)
        t_src = time.perf_counter()
        explore = next((c for c in lists if c.source == explore_name), None) if explore_name else None
        lists = [c for c in lists if c.source != explore_name]
        catalog = self.state.catalog
        blended = blend(
            lists, k=req.k, config=self.config.blend, mix=plan.mix, exclude=ctx.exclude,
            deleted=catalog.is_deleted, blocked_creators=self.state.activity.blocked_creators(ctx.user)
            if ctx.user >= 0 else None,
            item_creator=catalog.creator, item_category=catalog.category, explore=explore,
            item_vectors=self.item_vectors if self.config.blend.mmr_lambda > 0 else None,
            fallback=self.fallback(now),
        )
        t_blend = time.perf_counter()
        timings.update(context=t_ctx - t0, sources=t_src - t_ctx, blend=t_blend - t_src)
        res = self._result(blended, explain=req.explain, variant=plan.variant or ("cold" if plan.cold else "default"))
        res.degraded = degraded
        res.source_counts = {c.source: len(c) for c in lists}
        res.timings = timings
        return res

    def _result(self, blended: Blended, *, explain: bool, variant: str) -> CandidatesResult:
        ids = self.state.catalog.items.ids(blended.ids)
        sources = [list(s) for s in blended.source_lists()]
        expl: dict[str, dict[str, float]] | None = None
        if explain:
            expl = {}
            for i, item in enumerate(ids):
                expl[item] = {
                    name: float(v[i]) for name, v in blended.source_scores.items() if i < len(v) and not np.isnan(v[i])
                }
        return CandidatesResult(
            item_ids=ids, scores=blended.scores, sources=sources, explain=expl, variant=variant,
            model_version=self.model_version,
        )

    def similar(self, item_id: str, k: int) -> CandidatesResult:
        """Item-to-item candidates for an item of the catalog."""
        catalog = self.state.catalog
        item = catalog.items.get(item_id)
        if item < 0 or bool(catalog.is_deleted[item]):
            raise UnknownIdError(f"unknown item {item_id!r}")
        content = self.sources["content"]
        cands = content.similar_items(item, k)  # type: ignore[attr-defined]
        keep = ~catalog.is_deleted[cands.ids] & (cands.ids != item)
        ids, scores = cands.ids[keep], cands.scores[keep]
        return CandidatesResult(
            item_ids=catalog.items.ids(ids), scores=scores, sources=[["content"]] * len(ids),
            model_version=self.model_version,
        )

    def clock(self) -> float:
        """'now' for requests without one.

        Artifacts trained on recent data run on the wall clock. Artifacts whose data ended more than a day
        before the engine started (a historical data set, a synthetic world) run on a replay clock: the
        data's end time plus the time elapsed since the engine started, so that windows ("the last 72 h")
        and decay see the same recent past that the training data ended with."""
        wall = time.time()
        if self.now_default < self._started - 86400.0:
            return self.now_default + (wall - self._started)
        return max(wall, self.now_default)


def open_engine(art: str, state_url: str | None = None) -> Engine:
    """What `candgen serve` opens in every worker."""
    if state_url not in (None, "", "memory://"):
        raise CandgenError(f"state URL {state_url!r} is not supported yet; use the embedded default")
    return Engine.load(art)
