"""`candgen evaluate`: time-split a dataset, train candgen and fit the baselines on the past, and measure the
blend, each source (alone and left out of the blend) and every baseline on the future, in one table."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import typer

from candgen.cli.app import app, out, progress
from candgen.cli.options import parse_ks, parse_time
from candgen.config import Config
from candgen.errors import CandgenError
from candgen.types import Progress

DEFAULT_BASELINES = "popular,recent_popular,item_knn,als,ease"


@app.command()
def evaluate(
    data: Path = typer.Argument(..., help="dataset directory (DESIGN §2)"),
    until: str | None = typer.Option(
        None, help="test on events at or after this time (unix seconds or ISO-8601); train on those before"
    ),
    test_fraction: float | None = typer.Option(
        None, "--test-fraction", help="test on the last F of the interactions by time (default 0.2)"
    ),
    k: str = typer.Option("50,100,200", "--k", help="cut-offs, comma-separated"),
    baselines: str = typer.Option(DEFAULT_BASELINES, help="baselines to evaluate, comma-separated, or none"),
    candgen: bool = typer.Option(
        True, "--candgen/--no-candgen", help="train and evaluate candgen's blend and sources (or baselines only)"
    ),
    artifacts: Path | None = typer.Option(
        None, "--artifacts",
        help="evaluate these artifacts (trained before the cutoff) instead of training into a temporary dir",
    ),
    train_first: bool = typer.Option(False, "--train", help="train into --artifacts first (and keep them)"),
    config: Path | None = typer.Option(None, help="TOML config file (event weights, model and source settings)"),
    report: Path | None = typer.Option(None, "--report", help="write report.md, report.json and a plot here"),
    as_json: bool = typer.Option(False, "--json", help="print the results as JSON"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
) -> None:
    """Recall, precision, NDCG and hit rate at k of candgen and the baselines on a time split, warm and cold
    users apart, plus coverage, diversity, Gini and novelty."""
    from candgen.config import load_config
    from candgen.data.io import load_dataset
    from candgen.data.split import time_split
    from candgen.eval.baselines import make_baselines
    from candgen.eval.evaluate import evaluate as run_evaluation

    if not candgen and (artifacts is not None or train_first):
        raise CandgenError("--no-candgen cannot be combined with --artifacts or --train")
    if train_first and artifacts is None:
        raise CandgenError("--train needs --artifacts DIR to write the trained artifacts to")
    if until is not None and test_fraction is not None:
        raise CandgenError("give either --until or --test-fraction, not both")
    if test_fraction is not None and not 0.0 < test_fraction < 1.0:
        raise CandgenError(f"--test-fraction: got {test_fraction}, expected a fraction between 0 and 1 (exclusive)")
    ks = parse_ks(k)
    until_ts = parse_time(until, "--until") if until is not None else None
    names = [n.strip() for n in baselines.split(",") if n.strip()]
    if not names:
        raise CandgenError("--baselines: expected names like popular,item_knn, or none")
    recommenders: list[Any] = [] if names == ["none"] else make_baselines(names)
    if not recommenders and not candgen:
        raise CandgenError("nothing to evaluate: --baselines none with --no-candgen")
    cfg = load_config(config)
    with progress(quiet) as p, tempfile.TemporaryDirectory(prefix="candgen-eval-") as tmp:
        ds = load_dataset(data, progress=p)
        if until_ts is not None:
            split = time_split(ds, until=until_ts)
        else:
            split = time_split(ds, fraction=1.0 - (0.2 if test_fraction is None else test_fraction))
        engine, trained_s = None, 0.0
        if candgen:
            art, train = (artifacts, train_first) if artifacts is not None else (Path(tmp) / "art", True)
            t0 = time.perf_counter()
            engine = _open_engine(art, split=split, train_first=train, config=cfg, progress=p)
            trained_s = time.perf_counter() - t0 if train else 0.0
        try:
            rows = recommenders
            if engine is not None:
                from candgen.eval.funnel import funnel_recommenders

                now = float(split.cutoff if split.cutoff is not None else engine.now_default)
                rows = [*funnel_recommenders(engine, now=now), *recommenders]
            result = run_evaluation(split, rows, ks=ks, events=cfg.events, progress=p)
            if trained_s:
                result.notes.append(f"candgen (model, index, sources) trained on the train part in {trained_s:.0f} s")
        finally:
            if engine is not None:
                engine.close()  # before the temporary artifacts go away
    paths = result.write(report) if report is not None else []
    if as_json:
        d = result.to_dict()
        if report is not None:
            d["report_files"] = [str(x) for x in paths]
        out.print_json(json.dumps(d))
        return
    out.print(result.to_table())
    for note in result.notes:
        out.print(f"note: {note}")
    if paths:
        out.print(f"wrote {', '.join(str(x) for x in paths)}")


def _open_engine(art: Path, *, split: Any, train_first: bool, config: Config, progress: Progress) -> Any:
    """The engine to evaluate, trained on the train part first if asked; refuses artifacts that saw the test
    period (trained on data at or after the cutoff)."""
    from candgen.artifacts import Manifest
    from candgen.engine import Engine

    if train_first:
        from candgen.pipeline import train_artifacts

        train_artifacts(split.train, art, config=config, progress=progress)
    end = int(Manifest.read(art).data_end_time)
    if split.cutoff is not None and end >= split.cutoff:
        raise CandgenError(
            f"{art} was trained on data up to {end}, at or after the split cutoff {split.cutoff}: it has seen "
            f"the test period; train with `candgen train --until {split.cutoff}` or use --train"
        )
    return Engine.load(art, deadlines=False)
