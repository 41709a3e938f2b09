"""The SQLite journal across processes: concurrent writers on one file, and acknowledged writes surviving kill -9."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from candgen.errors import CandgenError
from candgen.state import Record, StateUnavailable, open_state
from candgen.state.sqlite import SQLiteStore

WRITER = """
import sys
from candgen.state.base import Record
from candgen.state.sqlite import SQLiteStore
store = SQLiteStore(sys.argv[1], worker_id=sys.argv[2], synchronous=sys.argv[3])
for i in range(int(sys.argv[4])):
    store.append([Record(kind="event", data={"w": sys.argv[2], "i": i})])
    print(i, flush=True)  # printed only after append returned: the write is acknowledged
if sys.argv[5] == "kill":
    import os, signal
    os.kill(os.getpid(), signal.SIGKILL)
"""


def run_writers(path: Path, names: list[str], n: int, *, sync: str = "full", end: str = "exit") -> list[str]:
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), w, sync, str(n), end],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for w in names]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode in (0, -signal.SIGKILL), err
        outs.append(out)
    return outs


def test_two_processes_append_to_one_file(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    run_writers(path, ["a", "b"], 40)
    records, _ = SQLiteStore(path).read_since(None)
    assert sorted((r.data["w"], r.data["i"]) for r in records) == [(w, i) for w in "ab" for i in range(40)]
    for w in "ab":  # each writer's records in its own order
        assert [r.data["i"] for r in records if r.origin == w] == list(range(40))
    assert [int(r.seq) for r in records] == sorted(int(r.seq) for r in records)


@pytest.mark.parametrize("sync", ["full", "normal"])
def test_acknowledged_writes_survive_kill_9(tmp_path: Path, sync: str) -> None:
    path = tmp_path / "journal.db"
    (out,) = run_writers(path, ["w"], 25, sync=sync, end="kill")
    acknowledged = len(out.split())
    assert acknowledged == 25
    records, _ = SQLiteStore(path).read_since(None)
    assert [r.data["i"] for r in records] == list(range(acknowledged))


class _BusyAtOpen(sqlite3.Connection):
    """A connection whose first statements find the file busy, as SQLite answers (without waiting on the
    busy handler) while another process's last connection cleans up the WAL at its close."""
    busy_left = 0

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if _BusyAtOpen.busy_left > 0:
            _BusyAtOpen.busy_left -= 1
            raise sqlite3.OperationalError("database is locked")
        return super().execute(sql, *args)


@pytest.fixture
def busy_at_open(monkeypatch: pytest.MonkeyPatch) -> type[_BusyAtOpen]:
    connect = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **kw: connect(*a, factory=_BusyAtOpen, **kw))
    return _BusyAtOpen


def test_a_busy_open_is_retried_until_the_file_is_free(tmp_path: Path, busy_at_open: type[_BusyAtOpen]) -> None:
    busy_at_open.busy_left = 3
    store = SQLiteStore(tmp_path / "journal.db", busy_timeout_s=5.0)
    assert busy_at_open.busy_left == 0
    assert len(store._conns) == 1  # the connections that found the file busy were closed, not kept
    assert store.append([Record(kind="event", data={})]) == ["1"]


def test_an_open_busy_past_the_timeout_is_a_clear_error(tmp_path: Path, busy_at_open: type[_BusyAtOpen]) -> None:
    busy_at_open.busy_left = 10**6
    with pytest.raises(CandgenError, match="cannot open the state journal .*database is locked"):
        SQLiteStore(tmp_path / "journal.db", busy_timeout_s=0.1)
    busy_at_open.busy_left = 0


def test_append_reports_a_locked_journal_as_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    store = SQLiteStore(path, busy_timeout_s=0.05)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holding the write lock for too long
    try:
        with pytest.raises(StateUnavailable, match="state backend unavailable"):
            store.append([Record(kind="event", data={})])
        assert store.read_since(None) == ([], None)  # readers are not blocked by the writer (WAL)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert store.append([Record(kind="event", data={})]) == ["1"]


def test_read_and_tail_report_a_broken_journal_as_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    store = SQLiteStore(path)
    store._conn().execute("DROP TABLE log")  # what a foreign tool or a corrupted file would do
    with pytest.raises(StateUnavailable):
        store.read_since(None)
    with pytest.raises(StateUnavailable):
        store.tail_cursor()


def test_wal_mode_and_synchronous_are_set(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "j.db")
    conn = store._conn()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL, the default
    full = open_state(f"sqlite:///{tmp_path}/k.db?synchronous=full")
    assert isinstance(full, SQLiteStore)
    assert full._conn().execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    with pytest.raises(CandgenError, match="synchronous"):
        SQLiteStore(tmp_path / "l.db", synchronous="off")


def test_each_thread_gets_its_own_connection(tmp_path: Path) -> None:
    import threading

    store = SQLiteStore(tmp_path / "j.db")
    seen: list[int] = []
    t = threading.Thread(target=lambda: seen.append(id(store._conn())))
    t.start()
    t.join()
    assert seen and seen[0] != id(store._conn())
    store.close()
    assert not store.health()


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "j.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(CandgenError, match="cannot open the state journal"):
        SQLiteStore(bad)


def test_opening_under_a_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    with pytest.raises(CandgenError, match="cannot open the state journal"):
        SQLiteStore(tmp_path / "plain" / "j.db")
    assert os.path.isfile(tmp_path / "plain")


def test_blob_and_lease_failures_are_clear(tmp_path: Path) -> None:
    import time

    store = SQLiteStore(tmp_path / "j.db", worker_id="w")
    store.blob_dir.write_text("a file where the blob directory should be")
    with pytest.raises(StateUnavailable, match="cannot write"):
        store.put_blob("snap", b"x")
    with pytest.raises(StateUnavailable, match="cannot list"):
        store.list_blobs()
    store.blob_dir.unlink()
    (store.blob_dir / "snap").mkdir(parents=True)  # a directory where a blob should be
    with pytest.raises(StateUnavailable, match="cannot read"):
        store.get_blob("snap")
    with pytest.raises(StateUnavailable, match="cannot delete"):
        store.delete_blob("snap")
    stale, fresh = store.blob_dir / ".old.1234.tmp", store.blob_dir / ".new.5678.tmp"
    for f in (stale, fresh):
        f.write_bytes(b"left by a writer that crashed")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    store.put_blob("other", b"y")  # sweeps temporary files older than an hour, not a writer's current one
    assert not stale.exists() and fresh.exists() and store.list_blobs() == ["other", "snap"]
    store.close()
    assert store.try_log_lease("job", ttl_s=5) is False  # a closed (or broken) journal grants no lease
    store.release_log_lease("job")  # and releasing is quiet


def test_local_lease_ttl_is_checked() -> None:
    from candgen.state.base import LocalLeases

    with pytest.raises(CandgenError, match="ttl"):
        LocalLeases().take("job", "w", 0)
