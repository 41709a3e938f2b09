"""Every error path of the HTTP API answers `{"error": {"code", "message", "field"}}` and leaves state intact."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from serve_fakes import FakeEngine, SlowLoadingFactory

from candgen.config import ServeConfig
from candgen.errors import CandgenError
from candgen.serve.app import create_app
from candgen.serve.errors import field_path, validation_error
from candgen.serve.protocol import CandidatesResult, EngineNotReadyError, EngineOverloadedError


def assert_error(r: httpx.Response, status: int, code: str, field: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert list(body) == ["error"] and set(body["error"]) == {"code", "message", "field"}
    assert body["error"]["code"] == code and body["error"]["field"] == field
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


@pytest.fixture()
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture()
def client(engine: FakeEngine) -> Iterator[TestClient]:
    cfg = ServeConfig(max_body_bytes=4096, max_batch=3, max_k=500)
    with TestClient(create_app(engine, config=cfg, api_key=None)) as c:
        yield c


def test_broken_json_is_400(client: TestClient) -> None:
    r = client.post("/v1/candidates", content=b'{"user_id": "a", ', headers={"content-type": "application/json"})
    assert "not valid JSON" in assert_error(r, 400, "bad_json")["message"]


@pytest.mark.parametrize("content", [b"", b"[1, 2]", b'"just a string"'])
def test_a_body_that_is_no_json_object_is_400(client: TestClient, content: bytes) -> None:
    assert_error(client.post("/v1/candidates", content=content, headers={"content-type": "application/json"}),
                 400, "bad_request")


def test_wrong_content_type_is_400(client: TestClient) -> None:
    assert_error(client.post("/v1/candidates", content=b"user_id=a", headers={"content-type": "text/plain"}),
                 400, "bad_request")


@pytest.mark.parametrize("k", [0, 10_001, -3, "many", 2.5])
def test_k_out_of_range_or_not_an_int_is_422_on_k(client: TestClient, k: object) -> None:
    assert_error(client.post("/v1/candidates", json={"user_id": "a", "k": k}), 422, "validation_error", "k")
    assert_error(client.get("/v1/candidates/a", params={"k": k}), 422, "validation_error", "k")


def test_k_above_the_configured_max_k_is_422(client: TestClient) -> None:
    e = assert_error(client.post("/v1/candidates", json={"user_id": "a", "k": 501}), 422, "validation_error", "k")
    assert "500" in e["message"]
    assert_error(client.get("/v1/items/i1/similar", params={"k": 501}), 422, "validation_error", "k")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"k": 5}, "user_id"),
        ({"user_id": ""}, "user_id"),
        ({"user_id": "x" * 257}, "user_id"),
        ({"user_id": "a", "context": {"device": 3}}, "context.device"),
        ({"user_id": "a", "exclude": "i1"}, "exclude"),
        ({"user_id": "a", "explain": "maybe"}, "explain"),
        ({"user_id": "a", "colour": "red"}, "colour"),
    ],
)
def test_bad_candidate_requests_name_the_field(client: TestClient, body: dict, field: str) -> None:
    assert_error(client.post("/v1/candidates", json=body), 422, "validation_error", field)


def test_unknown_event_is_422_on_its_path(client: TestClient, engine: FakeEngine) -> None:
    events = [{"user_id": "a", "item_id": "i1", "event": "click"}, {"user_id": "a", "item_id": "i1", "event": "poke"}]
    e = assert_error(client.post("/v1/events", json={"events": events}), 422, "validation_error", "events.1.event")
    assert "poke" in e["message"] and "share" in e["message"]
    assert engine.events == []  # nothing of a rejected batch is applied


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({"user_id": "a", "item_id": "i1", "event": "view", "timestamp": "yesterday"}, "events.0.timestamp"),
        ({"user_id": "a", "item_id": "i1", "event": "view", "value": "high"}, "events.0.value"),
        ({"user_id": "a", "event": "view"}, "events.0.item_id"),
    ],
)
def test_bad_event_fields(client: TestClient, event: dict, field: str) -> None:
    assert_error(client.post("/v1/events", json={"events": [event]}), 422, "validation_error", field)


def test_empty_batch_is_422(client: TestClient) -> None:
    assert_error(client.post("/v1/events", json={"events": []}), 422, "validation_error", "events")


def test_too_many_events_is_413_and_nothing_is_applied(client: TestClient, engine: FakeEngine) -> None:
    events = [{"user_id": "a", "item_id": "i1", "event": "view"}] * 4
    assert_error(client.post("/v1/events", json={"events": events}), 413, "batch_too_large", "events")
    items = [{"item_id": f"n{j}"} for j in range(4)]
    assert_error(client.post("/v1/items", json={"items": items}), 413, "batch_too_large", "items")
    assert engine.events == [] and "n0" not in engine.items


def test_body_over_the_limit_is_413_from_content_length(client: TestClient) -> None:
    big = json.dumps({"user_id": "a", "exclude": ["x" * 100] * 100}).encode()
    assert_error(client.post("/v1/candidates", content=big, headers={"content-type": "application/json"}),
                 413, "body_too_large")


def test_body_over_the_limit_is_413_while_streaming(client: TestClient, engine: FakeEngine) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"items": ['
        for j in range(200):
            yield json.dumps({"item_id": f"s{j}", "tags": ["t"] * 5}).encode() + b","
        yield b'{"item_id": "last"}]}'

    r = client.post("/v1/items", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers
    assert_error(r, 413, "body_too_large")
    assert "s0" not in engine.items


def test_a_small_streamed_body_passes(client: TestClient) -> None:
    r = client.post("/v1/candidates", content=iter([b'{"user_id": ', b'"a", "k": 2}']),
                    headers={"content-type": "application/json"})
    assert r.status_code == 200 and len(r.json()["candidates"]) == 2


def test_unknown_ids_are_404(client: TestClient, engine: FakeEngine) -> None:
    assert "nope" in assert_error(client.delete("/v1/items/nope"), 404, "unknown_id")["message"]
    assert_error(client.get("/v1/items/nope/similar"), 404, "unknown_id")
    assert client.delete("/v1/items/i1").status_code == 204
    assert_error(client.delete("/v1/items/i1"), 404, "unknown_id")  # deleted twice
    assert_error(client.get("/v1/items/i1/similar"), 404, "unknown_id")


def test_unknown_path_and_method(client: TestClient) -> None:
    assert_error(client.get("/v1/nothing"), 404, "not_found")
    assert_error(client.put("/v1/candidates"), 405, "method_not_allowed")


def test_engine_input_errors_are_422(client: TestClient, engine: FakeEngine, tmp_path) -> None:
    e = assert_error(client.post("/v1/items", json={"items": [{"item_id": "bad1"}]}), 422, "bad_input")
    assert "bad1" in e["message"]
    assert_error(client.post("/v1/admin/reload", json={"art": str(tmp_path)}), 422, "bad_input")
    assert engine.model_version == "v1"


def test_not_ready_is_503_on_readyz_and_candidates() -> None:
    engine = FakeEngine(ready=False)
    with TestClient(create_app(engine, api_key=None)) as c:
        assert c.get("/healthz").status_code == 200
        assert_error(c.get("/readyz"), 503, "not_ready")
        r = c.post("/v1/candidates", json={"user_id": "a"})
        assert_error(r, 503, "not_ready")
        assert r.headers["retry-after"] == "1"
        assert_error(c.post("/v1/events", json={"events": [{"user_id": "a", "item_id": "i1", "event": "view"}]}),
                     503, "not_ready")
        engine.ready = True
        assert c.get("/readyz").status_code == 200
        assert c.post("/v1/candidates", json={"user_id": "a"}).status_code == 200


def test_a_factory_loads_in_the_background() -> None:
    factory = SlowLoadingFactory()
    with TestClient(create_app(factory, api_key=None)) as c:
        assert c.get("/healthz").status_code == 200
        assert_error(c.get("/readyz"), 503, "not_ready")
        assert_error(c.get("/v1/candidates/a"), 503, "not_ready")
        factory.gate.set()
        for _ in range(200):
            if c.get("/readyz").status_code == 200:
                break
            import time

            time.sleep(0.01)
        assert c.get("/v1/candidates/a").status_code == 200


def test_a_failing_factory_keeps_readyz_503_with_the_reason() -> None:
    def broken() -> FakeEngine:
        raise CandgenError("artifacts at /x are from an older format")

    with TestClient(create_app(broken, api_key=None)) as c:
        for _ in range(200):
            msg = c.get("/readyz").json()["error"]["message"]
            if "failed" in msg:
                break
        assert "older format" in msg
        assert c.get("/healthz").status_code == 200


def test_unexpected_engine_exception_is_500_and_the_app_keeps_serving(client: TestClient,
                                                                        engine: FakeEngine) -> None:
    engine.fail_with = RuntimeError("faiss exploded")
    e = assert_error(client.post("/v1/candidates", json={"user_id": "a"}), 500, "internal")
    assert "RuntimeError" in e["message"] and "faiss exploded" not in e["message"]  # no internals leak
    assert client.post("/v1/candidates", json={"user_id": "a", "k": 3}).status_code == 200


def test_a_bug_outside_the_engine_call_is_500_in_the_error_shape(engine: FakeEngine) -> None:
    class BadResult(FakeEngine):
        def similar(self, item_id: str, k: int) -> CandidatesResult:
            res = super().similar(item_id, k)
            res.scores = ["not a number"] * len(res.item_ids)  # breaks the app's serialisation
            return res

    with TestClient(create_app(BadResult(), api_key=None), raise_server_exceptions=False) as c:
        assert_error(c.get("/v1/items/i1/similar"), 500, "internal")
        assert c.get("/v1/candidates/a").status_code == 200


def test_engine_not_ready_and_overloaded_errors_are_503(client: TestClient, engine: FakeEngine) -> None:
    engine.fail_with = EngineOverloadedError("queue full")
    assert_error(client.post("/v1/candidates", json={"user_id": "a"}), 503, "overloaded")
    engine.fail_with = EngineNotReadyError("swapping")
    assert_error(client.post("/v1/candidates", json={"user_id": "a"}), 503, "not_ready")


def test_requests_beyond_max_in_flight_are_shed() -> None:
    with TestClient(create_app(FakeEngine(), api_key=None, max_in_flight=0)) as c:
        assert_error(c.post("/v1/candidates", json={"user_id": "a"}), 503, "overloaded")
        assert "candgen_requests_shed_total 1.0" in c.get("/metrics").text


def test_validation_error_helpers() -> None:
    assert field_path(("body", "events", 0, "event")) == "events.0.event"
    assert field_path(("query", "k")) == "k" and field_path(("body",)) is None
    e = validation_error([])
    assert (e.status, e.code) == (422, "validation_error")
    e = validation_error([{"loc": ("body", "k"), "msg": "bad", "type": "x"}, {"loc": ("body", "user_id")}])
    assert e.field == "k" and "1 more" in e.message


def test_the_default_k_shrinks_to_a_smaller_max_k() -> None:
    cfg = ServeConfig(max_k=20)
    with TestClient(create_app(FakeEngine(), config=cfg, api_key=None)) as c:
        assert len(c.post("/v1/candidates", json={"user_id": "a"}).json()["candidates"]) == 20
        assert len(c.get("/v1/candidates/a").json()["candidates"]) == 20


def test_shedding_and_direct_calls_follow_the_serve_config() -> None:
    cfg = ServeConfig(max_in_flight=0, engine_in_threadpool=False)
    with TestClient(create_app(FakeEngine(), config=cfg, api_key=None)) as c:
        assert_error(c.get("/v1/candidates/a"), 503, "overloaded")
        assert c.get("/healthz").status_code == 200  # health never goes through the engine
