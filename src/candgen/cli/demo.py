"""`candgen demo`: the main job on the embedded default, end to end, in a couple of minutes.

Makes a synthetic world, trains the two-tower model and every source, starts the HTTP service on
localhost (a real `candgen serve` process), sends real requests (warm and new users), prints their
candidates with sources, latency and cache level, then evaluates candgen against the baselines on a
time split of the same world.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import typer
from rich.table import Table

from candgen.cli.app import app, out, progress
from candgen.errors import CandgenError


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(base: str, proc: subprocess.Popen[bytes], seconds: float = 120.0) -> None:
    import httpx

    t0 = time.time()
    while time.time() - t0 < seconds:
        if proc.poll() is not None:
            raise CandgenError(f"the demo server exited with code {proc.returncode} before it was ready")
        try:
            if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise CandgenError(f"the demo server was not ready within {seconds:.0f} s")


def _show(title: str, ans: dict[str, Any], client_ms: float, n: int = 10) -> None:
    t = Table(title=f"{title}: user {ans['user_id']} · variant {ans['variant'] or '-'} · cache {ans['cache']} · "
                    f"server {ans['took_ms']:.1f} ms · round trip {client_ms:.1f} ms", title_justify="left")
    t.add_column("#", justify="right")
    t.add_column("item")
    t.add_column("score", justify="right")
    t.add_column("sources")
    for i, c in enumerate(ans["candidates"][:n]):
        t.add_row(str(i + 1), c["item_id"], f"{c['score']:.3f}", ", ".join(c["sources"]))
    out.print(t)
    counts: dict[str, int] = {}
    for c in ans["candidates"]:
        for s in c["sources"]:
            counts[s] = counts.get(s, 0) + 1
    out.print(f"  {len(ans['candidates'])} candidates; found by: "
              + ", ".join(f"{s} {n}" for s, n in sorted(counts.items(), key=lambda x: -x[1]))
              + (f"; degraded: {', '.join(ans['degraded'])}" if ans["degraded"] else ""))


@app.command()
def demo(
    out_dir: Path = typer.Option(Path("candgen-demo"), "--out", help="where the world and artifacts go"),
    users: int = typer.Option(3000, help="users in the synthetic world"),
    items: int = typer.Option(6000, help="items in the synthetic world"),
    seed: int = typer.Option(0, help="random seed of the world"),
    requests: int = typer.Option(300, help="requests for the latency figures"),
    evaluate_too: bool = typer.Option(True, "--evaluate/--no-evaluate", help="finish with the evaluation summary"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
) -> None:
    """Synthetic world → train → serve on localhost → real requests → evaluation summary."""
    import httpx

    from candgen.config import Config
    from candgen.data.io import load_dataset
    from candgen.data.synthetic import generate_world
    from candgen.pipeline import train_artifacts

    t_start = time.perf_counter()
    world, art = out_dir / "world", out_dir / "art"
    out.rule("[bold]1. a synthetic world")
    with progress(quiet) as p:
        summary = generate_world(world, users=users, items=items, days=21, seed=seed, progress=p)
    out.print(f"{world}: {summary.users:,} users ({summary.new_users:,} new), {summary.items:,} items "
              f"({summary.new_items:,} new), {summary.interactions:,} interactions, {summary.social_edges:,} follows, "
              f"{summary.topics} topics, {summary.viral_items} viral items")
    out.rule("[bold]2. train: two-tower model, ANN index, trending / social / content / cold-start state")
    cfg = Config()
    with progress(quiet) as p:
        ds = load_dataset(world, progress=p)
        trained = train_artifacts(ds, art, config=cfg, progress=p, force=True)
    out.print(f"model {trained.model_version}, index {trained.index_kind}; "
              + ", ".join(f"{k} {v:.1f} s" for k, v in trained.seconds.items()))

    out.rule("[bold]3. serve on localhost and send real requests")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = out_dir / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "candgen.cli.main", "serve", str(art), "--host", "127.0.0.1", "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        _wait_ready(base, proc)
        out.print(f"candgen serve is ready at {base} (API docs at {base}/docs; log {log_path})")
        counts = np.bincount(ds.interactions.user, minlength=ds.n_users)
        warm = [ds.users.id(int(u)) for u in np.argsort(-counts)[:50]]
        key = os.environ.get("CANDGEN_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        with httpx.Client(base_url=base, timeout=10, headers=headers) as client:
            for title, body in (
                ("a warm user", {"user_id": warm[0], "k": 1000}),
                ("a user nobody knows (cold start)", {"user_id": "demo-new-user", "k": 1000,
                                                       "context": {"device": "mobile", "country": "DE"}}),
            ):
                t = time.perf_counter()
                r = client.post("/v1/candidates", json=body)
                r.raise_for_status()
                _show(title, r.json(), (time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            r = client.post("/v1/candidates", json={"user_id": warm[0], "k": 1000})
            out.print(f"the same request again: cache {r.json()['cache']}, round trip "
                      f"{(time.perf_counter() - t) * 1000:.1f} ms")
            _freshness(client, ds, seed)
            lat = []
            rng = np.random.default_rng(seed)
            t_all = time.perf_counter()
            for i in range(requests):
                uid = warm[int(rng.integers(len(warm)))] if i % 5 else f"demo-cold-{i}"
                t = time.perf_counter()
                client.post("/v1/candidates", json={"user_id": uid, "k": 1000, "context": {"hour": str(i % 24)}})
                lat.append((time.perf_counter() - t) * 1000)
            wall = time.perf_counter() - t_all
        q = statistics.quantiles(lat, n=100)
        out.print(f"{requests} requests of k=1000 over HTTP, one at a time: p50 {q[49]:.1f} ms, p95 {q[94]:.1f} ms, "
                  f"p99 {q[98]:.1f} ms, {requests / wall:.0f} requests/s (one client, keep-alive)")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)

    if evaluate_too:
        out.rule("[bold]4. evaluation: train on the first 80% of time, measure on the rest")
        _evaluate(ds, cfg, out_dir, quiet)
    out.print(f"[bold green]demo done[/] in {time.perf_counter() - t_start:.0f} s; artifacts in {art}; "
              f"try: candgen recommend {art} --user {ds.users.id(0)} --k 20 --explain")


def _until(pred: Any, seconds: float = 5.0) -> float | None:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        if pred():
            return (time.perf_counter() - t0) * 1000
        time.sleep(0.005)
    return None


def _freshness(client: Any, ds: Any, seed: int) -> None:
    """Writes over the API and how fast every source sees them."""
    def ids(user: str) -> list[str]:
        r = client.post("/v1/candidates", json={"user_id": user, "k": 1000})
        r.raise_for_status()
        return [c["item_id"] for c in r.json()["candidates"]]

    tag = ds.tags.id(int(np.bincount(ds.item_tags.idx).argmin())) if len(ds.item_tags.idx) else "demo-tag"
    profile = {"interests": [tag], "attributes": {"country": "DE"}}
    client.put("/v1/users/demo-onboarded", json=profile).raise_for_status()
    client.post("/v1/items", json={"items": [{"item_id": "demo-fresh-item", "tags": [tag], "category": "news",
                                              "creator_id": "demo-creator", "title": "just published"}]}
                ).raise_for_status()
    lag = _until(lambda: "demo-fresh-item" in ids("demo-onboarded"))
    out.print(f"POST /v1/items: a new item (tag '{tag}') is in a newly onboarded user's candidates after "
              + (f"{lag:.0f} ms" if lag is not None else "more than 5 s"))
    engaged = set(np.unique(ds.interactions.item).tolist())
    quiet_item = next((ds.items.id(i) for i in range(ds.n_items) if i not in engaged), ds.items.id(ds.n_items - 1))
    client.post("/v1/events", json={"events": [{"user_id": f"demo-fan-{i}", "item_id": quiet_item, "event": "share"}
                                               for i in range(200)]}).raise_for_status()
    lag = _until(lambda: quiet_item in ids("demo-someone-new"))
    out.print("POST /v1/events: 200 shares of a never-engaged item put it in a new user's candidates (trending) "
              "after " + (f"{lag:.0f} ms" if lag is not None else "more than 5 s"))
    user = ds.users.id(int(np.argmax(np.bincount(ds.interactions.user))))
    victim = ids(user)[0]
    client.post("/v1/events", json={"events": [{"user_id": user, "item_id": victim, "event": "view"}]}
                ).raise_for_status()
    lag = _until(lambda: victim not in ids(user))
    out.print("a view of the top candidate removes it from that user's list (seen filter) after "
              + (f"{lag:.0f} ms" if lag is not None else "more than 5 s"))


def _evaluate(ds: Any, cfg: Any, out_dir: Path, quiet: bool) -> None:
    from candgen.data.split import time_split
    from candgen.eval.baselines import make_baselines
    from candgen.eval.evaluate import evaluate
    from candgen.eval.funnel import BlendRecommender, train_engine

    split = time_split(ds, fraction=0.8)
    with progress(quiet) as p:
        engine = train_engine(split.train, config=cfg, workdir=out_dir / "eval", progress=p)
        recs: list[Any] = [*make_baselines(["popular", "item_knn", "als"]),
                           BlendRecommender(engine, now=float(split.cutoff or 0))]
        report = evaluate(split, recs, ks=[100, 1000], events=cfg.events, progress=p)
    engine.close()
    t = Table(title="recall@k on the held-out future (warm users / cold users)", title_justify="left")
    t.add_column("recommender")
    for k in report.ks:
        t.add_column(f"recall@{k} warm", justify="right")
        t.add_column(f"recall@{k} cold", justify="right")
    for r in report.results:
        t.add_row(r.name, *[f"{r.metrics[c].get(f'recall@{k}', float('nan')):.3f}"
                            for k in report.ks for c in ("warm", "cold")])
    out.print(t)
