"""`candgen recommend`: offline candidates as JSON lines, through the same engine the service uses."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TextIO

import typer

from candgen.cli.app import app, err, progress
from candgen.cli.options import parse_time
from candgen.errors import CandgenError
from candgen.types import Request


def read_user_file(path: Path) -> list[str]:
    """One user id per line, no header; blank lines skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CandgenError(f"--users {path}: no such file") from None
    except UnicodeDecodeError as e:
        raise CandgenError(f"--users {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    users = [line.strip() for line in text.splitlines() if line.strip()]
    if not users:
        raise CandgenError(f"--users {path}: the file holds no user ids")
    return users


@app.command()
def recommend(
    art: Path = typer.Argument(..., help="artifacts directory written by `candgen train`"),
    user: list[str] = typer.Option([], "--user", help="a user id (repeat for several)"),
    users_file: Path | None = typer.Option(None, "--users", help="file with one user id per line, no header"),
    k: int = typer.Option(1000, "--k", help="candidates per user (1..10000)"),
    now: str | None = typer.Option(None, help="request time (unix seconds or ISO-8601); default: last training event"),
    out_file: Path | None = typer.Option(None, "--out", help="write JSON lines here instead of stdout"),
    explain: bool = typer.Option(False, "--explain", help="add each source's own score per candidate"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
) -> None:
    """Offline candidates as JSON lines; unknown users take the cold-start path."""
    from candgen.engine import Engine

    ids = list(user) + (read_user_file(users_file) if users_file is not None else [])
    if not ids:
        raise CandgenError("give at least one --user ID or a --users FILE")
    if not 1 <= k <= 10_000:
        raise CandgenError(f"--k: got {k}, expected an integer between 1 and 10000")
    engine = Engine.load(art, deadlines=False)  # offline: wait for every source
    t = float(parse_time(now, "--now")) if now is not None else engine.now_default
    sink: TextIO = open(out_file, "w", encoding="utf-8") if out_file is not None else sys.stdout  # noqa: SIM115
    try:
        with progress(quiet or out_file is None) as p:
            p.task("recommend", total=len(ids))
            for uid in ids:
                res = engine.candidates(Request(user_id=uid, k=k, explain=explain, now=t))
                cands = []
                for i, item in enumerate(res.item_ids):
                    c: dict[str, object] = {"item_id": item, "score": round(float(res.scores[i]), 6),
                                            "sources": res.sources[i]}
                    if res.explain is not None:
                        c["explain"] = res.explain.get(item, {})
                    cands.append(c)
                row = {"user_id": uid, "model_version": res.model_version, "variant": res.variant,
                       "candidates": cands}
                if res.degraded:
                    row["degraded"] = res.degraded
                sink.write(json.dumps(row) + "\n")
                p.advance("recommend", 1)
    finally:
        if out_file is not None:
            sink.close()
        engine.close()
    if out_file is not None and not quiet:
        err.print(f"wrote {len(ids)} users x up to {k} candidates to {out_file}")
