"""The HTTP API against the in-memory fake engine: every endpoint's happy path and its effect on state."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from serve_fakes import FakeEngine

from candgen.config import ServeConfig
from candgen.serve.app import create_app


@pytest.fixture()
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture()
def client(engine: FakeEngine) -> Iterator[TestClient]:
    with TestClient(create_app(engine, config=ServeConfig(), api_key=None)) as c:
        yield c


def ids(resp_json: dict) -> list[str]:
    return [c["item_id"] for c in resp_json["candidates"]]


def test_post_candidates_answers_the_contract_shape(client: TestClient) -> None:
    r = client.post("/v1/candidates", json={"user_id": "alice", "k": 10, "context": {"device": "mobile"}})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"user_id", "model_version", "variant", "candidates", "degraded", "cache", "took_ms"}
    assert body["user_id"] == "alice" and body["model_version"] == "v1" and body["variant"] == "A"
    assert body["cache"] == "miss" and body["degraded"] == [] and body["took_ms"] > 0
    assert len(body["candidates"]) == 10
    first = body["candidates"][0]
    assert set(first) == {"item_id", "score", "sources"}
    assert first["score"] == 1.0 and first["sources"] == ["collaborative"]
    scores = [c["score"] for c in body["candidates"]]
    assert scores == sorted(scores, reverse=True)


def test_second_request_is_an_l1_hit_until_an_event_invalidates_it(client: TestClient) -> None:
    req = {"user_id": "alice", "k": 5}
    assert client.post("/v1/candidates", json=req).json()["cache"] == "miss"
    assert client.post("/v1/candidates", json=req).json()["cache"] == "L1"
    assert client.post("/v1/events", json={"events": [{"user_id": "alice", "item_id": "i3", "event": "click"}]}
                       ).status_code == 202
    again = client.post("/v1/candidates", json=req).json()
    assert again["cache"] == "miss"
    assert ids(again)[0] == "i3" and again["candidates"][0]["sources"] == ["trending"]


def test_exclude_and_explain(client: TestClient) -> None:
    r = client.post("/v1/candidates", json={"user_id": "bob", "k": 3, "exclude": ["i0", "i1"], "explain": True})
    body = r.json()
    assert ids(body) == ["i2", "i3", "i4"]
    assert all(c["explain"] == {"collaborative": c["score"]} for c in body["candidates"])


def test_get_candidates_with_query_k(client: TestClient) -> None:
    r = client.get("/v1/candidates/carol_b", params={"k": 7})
    assert r.status_code == 200
    body = r.json()
    assert len(body["candidates"]) == 7 and body["user_id"] == "carol_b" and body["variant"] == "B"
    assert len(client.get("/v1/candidates/carol").json()["candidates"]) == 50  # k defaults to 1000, 50 items


def test_events_update_state_and_negative_events_hide_items(client: TestClient, engine: FakeEngine) -> None:
    events = [
        {"user_id": "dave", "item_id": "i0", "event": "hide"},
        {"user_id": "dave", "item_id": "i5", "event": "like", "timestamp": "2026-01-01T00:00:00Z", "value": 1.0},
        {"user_id": "dave", "item_id": "i6", "event": "share", "timestamp": 1_700_000_000},
        {"user_id": "dave", "item_id": "nope", "event": "view"},
    ]
    r = client.post("/v1/events", json={"events": events})
    assert r.status_code == 202 and r.json() == {"accepted": 3}
    assert [e.timestamp for e in engine.events] == [None, 1767225600.0, 1_700_000_000.0]
    got = ids(client.post("/v1/candidates", json={"user_id": "dave", "k": 50}).json())
    assert "i0" not in got and got[:2] == ["i6", "i5"]


def test_items_are_added_retrievable_and_deleted(client: TestClient) -> None:
    item = {"item_id": "new1", "tags": ["t1"], "category": "c0", "creator_id": "u1", "title": "New",
            "created_at": "2026-11-27T10:00:00"}
    r = client.post("/v1/items", json={"items": [item]})
    assert r.status_code == 201 and r.json() == {"added": 1}
    assert "new1" in ids(client.post("/v1/candidates", json={"user_id": "erin", "k": 100}).json())
    sim = client.get("/v1/items/i1/similar", params={"k": 20}).json()
    assert "new1" in ids(sim) and sim["item_id"] == "i1" and sim["model_version"] == "v1"
    r = client.delete("/v1/items/new1")
    assert r.status_code == 204 and r.content == b""
    assert "new1" not in ids(client.post("/v1/candidates", json={"user_id": "erin", "k": 100}).json())
    assert "new1" not in ids(client.get("/v1/items/i1/similar").json())


def test_put_user_onboards_interests(client: TestClient, engine: FakeEngine) -> None:
    profile = {"attributes": {"country": "DE"}, "interests": ["t2"], "friends": ["alice"]}
    r = client.put("/v1/users/newbie", json=profile)
    assert r.status_code == 200 and r.json() == {"user_id": "newbie"}
    assert engine.users["newbie"].interests == ["t2"] and engine.users["newbie"].friends == ["alice"]
    body = client.post("/v1/candidates", json={"user_id": "newbie", "k": 5}).json()
    assert [c["sources"] for c in body["candidates"]][2] == ["content"]  # i2 has tag t2


def test_reload_swaps_the_model_version(client: TestClient, tmp_path) -> None:
    (tmp_path / "manifest.json").write_text("{}")
    r = client.post("/v1/admin/reload", json={"art": str(tmp_path)})
    assert r.status_code == 200 and r.json() == {"model_version": "v2"}
    assert client.post("/v1/admin/reload").json() == {"model_version": "v3"}
    assert client.post("/v1/candidates", json={"user_id": "a"}).json()["model_version"] == "v3"
    assert client.get("/readyz").json() == {"status": "ready", "model_version": "v3"}


def test_admin_snapshot_reports_what_was_written(client: TestClient, engine: FakeEngine) -> None:
    assert client.post("/v1/events", json={"events": [{"user_id": "a", "item_id": "i1", "event": "view"}] * 3}
                       ).status_code == 202
    r = client.post("/v1/admin/snapshot")
    body = r.json()
    assert r.status_code == 200 and body["snapshot"] == "snapshot-" + "f" * 16 + "-0000000001"
    assert (body["seq"], body["records"], body["bytes"], body["replayed"], body["trimmed"]) == ("3", 3, 300, 3, 0)
    again = client.post("/v1/admin/snapshot").json()  # nothing new: the newest one is reported, none written
    assert (again["snapshot"], again["seq"], again["records"], again["bytes"]) == (None, "3", 3, 0)
    engine.snapshot_busy = True
    busy = client.post("/v1/admin/snapshot")
    assert busy.status_code == 503 and "another worker" in busy.json()["error"]["message"]
    engine.snapshot = None  # type: ignore[assignment,method-assign]  # an engine without a state log
    r = client.post("/v1/admin/snapshot")
    assert r.status_code == 422 and r.json()["error"]["code"] == "not_supported"


def test_health_ready_docs(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/candidates", "/v1/candidates/{user_id}", "/v1/events", "/v1/items", "/v1/items/{item_id}",
            "/v1/users/{user_id}", "/v1/items/{item_id}/similar", "/v1/admin/reload", "/v1/admin/snapshot",
            "/healthz", "/readyz",
            "/metrics"} <= set(paths)
    error_schema = paths["/v1/candidates"]["post"]["responses"]["422"]["content"]["application/json"]["schema"]
    assert error_schema["$ref"].endswith("/ErrorBody")


def test_engine_is_closed_at_shutdown(engine: FakeEngine) -> None:
    with TestClient(create_app(engine, api_key=None)) as c:
        assert c.get("/healthz").status_code == 200
        assert not engine.closed
    assert engine.closed


def test_direct_calls_without_threadpool_behave_the_same(engine: FakeEngine) -> None:
    with TestClient(create_app(engine, api_key=None, engine_in_threadpool=False)) as c:
        assert len(c.post("/v1/candidates", json={"user_id": "x", "k": 4}).json()["candidates"]) == 4


def test_create_app_rejects_something_that_is_no_engine() -> None:
    with pytest.raises(TypeError, match="Engine or a callable"):
        create_app(42, api_key=None)  # type: ignore[arg-type]


def test_every_answer_carries_the_server_time(client: TestClient) -> None:
    for r in (client.get("/healthz"), client.post("/v1/candidates", json={"user_id": "a", "k": 0}),
              client.post("/v1/candidates", json={"user_id": "a"})):
        name, _, dur = r.headers["server-timing"].partition(";dur=")
        assert name == "app" and 0 < float(dur) < 10_000
