"""Start `candgen serve ART` on a free port for a benchmark, wait until it is ready, read the CPU time of its
whole process tree (uvicorn's workers are child processes) and stop it again.

With several workers, "ready" means every worker accepts connections. uvicorn's workers share one listening
socket, and a worker that is still loading its engine accepts nothing. A load generator that connects as
soon as the first worker answers /readyz would put every keep-alive connection on that worker for the whole
run. `connections_by_process` (from `ss`) shows how the connections split.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from candgen.bench.http import Endpoint
from candgen.errors import CandgenError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def connections_by_process(port: int) -> dict[int, int] | None:
    """Established TCP connections per process on the listening side of local `port` (from `ss`, Linux);
    None when `ss` cannot be run. A connection queued but not yet accepted belongs to no process."""
    try:
        out = subprocess.run(["ss", "-Htnp", "state", "established", f"( sport = :{port} )"], capture_output=True,
                             text=True, timeout=5, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return dict(collections.Counter(int(p) for p in re.findall(r"pid=(\d+)", out)))


def accepting_processes(port: int, probes: int) -> int | None:
    """How many processes accept connections on 127.0.0.1:`port`: opens `probes` connections at once and counts
    the processes that hold their other ends (None without `ss`)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(probes):
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=2))
        time.sleep(0.05)  # the workers' event loops accept them
        by = connections_by_process(port)
    finally:
        for s in socks:
            s.close()
    return None if by is None else len(by)


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()
    except OSError:
        return None


def process_tree(root: int) -> list[int]:
    """`root` and every descendant, from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None:
                children.setdefault(int(st[1]), []).append(int(name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of a process and its live descendants (all threads)."""
    total = 0
    for pid in process_tree(root):
        st = _stat(pid)
        if st is not None:
            total += int(st[11]) + int(st[12])
    return total / os.sysconf("SC_CLK_TCK")


class ServiceProcess:
    """`candgen serve ART --workers N [--state URL]` on 127.0.0.1:free port; a context manager."""

    def __init__(self, art: Path, *, workers: int = 1, state: str | None = None, ready_timeout_s: float = 600.0,
                 log: Path | None = None) -> None:
        if not (Path(art) / "manifest.json").exists():
            raise CandgenError(f"{art}: not an artifacts directory (no manifest.json)")
        if workers < 1:
            raise CandgenError(f"--workers: got {workers}, expected 1 or more")
        self.art, self.workers, self.state = Path(art), workers, state
        self.ready_timeout_s = ready_timeout_s
        self.log = log
        self._own_log = False  # a log file we created is removed again by stop()
        self.proc: subprocess.Popen[bytes] | None = None
        self.endpoint = Endpoint("127.0.0.1", 0)

    def command(self, port: int) -> list[str]:
        """The server's command line (benchmarks override it to start a peer service the same way)."""
        cmd = [sys.executable, "-m", "candgen.cli.main", "serve", str(self.art), "--port", str(port),
               "--workers", str(self.workers)]
        return cmd + (["--state", self.state] if self.state else [])

    def start(self) -> Endpoint:
        import httpx

        port = free_port()
        cmd = self.command(port)
        # a file, not a pipe: nobody reads a pipe during the run, and a full one would block the server
        if self.log is None:
            fd, name = tempfile.mkstemp(prefix="candgen-bench-serve-", suffix=".log")
            os.close(fd)
            self.log, self._own_log = Path(name), True
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=out)
        self.endpoint = Endpoint("127.0.0.1", port)
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                msg = self.log.read_text(errors="replace")[-500:].strip()
                raise CandgenError(f"`{' '.join(cmd[1:4])}` exited with code {self.proc.returncode}: {msg}")
            try:
                # every worker must be ready; with several, probe a few times on fresh connections, and every
                # worker must accept connections (one still loading accepts none: see the module docstring)
                if all(httpx.get(f"{self.endpoint.url}/readyz", timeout=2).status_code == 200
                       for _ in range(2 * self.workers)) and self._all_workers_accept():
                    return self.endpoint
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise CandgenError(f"`{' '.join(cmd[1:4])}` was not ready after {self.ready_timeout_s:.0f} s")

    def _all_workers_accept(self) -> bool:
        if self.workers == 1:
            return True
        n = accepting_processes(self.endpoint.port, 8 * self.workers)
        return n is None or n >= self.workers  # without `ss` this cannot be checked

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise CandgenError("the service is not running")
        return self.proc.pid

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.pid)

    def worker_pids(self) -> list[int]:
        """The processes that answer requests: the children with several workers, else the server itself."""
        tree = process_tree(self.pid)
        return tree[1:] if self.workers > 1 and len(tree) > 1 else tree[:1]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._own_log and self.log is not None:
            self.log.unlink(missing_ok=True)
            self._own_log = False

    def __enter__(self) -> ServiceProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
