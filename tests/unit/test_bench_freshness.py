"""The freshness probe's scenarios against a fake service that applies writes at once (or never), and its
error paths (a refused write names the API key, a failing read)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from candgen.bench.freshness import SCENARIOS, FreshnessProbe
from candgen.bench.http import Endpoint
from candgen.errors import CandgenError


class FakeService:
    """Catalog items in order; writes apply at once unless `lazy` (then nothing ever changes)."""

    def __init__(self, lazy: bool = False, write_status: int = 200) -> None:
        self.items = [f"i{j}" for j in range(20)]
        self.trending: list[str] = []
        self.seen: dict[str, set[str]] = {}
        self.interest: dict[str, str] = {}
        self.tags: dict[str, str] = {}
        self.lazy, self.write_status = lazy, write_status
        self.auth: list[str | None] = []

    def candidates(self, user: str) -> list[str]:
        own = [i for i, t in self.tags.items() if t == self.interest.get(user)]
        return [i for i in own + self.trending + self.items if i not in self.seen.get(user, set())][:10]

    def handle(self, method: str, path: str, body: dict | None, auth: str | None) -> tuple[int, dict]:  # type: ignore[type-arg]
        if path == "/v1/candidates" and body["user_id"] == "broken":  # type: ignore[index]
            return 500, {"error": {"code": "internal"}}
        if path == "/v1/candidates":
            return 200, {"candidates": [{"item_id": i} for i in self.candidates(body["user_id"])]}  # type: ignore[index]
        self.auth.append(auth)
        if self.write_status >= 300:
            return self.write_status, {"error": {"code": "unauthorized"}}
        if self.lazy:
            return 200, {}
        if path == "/v1/items" and method == "POST":
            for it in body["items"]:  # type: ignore[index]
                self.tags[it["item_id"]] = (it.get("tags") or [""])[0]
        elif path.startswith("/v1/users/"):
            self.interest[path.rsplit("/", 1)[1]] = body["interests"][0]  # type: ignore[index]
        elif path == "/v1/events":
            for e in body["events"]:  # type: ignore[index]
                if e["event"] == "share" and e["item_id"] not in self.trending:
                    self.trending.insert(0, e["item_id"])
                elif e["event"] == "view":
                    self.seen.setdefault(e["user_id"], set()).add(e["item_id"])
        elif method == "DELETE":
            gone = path.rsplit("/", 1)[1]
            self.items = [i for i in self.items if i != gone]
            self.trending = [i for i in self.trending if i != gone]
            self.tags.pop(gone, None)
        return 200, {}


@contextmanager
def serving(svc: FakeService) -> Iterator[Endpoint]:
    class Handler(BaseHTTPRequestHandler):
        def _do(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(n)) if n else None
            status, answer = svc.handle(self.command, self.path, body, self.headers.get("Authorization"))
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _do

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield Endpoint("127.0.0.1", server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def test_every_scenario_is_seen_on_the_first_read_of_an_eager_service() -> None:
    svc = FakeService()
    with serving(svc) as ep:
        probe = FreshnessProbe(ep, warm_users=[f"u{j}" for j in range(10)], unengaged_items=["z1", "z2"],
                               api_key="secret", timeout_s=2.0)
        try:
            results = probe.run(SCENARIOS, repeat=2)
        finally:
            probe.close()
    assert [r.scenario for r in results] == list(SCENARIOS)
    for r in results:
        assert r.trials == 2 and r.failed == 0 and r.first_read_fraction == 1.0 and r.p50_ms >= 0
    assert set(svc.auth) == {"Bearer secret"}  # every write carried the key


def test_a_service_that_never_applies_writes_fails_every_trial() -> None:
    with serving(FakeService(lazy=True)) as ep:
        probe = FreshnessProbe(ep, warm_users=["u1", "u2"], timeout_s=0.05)
        try:
            new_item, seen = probe.run(["new_item", "seen"], repeat=2)
        finally:
            probe.close()
    assert new_item.failed == 2 and seen.failed == 2 and new_item.trials == 2


def test_a_trending_item_already_listed_makes_the_trial_invalid() -> None:
    with serving(FakeService()) as ep:
        probe = FreshnessProbe(ep, warm_users=[], unengaged_items=["i0"], timeout_s=0.5)
        try:
            (r,) = probe.run(["trending"], repeat=1)
        finally:
            probe.close()
    assert r.invalid == 1 and r.trials == 0


def test_refused_writes_and_failing_reads_are_clear_errors() -> None:
    with serving(FakeService(write_status=401)) as ep:
        probe = FreshnessProbe(ep, warm_users=["u1"])
        try:
            with pytest.raises(CandgenError, match=r"HTTP 401 .*\(set CANDGEN_API_KEY\)"):
                probe.trial("delete", 0)
        finally:
            probe.close()
    with serving(FakeService()) as ep:
        probe = FreshnessProbe(ep, warm_users=["broken"])
        try:
            with pytest.raises(CandgenError, match="POST /v1/candidates: HTTP 500"):
                probe.trial("seen", 0)
            with pytest.raises(CandgenError, match="unknown scenario 'nope'"):
                probe.trial("nope", 0)
        finally:
            probe.close()
