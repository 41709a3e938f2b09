"""`candgen serve`: the HTTP service (DESIGN §4) over an artifacts directory."""

from __future__ import annotations

from pathlib import Path

import typer

from candgen.cli.app import app, err


@app.command()
def serve(
    art: Path = typer.Argument(..., help="artifacts directory written by `candgen train`"),
    host: str = typer.Option("127.0.0.1", help="address to listen on (0.0.0.0 for every interface)"),
    port: int = typer.Option(8000, min=1, max=65535, help="TCP port"),
    state: str | None = typer.Option(None, "--state", help="state URL: memory:// (default) or redis://HOST:PORT/DB"),
    workers: int = typer.Option(1, min=1, help="worker processes (share state through --state redis://...)"),
    log_level: str = typer.Option("warning", help="critical, error, warning, info (adds access logs), debug"),
    config: Path | None = typer.Option(
        None, help="TOML config file: its [serve] table (limits, deadlines) applies over the artifacts' config"
    ),
) -> None:
    """Serve candidates over HTTP until SIGTERM or Ctrl-C (writes need CANDGEN_API_KEY when it is set)."""
    from candgen.artifacts import Manifest
    from candgen.serve.runner import check_port, run

    manifest = Manifest.read(art)  # a clear error (exit 2) before anything starts
    check_port(host, port)
    if workers > 1 and not state:
        err.print("[yellow]warning:[/] several workers with the embedded state: each worker keeps its own events "
                  "and caches; use --state redis://... to share them", highlight=False, soft_wrap=True)
    err.print(f"serving model {manifest.model_version} from {art} on http://{host}:{port} "
              f"({workers} worker{'s' if workers > 1 else ''}); API docs at http://{host}:{port}/docs",
              highlight=False, soft_wrap=True)
    run(str(art), host=host, port=port, workers=workers, state_url=state, log_level=log_level,
        config_path=str(config) if config else None)
