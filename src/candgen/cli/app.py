"""The typer application every command module registers on, and the CLI's shared helpers."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

from candgen.types import Progress

app = typer.Typer(
    name="candgen",
    help="Candidate generation for recommender systems.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
import_app = typer.Typer(help="Import a public data set into the candgen dataset format.", no_args_is_help=True)
app.add_typer(import_app, name="import")

out = Console()
err = Console(stderr=True)


class BarProgress(Progress):
    """Rich progress bars with rate and ETA on stderr."""

    def __init__(self, rich: RichProgress) -> None:
        self._rich = rich
        self._tasks: dict[str, TaskID] = {}

    def task(self, name: str, total: float | None = None) -> None:
        if name in self._tasks:
            self._rich.reset(self._tasks[name], total=total)
        else:
            self._tasks[name] = self._rich.add_task(name, total=total, info="")

    def advance(self, name: str, n: float = 1, **fields: object) -> None:
        if name not in self._tasks:
            self.task(name)
        info = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
        self._rich.update(self._tasks[name], advance=n, info=info)

    def done(self, name: str) -> None:
        if name in self._tasks:
            t = self._tasks[name]
            total = self._rich.tasks[t].total if t < len(self._rich.tasks) else None
            if total is not None:
                self._rich.update(t, completed=total)


@contextmanager
def progress(quiet: bool = False) -> Iterator[Progress]:
    """A progress sink for library calls: rich bars on stderr, or nothing with --quiet / no terminal need."""
    if quiet:
        yield Progress()
        return
    rich = RichProgress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=False,
    )
    with rich:
        yield BarProgress(rich)


def fail(message: str, code: int = 2) -> None:
    """Print one clear error line and exit (no traceback)."""
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(code)


@app.command()
def version() -> None:
    """Print candgen's version and the versions of the libraries it serves with."""
    import faiss
    import numpy

    from candgen import __version__

    out.print(f"candgen {__version__} (numpy {numpy.__version__}, faiss {faiss.__version__})")
