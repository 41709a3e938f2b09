"""The one place that wires a request: user context → sources in parallel (deadlines) → blend → answer.

    >>> engine = Engine.open("art")                                          # doctest: +SKIP
    >>> res = engine.candidates(Request(user_id="u1", k=1000))
    >>> res.item_ids[:3], res.sources[:3], res.degraded, res.cache

Per request: catch up with the shared write log (one cheap read: writes made through any worker are
visible to the next request on every worker); look in the caches (L1 lists, L3 precomputed lists,
both re-filtered against the user's current exclusions); otherwise resolve the `UserContext` once,
pick the sources and the mix (the A/B variant's mix, or the cold-start mix for new users), run every
source with its own deadline inside the request deadline — a late or failing source is dropped and named
in `degraded` — and blend (filters, normalisation, quota or weighted merge with provenance, diversity,
exploration slots for new items, popular fallback). The ANN searches (collaborative, content), which
release the GIL, go to a thread pool; the cheap GIL-bound sources (trending, social, cold start, new items)
run on the request thread meanwhile, where a hand-off would cost as much as their work.

Writes (`ingest_events`, `add_items`, `delete_item`, `put_user`) are validated, appended to the
state store's log (durable before they return), applied to this worker's structures and invalidate
the caches they affect. `reload` swaps a whole new `Runtime` in atomically, replaying the log onto it.

Start-up and reload load the newest snapshot of these artifacts and replay only the log after it
(`candgen.snapshot`); a background job snapshots and trims the log (`state.snapshot_every_*`). A worker
that fell behind a trim reloads from the newest snapshot in the background, serving from what it has
meanwhile.

Thread-safety: every public method may be called from many threads at once.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from candgen.admission import AdmissionGate
from candgen.blend.experiments import choose_mix, experiment_from_config
from candgen.blend.filters import valid_mask
from candgen.blend.fusion import curve_shares
from candgen.blend.merge import Blended
from candgen.blend.pipeline import blend, rank_curves
from candgen.config import CONFIG_ENV, Config, serve_time_config
from candgen.engine_cache import CachedList, ListCaches
from candgen.errors import CandgenError, UnknownIdError
from candgen.online import CachedUserEncoder, QualityMonitor
from candgen.runtime import Runtime
from candgen.serve.protocol import CandidatesResult, EventIn, ItemIn, UserProfileIn
from candgen.sources.base import CandidateSource, UserContext, union
from candgen.types import Candidates, Request

log = logging.getLogger(__name__)

FALLBACK_REFRESH_S = 5.0  # the popular fallback list is recomputed at most this often
FUTURE_SLACK_S = 60.0  # event timestamps further ahead of the engine's clock are clamped to it


@dataclass(frozen=True, slots=True)
class Plan:
    """Which sources a request runs and how the blend weighs them."""

    mix: dict[str, float]
    variant: str
    cold: bool
    curves: dict[str, np.ndarray] | None = None  # the cohort's rank curves when its strategy uses them
    strategy: str = "quota"  # the cohort's blend strategy (`blend.cohort_strategy`, else `blend.strategy`)


CURVE_STRATEGIES = ("calibrated", "ordered")  # blend strategies that read the cohort's rank curves


def source_fetch_sizes(shares: dict[str, float], names: list[str], k: int, overfetch: float) -> dict[str, int]:
    """Candidates to ask each of `names` for: its share of k (`shares`, any scale) times `overfetch`, at least
    10 and at most k."""
    total = sum(shares.get(n, 0.0) for n in names) or 1.0
    return {n: min(k, max(10, math.ceil(k * shares.get(n, 0.0) / total * overfetch))) for n in names}


class Engine:
    """Serves candidates from one `Runtime` (artifacts + writes since), optionally shared through a store."""

    def __init__(self, runtime: Runtime, *, store: Any | None = None, deadlines: bool = True,
                 worker_id: str | None = None, config_for: Callable[[str | Path], Config] | None = None) -> None:
        self.rt = runtime
        # the config to run a reloaded artifacts directory with (None: its own manifest's)
        self.config_for = config_for
        self.store = store
        self.deadlines = deadlines  # False for offline work (recommend, evaluate): wait for every source
        self.worker_id = worker_id or f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._started = time.time()
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="candgen-source")
        self._fallback: tuple[float, str, Candidates] | None = None
        self._lock = threading.Lock()
        self.state_errors = 0
        self.follower: Any = None
        self.replayed: Any = None  # what the latest start or reload replayed (candgen.snapshot.Replayed)
        self.snapshots: Any = None  # the snapshot job (candgen.state.jobs.SnapshotJob)
        self.gap_recoveries = 0
        self._recovery: threading.Thread | None = None
        self._reload_lock = threading.RLock()  # one reload (admin or after a log gap) at a time
        self.caches = ListCaches(store, runtime.config.cache)
        self.spooler: Any = None  # events accepted during a state outage (candgen.state.spool.Spooler)
        serve = runtime.config.serve  # offline work (no deadlines) is never queued nor refused
        self.gate = AdmissionGate(serve.compute_slots if deadlines else 0, serve.request_deadline_ms / 1000.0)
        self.quality = QualityMonitor(serve.ann_recall_sample_every if store is not None else 0,
                                      max_share=serve.ann_recall_max_share)
        self.l2: Any = None
        self._configure(runtime)
        if store is not None:
            from candgen.state.spool import Spooler

            sc = runtime.config.state
            self.spooler = Spooler.open(store, runtime.art, enabled=sc.spool, directory=sc.spool_dir,
                                        max_records=sc.spool_max_records)
            self._replay(runtime)
            self._start_l3(runtime.config)
            self._start_snapshots(runtime.config)

    def _configure(self, rt: Runtime) -> None:
        self.experiment = experiment_from_config(rt.config.blend.experiment, known_sources=list(rt.sources))
        self.curves = rank_curves(rt.config.blend)
        self._shares: dict[tuple[bool, tuple[str, ...], int], dict[str, float]] = {}
        if self.store is not None and rt.config.cache.l2_ttl_s > 0:
            self.l2 = CachedUserEncoder(rt.model, self.store.cache("L2"), rt.config.cache.l2_ttl_s)
            rt.use_encoder(self.l2)

    def _start_l3(self, config: Config) -> None:
        """The background job that precomputes lists for the most active users every few minutes."""
        if config.cache.l3_refresh_s <= 0 or config.cache.l3_top_fraction <= 0 or self.store is None:
            return
        from candgen.state.jobs import L3Refresher

        self.caches.refresher = L3Refresher(store=self.store, compute=self._l3_list, config=config.cache).start()

    def _l3_list(self, user_id: str) -> bytes:
        """One user's precomputed list (default k), as the L3 cache stores it."""
        rt = self.rt
        k = min(1000, rt.config.serve.max_k)
        res, blended = self._compute(Request(user_id=user_id, k=k), rt, self.clock(), time.perf_counter())
        return self.caches.encode(rt, k, res.variant, blended)

    # -- opening ---------------------------------------------------------------------------------------

    @staticmethod
    def open(art: str | Path, *, state_url: str | None = None, config: Config | None = None,
             deadlines: bool = True, durable: bool = True,
             config_for: Callable[[str | Path], Config] | None = None) -> Engine:
        """Load artifacts and attach the state store (`None`: the embedded journal beside the artifacts;
        `durable=False`: no store at all, for offline work). With a store, the artifacts are loaded restored
        from their newest snapshot in it, and only the log after it is replayed. `config_for(art)`, when
        given, makes the config of these and of every reloaded artifacts (`config` is then ignored)."""
        if config_for is not None:
            config = config_for(art)
        if not durable:
            return Engine(Runtime.load(art, config=config), store=None, deadlines=deadlines, config_for=config_for)
        from candgen.artifacts import Manifest
        from candgen.snapshot import load_runtime
        from candgen.state import open_state

        cfg = config if config is not None else Config.from_dict(Manifest.read(art).config)
        store = open_state(state_url, art_dir=art, cache_config=cfg.cache)
        try:
            rt = load_runtime(art, store, config=config)
        except BaseException:
            store.close()
            raise
        return Engine(rt, store=store, deadlines=deadlines, config_for=config_for)

    @staticmethod
    def load(art: str | Path, *, config: Config | None = None, deadlines: bool = True) -> Engine:
        """Artifacts only, no state store: offline recommend and evaluation."""
        return Engine.open(art, config=config, deadlines=deadlines, durable=False)

    def close(self) -> None:
        if self.snapshots is not None:
            self.snapshots.stop()
        if self.spooler is not None:
            self.spooler.close()
        self.caches.stop()
        self.quality.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.store is not None:
            self.store.close()

    # -- what the HTTP layer reads ---------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return True

    @property
    def model_version(self) -> str:
        return self.rt.model_version

    # the current runtime's parts (a reload swaps them all at once; a request holds `rt` for its duration)
    @property
    def config(self) -> Config:
        return self.rt.config

    @property
    def manifest(self) -> Any:
        return self.rt.manifest

    @property
    def dataset(self) -> Any:
        return self.rt.dataset

    @property
    def state(self) -> Any:
        return self.rt.state

    @property
    def sources(self) -> Any:
        return self.rt.sources

    @property
    def now_default(self) -> float:
        return float(self.rt.manifest.data_end_time)

    def stats(self) -> dict[str, Any]:
        rt = self.rt
        out = {"index_size": len(rt.index), "items": rt.state.catalog.n_items, "users": len(rt.dataset.users),
               "state_errors": self.state_errors, **self.caches.stats(), **self.gate.stats()}
        if self.l2 is not None:
            out |= {"cache_L2_hits": self.l2.hits, "cache_L2_misses": self.l2.misses}
        if self.caches.refresher is not None:
            out |= {f"l3_{k}": v for k, v in self.caches.refresher.stats().items()}
        if self.follower is not None:
            out |= {"state_log_gaps": self.follower.gaps, "state_gap_recoveries": self.gap_recoveries}
        if self.replayed is not None:
            out |= {"state_replayed_records": self.replayed.records, "state_replay_seconds": self.replayed.seconds,
                    "state_replay_from_snapshot": int(self.replayed.snapshot is not None)}
        if self.snapshots is not None:
            out |= {f"snapshot_{k}": v for k, v in self.snapshots.stats().items()}
        if self.spooler is not None:
            out |= self.spooler.stats()
        return out

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

    # -- the shared log --------------------------------------------------------------------------------

    def _replay(self, rt: Runtime) -> None:
        """Start-up: the newest snapshot of these artifacts and the log after it (the whole log without one),
        then follow the log for the serving runtime."""
        from candgen.snapshot import load_runtime, replay_fresh
        from candgen.state.follow import LogFollower

        store = self.store
        assert store is not None
        worker = store.worker_id

        def follower_for(_: Runtime) -> LogFollower:  # applies to whatever runtime serves, across reloads
            return LogFollower(store, lambda r: self._apply(self.rt, r.kind, r.data, own=r.origin == worker),
                               on_gap=self._on_gap)

        def load_again() -> Runtime:  # a trim overtook the replay: start again from a fresh runtime
            if rt.art is None:
                raise CandgenError("the state log was trimmed during the start-up replay of a runtime that has no "
                                   "artifacts directory to load again")
            fresh = load_runtime(rt.art, store, config=rt.config)
            self._swap(fresh)
            return fresh

        _, self.follower, self.replayed = replay_fresh(load_again, store, follower_for, first=rt)

    def _start_snapshots(self, config: Config) -> None:
        """The background job that snapshots the log and trims it (one worker at a time: a lease)."""
        sc = config.state
        if self.store is None or self.rt.art is None or (sc.snapshot_every_records <= 0 and sc.snapshot_every_s <= 0):
            return
        from candgen.snapshot import artifacts_key, snapshot_due
        from candgen.state.jobs import SnapshotJob

        store, since = self.store, time.time()
        self.snapshots = SnapshotJob(
            due=lambda: snapshot_due(store, artifacts_key(self.rt), self.rt.config.state, since=since),
            take=lambda: self._take_snapshot(trim=True), check_s=sc.snapshot_check_s).start()

    def _take_snapshot(self, *, trim: bool) -> Any:
        from candgen.snapshot import take_snapshot_leased

        rt = self.rt
        if self.store is None or rt.art is None:
            raise CandgenError("nothing to snapshot: this engine has no state store or no artifacts directory")
        return take_snapshot_leased(rt.art, self.store, config=rt.config, trim=trim)

    def snapshot(self, *, trim: bool = True) -> Any:
        """Snapshot the shared log now and trim it (the admin command): a `candgen.snapshot.SnapshotResult`.
        Raises `EngineOverloadedError` when another worker is taking one."""
        from candgen.serve.protocol import EngineOverloadedError

        res = self._take_snapshot(trim=trim)
        if res is None:
            raise EngineOverloadedError("another worker is taking a snapshot of the state log; retry later")
        return res

    def _on_gap(self, gap: Any) -> None:
        """This worker fell behind a trim of the log (called by the follower, under its lock): reload from the
        newest snapshot in the background; requests are served from what this worker has meanwhile."""
        with self._lock:
            if self._recovery is not None and self._recovery.is_alive():
                return
            self._recovery = threading.Thread(target=self._recover, name="candgen-log-gap", daemon=True)
            self._recovery.start()

    def _recover(self) -> None:
        with self._reload_lock:
            rt = self.rt
            if self.follower.gap is None:  # a reload meanwhile already caught up
                return
            if rt.art is None:
                log.error("fell behind a trim of the state log, and the runtime has no artifacts directory to "
                          "reload from: the trimmed records are missing here")
                return
            try:
                self._reload_from(rt.art, config=rt.config, clear_caches=False)
                self.gap_recoveries += 1
            except Exception:
                log.exception("could not reload from the newest snapshot after a log gap; trying again on the "
                              "next request")

    def catch_up(self) -> None:
        """Apply what other workers wrote since our cursor: one cheap read when nothing is new. A failing
        store is counted (`state_errors`); the request is served from what this worker has."""
        if self.store is not None and self.follower.catch_up() < 0:
            self.state_errors += 1

    def _apply(self, rt: Runtime, kind: str, data: dict[str, Any], *, own: bool) -> None:
        rt.apply(kind, data)
        self.caches.after_write(rt, kind, data, own=own)

    def _write(self, kind: str, make: Callable[[], list[dict[str, Any]]]) -> int:
        """Catch up with the shared log, build (and validate) the records with `make`, append them durably,
        then apply them here; other workers catch up from the log. Catching up first means validation sees
        what other workers wrote (an item added there, a delete made there) and every worker applies the
        records in the same order. Returns how many records were written."""
        self.catch_up()
        datas = make()
        if self.store is None:
            rt = self.rt
            for d in datas:
                self._apply(rt, kind, d, own=True)
            return len(datas)
        from candgen.serve.protocol import EngineOverloadedError
        from candgen.state.base import Record, StateUnavailable
        from candgen.state.spool import SpoolFull

        try:
            self.follower.write([Record(kind=kind, data=d) for d in datas])
        except StateUnavailable as e:  # nothing was written: spool events, else the client may retry (503)
            self.state_errors += 1
            if kind == "event" and self.spooler is not None:
                try:
                    return int(self.spooler.accept([Record(kind=kind, data=d) for d in datas],
                                                   self.follower.apply_local))
                except SpoolFull as full:
                    raise EngineOverloadedError(str(full)) from None
            raise EngineOverloadedError(f"state backend unavailable, nothing was written: {e}") from None
        return len(datas)

    # -- writes ----------------------------------------------------------------------------------------

    def ingest_events(self, events: list[EventIn]) -> int:
        def make() -> list[dict[str, Any]]:
            now = self.clock()
            rt = self.rt
            datas = []
            for e in events:
                d = {"user_id": e.user_id, "item_id": e.item_id, "event": e.event,
                     "timestamp": now if e.timestamp is None else min(float(e.timestamp), now + FUTURE_SLACK_S),
                     "value": e.value}
                rt.check_event(d)
                if rt.state.catalog.items.get(e.item_id) < 0:
                    raise UnknownIdError(f"unknown item {e.item_id!r} in an event; add it with POST /v1/items first")
                datas.append(d)
            return datas

        return self._write("event", make)

    def add_items(self, items: list[ItemIn]) -> int:
        def make() -> list[dict[str, Any]]:
            now = self.clock()
            return [{"item_id": i.item_id, "tags": list(i.tags), "category": i.category, "creator_id": i.creator_id,
                     "title": i.title, "created_at": now if i.created_at is None else float(i.created_at)}
                    for i in items]

        return self._write("item", make)

    def delete_item(self, item_id: str) -> None:
        def make() -> list[dict[str, Any]]:
            catalog = self.rt.state.catalog
            item = catalog.items.get(item_id)
            if item < 0 or bool(catalog.is_deleted[item]):
                raise UnknownIdError(f"unknown item {item_id!r}")
            return [{"item_id": item_id}]

        self._write("delete", make)

    def put_user(self, user_id: str, profile: UserProfileIn) -> None:
        self._write("user", lambda: [{"user_id": user_id, "attributes": dict(profile.attributes),
                                      "interests": list(profile.interests), "friends": list(profile.friends)}])

    def reload(self, art_path: str | None = None) -> str:
        """Load new artifacts off the request path, replay the log onto them (from their newest snapshot), swap
        atomically."""
        art = art_path or self.rt.art
        if art is None:
            raise CandgenError("no artifacts directory to reload from")
        config = self.config_for(art) if self.config_for is not None else None
        return self._reload_from(art, config=config, clear_caches=True)

    def _reload_from(self, art: str | Path, *, config: Config | None, clear_caches: bool) -> str:
        with self._reload_lock:
            if self.store is None:
                rt = Runtime.load(art, config=config)
                self._swap(rt)
            else:
                from candgen.snapshot import load_runtime, replay_fresh
                from candgen.state.follow import LogFollower

                store, worker = self.store, self.store.worker_id
                if self.spooler is not None:  # spooled events into the log first, or the replay misses them
                    self.spooler.flush_now()

                def load() -> Runtime:
                    return load_runtime(art, store, config=config)

                def follower_for(target: Runtime) -> LogFollower:
                    return LogFollower(store, lambda r: self._apply(target, r.kind, r.data, own=r.origin == worker))

                # snapshot + log onto the new runtime, off the request path
                rt, temp, replayed = replay_fresh(load, store, follower_for)
                with self.follower.lock:  # no catch-up meanwhile: the tail, then the swap
                    temp.replay()
                    self._swap(rt)
                    self.follower.cursor = temp.cursor
                self.replayed = replayed
            if clear_caches:
                self.caches.clear()
            return rt.model_version

    def _swap(self, rt: Runtime) -> None:
        self._configure(rt)
        with self._lock:
            self.rt = rt
            self._fallback = None

    # -- the request path ------------------------------------------------------------------------------

    def user_context(self, req: Request, now: float, rt: Runtime | None = None) -> UserContext:
        """Everything the sources read about this user, resolved once."""
        rt = rt or self.rt
        state = rt.state
        u = rt.user_index(req.user_id)
        ctx = UserContext(user_id=req.user_id, user=u, now=now, context=dict(req.context))
        ctx.attributes = rt.user_attributes(req.user_id, u)
        ctx.interests = rt.user_interests(req.user_id, u)
        if u >= 0:
            ctx.history_items, ctx.history_times, ctx.history_weights = state.activity.history(u)
            ctx.n_engagements = state.activity.n_engagements(u)
            ctx.friends = state.social.friends(u)[0]
            ctx.exclude = state.activity.exclude(u)
        if req.exclude:
            extra = state.catalog.items.lookup(req.exclude)
            extra = extra[extra >= 0]
            if len(extra):
                ctx.exclude = union(ctx.exclude, extra)
        return ctx

    def plan(self, ctx: UserContext, rt: Runtime) -> Plan:
        cold_src = rt.sources.get("cold_start")
        cold = bool(cold_src is not None and cold_src.is_new(ctx))  # type: ignore[attr-defined]
        bc = rt.config.blend
        if cold:
            mix = dict(rt.config.sources.cold_user_mix)
            strategy = bc.cohort_strategy.get("cold", bc.strategy)
            return Plan({s: w for s, w in mix.items() if s in rt.sources and w > 0}, "", True,
                        self.curves.get("cold") if strategy in CURVE_STRATEGIES else None, strategy)
        variant, mix = choose_mix(ctx.user_id, self.experiment, rt.config.sources.mix)
        # a variant with a mix of its own is blended by that mix (quota); the others by the warm strategy
        own_mix = self.experiment is not None and variant in self.experiment.mixes
        strategy = "quota" if own_mix else bc.cohort_strategy.get("warm", bc.strategy)
        return Plan({s: w for s, w in mix.items() if s in rt.sources and w > 0}, variant, False,
                    self.curves.get("warm") if strategy in CURVE_STRATEGIES else None, strategy)

    def fallback(self, rt: Runtime, now: float) -> Candidates:
        """Globally popular items (cached a few seconds): what fills a list that the sources left short."""
        with self._lock:
            f = self._fallback
            if f is None or f[1] != rt.model_version or not (0 <= now - f[0] <= FALLBACK_REFRESH_S):
                n = min(rt.config.serve.max_k * 2, rt.state.catalog.n_items)
                top = rt.state.popularity.top(n, {}, now=now)
                f = self._fallback = (now, rt.model_version, Candidates(top.ids, top.scores, "popular"))
            return f[2]

    def _retrieve(self, source: CandidateSource, ctx: UserContext, k: int,
                  started: dict[str, float]) -> tuple[Candidates, float]:
        t = started[source.name] = time.perf_counter()
        return source.retrieve(ctx, k), time.perf_counter() - t

    @staticmethod
    def _wait(f: Future[tuple[Candidates, float]], started: dict[str, float], name: str, deadline: float,
              request_end: float) -> tuple[Candidates, float]:
        """A source's result, waiting at most `deadline` from when its task began (time queued behind other
        requests' tasks does not count against it) and never past the request's own deadline. A task that
        finished while this thread ran the inline sources is judged by its own run time."""
        while True:
            t0 = started.get(name)
            if t0 is not None and f.done():
                cands, took = f.result()
                if took > deadline or t0 + took > request_end:
                    raise FutureTimeout
                return cands, took
            end = request_end if t0 is None else min(t0 + deadline, request_end)
            remaining = end - time.perf_counter()
            if remaining <= 0:
                raise FutureTimeout
            try:  # while still queued, look again soon to learn when it starts
                return f.result(timeout=remaining if t0 is not None else min(remaining, 0.002))
            except FutureTimeout:
                if t0 is not None:  # it was running and missed its own deadline
                    raise

    def fetch_sizes(self, rt: Runtime, plan: Plan, k: int) -> dict[str, int]:
        """How many candidates to ask each source for: its share of k times `sources.overfetch` (so that a
        source's unused quota can flow to the others and filters have slack), capped at k; the new-item
        source only fills the exploration slots. With rank curves, a source's share is the number of slots
        its curve is expected to win in a fused top-k (`curve_shares`)."""
        shares = dict(plan.mix)
        if plan.curves and plan.strategy == "calibrated":
            key = (plan.cold, tuple(plan.mix), k)
            cached = self._shares.get(key)
            if cached is None:
                if len(self._shares) > 1000:
                    self._shares.clear()
                cached = self._shares[key] = curve_shares(plan.curves, list(plan.mix), k)
            shares = cached
        sizes = source_fetch_sizes(shares, list(plan.mix), k, rt.config.sources.overfetch)
        frac = rt.config.blend.exploration_fraction
        if frac > 0 and "new_items" in rt.sources:
            sizes["new_items"] = max(1, math.ceil(k * frac * 2))
        return sizes

    def run_sources(
        self, rt: Runtime, fetch: dict[str, int], ctx: UserContext, t_start: float,
    ) -> tuple[list[Candidates], list[str], dict[str, float]]:
        """Every source of `fetch` (name → how many); those that fail or miss their deadline are named in
        `degraded`, and the lists come back in `fetch` order.

        The sources that release the GIL (ANN searches) are handed to the pool first; the cheap GIL-bound ones
        (`CandidateSource.inline`) then run on this thread meanwhile: a hand-off would cost about as much as
        their work, and on the pool they would queue behind other requests' tasks. An inline source cannot be
        abandoned half-way, so its deadline is checked when it returns (a late result is dropped all the same),
        and one whose turn comes after the request's deadline is not started."""
        deadlines = rt.config.sources.deadline_ms
        request_end = t_start + rt.config.serve.request_deadline_ms / 1000.0
        started: dict[str, float] = {}  # when each pooled source's task began (it may wait in the pool's queue)
        futures: dict[str, Future[tuple[Candidates, float]]] = {
            n: self._pool.submit(self._retrieve, rt.sources[n], ctx, m, started)
            for n, m in fetch.items() if not rt.sources[n].inline
        }
        got: dict[str, tuple[Candidates, float]] = {}
        failed: set[str] = set()
        for n, m in fetch.items():
            if n not in futures:
                self._run_inline(n, rt.sources[n], ctx, m, deadlines.get(n, 50.0) / 1000.0, request_end, got, failed)
        for n, f in futures.items():
            try:
                got[n] = f.result() if not self.deadlines else self._wait(
                    f, started, rt.sources[n].name, deadlines.get(n, 50.0) / 1000.0, request_end)
            except FutureTimeout:
                f.cancel()
                failed.add(n)
            except Exception:  # a failing source never fails the request
                log.exception("source %s failed for user %s", n, ctx.user_id)
                failed.add(n)
        lists = [got[n][0] for n in fetch if n in got]
        timings = {n: got[n][1] for n in fetch if n in got}
        return lists, [n for n in fetch if n in failed], timings

    def _run_inline(self, name: str, source: CandidateSource, ctx: UserContext, k: int, deadline: float,
                    request_end: float, got: dict[str, tuple[Candidates, float]], failed: set[str]) -> None:
        """One inline source on this thread: its list into `got`, or `name` into `failed` when it raises, overran
        its deadline or would start after the request's deadline (deadlines off: only when it raises)."""
        t = time.perf_counter()
        if self.deadlines and t >= request_end:
            failed.add(name)
            return
        try:
            cands = source.retrieve(ctx, k)
        except Exception:  # a failing source never fails the request
            log.exception("source %s failed for user %s", name, ctx.user_id)
            failed.add(name)
            return
        took = time.perf_counter() - t
        if self.deadlines and (took > deadline or t + took > request_end):
            failed.add(name)
            return
        got[name] = (cands, took)

    def candidates(self, req: Request) -> CandidatesResult:
        """Personalised candidates for one request; unknown users take the cold-start path."""
        t0 = time.perf_counter()
        if req.k < 1:
            raise CandgenError(f"k must be >= 1, got {req.k}")
        self.catch_up()
        rt = self.rt  # one consistent runtime for the whole request, even if a reload swaps it meanwhile
        now = float(req.now) if req.now is not None else self.clock()
        ctx = self.user_context(req, now, rt)
        plan = self.plan(ctx, rt)
        t_ctx = time.perf_counter()
        variant = plan.variant or ("cold" if plan.cold else "default")
        if self.caches.refresher is not None:
            self.caches.refresher.note_activity(req.user_id)
        if not req.explain:
            hit = self.caches.lookup(rt, req.user_id, req.k, variant)
            if hit is not None:
                res = self._from_cache(rt, hit, ctx, req.k)
                if res is not None:
                    res.timings = {"context": t_ctx - t0, "cache": time.perf_counter() - t_ctx}
                    return res
        l2_hits = self.l2.hits if self.l2 is not None else 0
        with self.gate.admit():  # EngineOverloadedError (503) when the queue is deeper than the deadline allows
            res, blended = self._compute(req, rt, now, t0, ctx=ctx, plan=plan)
        if not req.explain and not res.degraded:
            self.caches.store(rt, req.user_id, req.k, res.variant, blended)
        if self.l2 is not None and self.l2.hits > l2_hits:
            res.cache = "L2"  # the list was computed, the user embedding came from L2 (approximate under load)
        if self.quality.sampled():
            self.quality.observe(rt, ctx, rt.state.catalog.items.lookup(res.item_ids), req.k)
        res.quality = self.quality.take()
        return res

    def _compute(self, req: Request, rt: Runtime, now: float, t0: float, *, ctx: UserContext | None = None,
                 plan: Plan | None = None) -> tuple[CandidatesResult, Blended]:
        """The uncached request path: sources in parallel, then the blend."""
        ctx = ctx if ctx is not None else self.user_context(req, now, rt)
        plan = plan if plan is not None else self.plan(ctx, rt)
        variant = plan.variant or ("cold" if plan.cold else "default")
        t_ctx = time.perf_counter()
        fetch = self.fetch_sizes(rt, plan, req.k)
        explores = "new_items" in fetch
        lists, degraded, timings = self.run_sources(rt, fetch, ctx, t0)
        t_src = time.perf_counter()
        explore = next((c for c in lists if c.source == "new_items"), None) if explores else None
        lists = [c for c in lists if c.source != "new_items"]
        catalog = rt.state.catalog
        blended = blend(
            lists, k=req.k, config=rt.config.blend, mix=plan.mix, exclude=ctx.exclude,
            deleted=catalog.is_deleted,
            blocked_creators=rt.state.activity.blocked_creators(ctx.user) if ctx.user >= 0 else None,
            item_creator=catalog.creator, item_category=catalog.category, explore=explore,
            item_vectors=rt.vector_lookup(np.arange(catalog.n_items)) if rt.config.blend.mmr_lambda > 0 else None,
            fallback=self.fallback(rt, now), curves=plan.curves, strategy=plan.strategy,
        )
        t_blend = time.perf_counter()
        res = self._result(rt, blended, explain=req.explain, variant=variant)
        timings.update(context=t_ctx - t0, sources=t_src - t_ctx, blend=t_blend - t_src)
        res.degraded = degraded
        res.source_counts = {c.source: len(c) for c in lists}
        res.timings = timings
        return res, blended

    def _from_cache(self, rt: Runtime, hit: CachedList, ctx: UserContext, k: int) -> CandidatesResult | None:
        """A cached list, re-filtered against what the user saw or hid since and deleted items; None when
        too little of it is left."""
        b = hit.blended
        ok = valid_mask(b.ids, exclude=ctx.exclude, deleted=rt.state.catalog.is_deleted)
        keep = np.flatnonzero(ok)[:k]
        if len(keep) < min(k, len(b.ids)):
            return None
        res = self._result(rt, b.take(keep), explain=False, variant=hit.variant)
        res.cache = hit.level
        return res

    def _result(self, rt: Runtime, blended: Blended, *, explain: bool, variant: str) -> CandidatesResult:
        ids = rt.state.catalog.item_ids(blended.ids)
        groups = provenance_groups(blended)
        sources = provenance_lists(blended, groups)
        expl: dict[str, dict[str, float]] | None = None
        if explain:
            expl = {}
            for i, item in enumerate(ids):
                expl[item] = {name: float(v[i]) for name, v in blended.source_scores.items()
                              if i < len(v) and not np.isnan(v[i])}
        return CandidatesResult(item_ids=ids, scores=blended.scores, sources=sources, explain=expl,
                                variant=variant, model_version=rt.model_version, source_groups=groups)

    def similar(self, item_id: str, k: int) -> CandidatesResult:
        """Item-to-item candidates for an item of the catalog."""
        self.catch_up()
        rt = self.rt
        catalog = rt.state.catalog
        item = catalog.items.get(item_id)
        if item < 0 or bool(catalog.is_deleted[item]):
            raise UnknownIdError(f"unknown item {item_id!r}")
        cands = rt.sources["content"].similar_items(item, k)  # type: ignore[attr-defined]
        keep = catalog.live(cands.ids) & (cands.ids != item)
        ids, scores = cands.ids[keep], cands.scores[keep]
        return CandidatesResult(item_ids=catalog.item_ids(ids), scores=scores, sources=[["content"]] * len(ids),
                                model_version=rt.model_version)


def provenance_groups(blended: Blended) -> tuple[list[list[str]], np.ndarray]:
    """The distinct lists of source names in `blended` (one per distinct source mask) and each candidate's index
    into them."""
    if not len(blended):
        return [], np.zeros(0, dtype=np.int64)
    masks, inverse = np.unique(blended.source_mask, return_inverse=True)
    names = blended.source_names
    groups = [[name for j, name in enumerate(names) if m >> j & 1] for m in masks.tolist()]
    return groups, inverse.reshape(-1)


def provenance_lists(blended: Blended, groups: tuple[list[list[str]], np.ndarray] | None = None) -> list[list[str]]:
    """The names of the sources that found each candidate: one list per distinct source mask, shared by every
    candidate with that mask (read-only), spread by one take() rather than a list built per candidate.
    `groups`: `provenance_groups(blended)` when the caller has it already."""
    distinct, index = provenance_groups(blended) if groups is None else groups
    if not len(index):
        return []
    decoded = np.empty(len(distinct), object)
    for i, group in enumerate(distinct):  # one by one: numpy would make equal-length lists a 2-d array
        decoded[i] = group
    out: list[list[str]] = decoded.take(index).tolist()
    return out


def open_engine(art: str, state_url: str | None = None) -> Engine:
    """What `candgen serve` opens in every worker: artifacts plus the state store (journal or Redis), run with
    the artifacts' config and, over it, the [serve] settings that the serve-time config file (`CONFIG_ENV`)
    and `CANDGEN_SERVE__<FIELD>` variables name (`candgen.config.serve_time_config`), also after a reload."""
    from candgen.artifacts import Manifest

    path = os.environ.get(CONFIG_ENV) or None

    def config_for(directory: str | Path) -> Config:
        return serve_time_config(Manifest.read(directory).config, path)

    return Engine.open(art, state_url=state_url, config_for=config_for)
