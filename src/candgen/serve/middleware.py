"""The ASGI gate in front of the app: request timing, the body size limit, per-endpoint latency metrics.

Every answer carries `Server-Timing: app;dur=<ms>`, the server time from arrival to the answer.

A pure ASGI middleware (not Starlette's `BaseHTTPMiddleware`, which costs a task and a stream per
request). It reads the body itself, before any parsing, so an oversized body is refused with 413 from
its Content-Length alone, or as soon as a chunked upload crosses the limit, without being buffered.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from candgen.serve.errors import error_response
from candgen.serve.metrics import ServeMetrics

T0_KEY = "candgen.t0"  # scope key: perf_counter() when the request arrived (answers report took_ms from it)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for k, v in scope.get("headers", ()):
        if k == name:
            return bytes(v)
    return None


class Gate:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, metrics: ServeMetrics) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

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
                await self.app(scope, limited, send_status)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unrouted"  # never the raw path: unbounded labels
            self.metrics.observe_request(endpoint, scope.get("method", ""), status, time.perf_counter() - t0)

    async def _read_limited(self, scope: Scope, receive: Receive) -> Any:
        """The receive callable to hand on; False if the body is too large; None if the client disconnected."""
        length = _header(scope, b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                n = -1  # unparseable: count while reading instead
            if n > self.max_body_bytes:
                return False
            if n == 0:
                return receive
        elif _header(scope, b"transfer-encoding") is None:
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
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls wait for the disconnect, as the server's own would

        return replay
