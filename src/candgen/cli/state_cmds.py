"""`candgen state snapshot` and `candgen state info`: snapshots of the shared write log (candgen.snapshot) by
hand, and what the log and its snapshots hold."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from candgen.cli.app import app, out
from candgen.errors import CandgenError

state_app = typer.Typer(help="The shared write log: snapshots and trimming.", no_args_is_help=True)
app.add_typer(state_app, name="state")

ART_HELP = "artifacts directory written by `candgen train`"
STATE_HELP = "state URL (default: the journal beside the artifacts), e.g. redis://HOST:PORT/DB?prefix=NAME"


@state_app.command("snapshot")
def snapshot(
    art: Path = typer.Argument(..., help=ART_HELP),
    state: str | None = typer.Option(None, "--state", help=STATE_HELP),
    trim: bool = typer.Option(True, "--trim/--no-trim", help="trim the log up to the snapshot before this one"),
) -> None:
    """Fold the log into a new snapshot of these artifacts now and trim it (what the serving job does)."""
    from candgen.artifacts import Manifest
    from candgen.snapshot import take_snapshot_leased
    from candgen.state import open_state

    Manifest.read(art)  # a clear error before anything is opened
    with open_state(state, art_dir=art) as store:
        res = take_snapshot_leased(art, store, trim=trim)
    if res is None:
        raise CandgenError("another worker is taking a snapshot of these artifacts; try again in a while")
    took = sum(res.seconds.values())
    if res.meta is None:
        since = f"snapshot {res.base.generation} (seq {res.base.seq})" if res.base is not None else "the start"
        out.print(f"nothing new since {since}: no snapshot written ({took:.1f} s)", highlight=False)
        return
    m = res.meta
    base = f"snapshot {res.base.generation}" if res.base is not None else "the start of the log"
    out.print(f"snapshot {m.generation} of artifacts {m.key} (model {m.model_version}) at seq {m.seq}: "
              f"{m.records} records, {m.size / 1e6:.1f} MB; replayed {res.replayed} records after {base}, "
              f"trimmed {res.trimmed} ({took:.1f} s)", highlight=False, soft_wrap=True)


@state_app.command("info")
def info(
    art: Path = typer.Argument(..., help=ART_HELP),
    state: str | None = typer.Option(None, "--state", help=STATE_HELP),
) -> None:
    """The log's length and trim point, and every snapshot in the store (these artifacts' and others')."""
    from candgen.artifacts import Manifest
    from candgen.config import Config
    from candgen.snapshot import key_of, list_snapshots
    from candgen.state import open_state

    manifest = Manifest.read(art)
    mine = key_of(manifest, Config.from_dict(manifest.config))
    with open_state(state, art_dir=art) as store:
        appended, trimmed, tail = store.appended(), store.trimmed_upto(), store.tail_cursor()
        metas = list_snapshots(store)
    out.print(f"log {store.url}: appended {appended} records, newest seq {tail}, "
              f"trimmed up to {trimmed or 'nothing'}", highlight=False, soft_wrap=True)
    if not metas:
        out.print("no snapshots", highlight=False)
    now = time.time()
    for m in metas:
        whose = "these artifacts" if m.key == mine else f"other artifacts (model {m.model_version})"
        out.print(f"  {m.name}: seq {m.seq}, {m.records} records, {m.size / 1e6:.1f} MB, "
                  f"{(now - m.created_at) / 60:.0f} min old, {whose}", highlight=False, soft_wrap=True)
