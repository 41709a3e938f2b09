"""`candgen train`: dataset → artifacts directory."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from candgen.cli.app import app, out, progress
from candgen.cli.options import parse_time
from candgen.config import load_config


@app.command()
def train(
    data: Path = typer.Argument(..., help="dataset directory (DESIGN §2)"),
    out_dir: Path = typer.Option(..., "--out", help="artifacts directory to write"),
    until: str | None = typer.Option(None, help="use only events before this time (unix seconds or ISO-8601)"),
    config: Path | None = typer.Option(None, help="TOML config file"),
    epochs: int | None = typer.Option(None, help="override model.epochs"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
) -> None:
    """Train the two-tower model, build the index and all source state; write a self-contained artifacts dir."""
    from candgen.data.io import load_dataset
    from candgen.pipeline import restrict_until, train_artifacts

    cfg = load_config(config)
    if epochs is not None:
        cfg.model.epochs = epochs
    until_ts = parse_time(until, "--until") if until is not None else None
    with progress(quiet) as p:
        ds = restrict_until(load_dataset(data, progress=p), until_ts)
        summary = train_artifacts(ds, out_dir, config=cfg, progress=p)
    info = {
        "out": str(summary.out), "model_version": summary.model_version, "users": summary.n_users,
        "items": summary.n_items, "interactions": summary.n_interactions, "index": summary.index_kind,
        "seconds": {k: round(v, 2) for k, v in summary.seconds.items()},
    }
    if as_json:
        out.print_json(json.dumps(info))
    else:
        out.print(
            f"trained model {summary.model_version} on {summary.n_interactions:,} interactions "
            f"({summary.n_users:,} users, {summary.n_items:,} items); index {summary.index_kind}; "
            f"wrote {summary.out}"
        )
