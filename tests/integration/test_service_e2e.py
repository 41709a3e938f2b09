"""The real `candgen serve` process end to end over HTTP: embedded state (1 worker) and Redis (2 workers).

Proves: auth on writes, validation errors, a new item in a new user's candidates within 1 s (onboarding
interest = the item's tag), a burst of shares putting a never-engaged item in a cold user's candidates
within 1 s, the seen filter, delete, restart without loss (SIGTERM and kill -9), writes visible through
every worker.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from candgen.config import Config
from candgen.data.io import load_dataset
from candgen.data.synthetic import generate_world
from candgen.pipeline import train_artifacts

pytestmark = pytest.mark.slow
KEY = "test-secret"
AUTH = {"Authorization": f"Bearer {KEY}"}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("svc")
    generate_world(root / "w", users=400, items=800, days=10, seed=7)
    ds = load_dataset(root / "w")
    cfg = Config()
    cfg.model.epochs, cfg.model.dim = 1, 16
    train_artifacts(ds, root / "art", config=cfg)
    return root, ds


class Server:
    def __init__(self, art: Path, *, state: str | None = None, workers: int = 1, log: Path) -> None:
        self.art, self.state, self.workers, self.log = art, state, workers, log
        self.port = _port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [sys.executable, "-m", "candgen.cli.main", "serve", str(self.art), "--host", "127.0.0.1",
                "--port", str(self.port), "--workers", str(self.workers)]
        if self.state:
            args += ["--state", self.state]
        env = dict(os.environ, CANDGEN_API_KEY=KEY)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        t0, streak = time.time(), 0
        while time.time() - t0 < 120:
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            try:
                streak = streak + 1 if httpx.get(self.base + "/readyz", timeout=1).status_code == 200 else 0
            except httpx.HTTPError:
                streak = 0
            if streak >= 3 * self.workers:
                return
            time.sleep(0.1)
        raise AssertionError("server not ready: " + self.log.read_text()[-2000:])

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)

    def cands(self, user: str, k: int = 300) -> list[str]:
        r = httpx.post(self.base + "/v1/candidates", json={"user_id": user, "k": k}, timeout=10)
        assert r.status_code == 200, r.text
        return [c["item_id"] for c in r.json()["candidates"]]


def steadily(pred: Callable[[], bool], seconds: float = 1.0, then: int = 20) -> float | None:
    """Seconds until pred() holds, provided it then holds `then` times in a row (fresh connections)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        if pred():
            lag = time.perf_counter() - t0
            return lag if all(pred() for _ in range(then)) else None
        time.sleep(0.01)
    return None


@pytest.fixture()
def art_copy(trained, tmp_path) -> Path:
    shutil.copytree(trained[0] / "art", tmp_path / "art")
    return tmp_path / "art"


def _scenario(srv: Server, ds, restart: Callable[[], None]) -> None:
    run = uuid.uuid4().hex[:6]
    counts = np.bincount(ds.interactions.user, minlength=ds.n_users)
    known = ds.users.id(int(np.argmax(counts)))
    # validation and auth
    assert httpx.post(srv.base + "/v1/candidates", json={"user_id": known, "k": 0}).status_code == 422
    r = httpx.post(srv.base + "/v1/candidates", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()
    item = {"item_id": f"new-{run}", "tags": [f"raretag-{run}"], "category": "c0", "creator_id": "cr-new"}
    assert httpx.post(srv.base + "/v1/items", json={"items": [item]}).status_code == 401
    # a new item reaches a new user whose onboarding interest is its tag
    newbie = f"newbie-{run}"
    assert httpx.put(srv.base + f"/v1/users/{newbie}", json={"interests": [f"raretag-{run}"]},
                     headers=AUTH).status_code == 200
    assert httpx.post(srv.base + "/v1/items", json={"items": [item]}, headers=AUTH).status_code == 201
    assert steadily(lambda: item["item_id"] in srv.cands(newbie)) is not None
    # a burst of shares puts a never-engaged item into a cold user's list (trending)
    cold = f"cold-{run}"
    before = set(srv.cands(cold))
    engaged = set(ds.items.ids(np.unique(ds.interactions.item)))
    target = next(i for i in ds.items.ids() if i not in engaged and i not in before)
    events = [{"user_id": f"fan-{run}-{i}", "item_id": target, "event": "share"} for i in range(200)]
    assert httpx.post(srv.base + "/v1/events", json={"events": events}, headers=AUTH).status_code == 202
    assert steadily(lambda: target in srv.cands(cold)) is not None
    # the seen filter
    victim = srv.cands(known, 50)[0]
    ev = {"events": [{"user_id": known, "item_id": victim, "event": "view"}]}
    assert httpx.post(srv.base + "/v1/events", json=ev, headers=AUTH).status_code == 202
    assert steadily(lambda: victim not in srv.cands(known, 1000)) is not None
    # restart: nothing acknowledged is lost
    restart()
    assert steadily(lambda: item["item_id"] in srv.cands(newbie)) is not None
    assert steadily(lambda: victim not in srv.cands(known, 1000)) is not None
    # delete
    assert httpx.delete(srv.base + f"/v1/items/{item['item_id']}", headers=AUTH).status_code == 204
    assert httpx.delete(srv.base + f"/v1/items/{item['item_id']}", headers=AUTH).status_code == 404
    assert steadily(lambda: item["item_id"] not in srv.cands(newbie)) is not None
    metrics = httpx.get(srv.base + "/metrics").text
    assert "candgen" in metrics and "cache" in metrics


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_embedded_service(trained, art_copy, tmp_path, sig):
    srv = Server(art_copy, log=tmp_path / "serve.log")
    srv.start()
    try:
        def restart() -> None:
            srv.stop(sig)
            srv.start()

        _scenario(srv, trained[1], restart)
    finally:
        srv.stop()


@pytest.mark.redis
def test_redis_service_with_two_workers(trained, art_copy, tmp_path, redis_url):
    srv = Server(art_copy, state=redis_url, workers=2, log=tmp_path / "serve.log")
    srv.start()
    try:
        def restart() -> None:  # only Redis may carry the state: a clean copy of the artifacts
            srv.stop()
            shutil.rmtree(art_copy)
            shutil.copytree(trained[0] / "art", art_copy)
            srv.start()

        _scenario(srv, trained[1], restart)
    finally:
        srv.stop()  # the redis_url fixture deletes the keys under its prefix


def test_reload_by_api_and_sighup_fails_no_request(trained, art_copy, tmp_path):
    import threading

    root, ds = trained
    cfg = Config()
    cfg.model.epochs, cfg.model.dim, cfg.model.seed = 1, 16, 99
    train_artifacts(ds, tmp_path / "art2", config=cfg)
    srv = Server(art_copy, log=tmp_path / "serve.log")
    srv.start()
    failures: list[str] = []
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=srv.base, timeout=10) as c:
            i = 0
            while not stop.is_set():
                r = c.post("/v1/candidates", json={"user_id": ds.users.id(i % ds.n_users), "k": 100})
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text[:80]}")
                i += 1

    def version() -> str:
        return httpx.get(srv.base + "/readyz").json()["model_version"]

    t = threading.Thread(target=hammer)
    t.start()
    try:
        v1 = version()
        r = httpx.post(srv.base + "/v1/admin/reload", json={"art": str(tmp_path / "art2")}, headers=AUTH, timeout=60)
        assert r.status_code == 200, r.text
        v2 = version()
        assert v2 != v1
        # SIGHUP: the directory now served (art2) is retrained in place, then the server is told to re-read it
        cfg.model.seed = 7
        train_artifacts(ds, tmp_path / "art2", config=cfg)
        assert srv.proc is not None
        os.kill(srv.proc.pid, signal.SIGHUP)
        t0 = time.time()
        while version() == v2 and time.time() - t0 < 30:
            time.sleep(0.1)
        assert version() not in (v1, v2)
    finally:
        stop.set()
        t.join()
        srv.stop()
    assert not failures, failures[:3]
