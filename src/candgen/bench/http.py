"""A minimal HTTP/1.1 keep-alive client on asyncio streams, for the load generator.

httpx costs ~0.3-0.5 ms of client CPU per request; on a 2-core box shared with the server that makes the
client the bottleneck. This client only writes a request and reads status, headers and body
(Content-Length or chunked), ~10x cheaper, so the server is what gets measured.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from urllib.parse import urlsplit

from candgen.errors import CandgenError


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a service listens: host and port of a plain-HTTP base URL."""

    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def parse_url(url: str) -> Endpoint:
    """'http://HOST:PORT' → Endpoint; a clear CandgenError for anything else (https, no host, bad port, a path)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise CandgenError(f"URL {url!r}: {e}") from None
    if parts.scheme != "http":
        raise CandgenError(f"URL {url!r}: expected http://HOST:PORT (plain HTTP; https is not supported)")
    if not parts.hostname:
        raise CandgenError(f"URL {url!r}: no host; expected http://HOST:PORT")
    if parts.path not in ("", "/") or parts.query:
        raise CandgenError(f"URL {url!r}: expected the service's base URL without a path")
    return Endpoint(parts.hostname, port or 80)


class HttpError(Exception):
    """The connection failed or the answer was not valid HTTP/1.1."""


class Connection:
    """One keep-alive connection; `request` is not safe to call concurrently (one per client task)."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._host_header = f"Host: {endpoint.host}:{endpoint.port}\r\n".encode()

    async def _open(self) -> None:
        try:
            self._reader, self._writer = await asyncio.open_connection(self.endpoint.host, self.endpoint.port)
        except OSError as e:
            raise HttpError(f"cannot connect to {self.endpoint.url}: {e.strerror or e}") from None

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        self._reader = self._writer = None

    async def request(self, method: str, path: str, body: bytes | None = None,
                      headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """Send one request and return (status, body); reconnects once if the server closed an idle connection."""
        for attempt in (0, 1):
            if self._writer is None:
                await self._open()
            try:
                return await self._exchange(method, path, body, headers)
            except (OSError, asyncio.IncompleteReadError, HttpError) as e:
                await self.close()
                if attempt == 1:
                    raise HttpError(f"{method} {path}: {e}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _exchange(self, method: str, path: str, body: bytes | None,
                        headers: dict[str, str] | None) -> tuple[int, bytes]:
        assert self._reader is not None and self._writer is not None
        head = [f"{method} {path} HTTP/1.1\r\n".encode(), self._host_header]
        if body is not None:
            head.append(b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body))
        for name, value in (headers or {}).items():
            head.append(f"{name}: {value}\r\n".encode())
        head.append(b"\r\n")
        self._writer.write(b"".join(head) + (body or b""))
        raw = await self._reader.readuntil(b"\r\n\r\n")
        status_line, _, rest = raw.partition(b"\r\n")
        fields = status_line.split(b" ", 2)
        if len(fields) < 2 or not fields[0].startswith(b"HTTP/1.") or not fields[1].isdigit():
            raise HttpError(f"not an HTTP/1.1 answer: {status_line[:80]!r}")
        status = int(fields[1])
        length, chunked, close = -1, False, False
        for line in rest.lower().split(b"\r\n"):
            key, _, val = line.partition(b":")
            if key == b"content-length":
                length = int(val.strip())
            elif key == b"transfer-encoding" and b"chunked" in val:
                chunked = True
            elif key == b"connection" and b"close" in val:
                close = True
        if chunked:
            data = await self._read_chunked()
        elif length >= 0:
            data = await self._reader.readexactly(length)
        else:  # no length: the body runs until the server closes
            data = await self._reader.read()
            close = True
        if close:
            await self.close()
        return status, data

    async def _read_chunked(self) -> bytes:
        assert self._reader is not None
        parts: list[bytes] = []
        while True:
            size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            if size == 0:
                await self._reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append(await self._reader.readexactly(size))
            await self._reader.readexactly(2)
