"""`candgen bench load` and `candgen bench freshness`: load and freshness benchmarks of the HTTP service,
against a running URL or a `candgen serve ART` that the command starts on a free port and stops."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

from candgen.cli.app import app, out, progress
from candgen.errors import CandgenError

bench_app = typer.Typer(help="Load and freshness benchmarks of the HTTP service.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

TARGET_HELP = "a running service (http://HOST:PORT) or an artifacts directory to serve for the run"


def resolve_target(target: str, art: Path | None) -> tuple[str | None, Path | None]:
    """(URL, None) for a URL, (None, ART) for an artifacts directory; the artifacts to read users from."""
    from candgen.bench.http import parse_url

    if "://" in target:
        parse_url(target)  # a clear error now rather than on the first request
        if art is not None and not (art / "manifest.json").exists():
            raise CandgenError(f"--art {art}: not an artifacts directory (no manifest.json)")
        return target, art
    p = Path(target)
    if not (p / "manifest.json").exists():
        raise CandgenError(f"TARGET {target!r}: expected http://HOST:PORT or an artifacts directory "
                           "(one with manifest.json)")
    return None, p


@contextmanager
def _service(url: str | None, art: Path | None, workers: int, state: str | None) -> Iterator[tuple[str, object]]:
    from candgen.bench.http import parse_url
    from candgen.bench.service import ServiceProcess

    if url is not None:
        yield parse_url(url).url, None
        return
    assert art is not None
    with ServiceProcess(art, workers=workers, state=state) as svc:
        yield svc.endpoint.url, svc


@bench_app.command("load")
def load(
    target: str = typer.Argument(..., help=TARGET_HELP),
    art: Path | None = typer.Option(None, help="with a URL: the artifacts it serves, to draw warm users from"),
    workers: int = typer.Option(1, min=1, help="worker processes when the command starts the service"),
    state: str | None = typer.Option(None, help="state URL when the command starts the service (redis://...)"),
    concurrency: int = typer.Option(8, help="concurrent keep-alive clients (closed loop)"),
    duration: float = typer.Option(10.0, help="seconds measured (after the warm-up)"),
    requests: int = typer.Option(0, help="stop after this many measured requests (0: duration only)"),
    warmup: float = typer.Option(2.0, help="seconds of unmeasured warm-up"),
    k: int = typer.Option(1000, help="candidates per request"),
    cold_fraction: float = typer.Option(0.1, help="share of requests for cold (never seen) users"),
    hit_ratio: float = typer.Option(0.0, help="share of requests repeating an earlier user (L1 hits)"),
    cache_miss: bool = typer.Option(False, "--cache-miss", help="every request a distinct user: no L1 hits"),
    seed: int = typer.Option(0, help="random seed of the request mix"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
) -> None:
    """Closed-loop load on POST /v1/candidates; prints QPS, latency percentiles, server took_ms, errors,
    cache hit and degraded fractions, and the CPU per request of the server (when started here) and client."""
    from candgen.bench.loadgen import TABLE_HEADER, Workload, run_load, table_row, warm_users_from_artifacts
    from candgen.bench.service import ServiceProcess

    url, art_dir = resolve_target(target, art)
    users = warm_users_from_artifacts(art_dir) if art_dir is not None else []
    workload = Workload(warm_users=users, k=k, cold_fraction=cold_fraction, hit_ratio=hit_ratio,
                        cache_miss=cache_miss, seed=seed)
    from candgen.bench.http import parse_url

    with _service(url, art_dir, workers, state) as (base, svc):
        server_cpu = svc.cpu_seconds if isinstance(svc, ServiceProcess) else None
        result = asyncio.run(run_load(parse_url(base), workload, concurrency=concurrency, duration_s=duration,
                                      max_requests=requests, warmup_s=warmup, server_cpu=server_cpu))
    if as_json:
        out.print_json(json.dumps(result.as_dict()))
        return
    name = f"{target} k={k} c={concurrency}" + (" cache-miss" if cache_miss else "")
    out.print(TABLE_HEADER, highlight=False, soft_wrap=True)
    out.print("|" + "---|" * 13, highlight=False)
    out.print(table_row(name, result), highlight=False, soft_wrap=True)
    out.print(f"requests {result.requests} in {result.duration_s:.1f} s; mix {result.mix}; cache levels "
              f"{result.cache_levels}; degraded sources {result.degraded_sources}; "
              f"mean candidates {result.mean_candidates:.0f}; shed (503) {result.shed}, "
              f"answered {result.answered_qps:.0f}/s"
              + (f"; first error: {result.first_error}" if result.first_error else ""), highlight=False, soft_wrap=True)


@bench_app.command("freshness")
def freshness(
    target: str = typer.Argument(..., help=TARGET_HELP),
    art: Path | None = typer.Option(None, help="with a URL: the artifacts it serves (warm users, unengaged items)"),
    workers: int = typer.Option(1, min=1, help="worker processes when the command starts the service"),
    state: str | None = typer.Option(None, help="state URL when the command starts the service (redis://...)"),
    repeat: int = typer.Option(30, help="trials per scenario"),
    scenario: list[str] = typer.Option(["new_item", "trending", "seen", "delete"], help="scenarios to run"),
    k: int = typer.Option(1000, help="candidates per read"),
    timeout: float = typer.Option(10.0, help="seconds a trial waits for the effect before it counts as failed"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
    as_json: bool = typer.Option(False, "--json", help="print the results as JSON"),
) -> None:
    """Lag from a write to the first answer reflecting it: new item, trending burst, seen filter, deletion.
    Writes use CANDGEN_API_KEY when it is set."""
    from dataclasses import asdict

    from candgen.bench.freshness import (
        FRESHNESS_HEADER,
        FreshnessProbe,
        freshness_row,
        unengaged_items_from_artifacts,
    )
    from candgen.bench.http import parse_url
    from candgen.bench.loadgen import warm_users_from_artifacts

    url, art_dir = resolve_target(target, art)
    if art_dir is None and any(s in ("seen", "delete") for s in scenario):
        raise CandgenError("the seen and delete scenarios need warm users: pass --art ART with a URL")
    users = warm_users_from_artifacts(art_dir) if art_dir is not None else []
    unengaged = unengaged_items_from_artifacts(art_dir) if art_dir is not None else []
    with _service(url, art_dir, workers, state) as (base, _), progress(quiet) as p:
        probe = FreshnessProbe(parse_url(base), warm_users=users, unengaged_items=unengaged,
                               api_key=os.environ.get("CANDGEN_API_KEY") or None, k=k, timeout_s=timeout)
        try:
            results = probe.run(scenario, repeat=repeat, progress=p)
        finally:
            probe.close()
    if as_json:
        out.print_json(json.dumps([asdict(r) for r in results]))
        return
    out.print(FRESHNESS_HEADER, highlight=False, soft_wrap=True)
    out.print("|" + "---|" * 9, highlight=False)
    for r in results:
        out.print(freshness_row(r), highlight=False, soft_wrap=True)
