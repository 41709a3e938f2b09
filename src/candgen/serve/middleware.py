"""The ASGI gate in front of the app: request timing, the body size limit, per-endpoint latency metrics.

Every answer carries `Server-Timing: app;dur=<ms>`, the server time from arrival to the answer.

A pure ASGI middleware (not Starlette's `BaseHTTPMiddleware`, which costs a task and a stream per
request). It reads the body itself, before any parsing, so an oversized body is refused with 413 from
its Content-Length alone, or as soon as a chunked upload crosses the limit, without being buffered.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from candgen.serve.errors import error_response
from candgen.serve.metrics import ServeMetrics

T0_KEY = "candgen.t0"  # scope key: perf_counter() when the request arrived (answers report took_ms from it)

# (scope, body) -> the answer, or None to pass the request on to the app
FastHandler = Callable[[Scope, bytes], Awaitable[Response | None]]


def header(scope: Scope, name: bytes) -> bytes | None:
    for k, v in scope.get("headers", ()):
        if k == name:
            return bytes(v)
    return None


class Gate:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, metrics: ServeMetrics,
                 fast: Mapping[tuple[str, str], tuple[Any, FastHandler]] | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        self.fast = fast if fast is not None else {}  # (method, path) -> (the app's route, handler)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        scope[T0_KEY] = t0
        status = 500  # if the app dies before answering, Starlette's outer handler answers 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # standard Server-Timing header: server time up to the answer (the body is built by now),
                # so clients and benchmarks can tell server time from network time
                ms = (time.perf_counter() - t0) * 1000.0
                message["headers"] = [*message.get("headers", ()), (b"server-timing", b"app;dur=%.3f" % ms)]
            await send(message)

        try:
            limited = await self._read_limited(scope, receive)
            if limited is None:  # client went away mid-upload: nobody to answer
                status = 499
            elif limited is False:
                await error_response(
                    413, "body_too_large", f"request body exceeds {self.max_body_bytes} bytes",
                    headers={"Connection": "close"},
                )(scope, receive, send_status)
            else:
                fast = self.fast.get((scope.get("method", ""), scope.get("path", ""))) if self.fast else None
                answer = None
                if fast is not None and not scope.get("root_path"):
                    scope["route"] = fast[0]  # the metrics label of the route it stands in for
                    answer = await fast[1](scope, limited.body if isinstance(limited, _Replay) else b"")
                if answer is not None:
                    await answer(scope, limited, send_status)
                else:
                    await self.app(scope, limited, send_status)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unrouted"  # never the raw path: unbounded labels
            self.metrics.observe_request(endpoint, scope.get("method", ""), status, time.perf_counter() - t0)

    async def _read_limited(self, scope: Scope, receive: Receive) -> Any:
        """The receive callable to hand on; False if the body is too large; None if the client disconnected."""
        length = header(scope, b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                n = -1  # unparseable: count while reading instead
            if n > self.max_body_bytes:
                return False
            if n == 0:
                return receive
        elif header(scope, b"transfer-encoding") is None:
            return receive  # no body at all (GET, DELETE, ...)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return False
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return _Replay(b"".join(chunks), receive)


class _Replay:
    """A receive callable that hands the app the body the gate buffered (`body`), then the server's own."""

    def __init__(self, body: bytes, receive: Receive) -> None:
        self.body, self._receive, self._replayed = body, receive, False

    async def __call__(self) -> Message:
        if not self._replayed:
            self._replayed = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        return await self._receive()  # later calls wait for the disconnect, as the server's own would
