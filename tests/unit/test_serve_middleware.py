"""The ASGI gate driven directly (disconnects, odd headers), and a reload racing another reload."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from fastapi.testclient import TestClient
from serve_fakes import FakeEngine

from candgen.config import ServeConfig
from candgen.serve.app import create_app
from candgen.serve.metrics import ServeMetrics
from candgen.serve.middleware import T0_KEY, Gate


def scope(method: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {"type": "http", "method": method, "path": "/x", "headers": headers}


def drive(messages: list[dict[str, Any]], headers: list[tuple[bytes, bytes]], limit: int = 10) -> tuple[list, list]:
    """Run the gate around an app that records the body it reads; returns (sent messages, bodies read)."""
    read: list[bytes] = []
    sent: list[dict[str, Any]] = []

    async def app(sc: dict, receive: Any, send: Any) -> None:
        assert T0_KEY in sc
        msg = await receive()
        read.append(msg.get("body", b""))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    it = iter(messages)

    async def receive() -> dict[str, Any]:
        return next(it)

    async def send(m: dict[str, Any]) -> None:
        sent.append(m)

    asyncio.run(Gate(app, max_body_bytes=limit, metrics=ServeMetrics())(scope("POST", headers), receive, send))
    return sent, read


def test_a_chunked_body_under_the_limit_is_replayed_whole() -> None:
    sent, read = drive([{"type": "http.request", "body": b"abc", "more_body": True},
                        {"type": "http.request", "body": b"def", "more_body": False}],
                       [(b"transfer-encoding", b"chunked")])
    assert read == [b"abcdef"] and sent[0]["status"] == 200
    assert any(k == b"server-timing" for k, _ in sent[0]["headers"])


def test_a_client_that_disconnects_mid_upload_gets_no_answer_and_the_app_is_not_called() -> None:
    sent, read = drive([{"type": "http.request", "body": b"abc", "more_body": True}, {"type": "http.disconnect"}],
                       [(b"transfer-encoding", b"chunked")])
    assert sent == [] and read == []


def test_an_unparseable_content_length_is_counted_while_reading() -> None:
    sent, read = drive([{"type": "http.request", "body": b"x" * 11, "more_body": False}],
                       [(b"content-length", b"eleven")])
    assert sent[0]["status"] == 413 and read == []
    sent, read = drive([{"type": "http.request", "body": b"x" * 5, "more_body": False}],
                       [(b"content-length", b"five")])
    assert sent[0]["status"] == 200 and read == [b"xxxxx"]


def test_a_request_without_a_body_is_passed_through() -> None:
    sent, read = drive([{"type": "http.request", "body": b"", "more_body": False}], [])
    assert sent[0]["status"] == 200 and read == [b""]


def test_lifespan_and_other_scopes_pass_through() -> None:
    seen: list[str] = []

    async def app(sc: dict, receive: Any, send: Any) -> None:
        seen.append(sc["type"])

    async def nothing() -> dict[str, Any]:
        return {}

    async def ignore(m: dict[str, Any]) -> None:
        return None

    asyncio.run(Gate(app, max_body_bytes=1, metrics=ServeMetrics())({"type": "lifespan"}, nothing, ignore))
    assert seen == ["lifespan"]


class BlockingReload(FakeEngine):
    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def reload(self, art_path: str | None) -> str:
        self.entered.set()
        self.release.wait(timeout=10)
        return super().reload(art_path)


def test_a_second_reload_while_one_runs_is_503() -> None:
    engine = BlockingReload()
    with TestClient(create_app(engine, config=ServeConfig(), api_key=None)) as c:
        first: list[Any] = []
        t = threading.Thread(target=lambda: first.append(c.post("/v1/admin/reload")))
        t.start()
        assert engine.entered.wait(timeout=10)
        r = c.post("/v1/admin/reload")
        assert r.status_code == 503 and r.json()["error"]["code"] == "reload_in_progress"
        assert c.post("/v1/candidates", json={"user_id": "a", "k": 1}).status_code == 200  # reads go on
        engine.release.set()
        t.join(timeout=10)
        assert first[0].json() == {"model_version": "v2"}
        assert c.post("/v1/admin/reload").json() == {"model_version": "v3"}
