"""Entry point of the `candgen` console script: registers every command module, turns errors into exit 2."""

from __future__ import annotations

import sys

import click
import typer

from candgen.cli.app import app, fail
from candgen.config import ConfigError
from candgen.errors import CandgenError

# Each module registers its commands on `app` when imported.
from candgen.cli import data_cmds  # noqa: F401, E402  isort: skip
from candgen.cli import serve_cmds  # noqa: F401, E402  isort: skip
from candgen.cli import eval_cmds  # noqa: F401, E402  isort: skip
from candgen.cli import index_cmds  # noqa: F401, E402  isort: skip
from candgen.cli import train_cmds  # noqa: F401, E402  isort: skip
from candgen.cli import recommend_cmds  # noqa: F401, E402  isort: skip
from candgen.cli import demo  # noqa: F401, E402  isort: skip
from candgen.cli import bench_cmds  # noqa: F401, E402  isort: skip
from candgen.cli import state_cmds  # noqa: F401, E402  isort: skip

try:  # typer >= 0.16 vendors its own click; usage errors come from there
    from typer._click.exceptions import ClickException as _TyperClickException
except ImportError:  # pragma: no cover - older typer uses click itself
    _TyperClickException = click.ClickException  # type: ignore[misc, assignment]
USAGE_ERRORS = (click.ClickException, _TyperClickException)
ABORTS = (click.exceptions.Abort, typer.Abort)


def main(argv: list[str] | None = None) -> None:
    try:
        rc = app(args=argv, standalone_mode=False)
    except (CandgenError, ConfigError) as e:
        fail(str(e), getattr(e, "exit_code", 2))
    except ABORTS:
        fail("aborted", 130)
    except USAGE_ERRORS as e:
        e.show()
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
