"""The uvicorn runner, the import-string app factory and the `candgen serve` command."""

from __future__ import annotations

import gc
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from serve_fakes import wait_until_ready
from threadpoolctl import threadpool_info, threadpool_limits

from candgen.artifacts import Manifest
from candgen.bench.service import free_port
from candgen.cli.main import main
from candgen.errors import CandgenError
from candgen.serve import factory, runner
from candgen.serve.balance import BALANCE_ENV

HERE = Path(__file__).parent


@pytest.fixture()
def art(tmp_path: Path) -> Path:
    d = tmp_path / "art"
    d.mkdir()
    Manifest(model_version="m1", dataset_fingerprint="f", data_end_time=0, config={}).write(d)
    return d


@pytest.fixture()
def serve_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in (factory.ART_ENV, factory.STATE_ENV, factory.CONFIG_ENV, factory.ENGINE_ENV, BALANCE_ENV):
        monkeypatch.delenv(name, raising=False)
    threshold = gc.get_threshold()
    blas = threadpool_info()
    yield monkeypatch
    gc.unfreeze()  # the factory tunes the collector for a serving process; give the test process its own back
    gc.set_threshold(*threshold)
    threadpool_limits(limits=blas)  # and its BLAS thread pools


def wait_ready(c: TestClient) -> dict:
    for _ in range(500):
        r = c.get("/readyz")
        if r.status_code == 200 or "failed" in r.json().get("error", {}).get("message", ""):
            return r.json()
        time.sleep(0.01)
    raise AssertionError("never ready")


def test_factory_opens_the_engine_named_in_the_environment(serve_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[serve]\nmax_k = 7\n")
    serve_env.setenv(factory.ART_ENV, "/some/art")
    serve_env.setenv(factory.STATE_ENV, "memory://")
    serve_env.setenv(factory.CONFIG_ENV, str(cfg))
    serve_env.setenv(factory.ENGINE_ENV, "serve_fakes:open_fake")
    with TestClient(factory.make_app()) as c:
        assert wait_ready(c) == {"status": "ready", "model_version": "fake:art:memory://"}
        assert len(c.get("/v1/candidates/a").json()["candidates"]) == 7  # [serve] max_k from the config file
    assert gc.get_threshold() == factory.GC_THRESHOLD and gc.get_freeze_count() > 0


def blas_threads() -> set[int]:
    return {d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"}


def test_factory_caps_the_blas_threads_of_a_serving_process(serve_env: pytest.MonkeyPatch) -> None:
    assert blas_threads(), "numpy and FAISS load OpenBLAS"
    serve_env.setenv(factory.ART_ENV, "/some/art")
    serve_env.setenv(factory.ENGINE_ENV, "serve_fakes:open_fake")
    factory.limit_blas_threads(2)
    assert blas_threads() == {2}
    factory.make_app()  # the default, serve.blas_threads = 1
    assert blas_threads() == {1}
    serve_env.setenv("CANDGEN_SERVE__BLAS_THREADS", "2")
    factory.make_app()
    assert blas_threads() == {2}
    serve_env.setenv("CANDGEN_SERVE__BLAS_THREADS", "0")  # 0: leave the libraries as they are
    factory.limit_blas_threads(1)
    factory.make_app()
    assert blas_threads() == {1}


def test_a_negative_blas_thread_count_is_a_clear_error(serve_env: pytest.MonkeyPatch) -> None:
    serve_env.setenv(factory.ART_ENV, "/some/art")
    serve_env.setenv("CANDGEN_SERVE__BLAS_THREADS", "-1")
    with pytest.raises(CandgenError, match="serve.blas_threads must be >= 0"):
        factory.make_app()


def test_factory_without_art_is_a_clear_error(serve_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(CandgenError, match="CANDGEN_ART is not set"):
        factory.make_app()


@pytest.mark.parametrize(
    ("spec", "reason"),
    [("no_colon", "expected 'package.module:function'"), ("no_such_module_xyz:f", "cannot import"),
     ("serve_fakes:nothing", "has no function")],
)
def test_a_bad_engine_spec_keeps_readyz_503_with_the_reason(serve_env: pytest.MonkeyPatch, spec: str,
                                                            reason: str) -> None:
    serve_env.setenv(factory.ART_ENV, "/some/art")
    serve_env.setenv(factory.ENGINE_ENV, spec)
    with TestClient(factory.make_app()) as c:
        body = wait_ready(c)
        assert c.get("/readyz").status_code == 503 and reason in body["error"]["message"]
        assert c.get("/healthz").status_code == 200


def test_run_checks_arguments_and_starts_uvicorn_with_the_factory(serve_env: pytest.MonkeyPatch, art: Path) -> None:
    import uvicorn

    calls: list[tuple[str, dict]] = []
    balance_dirs: list[str | None] = []

    def fake_run(app: str, **kw: object) -> None:
        calls.append((app, kw))
        d = os.environ.get(BALANCE_ENV)
        balance_dirs.append(d)
        assert d is None or Path(d).is_dir()  # the workers' shared directory exists while they run

    serve_env.setattr(uvicorn, "run", fake_run)
    serve_env.setenv(factory.STATE_ENV, "stale://")
    runner.run(str(art), host="127.0.0.1", port=free_port(), workers=3, log_level="info")
    app, kw = calls[0]
    assert app == "candgen.serve.factory:make_app" and kw["factory"] is True and kw["workers"] == 3
    assert balance_dirs[0] is not None and not Path(balance_dirs[0]).exists()  # removed when uvicorn returns
    runner.run(str(art), host="127.0.0.1", port=free_port(), workers=1)
    assert balance_dirs[1] is None  # one worker: nothing to balance
    assert kw["access_log"] is True and kw["log_level"] == "info"
    assert os.environ[factory.ART_ENV] == str(art) and factory.STATE_ENV not in os.environ
    with pytest.raises(CandgenError, match="--workers"):
        runner.run(str(art), workers=0)
    with pytest.raises(CandgenError, match="--log-level"):
        runner.run(str(art), log_level="loud")


def test_check_port_reports_a_taken_port_and_a_bad_host() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(CandgenError, match="already in use"):
            runner.check_port("127.0.0.1", port)
    with pytest.raises(CandgenError, match="cannot listen on 203.0.113.9"):
        runner.check_port("203.0.113.9", free_port())  # an address this machine does not have


def test_cli_serve_without_a_manifest_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["serve", str(tmp_path), "--port", str(free_port())])
    assert e.value.code == 2 and "manifest.json" in capsys.readouterr().err


def test_cli_serve_on_a_taken_port_exits_2(art: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(SystemExit) as e:
            main(["serve", str(art), "--port", str(s.getsockname()[1])])
    assert e.value.code == 2 and "already in use" in capsys.readouterr().err


def test_cli_serve_passes_its_options_to_the_runner(serve_env: pytest.MonkeyPatch, art: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    got: dict = {}
    serve_env.setattr(runner, "run", lambda a, **kw: got.update(kw, art=a))
    port = free_port()
    with pytest.raises(SystemExit) as e:
        main(["serve", str(art), "--port", str(port), "--workers", "2", "--log-level", "error"])
    assert e.value.code == 0
    assert got == {"art": str(art), "host": "127.0.0.1", "port": port, "workers": 2, "state_url": None,
                   "log_level": "error", "config_path": None}
    err = capsys.readouterr().err
    assert "model m1" in err and "--state redis://" in err  # several workers without shared state: a warning


@pytest.mark.slow
def test_a_real_server_with_two_workers_serves_and_stops_on_sigterm(art: Path) -> None:
    port = free_port()
    env = {**os.environ, factory.ENGINE_ENV: "serve_fakes:open_fake", "CANDGEN_API_KEY": "k",
           "CANDGEN_SERVE__MAX_BODY_BYTES": "4000",
           "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "candgen.cli.main", "serve", str(art), "--port", str(port), "--workers", "2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(url, proc)
        with httpx.Client(base_url=url) as c:
            r = c.post("/v1/candidates", json={"user_id": "a", "k": 3})
            assert r.status_code == 200 and r.json()["model_version"] == "fake:art:None"
            assert c.post("/v1/events", json={"events": []}).status_code == 401
            # small sizes: a body far over the limit may still be in flight when the server closes
            big = c.post("/v1/events", content=b"x" * 5000, headers={"content-type": "application/json"})
            assert big.status_code == 413 and big.json()["error"]["code"] == "body_too_large"
            assert c.get("/healthz").status_code == 200  # a fresh connection after the 413 closed the old one
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
    assert rc == 0
