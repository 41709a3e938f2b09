"""Online engagement attribution: events credited to the sources and variant of the list served last."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from serve_fakes import FakeEngine, metric_lines

from candgen.config import ServeConfig
from candgen.serve.app import create_app
from candgen.serve.attribution import EngagementAttribution
from candgen.serve.protocol import CandidatesResult


def result(ids: list[str], variant: str = "A") -> CandidatesResult:
    sources = [["collaborative", "content"]] + [["trending"]] * (len(ids) - 1) if ids else []
    return CandidatesResult(item_ids=ids, scores=[1.0] * len(ids), sources=sources, variant=variant)


def test_credit_finds_the_item_in_the_last_list() -> None:
    a = EngagementAttribution(sample_every=1)
    assert a.served("u", result(["i1", "i2", "i3"], "B"))
    assert a.credit("u", "i1") == (["collaborative", "content"], "B")
    assert a.credit("u", "i3") == (["trending"], "B")
    assert a.credit("u", "zz") is None and a.credit("nobody", "i1") is None
    a.served("u", result(["i9"]))  # a newer list replaces the old one
    assert a.credit("u", "i1") is None and a.credit("u", "i9") == (["collaborative", "content"], "A")


def test_lists_expire_and_the_oldest_users_are_forgotten() -> None:
    now = [0.0]
    a = EngagementAttribution(max_users=2, ttl_s=10, sample_every=1, clock=lambda: now[0])
    for u in ("u1", "u2", "u3"):
        a.served(u, result(["i1"]))
    assert len(a) == 2 and a.credit("u1", "i1") is None and a.credit("u3", "i1") is not None
    now[0] = 11.0
    assert a.credit("u3", "i1") is None and len(a) == 1


def test_sampling_is_stable_and_roughly_one_in_n() -> None:
    a = EngagementAttribution(sample_every=10)
    users = [f"user{j}" for j in range(5000)]
    picked = [u for u in users if a.sampled(u)]
    assert 350 < len(picked) < 650
    assert picked == [u for u in users if EngagementAttribution(sample_every=10).sampled(u)]
    assert not a.served("x", result([]))  # an empty list is not remembered
    assert not EngagementAttribution(max_users=0).sampled("anyone")


@pytest.mark.parametrize("kwargs", [{"max_users": -1}, {"sample_every": 0}, {"ttl_s": 0}])
def test_bad_settings_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="attribution needs"):
        EngagementAttribution(**kwargs)


def test_the_app_exports_engagement_per_source_and_variant() -> None:
    cfg = ServeConfig(attribution_sample_every=1)
    with TestClient(create_app(FakeEngine(), config=cfg, api_key=None)) as c:
        c.put("/v1/users/ann_b", json={"interests": ["t1"]})
        served = c.post("/v1/candidates", json={"user_id": "ann_b", "k": 10}).json()
        assert served["variant"] == "B" and served["candidates"][1]["sources"] == ["content"]  # i1 has tag t1
        events = [{"user_id": "ann_b", "item_id": "i1", "event": "impression"},
                  {"user_id": "ann_b", "item_id": "i1", "event": "like"},
                  {"user_id": "ann_b", "item_id": "i2", "event": "click"},
                  {"user_id": "ann_b", "item_id": "i40", "event": "click"},  # not served
                  {"user_id": "bob", "item_id": "i1", "event": "click"}]  # no list served to bob
        assert c.post("/v1/events", json={"events": events}).status_code == 202
        m = metric_lines(c.get("/metrics").text)
    assert m['candgen_attributed_lists_total{variant="B"}'] == 1
    assert m['candgen_attributed_candidates_total{source="content",variant="B"}'] == 2  # i1 and i6
    assert m['candgen_attributed_candidates_total{source="collaborative",variant="B"}'] == 8
    assert m['candgen_attributed_events_total{event="impression",source="content",variant="B"}'] == 1
    assert m['candgen_attributed_events_total{event="like",source="content",variant="B"}'] == 1
    assert m['candgen_attributed_events_total{event="click",source="collaborative",variant="B"}'] == 1
    assert m['candgen_attributed_list_events_total{event="click",variant="B"}'] == 1
    assert m['candgen_unattributed_events_total{event="click"}'] == 2


def test_attribution_off() -> None:
    with TestClient(create_app(FakeEngine(), config=ServeConfig(attribution_users=0), api_key=None)) as c:
        c.get("/v1/candidates/a")
        c.post("/v1/events", json={"events": [{"user_id": "a", "item_id": "i1", "event": "click"}]})
        m = metric_lines(c.get("/metrics").text)
    assert not any(k.startswith(("candgen_attributed", "candgen_unattributed")) for k in m)
