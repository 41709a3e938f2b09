"""Start the HTTP service under uvicorn with N worker processes (`candgen serve`).

Each worker imports `candgen.serve.factory:make_app` and opens its own engine; the artifacts should be
memory-mapped by the engine so that workers share the index pages. With more than one worker, online
state (events, caches) must live in a shared store (`--state redis://...`) or each worker sees only its
own. SIGHUP reloads the artifacts in place (one worker: the app's handler swaps the engine's runtime; several
workers: uvicorn's supervisor restarts them one at a time, each loading before it accepts connections).
Several workers also spread keep-alive connections evenly (`candgen.serve.balance`).
SIGTERM (and Ctrl-C) shut down gracefully: uvicorn stops accepting, finishes in-flight requests
(up to `GRACEFUL_SHUTDOWN_S`), then the app closes its engine.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import tempfile

from candgen.config import CONFIG_ENV
from candgen.errors import CandgenError
from candgen.serve.app import LOAD_BEFORE_SERVING_ENV
from candgen.serve.balance import BALANCE_ENV
from candgen.serve.factory import ART_ENV, STATE_ENV

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
GRACEFUL_SHUTDOWN_S = 30
APP = "candgen.serve.factory:make_app"


def check_port(host: str, port: int) -> None:
    """Raise a clear CandgenError if nothing could listen on host:port (taken, or no such address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # the same option uvicorn sets: a port in TIME_WAIT after a restart is not "taken"
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            reason = "it is already in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
            raise CandgenError(f"cannot listen on {host}:{port}: {reason}") from None


def run(
    art: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    state_url: str | None = None,
    log_level: str = "warning",
    config_path: str | None = None,
) -> None:
    """Serve the artifacts at `art` until SIGTERM/SIGINT; blocks. Checks arguments and the port first."""
    import uvicorn

    if workers < 1:
        raise CandgenError(f"--workers: got {workers}, expected 1 or more")
    if log_level not in LOG_LEVELS:
        raise CandgenError(f"--log-level: got {log_level!r}, expected one of {', '.join(LOG_LEVELS)}")
    check_port(host, port)
    os.environ[ART_ENV] = str(art)
    for name, value in ((STATE_ENV, state_url), (CONFIG_ENV, config_path)):
        if value:
            os.environ[name] = value
        else:
            os.environ.pop(name, None)
    # several workers: each loads its engine before it accepts connections, so that a rolling restart
    # (uvicorn restarts the workers one by one on SIGHUP to the main process) fails no request
    # and they spread keep-alive connections evenly through a directory they share (`serve.balance`)
    balance_dir = None
    if workers > 1:
        os.environ[LOAD_BEFORE_SERVING_ENV] = "1"
        shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        balance_dir = tempfile.mkdtemp(prefix="candgen-serve-", dir=shm)
        os.environ[BALANCE_ENV] = balance_dir
    else:
        os.environ.pop(LOAD_BEFORE_SERVING_ENV, None)
        os.environ.pop(BALANCE_ENV, None)
    try:
        uvicorn.run(
            APP, factory=True, host=host, port=port, workers=workers, log_level=log_level,
            access_log=log_level in ("info", "debug", "trace"),
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
            server_header=False,
        )
    finally:
        if balance_dir is not None:
            shutil.rmtree(balance_dir, ignore_errors=True)
