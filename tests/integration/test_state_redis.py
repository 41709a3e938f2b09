"""RedisStore beyond the shared contract: outages never hang or crash, reconnection, key layout, leases."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot

from candgen.bench.redisproc import start_redis, stop_redis
from candgen.bench.service import free_port
from candgen.errors import CandgenError
from candgen.state import Record, StateUnavailable, open_state
from candgen.state.redis import RedisStore, hash_tag

pytestmark = pytest.mark.redis


def test_outage_degrades_quickly_and_never_crashes_a_read() -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", prefix="down")  # nothing listens there
    cache = store.cache("L1")
    t0 = time.perf_counter()
    assert store.health() is False
    assert cache.get("u") is None
    assert cache.get_many(["a", "b"]) == [None, None]
    cache.set("u", b"x", ttl_s=1)
    cache.delete("u")
    cache.clear()
    assert store.try_lease("l3", ttl_s=1) is False
    with pytest.raises(StateUnavailable, match="state backend unavailable"):
        store.append([Record(kind="event", data={})])
    with pytest.raises(StateUnavailable):
        store.read_since(None)
    with pytest.raises(StateUnavailable):
        store.tail_cursor()
    assert time.perf_counter() - t0 < 1.0
    assert cache.stats() == {"hits": 0, "misses": 3, "errors": 5, "size": -1}
    assert isinstance(StateUnavailable("x"), CandgenError)


def test_a_hung_redis_costs_one_timeout_then_fails_fast() -> None:
    with socket.socket() as hung:  # accepts TCP connections (kernel backlog) but never answers
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        store = RedisStore(f"redis://127.0.0.1:{hung.getsockname()[1]}/0", prefix="hung",
                           socket_timeout_s=0.2, retry_after_s=5)
        t0 = time.perf_counter()
        assert store.cache("L1").get("u") is None  # waits for the 0.2 s timeout once
        first = time.perf_counter() - t0
        t1 = time.perf_counter()
        for _ in range(20):  # a burst of requests while the breaker is open: no network at all
            assert store.cache("L1").get("u") is None
            with pytest.raises(StateUnavailable, match="not retrying yet"):
                store.read_since(None)
        burst = time.perf_counter() - t1
        assert 0.15 < first < 1.0 and burst < 0.1
        assert store.cache("L1").stats()["errors"] == 21
        store.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A private redis-server we may stop and restart (the shared one must stay up for everyone)."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed")
    yield free_port(), tmp_path


def test_start_redis_fails_clearly_when_the_port_is_taken(own_redis: tuple[int, Path]) -> None:
    port, workdir = own_redis
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        t = time.perf_counter()
        with pytest.raises(RuntimeError, match=f"did not start on port {port}"):
            start_redis(port, workdir / "r", timeout_s=30)
        assert time.perf_counter() - t < 5  # it notices the server exited; it does not wait out the timeout


def test_reconnects_when_redis_comes_back(own_redis: tuple[int, Path]) -> None:
    port, workdir = own_redis
    store = RedisStore(f"redis://127.0.0.1:{port}/0", prefix="re")
    assert store.health() is False  # not started yet: a port where nothing listens
    with pytest.raises(StateUnavailable):
        store.append([Record(kind="event", data={"n": 0})])
    proc = start_redis(port, workdir)
    try:
        assert store.health() is True  # the same store object, no reopen
        first = store.append([Record(kind="event", data={"n": 1})])
        store.cache("L1").set("u", b"x", ttl_s=30)
        stop_redis(proc)  # pooled connections are now dead
        assert store.health() is False
        assert store.cache("L1").get("u") is None
        proc = start_redis(port, workdir)  # AOF brings the stream back
        t0 = time.monotonic()
        while store.cache("L1").get("u") != b"x":  # the breaker retries within retry_after_s (1 s)
            assert time.monotonic() - t0 < 3, "no reconnection"
            time.sleep(0.05)
        store.append([Record(kind="event", data={"n": 2})])
        records, _ = store.read_since(None)
        assert [r.data["n"] for r in records] == [1, 2] and records[0].seq == first[0]
    finally:
        stop_redis(proc)
        store.close()


def test_every_key_shares_one_cluster_slot(redis_url: str) -> None:
    store = open_state(redis_url, worker_id="w")
    assert isinstance(store, RedisStore)
    store.append([Record(kind="event", data={})])
    for level in ("L1", "L2", "L3"):
        store.cache(level).set("u1", b"x", ttl_s=30)
    store.try_lease("l3", ttl_s=30)
    client = redis.Redis.from_url(redis_url.split("?")[0])
    keys = sorted(k.decode() for k in client.scan_iter(match=f"{store.tag}*", count=1000))
    assert keys == [f"{store.tag}:{s}" for s in ("L1:u1", "L2:u1", "L3:u1", "lease:l3", "log")]
    assert len({key_slot(k.encode()) for k in keys}) == 1
    assert store.delete_all() == 5
    assert store.read_since(None) == ([], None)


def test_prefixes_are_separate_namespaces(redis_url: str) -> None:
    a = open_state(redis_url)
    b = open_state(redis_url.replace("prefix=", "prefix=other-"))
    try:
        a.append([Record(kind="event", data={})])
        a.cache("L1").set("u", b"x", ttl_s=30)
        assert b.read_since(None) == ([], None) and b.cache("L1").get("u") is None
    finally:
        assert isinstance(b, RedisStore)
        b.delete_all()


def test_a_lease_passes_to_another_worker_when_it_expires(redis_url: str) -> None:
    a, b = open_state(redis_url, worker_id="a"), open_state(redis_url, worker_id="b")
    assert a.try_lease("l3", ttl_s=0.15) is True
    assert b.try_lease("l3", ttl_s=0.15) is False
    time.sleep(0.25)
    assert b.try_lease("l3", ttl_s=5) is True
    assert a.try_lease("l3", ttl_s=5) is False


def test_hash_tag_and_url_errors() -> None:
    assert hash_tag("shop") == "{shop}" and hash_tag("{shop}") == "{shop}"
    with pytest.raises(CandgenError, match="prefix"):
        hash_tag("")
    with pytest.raises(CandgenError, match="bad redis state URL"):
        RedisStore("redis://127.0.0.1:6379/notadb")
    with pytest.raises(CandgenError, match="bad redis state URL"):
        RedisStore("redis://127.0.0.1:notaport/0")
    with pytest.raises(CandgenError, match="cannot reach") as e:
        open_state(f"redis://user:secret@127.0.0.1:{free_port()}/0")
    assert "secret" not in str(e.value)
    assert "secret" not in RedisStore("redis://:secret@127.0.0.1:6379/0").url


@pytest.mark.parametrize(("ci", "outcome"), [("true", "1 error"), ("", "1 skipped")])
def test_the_redis_fixture_fails_under_ci_and_skips_otherwise(ci: str, outcome: str) -> None:
    import os
    import sys

    env = {**os.environ, "CI": ci, "CANDGEN_TEST_REDIS_URL": f"redis://127.0.0.1:{free_port()}/14"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           f"{__file__}::test_prefixes_are_separate_namespaces"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert outcome in done.stdout, done.stdout[-2000:]
    assert "unreachable" in done.stdout


def test_blob_lease_and_trim_calls_during_an_outage() -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", prefix="down")
    for call in (lambda: store.put_blob("b", b"x"), lambda: store.get_blob("b"), lambda: store.list_blobs(),
                 lambda: store.delete_blob("b"), store.trimmed_upto, store.appended, lambda: store.trim("1-0"),
                 lambda: store.read_since("1-0")):
        with pytest.raises(StateUnavailable):
            call()
    assert store.try_log_lease("snapshot", ttl_s=1) is False
    store.release_log_lease("snapshot")  # quiet: the lease expires by itself


def test_a_blob_missing_a_chunk_is_an_error_not_short_bytes(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import candgen.state.redis as backend

    monkeypatch.setattr(backend, "BLOB_CHUNK", 4)  # many small chunks
    store = open_state(redis_url)
    assert isinstance(store, RedisStore)
    store.put_blob("snap", b"0123456789")
    head = f"{store.tag}:blob:snap"
    r = redis.Redis.from_url(redis_url.split("?")[0])
    bid = r.hget(head, "id").decode()
    r.delete(f"{head}:{bid}:1")
    with pytest.raises(CandgenError, match="incomplete"):
        store.get_blob("snap")
    store.put_blob("snap", b"abcdefgh")  # a new version replaces it (and its chunks) whole
    assert store.get_blob("snap") == b"abcdefgh"
    assert not r.exists(f"{head}:{bid}:0")  # the old version's chunks are gone
    real_hget = store._bulk().hget
    monkeypatch.setattr(store._bulk(), "hget", lambda *a: b"someone-else")  # a writer replaces it each time
    r.delete(f"{head}:{r.hget(head, 'id').decode()}:0")
    with pytest.raises(CandgenError, match="kept changing"):
        store.get_blob("snap")
    monkeypatch.setattr(store._bulk(), "hget", real_hget)
    store.close()
