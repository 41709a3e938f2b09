"""Dataset commands: `generate`, `validate`, `import movielens`, `fetch`."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.table import Table

from candgen.cli.app import app, import_app, out, progress


def _when(ts: int) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


@app.command()
def generate(
    out_dir: Path = typer.Option(..., "--out", help="directory to write the dataset to (Parquet)"),
    users: int = typer.Option(10_000, help="number of users (about 5% of them new: no interactions)"),
    items: int = typer.Option(20_000, help="number of items (about 3% of them new: no interactions)"),
    days: int = typer.Option(30, help="days of interactions"),
    seed: int = typer.Option(0, help="random seed; the same seed gives the same world"),
    interactions_per_user: float = typer.Option(20.0, help="average interactions per user"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
) -> None:
    """Write a synthetic world with planted structure (topics, Zipf popularity, homophily, viral bursts)."""
    from candgen.data.synthetic import generate_world

    with progress(quiet) as p:
        s = generate_world(out_dir, users=users, items=items, days=days, seed=seed,
                           interactions_per_user=interactions_per_user, progress=p)
    if as_json:
        out.print_json(json.dumps(s.to_dict()))
        return
    out.print(
        f"wrote {s.out_dir}: {s.users:,} users ({s.new_users:,} new), {s.items:,} items ({s.new_items:,} new), "
        f"{s.interactions:,} interactions, {s.social_edges:,} social edges, {s.topics} topics, "
        f"{s.viral_items} viral items; {_when(s.start)} .. {_when(s.end)}; {s.seconds:.1f} s"
    )


@app.command()
def validate(
    data: Path = typer.Argument(..., help="dataset directory (DESIGN §2)"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
    quiet: bool = typer.Option(True, "--quiet/--progress", help="progress bars while reading"),
) -> None:
    """Check a dataset directory and print a summary, or the first error (exit code 2)."""
    from candgen.data.io import validate_dataset

    with progress(quiet) as p:
        s = validate_dataset(data, progress=p)
    if as_json:
        out.print_json(json.dumps(s.to_dict()))
        return
    t = Table(title=f"dataset {s.path}", show_header=False)
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_row("files", ", ".join(s.files.values()))
    t.add_row("interactions", f"{s.interactions:,}")
    t.add_row("users", f"{s.users:,} ({s.new_users:,} new: no interactions)")
    t.add_row("items", f"{s.items:,} ({s.new_items:,} new: no interactions)")
    t.add_row("time span", f"{_when(s.first_timestamp)} .. {_when(s.last_timestamp)}")
    t.add_row("events", ", ".join(f"{e} {n:,} ({n / s.interactions:.1%})" for e, n in s.events.items()))
    t.add_row("social edges", f"{s.social_edges:,}")
    t.add_row("item tags", f"{s.tags:,}")
    t.add_row("skipped rows", ", ".join(f"{k} {v}" for k, v in s.skipped.items()) or "none")
    out.print(t)
    out.print("valid")


@import_app.command("movielens")
def import_movielens_cmd(
    src: Path = typer.Argument(..., help="a MovieLens 100K / 1M / latest(-small) directory or .zip"),
    out_dir: Path = typer.Option(..., "--out", help="directory to write the dataset to (Parquet)"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
) -> None:
    """Convert MovieLens ratings, movies (genres and user tags become tags) and users to the dataset format."""
    from candgen.data.movielens import import_movielens

    s = import_movielens(src, out_dir)
    if as_json:
        out.print_json(json.dumps(s.to_dict()))
        return
    out.print(f"imported {s.variant} into {s.out_dir}: {s.interactions:,} interactions, {s.items:,} items, "
              f"{s.users:,} user rows, {s.tags:,} tags")


@app.command()
def fetch(
    name: str = typer.Argument(..., help="movielens-100k | movielens-1m | movielens-latest-small"),
    out_dir: Path = typer.Option(..., "--out", help="directory to write the dataset to (Parquet)"),
    base_url: str | None = typer.Option(None, help="download from this base URL (default: GroupLens, or "
                                                   "$CANDGEN_DATASETS_URL)"),
    no_verify: bool = typer.Option(False, "--no-verify", help="import even when no checksum is known"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
) -> None:
    """Download a public data set, verify its checksum and import it."""
    from candgen.data.fetch import fetch_dataset

    with progress(quiet) as p:
        s = fetch_dataset(name, out_dir, base_url=base_url, verify=not no_verify, progress=p)
    if as_json:
        out.print_json(json.dumps({"name": s.name, "url": s.url, "bytes": s.bytes, "sha256": s.sha256,
                                   "checked": s.checked, "imported": s.imported.to_dict()}))
        return
    i = s.imported
    out.print(f"fetched {s.url} ({s.bytes:,} bytes, sha256 {s.sha256}, checked: {s.checked}); imported into "
              f"{i.out_dir}: {i.interactions:,} interactions, {i.items:,} items, {i.users:,} user rows")
