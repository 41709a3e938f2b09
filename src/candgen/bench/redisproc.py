"""A private `redis-server` that a benchmark or test may stop and restart (the shared one on 6379 must stay
up for everyone else): append-only, so that a restart brings the data back, on 127.0.0.1 only."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry


def start_redis(port: int, workdir: Path, *, fsync_always: bool = False,
                timeout_s: float = 10.0) -> subprocess.Popen[bytes]:
    """Start redis-server on `port` with its files in `workdir` and wait until it answers PING; RuntimeError
    when it does not within `timeout_s` (the process is killed). `fsync_always` syncs the AOF on every
    write, so that a kill -9 loses nothing that was acknowledged."""
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = ["redis-server", "--port", str(port), "--save", "", "--appendonly", "yes", "--dir", str(workdir),
           "--bind", "127.0.0.1"]
    if fsync_always:
        cmd += ["--appendfsync", "always"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    # one attempt per PING (redis-py retries with backoff by default: seconds when something else holds the
    # port and answers nothing), and the process is checked first: one that exited is not waited for
    client = redis.Redis(port=port, socket_connect_timeout=0.1, socket_timeout=0.5, retry=Retry(NoBackoff(), 0))
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                client.ping()
                return proc
            except (redis.ConnectionError, redis.TimeoutError):  # not up yet, or something else holds the port
                time.sleep(0.02)
    finally:
        client.close()
    proc.kill()
    proc.wait()
    raise RuntimeError(f"redis-server did not start on port {port} (exit code {proc.returncode})")


def stop_redis(proc: subprocess.Popen[bytes], *, timeout_s: float = 10.0) -> None:
    """Stop it cleanly (SIGTERM, which flushes the AOF) and wait for it."""
    proc.terminate()
    proc.wait(timeout=timeout_s)
