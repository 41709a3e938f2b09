"""Closed-loop load generator for `POST /v1/candidates`: N concurrent keep-alive clients, a request mix of
warm users (from the artifacts' dataset snapshot), cold users and contexts, and one summary of client
latency, server `took_ms`, errors, cache hits and degraded answers.

Uncached numbers must really be uncached: with `cache_miss` every request names a user no earlier
request named (the L1 list is per user, and a request for fewer items takes a prefix of a cached longer
list, so varying k would not miss), and the answers' `cache` field is counted, so an L3 hit (lists
precomputed for the most active users) still shows in the hit fraction.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from candgen.bench.http import Connection, Endpoint, HttpError
from candgen.errors import CandgenError

# a client refused with 503 (the server shedding load) pauses this long before its next request, as after a
# transport error: not Retry-After's whole second, so that the offered load stays close to `concurrency`,
# but enough that a shedding server is not met with a tight retry loop
SHED_PAUSE_S = 0.01

CONTEXTS: tuple[dict[str, str], ...] = (
    {}, {"device": "mobile", "country": "DE", "language": "de"}, {"device": "desktop", "country": "US"},
    {"device": "tv", "language": "en"}, {"device": "mobile", "country": "BR", "language": "pt"},
)


@dataclass(frozen=True, slots=True)
class Workload:
    """What to ask: warm user ids to draw from, the share of cold (never seen) users, k, and cache reuse.

    `hit_ratio` is the share of requests that repeat a user already asked for (an L1 hit unless the
    list was invalidated); `cache_miss` forces every request to a distinct user (hit_ratio 0).
    """

    warm_users: Sequence[str]
    k: int = 1000
    cold_fraction: float = 0.1
    hit_ratio: float = 0.0
    cache_miss: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        check_fraction("cold fraction", self.cold_fraction)
        check_fraction("hit ratio", self.hit_ratio)
        if self.cache_miss and self.hit_ratio > 0:
            raise CandgenError(f"--hit-ratio {self.hit_ratio} contradicts --cache-miss (which means hit ratio 0)")
        if not 1 <= self.k <= 10_000:
            raise CandgenError(f"--k: got {self.k}, expected 1..10000")
        if self.cold_fraction < 1.0 and not self.warm_users:
            raise CandgenError("no warm users to ask for: pass artifacts (or --art with a URL), or --cold-fraction 1")


def check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise CandgenError(f"{name}: got {value}, expected a fraction between 0 and 1")


class RequestMix:
    """Draws request bodies: warm users without replacement (shuffled), cold users with fresh ids, reuse."""

    def __init__(self, workload: Workload, run_tag: str) -> None:
        self.w = workload
        self.rng = random.Random(workload.seed)
        self._warm = list(workload.warm_users)
        self.rng.shuffle(self._warm)
        self._next_warm = 0
        self._cold_n = 0
        self._asked: list[str] = []
        self._tag = run_tag
        self.kinds = {"warm": 0, "cold": 0, "repeat": 0, "warm_exhausted": 0}

    def next_body(self) -> bytes:
        w = self.w
        if self._asked and not w.cache_miss and self.rng.random() < w.hit_ratio:
            user = self.rng.choice(self._asked)
            self.kinds["repeat"] += 1
        elif (want_warm := self.rng.random() >= w.cold_fraction) and self._next_warm < len(self._warm):
            user = self._warm[self._next_warm]
            self._next_warm += 1
            self.kinds["warm"] += 1
        else:
            if want_warm:  # wanted a warm user but every one was asked already
                self.kinds["warm_exhausted"] += 1
            self._cold_n += 1
            user = f"bench-cold-{self._tag}-{self._cold_n}"
            self.kinds["cold"] += 1
        if w.hit_ratio > 0 and len(self._asked) < 100_000:
            self._asked.append(user)
        ctx = CONTEXTS[self.rng.randrange(len(CONTEXTS))]
        return json.dumps({"user_id": user, "k": w.k, "context": ctx}).encode()


@dataclass(slots=True)
class Sample:
    """One answered (or failed) request."""

    latency_ms: float
    status: int  # 0: transport error
    took_ms: float = float("nan")
    cache: str = ""
    degraded: tuple[str, ...] = ()
    n_candidates: int = 0


def parse_answer(body: bytes) -> tuple[float, str, tuple[str, ...], int]:
    """(took_ms, cache, degraded sources, number of candidates) of a candidates answer, without decoding the list.

    The answer ends with `"degraded": [...], "cache": ..., "took_ms": ...`; decoding only that tail keeps
    the client's CPU per request small (a full decode of 1000 candidates costs ~1 ms).
    """
    i = body.rfind(b'"degraded":')
    try:
        tail = json.loads(b"{" + body[i:]) if i > 0 else json.loads(body)
        n = body.count(b'"item_id"') if i > 0 else len(tail.get("candidates", []))
        return float(tail["took_ms"]), str(tail["cache"]), tuple(map(str, tail["degraded"])), n
    except (ValueError, KeyError, TypeError):
        return float("nan"), "", (), 0


@dataclass
class LoadResult:
    """The summary table's figures; latencies in ms."""

    requests: int
    duration_s: float
    qps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    took_p50_ms: float
    took_p99_ms: float
    errors: int  # every answer that was not 2xx, among them `shed`
    shed: int  # 503 answers (the server refusing load)
    answered_qps: float  # 2xx answers per second
    cache_hit_fraction: float  # answers served from a stored list (L1 or L3)
    degraded_fraction: float
    mean_candidates: float
    concurrency: int
    client_cpu_ms_per_req: float
    server_cpu_ms_per_req: float | None = None
    server_cpu_ms_per_answer: float | None = None  # the server's CPU over the 2xx answers (refusals' cost included)
    statuses: dict[str, int] = field(default_factory=dict)
    mix: dict[str, int] = field(default_factory=dict)
    cache_levels: dict[str, int] = field(default_factory=dict)
    degraded_sources: dict[str, int] = field(default_factory=dict)
    first_error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(samples: Sequence[Sample], *, duration_s: float, concurrency: int, client_cpu_s: float,
              server_cpu_s: float | None = None, mix: dict[str, int] | None = None,
              first_error: str = "") -> LoadResult:
    """Percentiles and fractions over the measured samples (errors count in QPS, not in latencies)."""
    n = len(samples)
    ok = [s for s in samples if 200 <= s.status < 300]
    lat = np.array([s.latency_ms for s in ok], dtype=np.float64)
    took = np.array([s.took_ms for s in ok if s.took_ms == s.took_ms], dtype=np.float64)

    def pct(a: np.ndarray, q: float) -> float:
        return float(np.percentile(a, q)) if len(a) else float("nan")

    levels: dict[str, int] = {}
    statuses: dict[str, int] = {}
    degraded: dict[str, int] = {}
    for s in samples:
        for src in s.degraded:
            degraded[src] = degraded.get(src, 0) + 1
        statuses[str(s.status)] = statuses.get(str(s.status), 0) + 1
        if s.cache:
            levels[s.cache] = levels.get(s.cache, 0) + 1
    answered = sum(levels.values())
    # L1 and L3 serve a stored list; "L2" only means the user embedding was cached and the list computed
    hits = levels.get("L1", 0) + levels.get("L3", 0)
    return LoadResult(
        requests=n, duration_s=duration_s, qps=n / duration_s if duration_s > 0 else float("nan"),
        p50_ms=pct(lat, 50), p95_ms=pct(lat, 95), p99_ms=pct(lat, 99),
        max_ms=float(lat.max()) if len(lat) else float("nan"),
        took_p50_ms=pct(took, 50), took_p99_ms=pct(took, 99), errors=n - len(ok),
        shed=sum(s.status == 503 for s in samples),
        answered_qps=len(ok) / duration_s if duration_s > 0 else float("nan"),
        cache_hit_fraction=hits / answered if answered else float("nan"),
        degraded_fraction=sum(bool(s.degraded) for s in ok) / len(ok) if ok else float("nan"),
        mean_candidates=float(np.mean([s.n_candidates for s in ok])) if ok else 0.0,
        concurrency=concurrency, client_cpu_ms_per_req=client_cpu_s * 1000.0 / n if n else float("nan"),
        server_cpu_ms_per_req=server_cpu_s * 1000.0 / n if (server_cpu_s is not None and n) else None,
        server_cpu_ms_per_answer=server_cpu_s * 1000.0 / len(ok) if (server_cpu_s is not None and ok) else None,
        statuses=statuses, mix=dict(mix or {}), cache_levels=levels, degraded_sources=degraded, first_error=first_error,
    )


def warm_users_from_artifacts(art: Path, limit: int = 2_000_000) -> list[str]:
    """User ids with at least one interaction in the artifacts' dataset snapshot (the warm users)."""
    import pyarrow.parquet as pq

    snap = Path(art) / "dataset"
    if not (snap / "users.parquet").exists() or not (snap / "arrays.npz").exists():
        raise CandgenError(f"{art}: no dataset snapshot (expected {snap}/users.parquet and arrays.npz)")
    ids = pq.read_table(snap / "users.parquet").column("id").to_pylist()
    with np.load(snap / "arrays.npz", allow_pickle=False) as z:
        active = np.unique(z["user"])
    return [ids[i] for i in active[:limit].tolist()]


async def run_load(endpoint: Endpoint, workload: Workload, *, concurrency: int = 8, duration_s: float = 10.0,
                   max_requests: int = 0, warmup_s: float = 2.0,
                   server_cpu: Callable[[], float] | None = None) -> LoadResult:
    """Run `concurrency` closed-loop clients for `duration_s` (or `max_requests`) after `warmup_s` of warm-up.

    Client and server CPU (when `server_cpu` reads the server's CPU seconds) are measured over the
    measured window only, so "CPU ms per request" says what a request costs whatever the machine's load.
    """
    if concurrency < 1:
        raise CandgenError(f"--concurrency: got {concurrency}, expected 1 or more")
    if duration_s <= 0 and max_requests <= 0:
        raise CandgenError("give a positive --duration or --requests")
    if warmup_s < 0:
        raise CandgenError(f"--warmup: got {warmup_s}, expected 0 or more seconds")
    mix = RequestMix(workload, run_tag=f"{int(time.time() * 1000) % 10**9:x}")
    samples: list[Sample] = []
    first_error: list[str] = []
    t_start = time.perf_counter()
    t_measure = t_start + warmup_s
    t_end = t_measure + duration_s if duration_s > 0 else float("inf")
    cpu0: list[float] = []
    issued = 0

    async def client() -> None:
        nonlocal issued
        conn = Connection(endpoint)
        try:
            while True:
                now = time.perf_counter()
                if now >= t_end or (max_requests and issued >= max_requests and now >= t_measure):
                    return
                body = mix.next_body()
                measured = now >= t_measure
                if measured:
                    issued += 1
                t0 = time.perf_counter()
                try:
                    status, data = await conn.request("POST", "/v1/candidates", body)
                except HttpError as e:
                    if not first_error:
                        first_error.append(str(e))
                    status, data = 0, b""
                    await asyncio.sleep(0.01)  # a dead server must not spin the client
                dt = (time.perf_counter() - t0) * 1000.0
                if status == 503:
                    await asyncio.sleep(SHED_PAUSE_S)
                if not measured:
                    continue
                s = Sample(dt, status)
                if 200 <= status < 300:
                    s.took_ms, s.cache, s.degraded, s.n_candidates = parse_answer(data)
                elif not first_error:
                    first_error.append(f"HTTP {status}: {data[:200].decode(errors='replace')}")
                samples.append(s)
        finally:
            await conn.close()

    async def mark() -> None:
        await asyncio.sleep(max(0.0, t_measure - time.perf_counter()))
        cpu0.extend([time.process_time(), server_cpu() if server_cpu else 0.0])

    marker = asyncio.ensure_future(mark())
    await asyncio.gather(*(client() for _ in range(concurrency)))
    await marker
    elapsed = time.perf_counter() - max(t_measure, t_start)
    client_cpu = time.process_time() - cpu0[0]
    srv = (server_cpu() - cpu0[1]) if server_cpu else None
    if first_error and not any(s.status for s in samples):
        raise CandgenError(f"every request failed: {first_error[0]}")
    return summarize(samples, duration_s=elapsed, concurrency=concurrency, client_cpu_s=client_cpu,
                     server_cpu_s=srv, mix=mix.kinds, first_error=first_error[0] if first_error else "")


# QPS and server CPU count 2xx answers only: a server that refuses load with fast 503s must not look faster
TABLE_HEADER = ("| case | QPS (2xx) | p50 ms | p95 ms | p99 ms | max ms | took p50 | took p99 | errors | cache hit "
                "| degraded | server CPU ms/2xx | client CPU ms/req |")


def table_row(name: str, r: LoadResult) -> str:
    srv = f"{r.server_cpu_ms_per_answer:.2f}" if r.server_cpu_ms_per_answer is not None else "n/a"
    return (f"| {name} | {r.answered_qps:.0f} | {r.p50_ms:.1f} | {r.p95_ms:.1f} | {r.p99_ms:.1f} | {r.max_ms:.1f} "
            f"| {r.took_p50_ms:.1f} | {r.took_p99_ms:.1f} | {r.errors} | {r.cache_hit_fraction:.3f} "
            f"| {r.degraded_fraction:.3f} | {srv} | {r.client_cpu_ms_per_req:.2f} |")
