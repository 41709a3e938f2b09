"""Snapshots of the state log on real artifacts: a restart after a snapshot replays only the tail and answers
exactly as a full replay does; missing, corrupt and other artifacts' snapshots fall back; a worker that lagged
behind a trim reloads from the snapshot (two engines on one store, every backend); the job, the lease, the CLI."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tiny_model

from candgen.artifacts import Manifest
from candgen.cli.main import main
from candgen.config import Config
from candgen.data.io import load_dataset
from candgen.data.synthetic import generate_world
from candgen.engine import Engine
from candgen.errors import CandgenError
from candgen.pipeline import train_artifacts
from candgen.serve.protocol import EngineOverloadedError, EventIn, ItemIn, UserProfileIn
from candgen.snapshot import (
    SnapshotError,
    artifacts_key,
    list_snapshots,
    replay_onto,
    take_snapshot,
)
from candgen.state import Record, open_state
from candgen.state.follow import LogFollower
from candgen.state.memory import forget
from candgen.types import Request

pytestmark = pytest.mark.slow


def tiny_config() -> Config:
    cfg = tiny_model.tiny_config()
    cfg.state.snapshot_every_records = 0  # the tests take snapshots themselves (the job is tested on its own)
    cfg.state.snapshot_every_s = 0.0
    return cfg


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], list[str]]:
    root = tmp_path_factory.mktemp("snapworld")
    generate_world(root / "w", users=300, items=600, days=10, seed=5)
    ds = load_dataset(root / "w")
    train_artifacts(ds, root / "art", config=tiny_config())
    counts = np.bincount(ds.interactions.user, minlength=ds.n_users)
    users = [ds.users.id(int(u)) for u in np.argsort(-counts)[:6]]
    return root / "art", users, ds.items.ids()[:40]


@pytest.fixture(autouse=True)
def deterministic_sampling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cold start's random items and the bandit's draws from the same seed on every call, so two engines with
    the same state give the same answer."""
    seeded = lambda seed=None: np.random.default_rng(7)  # noqa: E731
    monkeypatch.setattr("candgen.sources.coldstart.thread_rng", seeded)
    monkeypatch.setattr("candgen.sources.newitems.thread_rng", seeded)


def write_batch(e: Engine, world: tuple[Path, list[str], list[str]], tag: str) -> int:
    """Every kind of write: new items, events (positive, negative, block, impression) of known and new users,
    a deletion, profiles with friends. Returns how many records it appended."""
    _, users, items = world
    t = e.now_default
    e.add_items([ItemIn(item_id=f"{tag}-item{i}", tags=["t1", f"{tag}-tag"], category="c1", creator_id=f"cr-{tag}",
                        created_at=t + i) for i in range(3)])
    events = [EventIn(user_id=u, item_id=items[(i * 7 + j) % len(items)], event=ev, timestamp=t + 10 * i + j)
              for i, u in enumerate(users) for j, ev in enumerate(["view", "like", "hide", "impression"])]
    events += [EventIn(user_id=f"{tag}-new{i}", item_id=f"{tag}-item{i}", event="share", timestamp=t + 60 + i)
               for i in range(3)]
    events += [EventIn(user_id=users[0], item_id=items[-1], event="block", timestamp=t + 90)]
    e.ingest_events(events)
    e.delete_item(f"{tag}-item2")
    e.delete_item(items[-2 - ord(tag[0]) % 20])  # a trained item (another one per tag)
    e.put_user(f"{tag}-new0", UserProfileIn(attributes={"country": "FR"}, interests=["t1"],
                                            friends=[users[1], f"{tag}-new1"]))
    return 3 + len(events) + 2 + 1


def answers(e: Engine, world: tuple[Path, list[str], list[str]], tags: list[str]) -> list[object]:
    """What the engine answers warm users, users the log created, and an item-to-item request."""
    _, users, items = world
    now = e.now_default + 3600
    who = users + [f"{t}-new{i}" for t in tags for i in range(3)] + ["never-seen"]
    out: list[object] = []
    for u in who:
        r = e.candidates(Request(user_id=u, k=60, now=now, explain=True))
        out.append((u, r.item_ids, np.round(np.asarray(r.scores, np.float64), 6).tolist(), r.sources, r.degraded))
    sim = e.similar(items[0], 20)
    out.append((sim.item_ids, np.round(np.asarray(sim.scores, np.float64), 6).tolist()))
    return out


def open_engine(art: Path, url: str) -> Engine:
    return Engine.open(art, state_url=url, deadlines=False)


def test_restart_after_a_snapshot_replays_only_the_tail_and_answers_as_a_full_replay(world, tmp_path) -> None:
    art = world[0]
    url = f"sqlite:///{tmp_path}/j.db"
    live = open_engine(art, url)
    try:
        n1 = write_batch(live, world, "a")
        snap = live.snapshot()
        assert snap.meta is not None and snap.meta.records == n1 and snap.base is None and snap.trimmed == 0
        assert (tmp_path / "j.db-blobs" / f"{snap.meta.name}.zip").exists()  # beside the journal
        n2 = write_batch(live, world, "b")
        expected = answers(live, world, ["a", "b"])
    finally:
        live.close()
    shutil.copy(tmp_path / "j.db", tmp_path / "full.db")  # the same log without the snapshot: a full replay
    restarted, full = open_engine(art, url), open_engine(art, f"sqlite:///{tmp_path}/full.db")
    try:
        assert restarted.replayed.snapshot == snap.meta and restarted.replayed.records == n2  # only the tail
        assert full.replayed.snapshot is None and full.replayed.records == n1 + n2
        assert restarted.stats()["state_replay_from_snapshot"] == 1
        assert answers(restarted, world, ["a", "b"]) == answers(full, world, ["a", "b"]) == expected
        r, f = restarted.rt, full.rt
        assert (r.profiles, r.activity_counts, r.catalog_writes) == (f.profiles, f.activity_counts, f.catalog_writes)
        assert r.dataset.users.ids() == f.dataset.users.ids() and r.profiles["a-new0"].friends
        for e in (restarted, full):
            e.add_items([ItemIn(item_id="after", tags=["t1"], category="c1", created_at=e.now_default)])
        assert restarted.state.catalog.items.get("after") == full.state.catalog.items.get("after")
        assert len(restarted.rt.index) == len(full.rt.index)
    finally:
        restarted.close()
        full.close()


def test_missing_corrupt_and_foreign_snapshots_fall_back(world, tmp_path) -> None:
    art = world[0]
    url = f"sqlite:///{tmp_path}/j.db"
    blobs = tmp_path / "j.db-blobs"
    e = open_engine(art, url)
    try:
        write_batch(e, world, "a")
        first = e.snapshot(trim=False).meta
        write_batch(e, world, "b")
        second = e.snapshot(trim=False).meta
        assert e.snapshot(trim=False).meta is None  # nothing new: no third snapshot
        expected = answers(e, world, ["a", "b"])
    finally:
        e.close()
    assert first is not None and second is not None and second.generation == 2
    data = bytearray((blobs / f"{second.name}.zip").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (blobs / f"{second.name}.zip").write_bytes(bytes(data))  # the newest is corrupt: the one before is used
    again = open_engine(art, url)
    try:
        assert again.replayed.snapshot == first and answers(again, world, ["a", "b"]) == expected
    finally:
        again.close()
    for m in (first, second):
        (blobs / f"{m.name}.zip").unlink()  # metadata without data: unusable, full replay
    again = open_engine(art, url)
    try:
        assert again.replayed.snapshot is None and answers(again, world, ["a", "b"]) == expected
    finally:
        again.close()
    cfg = Config.from_dict(again.rt.manifest.config)
    cfg.events.weights = {**cfg.events.weights, "view": 1.5}  # other weights: other state, another key
    with open_state(url) as store:
        e2 = Engine.open(art, state_url=url, config=cfg, deadlines=False)
        try:
            mine = take_snapshot(art, store, config=cfg).meta
            assert mine is not None and mine.key == artifacts_key(e2.rt) != first.key
        finally:
            e2.close()
        for m in list_snapshots(store, first.key):
            store.delete_blob(m.name + ".json")
        assert [m.key for m in list_snapshots(store)] == [mine.key]
    other_key = open_engine(art, url)  # the only snapshot is another config's: never applied here
    try:
        assert other_key.replayed.snapshot is None and answers(other_key, world, ["a", "b"]) == expected
    finally:
        other_key.close()


def test_a_snapshot_is_restored_onto_fresh_artifacts_only(world, tmp_path) -> None:
    from candgen.runtime import Runtime
    from candgen.snapshot import load_newest, restore

    art = world[0]
    e = Engine(Runtime.load(art), store=open_state(f"sqlite:///{tmp_path}/j.db"), deadlines=False)
    try:
        write_batch(e, world, "a")
        e.snapshot()
        assert e.store is not None
        snap = load_newest(e.store, artifacts_key(e.rt))
        assert snap is not None
        with pytest.raises(SnapshotError, match="freshly loaded"):
            restore(e.rt, snap)  # a runtime that applied writes already
        cfg = Config.from_dict(e.rt.manifest.config)
        cfg.events.weights = {**cfg.events.weights, "like": 9.0}
        with pytest.raises(SnapshotError, match="other artifacts"):
            restore(Runtime.load(art, config=cfg), snap)
    finally:
        e.close()


def store_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    if backend == "memory":
        name = f"snap-{uuid.uuid4().hex[:8]}"
        yield f"memory://{name}"
        forget(name)
    elif backend == "sqlite":
        yield f"sqlite:///{tmp_path}/shared.db"
    else:
        yield request.getfixturevalue("redis_url")


@pytest.fixture(params=["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from store_url(request.param, tmp_path, request)


def test_a_worker_behind_a_trim_reloads_from_the_snapshot(world, shared_url) -> None:
    art = world[0]
    a, b = open_engine(art, shared_url), open_engine(art, shared_url)
    try:
        write_batch(a, world, "a")
        b.catch_up()
        first = a.snapshot()
        write_batch(a, world, "b")  # b serves nothing meanwhile: its cursor stays before these
        second = a.snapshot()
        assert first.meta is not None and second.meta is not None
        assert second.trimmed > 0  # up to the first snapshot: b's cursor is still at or after it
        assert b.store is not None and b.store.read_since(b.follower.cursor, limit=1)[0]  # nothing missed yet
        write_batch(a, world, "c")
        third = a.snapshot()
        assert third.trimmed > 0  # up to the second: b (at the first) fell behind the trimmed range
        b.catch_up()  # the next request on b notices, starts a reload from the snapshot, serves meanwhile
        assert b.follower.gap is not None and b.stats()["state_log_gaps"] == 1
        b.ingest_events([EventIn(user_id="during-gap", item_id="a-item0", event="like",
                                 timestamp=b.now_default)])  # a write during the gap is not lost
        assert b._recovery is not None
        b._recovery.join(60)
        assert b.follower.gap is None and b.gap_recoveries == 1
        assert b.replayed.snapshot is not None and b.replayed.snapshot.generation == 3
        a.catch_up()
        assert answers(b, world, ["a", "b", "c"]) == answers(a, world, ["a", "b", "c"])
        assert b.state.catalog.items.get("c-item1") >= 0
        assert a.state.activity.n_engagements(a.rt.user_index("during-gap")) == 1
        assert b.state.activity.n_engagements(b.rt.user_index("during-gap")) == 1
    finally:
        a.close()
        b.close()


def test_the_job_snapshots_when_due_and_one_worker_at_a_time(world, tmp_path) -> None:
    art = world[0]
    url = f"sqlite:///{tmp_path}/j.db"
    cfg = Config.from_dict(Manifest.read(art).config)
    cfg.state.snapshot_every_records, cfg.state.snapshot_every_s, cfg.state.snapshot_check_s = 20, 0.0, 3600.0
    e = Engine.open(art, state_url=url, config=cfg, deadlines=False)
    try:
        assert e.snapshots is not None and e.snapshots.run_once() is False  # an empty log
        write_batch(e, world, "a")  # more than 20 records
        with open_state(url, worker_id="someone-else") as other:
            lease = f"snapshot-{artifacts_key(e.rt)}"
            assert other.try_log_lease(lease, ttl_s=60)  # another worker is taking one
            assert e.snapshots.run_once() is False and e.snapshots.busy == 1
            with pytest.raises(EngineOverloadedError, match="another worker"):
                e.snapshot()
            other.release_log_lease(lease)
        assert e.snapshots.run_once() is True
        assert e.snapshots.run_once() is False  # not due again until 20 more records
        write_batch(e, world, "b")
        assert e.snapshots.run_once() is True
        assert e.store is not None and e.store.trimmed_upto() is not None  # the second one trimmed the log
        assert e.stats()["snapshot_taken"] == 2
    finally:
        e.close()


def test_a_new_artifacts_start_after_trims_replays_what_is_left_and_says_so(world, tmp_path, caplog) -> None:
    """Artifacts without a snapshot of their own cannot get the trimmed records back: the replay applies the
    rest, warns, and `take_snapshot` refuses to enshrine the loss."""
    from candgen.runtime import Runtime

    art = world[0]
    url = f"sqlite:///{tmp_path}/j.db"
    e = open_engine(art, url)
    try:
        for tag in ("a", "b"):
            write_batch(e, world, tag)
            e.snapshot()
    finally:
        e.close()
    cfg = Config.from_dict(e.rt.manifest.config)
    cfg.events.weights = {**cfg.events.weights, "click": 4.0}
    with open_state(url) as store:
        rt = Runtime.load(art, config=cfg)
        follower = LogFollower(store, lambda r: rt.apply(r.kind, r.data))
        info = replay_onto(rt, store, follower)
        assert info.snapshot is None and info.missing_upto == store.trimmed_upto()
        assert "trimmed" in caplog.text
        with pytest.raises(SnapshotError, match="cannot be built"):
            take_snapshot(art, store, config=cfg)


def test_cli_state_snapshot_and_info(world, tmp_path, capsys) -> None:
    art = world[0]
    url = f"sqlite:///{tmp_path}/j.db"
    e = open_engine(art, url)
    try:
        write_batch(e, world, "a")
    finally:
        e.close()
    with pytest.raises(SystemExit) as done:
        main(["state", "snapshot", str(art), "--state", url])
    out = capsys.readouterr().out
    assert done.value.code == 0 and "snapshot 1" in out and "records" in out
    with pytest.raises(SystemExit) as done:
        main(["state", "snapshot", str(art), "--state", url])
    assert done.value.code == 0 and "nothing new" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        main(["state", "info", str(art), "--state", url])
    out = capsys.readouterr().out
    assert done.value.code == 0 and "these artifacts" in out and "appended" in out
    with pytest.raises(SystemExit) as done:
        main(["state", "snapshot", str(tmp_path / "nowhere"), "--state", url])
    assert done.value.code == 2 and "manifest" in capsys.readouterr().err
    with open_state(url, worker_id="busy") as other:
        key = list_snapshots(other)[0].key
        assert other.try_log_lease(f"snapshot-{key}", ttl_s=60)
        with pytest.raises(SystemExit) as done:
            main(["state", "snapshot", str(art), "--state", url])
        assert done.value.code == 2 and "another worker" in capsys.readouterr().err


def test_a_snapshot_that_does_not_fit_is_skipped_and_changes_nothing(world, tmp_path) -> None:
    """A snapshot that decodes but contradicts the artifacts (here: users it claims the log added are the
    artifacts' own) is refused before anything changes, and the start falls back to the log."""
    import dataclasses
    import hashlib
    import io
    import json
    import zipfile

    art, users, _ = world
    url = f"sqlite:///{tmp_path}/j.db"
    e = open_engine(art, url)
    try:
        write_batch(e, world, "a")
        meta = e.snapshot().meta
        expected = answers(e, world, ["a"])
    finally:
        e.close()
    assert meta is not None
    blobs = tmp_path / "j.db-blobs"
    src = zipfile.ZipFile(io.BytesIO((blobs / f"{meta.name}.zip").read_bytes()))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name in src.namelist():
            data = src.read(name)
            if name == "runtime.json":
                runtime = json.loads(data)
                runtime["users"] = [users[0]] + runtime["users"]
                data = json.dumps(runtime).encode()
            z.writestr(name, data)
    bad = buf.getvalue()
    forged = dataclasses.replace(meta, size=len(bad), sha256=hashlib.sha256(bad).hexdigest())
    (blobs / f"{meta.name}.zip").write_bytes(bad)
    (blobs / f"{meta.name}.json").write_bytes(forged.to_json())
    again = open_engine(art, url)
    try:
        assert again.replayed.snapshot is None and answers(again, world, ["a"]) == expected
    finally:
        again.close()


def test_restore_refuses_snapshots_that_do_not_fit_before_changing_anything(world, tmp_path) -> None:
    import dataclasses

    from candgen.runtime import Runtime
    from candgen.snapshot import load_newest, restore

    art = world[0]
    e = open_engine(art, f"sqlite:///{tmp_path}/j.db")
    try:
        write_batch(e, world, "a")
        e.snapshot()
        assert e.store is not None
        snap = load_newest(e.store, artifacts_key(e.rt))
    finally:
        e.close()
    assert snap is not None and len(snap.index_ids)
    bad_vectors = snap.index_vectors.copy()
    bad_vectors[0, 0] = np.nan
    for bad, words in [
        (dataclasses.replace(snap, index_vectors=snap.index_vectors[:, :3]), "index vectors"),
        (dataclasses.replace(snap, index_vectors=bad_vectors), "finite"),
        (dataclasses.replace(snap, removed=np.array([10**9])), "outside its catalog"),
    ]:
        rt = Runtime.load(art)
        n_users, index_size = len(rt.dataset.users), len(rt.index)
        with pytest.raises(SnapshotError, match=words):
            restore(rt, bad)
        assert (len(rt.dataset.users), len(rt.index), rt.restored) == (n_users, index_size, None)


def test_a_replay_overtaken_by_a_trim_starts_again(world, tmp_path) -> None:
    from candgen.runtime import Runtime
    from candgen.snapshot import replay_fresh

    art = world[0]
    url = f"sqlite:///{tmp_path}/j.db"
    e = open_engine(art, url)
    try:
        n = write_batch(e, world, "a")
    finally:
        e.close()
    with open_state(url) as store:
        loads: list[Runtime] = []

        def load() -> Runtime:
            loads.append(Runtime.load(art))
            return loads[-1]

        class Trims:  # a snapshotter trims the log past the first page of each of the first `n` replays
            def __init__(self, n: int) -> None:
                self.n = n

            def __call__(self, rt: Runtime) -> LogFollower:
                attempt, applied = len(loads), [0]

                def apply(r: Record) -> None:
                    rt.apply(r.kind, r.data)
                    applied[0] += 1
                    if attempt <= self.n and applied[0] == 5:  # the last record of the first page of 5
                        store.trim(str(int(r.seq) + 3))

                return LogFollower(store, apply, page=5)

        rt, follower, rep = replay_fresh(load, store, Trims(1))
        assert len(loads) == 2 and rt is loads[-1]  # started again on a fresh runtime
        assert rep.missing_upto == store.trimmed_upto() and rep.records == n - 8  # what was left of the log
        with pytest.raises(CandgenError, match="trimmed during 3 replays"):
            replay_fresh(load, store, Trims(99))


def test_engine_error_paths_around_snapshots(world, tmp_path, caplog) -> None:
    art = world[0]
    offline = Engine.load(art)
    with pytest.raises(CandgenError, match="nothing to snapshot"):
        offline.snapshot()
    url = f"sqlite:///{tmp_path}/j.db"
    a, b = open_engine(art, url), open_engine(art, url)
    try:
        b.rt.art = None  # a runtime built in memory: nothing to reload from
        for tag in ("a", "b", "c"):
            write_batch(a, world, tag)
            a.snapshot()
        b.catch_up()
        assert b._recovery is not None
        b._recovery.join(30)
        assert b.gap_recoveries == 0 and "no artifacts directory" in caplog.text
        b.rt.art = art

        def broken(*args: object, **kwargs: object) -> str:
            raise OSError("disk full")

        b._reload_from = broken  # type: ignore[method-assign]
        b.catch_up()  # the gap is still there: a new recovery starts, and fails, logged
        b._recovery.join(30)
        assert b.gap_recoveries == 0 and "could not reload from the newest snapshot" in caplog.text
        assert b.follower.gap is not None  # still behind: the next request tries again
    finally:
        a.close()
        b.close()
