"""POST /v1/candidates answered from the gate (`fast_routes`) gives exactly what FastAPI's route gives: the same
answers for good requests, the same error answers for bad ones and for engine errors, the same metrics label."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from serve_fakes import FakeEngine

from candgen.config import ServeConfig
from candgen.errors import CandgenError, UnknownIdError
from candgen.serve.app import create_app
from candgen.serve.middleware import Gate
from candgen.serve.protocol import EngineNotReadyError, EngineOverloadedError

CFG = ServeConfig(max_body_bytes=4096, max_batch=3, max_k=500)


TAKEN: list[int] = []  # answers the fast route gave (not None)


def counted(app: FastAPI) -> FastAPI:
    """`app` with its fast handlers counting in TAKEN the requests they answer."""
    fast = next(m.kwargs["fast"] for m in app.user_middleware if m.cls is Gate)
    for key, (route, handler) in list(fast.items()):
        async def count(scope: Any, body: bytes, handler: Any = handler) -> Any:
            answer = await handler(scope, body)
            TAKEN.append(answer is not None)
            return answer
        fast[key] = (route, count)
    return app


@pytest.fixture()
def clients() -> Iterator[tuple[TestClient, TestClient, FakeEngine, FakeEngine]]:
    """(fast, plain) apps over two equal fake engines."""
    fast_engine, plain_engine = FakeEngine(), FakeEngine()
    TAKEN.clear()
    fast_app = counted(create_app(fast_engine, config=CFG, api_key=None))
    with TestClient(fast_app, raise_server_exceptions=False) as fast, \
            TestClient(create_app(plain_engine, config=CFG, api_key=None, fast_routes=False),
                       raise_server_exceptions=False) as plain:
        yield fast, plain, fast_engine, plain_engine


def comparable(r: httpx.Response) -> tuple[int, Any, dict[str, str]]:
    """Status, body without the server time, and the headers that matter."""
    body = r.json() if r.content else None
    if isinstance(body, dict):
        body.pop("took_ms", None)
    headers = {k: v for k, v in r.headers.items() if k in ("content-type", "retry-after")}
    return r.status_code, body, headers


GOOD = [
    {"user_id": "u1"},
    {"user_id": "u1", "k": 7},
    {"user_id": "u2", "k": 20, "context": {"device": "mobile"}, "exclude": ["i0", "i3"]},
    {"user_id": "u3", "k": 5, "explain": True},
    {"user_id": "ü \"quoted\" \\ id", "k": 3},
]


@pytest.mark.parametrize("body", GOOD)
def test_good_requests_get_the_same_answer_and_are_answered_by_the_fast_route(
        clients: tuple[TestClient, TestClient, FakeEngine, FakeEngine], body: dict[str, Any]) -> None:
    fast, plain, fast_engine, plain_engine = clients
    a, b = fast.post("/v1/candidates", json=body), plain.post("/v1/candidates", json=body)
    assert a.status_code == 200 and len(a.json()["candidates"]) > 0
    assert comparable(a) == comparable(b)
    assert "server-timing" in a.headers
    assert fast_engine.calls == plain_engine.calls == 1
    assert TAKEN == [True]


BAD: list[tuple[bytes, dict[str, str]]] = [
    (b'{"user_id": "a", ', {"content-type": "application/json"}),  # broken JSON
    (b"", {"content-type": "application/json"}),
    (b"[1, 2]", {"content-type": "application/json"}),
    (b'"just a string"', {"content-type": "application/json"}),
    (b"user_id=a", {"content-type": "text/plain"}),
    (b'{"user_id": "a"}', {"content-type": "text/plain"}),  # valid JSON, but not said to be JSON
    (b'{"user_id": "a"}', {"content-type": "application/vnd.api+json"}),  # FastAPI parses it; the fast route leaves it
    (b'{"user_id": "a", "k": 0}', {"content-type": "application/json"}),
    (b'{"user_id": "a", "k": "many"}', {"content-type": "application/json"}),
    (b'{"user_id": "a", "k": 600}', {"content-type": "application/json"}),  # above the configured max_k: app check
    (b'{"user_id": ""}', {"content-type": "application/json"}),
    (b'{"user_id": "a", "surprise": 1}', {"content-type": "application/json"}),
    (b'{"user_id": "a", "k": NaN}', {"content-type": "application/json"}),  # json.loads takes NaN, orjson does not
    (b'{"user_id": "a", "k": 1' + b"0" * 30 + b"}", {"content-type": "application/json"}),  # beyond 64-bit ints
]


@pytest.mark.parametrize(("content", "headers"), BAD)
def test_bad_requests_get_the_same_error_answer(clients: tuple[TestClient, TestClient, FakeEngine, FakeEngine],
                                                content: bytes, headers: dict[str, str]) -> None:
    fast, plain, *_ = clients
    a = fast.post("/v1/candidates", content=content, headers=headers)
    b = plain.post("/v1/candidates", content=content, headers=headers)
    assert comparable(a) == comparable(b)
    assert TAKEN == [False] if b"k\": 600" not in content else TAKEN == [True]  # max_k: checked by the handler
    if a.status_code == 200:  # FastAPI accepted it (a +json type): so did the app with the fast route
        return
    assert a.status_code in (400, 422) and set(a.json()["error"]) == {"code", "message", "field"}


@pytest.mark.parametrize("error", [UnknownIdError("unknown user 'x'"), EngineNotReadyError("loading"),
                                   EngineOverloadedError("busy"), CandgenError("bad input"),
                                   RuntimeError("engine bug")])
def test_engine_errors_get_the_same_error_answer(clients: tuple[TestClient, TestClient, FakeEngine, FakeEngine],
                                                 error: Exception) -> None:
    fast, plain, fast_engine, plain_engine = clients
    fast_engine.fail_with, plain_engine.fail_with = error, error
    a, b = fast.post("/v1/candidates", json={"user_id": "u1"}), plain.post("/v1/candidates", json={"user_id": "u1"})
    assert a.status_code >= 400 and comparable(a) == comparable(b)
    assert TAKEN == [True]  # answered by the fast route (a bug's 500 from the engine call too)


def test_an_error_no_handler_answers_reaches_the_outermost_handler() -> None:
    """An exception raised outside the engine call (here: while encoding) is what the app's last-resort handler
    answers (500), through the fast route as through FastAPI's."""
    fast_engine = FakeEngine()
    app = create_app(fast_engine, config=CFG, api_key=None)
    with TestClient(app, raise_server_exceptions=False) as c:
        fast_engine.candidates = lambda req: None  # type: ignore[method-assign,assignment,return-value]
        r = c.post("/v1/candidates", json={"user_id": "u1"})
    assert r.status_code == 500


def test_the_fast_route_counts_under_the_route_label(clients: tuple[TestClient, TestClient, FakeEngine, FakeEngine]
                                                     ) -> None:
    fast, plain, *_ = clients
    for c in (fast, plain):
        c.post("/v1/candidates", json={"user_id": "u1", "k": 3})
        text = c.get("/metrics").text
        line = next(x for x in text.splitlines()
                    if x.startswith("candgen_http_request_duration_seconds_count")
                    and 'endpoint="/v1/candidates"' in x and 'status="200"' in x)
        assert json.loads(line.rsplit(" ", 1)[1]) == 1.0
