"""Keep-alive connections spread evenly over the workers of `candgen serve --workers N`.

The workers share one listening socket, and a keep-alive connection stays with the worker that accepted
it. A client with few long-lived connections can therefore put all of them on one worker while the other
idles: 8 connections split 8/0 in `benchmarks/service/run.py`, where two workers then served like one.

Each worker counts the client connections it served in the last `window_s` (by the client's address and
port) and publishes the count every `publish_s` in a small file of a directory the workers share
(`runner.run` creates it and names it in `CANDGEN_BALANCE_DIR`). A worker holding more than its fair
share, ceil(total / live workers) plus a tenth, answers half its excess of next requests per interval with
`Connection: close`. The client reconnects, and the accept goes to whichever worker wakes first, most likely
an idle one; a connection that lands on the same worker again is closed again at a later publish, so the
split converges, and nothing is closed once it is even. The answer itself is complete; HTTP clients
reconnect on `Connection: close` without an error. A worker whose file is older than `stale_s` (stopped,
restarting) is not counted, and a worker judges nothing during its first `window_s`, while its counts
still cover only part of a window.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

from starlette.types import ASGIApp, Message, Receive, Scope, Send

BALANCE_ENV = "CANDGEN_BALANCE_DIR"
log = logging.getLogger(__name__)


class ConnectionBalancer:
    """One worker's view: which client connections it serves, and how many of them it should close."""

    def __init__(self, directory: str | Path, *, window_s: float = 1.0, publish_s: float = 0.2,
                 stale_s: float = 2.0, name: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not (window_s > 0 and publish_s > 0 and stale_s > 0):
            raise ValueError(f"window_s, publish_s and stale_s must be > 0; got {window_s}, {publish_s}, {stale_s}")
        self.directory = Path(directory)
        self.window_s, self.publish_s, self.stale_s = window_s, publish_s, stale_s
        self.name = name or str(os.getpid())
        self.clock = clock
        self._last_seen: dict[tuple[str, int], float] = {}
        self._next_publish = 0.0
        self._started: float | None = None
        self._excess = 0
        self.closed = 0  # connections this worker asked to close, for tests and metrics

    def note(self, client: tuple[str, int]) -> bool:
        """Record a request on `client`'s connection; True when its answer should close the connection."""
        now = self.clock()
        self._last_seen[client] = now
        self.tick(now)
        if self._excess > 0 and len(self._last_seen) > 1:
            self._excess -= 1
            del self._last_seen[client]
            self.closed += 1
            return True
        return False

    def tick(self, now: float | None = None) -> None:
        """Publish and judge, at most once per `publish_s`. Called on every request and by the worker's
        heartbeat (`BalancingMiddleware`), so that a worker without connections still publishes its 0: the
        others can only give connections up to a worker they see."""
        now = self.clock() if now is None else now
        if self._started is None:
            self._started = now
        if now >= self._next_publish:
            self._next_publish = now + self.publish_s
            self._excess = self._rebalance(now)

    def _rebalance(self, now: float) -> int:
        """Publish this worker's count, read the others', and return how many connections to give up."""
        cutoff = now - self.window_s
        for c in [c for c, t in self._last_seen.items() if t < cutoff]:
            del self._last_seen[c]
        mine = len(self._last_seen)
        try:
            self._publish(mine)
            others = self._read_others()
        except OSError:  # the shared directory is gone (the supervisor is stopping): balance nothing
            return 0
        if self._started is None or now - self._started < self.window_s:
            return 0  # the counts cover less than one window yet: publish, but judge nothing
        total = mine + sum(others)
        fair = math.ceil(total / (len(others) + 1))
        # a tenth of slack above the fair share: many sporadic connections make the counts of "seen in the last
        # second" wobble, and a wobble is no reason to close anything (8 connections: no slack)
        excess = mine - fair - fair // 10
        # half the excess per interval: the others' counts are up to one interval old, so closing all of it at
        # once would overshoot while the reconnections have not shown up there yet
        return (max(0, excess) + 1) // 2

    def _publish(self, count: int) -> None:
        tmp = self.directory / f".{self.name}.tmp"
        tmp.write_text(str(count))
        os.replace(tmp, self.directory / self.name)

    def _read_others(self) -> list[int]:
        wall = time.time()
        counts = []
        for entry in os.scandir(self.directory):
            if entry.name == self.name or entry.name.startswith("."):
                continue
            try:
                if wall - entry.stat().st_mtime > self.stale_s:
                    continue
                counts.append(int(Path(entry.path).read_text() or 0))
            except (OSError, ValueError):  # a worker replacing or removing its file meanwhile
                continue
        return counts


class BalancingMiddleware:
    """ASGI middleware: asks `balancer` about each HTTP request and adds `Connection: close` to the answer
    when the balancer says this worker should give the connection up (then calls `on_close`, a metric)."""

    def __init__(self, app: ASGIApp, balancer: ConnectionBalancer,
                 on_close: Callable[[], object] | None = None) -> None:
        self.app, self.balancer, self.on_close = app, balancer, on_close
        self._heartbeat: asyncio.Task[None] | None = None

    async def _beat(self) -> None:
        while True:
            try:
                self.balancer.tick()
            except Exception:  # never let a balancing hiccup end the heartbeat (or the worker)
                log.exception("connection balancer tick failed")
            await asyncio.sleep(self.balancer.publish_s)

    def _lifespan_receive(self, receive: Receive) -> Receive:
        """The worker's startup starts the heartbeat (publishing every interval, on the event loop like
        `note`); its shutdown stops it."""
        async def wrapped() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup" and self._heartbeat is None:
                self._heartbeat = asyncio.get_running_loop().create_task(self._beat())
            elif message["type"] == "lifespan.shutdown" and self._heartbeat is not None:
                self._heartbeat.cancel()
                self._heartbeat = None
            return message

        return wrapped

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, self._lifespan_receive(receive), send)
            return
        client = scope.get("client") if scope["type"] == "http" else None
        if not client or not self.balancer.note((str(client[0]), int(client[1]))):
            await self.app(scope, receive, send)
            return
        if self.on_close is not None:
            self.on_close()

        async def closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, closing)
