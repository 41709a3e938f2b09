"""API-key protection of the write endpoints, and the Prometheus metrics the app exposes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from serve_fakes import FakeEngine, metric_lines

from candgen.serve.app import create_app

KEY = "s3cret-key"
EVENT = {"events": [{"user_id": "a", "item_id": "i1", "event": "like"}]}
WRITES = [
    ("post", "/v1/events", EVENT, 202),
    ("post", "/v1/items", {"items": [{"item_id": "n1", "tags": ["t1"]}]}, 201),
    ("put", "/v1/users/u1", {"interests": ["t1"]}, 200),
    ("delete", "/v1/items/i2", None, 204),
    ("post", "/v1/admin/reload", None, 200),
    ("post", "/v1/admin/snapshot", None, 200),
]


@pytest.fixture()
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture()
def client(engine: FakeEngine) -> Iterator[TestClient]:
    with TestClient(create_app(engine, api_key=KEY)) as c:
        yield c


def _send(c: TestClient, method: str, path: str, body: dict | None, headers: dict[str, str]):
    return c.request(method, path, json=body, headers=headers) if body is not None else \
        c.request(method, path, headers=headers)


@pytest.mark.parametrize(("method", "path", "body", "ok"), WRITES)
def test_writes_need_the_key(client: TestClient, engine: FakeEngine, method: str, path: str, body: dict | None,
                             ok: int) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"},
                    {"Authorization": f"Bearer {KEY}x"}, {"Authorization": "Bearer "}):
        r = _send(client, method, path, body, headers)
        assert r.status_code == 401, (headers, r.text)
        assert r.json()["error"]["code"] == "unauthorized" and r.headers["www-authenticate"] == "Bearer"
    assert engine.events == [] and "n1" not in engine.items and engine.users == {} and not engine.deleted
    assert engine.model_version == "v1"
    assert _send(client, method, path, body, {"Authorization": f"Bearer {KEY}"}).status_code == ok


def test_reads_need_no_key(client: TestClient) -> None:
    assert client.post("/v1/candidates", json={"user_id": "a", "k": 2}).status_code == 200
    assert client.get("/v1/candidates/a").status_code == 200
    assert client.get("/v1/items/i1/similar").status_code == 200
    for path in ("/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"):
        assert client.get(path).status_code == 200, path


def test_the_key_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CANDGEN_API_KEY", "from-env")
    with TestClient(create_app(FakeEngine())) as c:
        assert c.post("/v1/events", json=EVENT).status_code == 401
        assert c.post("/v1/events", json=EVENT, headers={"Authorization": "Bearer from-env"}).status_code == 202
    monkeypatch.delenv("CANDGEN_API_KEY")
    with TestClient(create_app(FakeEngine())) as c:
        assert c.post("/v1/events", json=EVENT).status_code == 202  # no key configured: writes are open


def test_openapi_documents_the_bearer_scheme(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert spec["paths"]["/v1/events"]["post"]["security"] == [{"HTTPBearer": []}]
    assert "security" not in spec["paths"]["/v1/candidates"]["post"]


def test_metrics_after_some_requests(engine: FakeEngine) -> None:
    engine.degraded = ["social"]
    auth = {"Authorization": f"Bearer {KEY}"}
    with TestClient(create_app(engine, api_key=KEY)) as c:
        c.post("/v1/candidates", json={"user_id": "a", "k": 10})
        c.post("/v1/candidates", json={"user_id": "a", "k": 10})  # L1 hit
        c.get("/v1/candidates/zz_b", params={"k": 5})
        c.post("/v1/events", json={"events": [{"user_id": "a", "item_id": "i1", "event": "like"},
                                              {"user_id": "a", "item_id": "i2", "event": "like"},
                                              {"user_id": "a", "item_id": "i2", "event": "view"}]}, headers=auth)
        c.post("/v1/items", json={"items": [{"item_id": "n1"}, {"item_id": "n2"}]}, headers=auth)
        c.delete("/v1/items/i3", headers=auth)
        c.post("/v1/candidates", json={"user_id": "a", "k": 0})  # a 422
        c.get("/v1/nowhere/at/all")
        r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    m = metric_lines(r.text)
    ep = 'endpoint="/v1/candidates",method="POST"'
    assert m[f'candgen_http_request_duration_seconds_count{{{ep},status="200"}}'] == 2
    assert m[f'candgen_http_request_duration_seconds_count{{{ep},status="422"}}'] == 1
    assert m['candgen_http_request_duration_seconds_count{endpoint="unrouted",method="GET",status="404"}'] == 1
    assert m['candgen_http_request_duration_seconds_bucket{endpoint="/v1/candidates/{user_id}",le="0.0005",'
             'method="GET",status="200"}'] >= 0
    assert m['candgen_stage_duration_seconds_count{stage="sources"}'] == 2  # the L1 hit reports no stages
    # the L1 hit counts too: provenance of what was served, counted from `sources` when the engine gives no counts
    assert m['candgen_source_candidates_total{source="collaborative",variant="A"}'] == 20
    assert m['candgen_source_candidates_total{source="collaborative",variant="B"}'] == 5
    assert m['candgen_source_empty_total{source="social",variant="A"}'] == 1
    assert m['candgen_source_degraded_total{source="social",variant="A"}'] == 1
    assert m['candgen_cache_requests_total{level="miss"}'] == 2
    assert m['candgen_cache_requests_total{level="L1"}'] == 1
    assert m['candgen_variant_requests_total{variant="A"}'] == 2
    assert m['candgen_variant_requests_total{variant="B"}'] == 1
    assert m['candgen_events_ingested_total{event="like"}'] == 2
    assert m['candgen_events_ingested_total{event="view"}'] == 1
    assert m["candgen_items_added_total"] == 2 and m["candgen_items_deleted_total"] == 1
    assert m["candgen_index_size"] == 51  # 50 + 2 added - 1 deleted
    assert m['candgen_engine_stat{name="events"}'] == 3
    assert 'candgen_engine_stat{name="loaded"}' not in m  # booleans are not numbers
    assert m['candgen_model_info{version="v1"}'] == 1
    assert m["candgen_ann_recall_count"] == 2 and m["candgen_ann_recall_sum"] == pytest.approx(1.94)
    assert m["candgen_intra_list_diversity_count"] == 2
    assert m["candgen_engine_calls_in_flight"] == 0


def test_model_version_metric_follows_a_reload(client: TestClient) -> None:
    assert client.post("/v1/admin/reload", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    m = metric_lines(client.get("/metrics").text)
    assert m['candgen_model_info{version="v2"}'] == 1 and 'candgen_model_info{version="v1"}' not in m


def test_two_apps_keep_separate_metrics() -> None:
    with TestClient(create_app(FakeEngine(), api_key=None)) as a, \
            TestClient(create_app(FakeEngine(n_items=3), api_key=None)) as b:
        a.get("/v1/candidates/x")
        ma, mb = metric_lines(a.get("/metrics").text), metric_lines(b.get("/metrics").text)
    assert ma["candgen_index_size"] == 50 and mb["candgen_index_size"] == 3
    assert 'candgen_variant_requests_total{variant="A"}' in ma
    assert 'candgen_variant_requests_total{variant="A"}' not in mb


def test_a_failing_stats_does_not_break_metrics(engine: FakeEngine) -> None:
    def broken() -> dict:
        raise RuntimeError("stats backend down")

    engine.stats = broken  # type: ignore[method-assign]
    with TestClient(create_app(engine, api_key=None)) as c:
        r = c.get("/metrics")
    assert r.status_code == 200 and "candgen_http_request_duration_seconds" in r.text
    assert "candgen_index_size" not in metric_lines(r.text)


def test_clients_cannot_mint_metric_labels(client: TestClient) -> None:
    for path in ("/a/1", "/b/2", "/v1/items/x/y/z"):
        client.request("BREW", path)
        client.get(path)
    m = metric_lines(client.get("/metrics").text)
    endpoints = {k for k in m if k.startswith("candgen_http_request_duration_seconds_count")}
    assert 'candgen_http_request_duration_seconds_count{endpoint="unrouted",method="other",status="404"}' in endpoints
    assert not any("/a/1" in k or "BREW" in k for k in endpoints)


def test_no_created_series(client: TestClient) -> None:
    client.get("/v1/candidates/a")
    assert "_created" not in client.get("/metrics").text
