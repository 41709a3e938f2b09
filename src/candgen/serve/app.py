"""The HTTP API of candgen (DESIGN §4) as a FastAPI app built around any `Engine`.

`create_app(engine or engine_factory, config=ServeConfig())` returns the app. With a factory the engine
is built in a background thread at startup, so `/healthz` answers at once and `/readyz` (and every
engine endpoint) answers 503 until the engine is ready. Writes need `Authorization: Bearer <key>` when
an API key is configured (default: the CANDGEN_API_KEY environment variable); reads never do.

Why the engine is called in a worker thread (`ServeConfig.engine_in_threadpool`, default True): the
request path is synchronous numpy/FAISS work of ~1-5 ms. Called directly from `async def` it blocks the
event loop: accepting, parsing and /healthz queue behind it, and one worker serves one engine call at a
time even though FAISS releases the GIL. benchmarks/http_overhead.py measured, with an engine taking
3 ms and 8 concurrent clients on 1 worker: 187-216 QPS (threadpool) vs 86-151 QPS (direct), /healthz
p50 11-15 ms vs 59-68 ms meanwhile. The hop costs ~0.05-0.1 ms of server time and CPU per request on
that busy machine (load ~10 on 2 cores); benchmarks/answer_path.py puts it at ~10-40 µs of CPU under
uvloop, the same as a leaner SimpleQueue + `call_soon_threadsafe` hand-off within the noise, so the
executor stays. `reload` always runs in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar

import anyio.to_thread
import orjson
from fastapi import Depends, FastAPI, Path, Query, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError
from starlette.responses import Response

from candgen import __version__
from candgen.config import ServeConfig
from candgen.errors import CandgenError
from candgen.serve import schemas as s
from candgen.serve.attribution import EngagementAttribution
from candgen.serve.encode import answer_json
from candgen.serve.errors import ApiError, error_response, handled, install_error_handlers
from candgen.serve.metrics import ServeMetrics
from candgen.serve.middleware import T0_KEY, FastHandler, Gate, header
from candgen.serve.protocol import Engine, EventIn, ItemIn, UserProfileIn
from candgen.types import Request as EngineRequest

log = logging.getLogger("candgen.serve")
T = TypeVar("T")

API_KEY_ENV = "CANDGEN_API_KEY"
LOAD_BEFORE_SERVING_ENV = "CANDGEN_LOAD_BEFORE_SERVING"  # set by the runner when workers > 1
ENGINE_THREADS = 32  # engine calls that may run at once per worker (more wait in the executor's queue)
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": s.ErrorBody} for code in (400, 404, 413, 422, 503)
}
_WRITE_ERRORS: dict[int | str, dict[str, Any]] = {**_ERRORS, 401: {"model": s.ErrorBody}}
_UNSET: Any = object()
JSON_TYPES = (b"application/json", b"application/json; charset=utf-8")  # bodies the fast route parses itself


class _EngineSlot:
    """Holds the engine, or the factory that builds it and the error if building failed."""

    def __init__(self, engine_or_factory: Engine | Callable[[], Engine]) -> None:
        self.engine: Engine | None = None
        self.factory: Callable[[], Engine] | None = None
        self.error: str | None = None
        if hasattr(engine_or_factory, "candidates"):
            self.engine = engine_or_factory  # type: ignore[assignment]
        elif callable(engine_or_factory):
            self.factory = engine_or_factory
        else:
            raise TypeError(f"create_app needs an Engine or a callable returning one, got {engine_or_factory!r}")

    def load(self) -> None:
        assert self.factory is not None
        try:
            self.engine = self.factory()
        except Exception as e:  # keep serving /healthz and say why /readyz stays 503
            log.exception("the engine failed to load")
            self.error = f"the engine failed to load: {e}" if isinstance(e, CandgenError) else \
                f"the engine failed to load ({type(e).__name__}: {e}); see the server log"
        else:
            log.info("engine ready: model %s", self.engine.model_version)

    def ready(self) -> Engine:
        eng = self.engine
        if eng is None or not eng.ready:
            raise ApiError(503, "not_ready", self.error or "the engine is loading; retry shortly",
                           headers={"Retry-After": "1"})
        return eng


def _json(body: dict[str, Any]) -> Response:
    return _json_bytes(orjson.dumps(body))


def _json_bytes(body: bytes) -> Response:
    # the candidates answers are encoded from the result's columns (serve/encode.py), not through their
    # response models, which only document them in the OpenAPI
    return Response(body, media_type="application/json")


def _took_ms(scope: Any) -> float:
    t0 = scope.get(T0_KEY, time.perf_counter())
    return round((time.perf_counter() - t0) * 1000.0, 3)


def create_app(
    engine: Engine | Callable[[], Engine],
    *,
    config: ServeConfig | None = None,
    api_key: str | None = _UNSET,
    engine_in_threadpool: bool | None = None,
    max_in_flight: int | None = None,
    fast_routes: bool = True,
) -> FastAPI:
    """The FastAPI app serving `engine` (or the engine a zero-argument factory builds at startup).

    `api_key`: the key writes need; default the CANDGEN_API_KEY environment variable; None or "" for none.
    `engine_in_threadpool` (default `config.engine_in_threadpool`): see the module docstring.
    `max_in_flight` (default `config.max_in_flight`): engine calls served at once before new ones are
    refused with 503 `overloaded` (shedding load keeps the latency of admitted requests instead of
    letting a queue grow).
    `fast_routes`: answer POST /v1/candidates from the gate in front of FastAPI (`post_candidates_fast`); the
    same answers, ~0.4 ms less CPU per request (benchmarks/http_overhead.py).
    """
    cfg = config or ServeConfig()
    if engine_in_threadpool is None:
        engine_in_threadpool = cfg.engine_in_threadpool
    if max_in_flight is None:
        max_in_flight = cfg.max_in_flight
    key = os.environ.get(API_KEY_ENV) if api_key is _UNSET else api_key
    key_bytes = key.encode() if key else None
    slot = _EngineSlot(engine)
    attribution = EngagementAttribution(
        max_users=cfg.attribution_users, ttl_s=cfg.attribution_ttl_s, sample_every=cfg.attribution_sample_every,
    )
    metrics = ServeMetrics(stats=lambda: slot.engine.stats() if slot.engine is not None else None)
    reload_lock = threading.Lock()
    in_flight = 0  # only touched on the event loop thread, so no lock
    # a plain executor, not anyio.to_thread: half the CPU per hop (51 vs 94 µs measured on a busy box)
    executor: ThreadPoolExecutor | None = None

    def engine_executor() -> ThreadPoolExecutor:
        nonlocal executor
        if executor is None:
            executor = ThreadPoolExecutor(max_workers=ENGINE_THREADS, thread_name_prefix="candgen-engine")
        return executor

    def reload_on_hup() -> None:
        def run() -> None:
            eng = slot.engine
            if eng is None or not reload_lock.acquire(blocking=False):
                return
            try:
                log.warning("SIGHUP: reloading artifacts")
                log.warning("SIGHUP: now serving model %s", eng.reload(None))
            except Exception:
                log.exception("SIGHUP reload failed; still serving the previous model")
            finally:
                reload_lock.release()

        threading.Thread(target=run, name="candgen-reload", daemon=True).start()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if slot.factory is not None and slot.engine is None:
            if os.environ.get(LOAD_BEFORE_SERVING_ENV):
                # a worker of several (e.g. restarted by uvicorn on SIGHUP): accept connections only once
                # ready, so that the other workers take the traffic meanwhile and no request fails
                await anyio.to_thread.run_sync(slot.load)
            else:
                threading.Thread(target=slot.load, name="candgen-engine-load", daemon=True).start()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # no signals off the main thread
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload_on_hup)
        yield
        nonlocal executor
        if executor is not None:
            executor.shutdown(wait=True)  # in-flight engine calls finish before the engine closes
            executor = None
        eng, close = slot.engine, getattr(slot.engine, "close", None)
        if eng is not None and callable(close):
            await anyio.to_thread.run_sync(close)

    app = FastAPI(
        title="candgen", version=__version__, lifespan=lifespan,
        description="Candidate generation: ~1000 personalised candidates per request from several sources.",
    )
    install_error_handlers(app)
    fast: dict[tuple[str, str], tuple[Any, FastHandler]] = {}  # filled once the routes exist (below)
    app.add_middleware(Gate, max_body_bytes=cfg.max_body_bytes, metrics=metrics, fast=fast)
    app.state.metrics = metrics
    app.state.engine_slot = slot
    app.state.attribution = attribution

    bearer = HTTPBearer(auto_error=False, description="needed on writes when CANDGEN_API_KEY is set")

    # a default, not Annotated[...]: with postponed annotations FastAPI cannot see the local `bearer`
    def require_key(creds: HTTPAuthorizationCredentials | None = Security(bearer)) -> None:
        if key_bytes is None:
            return
        # compare_digest: the time taken does not reveal how much of a guessed key was right
        if creds is None or not hmac.compare_digest(creds.credentials.encode(), key_bytes):
            raise ApiError(401, "unauthorized", "this write needs the header 'Authorization: Bearer <API key>'",
                           headers={"WWW-Authenticate": "Bearer"})

    write = [Depends(require_key)]

    async def call(fn: Callable[..., T], *args: Any, thread: bool | None = None) -> T:
        nonlocal in_flight
        if in_flight >= max_in_flight:
            metrics.shed.inc()
            raise ApiError(503, "overloaded", f"{in_flight} requests in flight; retry shortly",
                           headers={"Retry-After": "1"})
        in_flight += 1
        metrics.in_flight.inc()
        try:
            if engine_in_threadpool if thread is None else thread:
                return await asyncio.get_running_loop().run_in_executor(engine_executor(), fn, *args)
            return fn(*args)
        except (CandgenError, ApiError):
            raise
        except Exception as e:  # an engine bug fails this request only; the traceback goes to the log
            log.exception("engine call %s failed", getattr(fn, "__name__", fn))
            raise ApiError(500, "internal", f"the engine failed on this request ({type(e).__name__}); "
                                            "see the server log") from e
        finally:
            in_flight -= 1
            metrics.in_flight.dec()

    def check_k(k: int) -> None:
        if k > cfg.max_k:
            raise ApiError(422, "validation_error", f"k: must be at most {cfg.max_k}", field="k")

    def check_batch(n: int, name: str) -> None:
        # 413, not 422: nothing in the batch is wrong, it is just too big; the client should split it
        if n > cfg.max_batch:
            raise ApiError(413, "batch_too_large", f"{name}: {n} in one request, at most {cfg.max_batch}; "
                                                   "split the batch", field=name)

    async def answer_candidates(scope: Any, req: EngineRequest) -> Response:
        check_k(req.k)
        eng = slot.ready()
        res = await call(eng.candidates, req)
        metrics.observe_candidates(res)
        if attribution.served(req.user_id, res):
            metrics.observe_served(res)
        head = {"user_id": req.user_id, "model_version": res.model_version or eng.model_version,
                "variant": res.variant}
        tail = {"degraded": res.degraded, "cache": res.cache, "took_ms": _took_ms(scope)}
        return _json_bytes(answer_json(head, res, tail, explain=req.explain))

    def engine_request(body: s.CandidatesRequest) -> EngineRequest:
        # the default k (1000) shrinks to a smaller configured max_k; an explicit k above it is an error
        k = body.k if "k" in body.model_fields_set else min(body.k, cfg.max_k)
        return EngineRequest(user_id=body.user_id, k=k, context=body.context, exclude=body.exclude,
                             explain=body.explain)

    # --- reads ------------------------------------------------------------------------------------------

    @app.post("/v1/candidates", response_model=s.CandidatesResponse, responses=_ERRORS, tags=["candidates"])
    async def post_candidates(body: s.CandidatesRequest, request: Request) -> Response:
        """Personalised candidates for one user, with the sources that found each."""
        return await answer_candidates(request.scope, engine_request(body))

    async def post_candidates_fast(scope: Any, body: bytes) -> Response | None:
        """POST /v1/candidates from the gate (`fast_routes`): a JSON object that the request model accepts is
        answered here, as `post_candidates` would; anything else (None) goes through FastAPI, which gives the
        error answer."""
        if header(scope, b"content-type") not in JSON_TYPES:
            return None
        try:
            data = orjson.loads(body)
            parsed = s.CandidatesRequest.model_validate(data) if isinstance(data, dict) else None
        except (orjson.JSONDecodeError, ValidationError):
            return None
        if parsed is None:
            return None
        try:
            return await answer_candidates(scope, engine_request(parsed))
        except Exception as e:  # the app's exception handlers are not on this path: answer as they would
            answer = await handled(Request(scope), e)
            if answer is None:
                raise
            return answer

    @app.get("/v1/candidates/{user_id}", response_model=s.CandidatesResponse, responses=_ERRORS,
             tags=["candidates"])
    async def get_candidates(
        request: Request,
        user_id: Annotated[str, Path(min_length=1, max_length=256)],
        k: Annotated[int | None, Query(ge=1, le=s.MAX_K, description="default 1000")] = None,
        explain: bool = False,
    ) -> Response:
        """The same as POST /v1/candidates without context or excludes."""
        k = min(1000, cfg.max_k) if k is None else k
        return await answer_candidates(request.scope, EngineRequest(user_id=user_id, k=k, explain=explain))

    @app.get("/v1/items/{item_id}/similar", response_model=s.SimilarResponse, responses=_ERRORS, tags=["items"])
    async def similar(
        request: Request,
        item_id: Annotated[str, Path(min_length=1, max_length=256)],
        k: Annotated[int, Query(ge=1, le=s.MAX_K)] = 100,
    ) -> Response:
        """Item-to-item candidates; 404 for an unknown or deleted item."""
        check_k(k)
        eng = slot.ready()
        res = await call(eng.similar, item_id, k)
        head = {"item_id": item_id, "model_version": res.model_version or eng.model_version}
        tail = {"degraded": res.degraded, "took_ms": _took_ms(request.scope)}
        return _json_bytes(answer_json(head, res, tail))

    # --- writes -----------------------------------------------------------------------------------------

    @app.post("/v1/events", status_code=202, response_model=s.EventsResponse, responses=_WRITE_ERRORS,
              dependencies=write, tags=["writes"])
    async def post_events(body: s.EventsRequest) -> s.EventsResponse:
        """Engagements: update recent activity, trending, seen/blocked; invalidate the users' cached lists."""
        check_batch(len(body.events), "events")
        eng = slot.ready()
        events = [EventIn(user_id=e.user_id, item_id=e.item_id, event=e.event, value=e.value,
                          timestamp=s.to_unix_seconds(e.timestamp)) for e in body.events]
        n = await call(eng.ingest_events, events)
        for event, count in Counter(e.event for e in events).items():
            metrics.events_ingested.labels(event).inc(count)
        for e in events:
            if attribution.sampled(e.user_id):
                metrics.observe_engagement(e.event, attribution.credit(e.user_id, e.item_id))
        return s.EventsResponse(accepted=n)

    @app.post("/v1/items", status_code=201, response_model=s.ItemsResponse, responses=_WRITE_ERRORS,
              dependencies=write, tags=["writes"])
    async def post_items(body: s.ItemsRequest) -> s.ItemsResponse:
        """New or updated items: embedded by the item tower and retrievable at once."""
        check_batch(len(body.items), "items")
        eng = slot.ready()
        items = [ItemIn(item_id=i.item_id, tags=list(i.tags), category=i.category, creator_id=i.creator_id,
                        title=i.title, created_at=s.to_unix_seconds(i.created_at)) for i in body.items]
        n = await call(eng.add_items, items)
        metrics.items_added.inc(n)
        return s.ItemsResponse(added=n)

    @app.delete("/v1/items/{item_id}", status_code=204, responses=_WRITE_ERRORS, dependencies=write,
                tags=["writes"])
    async def delete_item(item_id: Annotated[str, Path(min_length=1, max_length=256)]) -> Response:
        """Never return this item again; 404 if the catalog does not know it."""
        eng = slot.ready()
        await call(eng.delete_item, item_id)
        metrics.items_deleted.inc()
        return Response(status_code=204)

    @app.put("/v1/users/{user_id}", response_model=s.UserResponse, responses=_WRITE_ERRORS, dependencies=write,
             tags=["writes"])
    async def put_user(
        user_id: Annotated[str, Path(min_length=1, max_length=256)], body: s.UserProfile
    ) -> s.UserResponse:
        """Onboarding: attributes, interests and friends of a (new) user."""
        eng = slot.ready()
        profile = UserProfileIn(attributes=dict(body.attributes), interests=list(body.interests),
                                friends=list(body.friends))
        await call(eng.put_user, user_id, profile)
        return s.UserResponse(user_id=user_id)

    @app.post("/v1/admin/reload", response_model=s.ReloadResponse, responses=_WRITE_ERRORS, dependencies=write,
              tags=["admin"])
    async def reload(body: s.ReloadRequest | None = None) -> s.ReloadResponse:
        """Swap in retrained artifacts atomically (no downtime); returns the new model version."""
        eng = slot.ready()
        if not reload_lock.acquire(blocking=False):
            raise ApiError(503, "reload_in_progress", "another reload is running; retry when it is done",
                           headers={"Retry-After": "5"})
        try:
            version = await call(eng.reload, body.art if body else None, thread=True)
        finally:
            reload_lock.release()
        metrics.set_model_version(version)
        return s.ReloadResponse(model_version=version)

    @app.post("/v1/admin/snapshot", response_model=s.SnapshotResponse, responses=_WRITE_ERRORS, dependencies=write,
              tags=["admin"])
    async def snapshot(request: Request) -> s.SnapshotResponse:
        """Fold the shared write log into a snapshot of the serving artifacts now and trim the log (the
        background job's work, on demand); 503 while another worker takes one."""
        eng = slot.ready()
        take = getattr(eng, "snapshot", None)
        if take is None:
            raise ApiError(422, "not_supported", "this engine keeps no state log to snapshot")
        res = await call(take, thread=True)
        meta = res.meta if res.meta is not None else res.base
        return s.SnapshotResponse(
            snapshot=res.meta.name if res.meta is not None else None, seq=meta.seq if meta is not None else None,
            records=meta.records if meta is not None else 0, bytes=res.meta.size if res.meta is not None else 0,
            replayed=res.replayed, trimmed=res.trimmed, took_ms=_took_ms(request.scope))

    # --- operations -------------------------------------------------------------------------------------

    @app.get("/healthz", response_model=s.Health, response_model_exclude_none=True, tags=["operations"])
    async def healthz() -> s.Health:
        """Liveness: 200 while the process runs."""
        return s.Health(status="ok")

    @app.get("/readyz", response_model=s.Health, responses={503: {"model": s.ErrorBody}}, tags=["operations"])
    async def readyz() -> Response:
        """Readiness: 200 once the artifacts are loaded, 503 before (or if loading failed)."""
        eng = slot.engine
        if eng is None or not eng.ready:
            return error_response(503, "not_ready", slot.error or "the engine is loading",
                                  headers={"Retry-After": "1"})
        metrics.set_model_version(eng.model_version)
        return _json({"status": "ready", "model_version": eng.model_version})

    @app.get("/metrics", tags=["operations"], response_class=Response)
    async def prometheus() -> Response:
        """Prometheus text format."""
        from prometheus_client import CONTENT_TYPE_LATEST

        eng = slot.engine
        if eng is not None and eng.ready:
            metrics.set_model_version(eng.model_version)
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    if fast_routes:
        route = next(r for r in app.routes if getattr(r, "endpoint", None) is post_candidates)
        fast[("POST", "/v1/candidates")] = (route, post_candidates_fast)
    return app
