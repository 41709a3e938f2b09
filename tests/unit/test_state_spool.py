"""The event spool (candgen.state.spool): durable, bounded, delivered in order, taken over after a crash."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from candgen.errors import CandgenError
from candgen.state import Record, StateUnavailable
from candgen.state.memory import MemoryStore
from candgen.state.spool import EventSpool, Spooler, SpoolFlusher, SpoolFull, spool_dir


class Flaky(MemoryStore):
    """A memory store whose appends fail while `down`."""

    def __init__(self) -> None:
        super().__init__(worker_id="flaky")
        self.down = False

    def append(self, records: list[Record]) -> list[str]:
        if self.down:
            raise StateUnavailable("state backend unavailable: test outage")
        return super().append(records)


def events(*names: str, origin: str = "w1") -> list[Record]:
    return [Record(kind="event", data={"item_id": n}, origin=origin) for n in names]


def logged(store: MemoryStore) -> list[tuple[str, str]]:
    records, _ = store.read_since(None)
    return [(r.data["item_id"], r.origin) for r in records]


def test_spooled_records_are_delivered_in_order_with_their_origin(tmp_path: Path) -> None:
    store = Flaky()
    with EventSpool(tmp_path, worker_id="w1") as spool:
        spool.add(events("a", "b"))
        spool.add(events("c"))
        assert spool.pending() == 3
        store.down = True
        with pytest.raises(StateUnavailable):
            spool.flush(store)
        assert spool.pending() == 3 and logged(store) == []
        store.down = False
        assert spool.flush(store) == 3 and spool.pending() == 0 and spool.flushed == 3
        assert logged(store) == [("a", "w1"), ("b", "w1"), ("c", "w1")]
        assert spool.flush(store) == 0  # nothing twice


def test_a_full_spool_refuses_the_whole_write(tmp_path: Path) -> None:
    with EventSpool(tmp_path, worker_id="w1", max_records=3) as spool:
        spool.add(events("a", "b"))
        with pytest.raises(SpoolFull, match="max 3"):
            spool.add(events("c", "d"))
        assert spool.pending() == 2
    with pytest.raises(ValueError, match="max_records"):
        EventSpool(tmp_path, worker_id="w2", max_records=0)


def test_a_dead_workers_spool_survives_and_is_delivered_by_another(tmp_path: Path) -> None:
    store = MemoryStore()
    a = EventSpool(tmp_path, worker_id="host-1-a")
    a.add(events("x", "y", origin="host-1-a"))
    b = EventSpool(tmp_path, worker_id="host-2-b")
    try:
        assert b.flush(store) == 0  # a is alive (holds its lock): its own flusher delivers it
        a.close()  # a dies with its records on disk
        assert b.flush(store) == 2 and logged(store) == [("x", "host-1-a"), ("y", "host-1-a")]
        assert not (tmp_path / "host-1-a.sqlite3").exists()  # delivered and removed
        assert b.flush(store) == 0
    finally:
        b.close()
    c = EventSpool(tmp_path, worker_id="host-2-b")  # the same worker id again after a restart: its file back
    try:
        c.add(events("z"))
        c.close()
        reopened = EventSpool(tmp_path, worker_id="host-2-b")
        assert reopened.pending() == 1
        reopened.close()
    finally:
        c.close()


def test_one_worker_id_cannot_spool_twice(tmp_path: Path) -> None:
    with EventSpool(tmp_path, worker_id="w/1") as spool:
        assert spool.path.name == "w_1.sqlite3"
        with pytest.raises(CandgenError, match="locked by another process"):
            EventSpool(tmp_path, worker_id="w/1")


def test_the_flusher_delivers_in_the_background_and_waits_out_an_outage(tmp_path: Path) -> None:
    store = Flaky()
    store.down = True
    spooler = Spooler(EventSpool(tmp_path, worker_id="flaky"), store, period_s=0.02)
    try:
        applied: list[Record] = []
        assert spooler.accept(events("a", "b", origin=""), applied.extend) == 2
        assert [r.origin for r in applied] == ["flaky", "flaky"] and spooler.stats()["spool_accepted"] == 2
        time.sleep(0.1)
        assert spooler.stats()["spool_pending"] == 2 and spooler.flusher.errors == 0  # an outage is no error
        store.down = False
        deadline = time.monotonic() + 5
        while spooler.stats()["spool_pending"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert logged(store) == [("a", "flaky"), ("b", "flaky")] and spooler.stats()["spool_delivered"] == 2
    finally:
        spooler.close()


def test_closing_in_an_outage_leaves_the_spool_for_the_next_worker(tmp_path: Path) -> None:
    store = Flaky()
    store.down = True
    spooler = Spooler(EventSpool(tmp_path, worker_id="flaky"), store, period_s=60)
    spooler.accept(events("a", origin=""), lambda records: None)
    assert SpoolFlusher(spooler.spool, store).run_once() == 0  # the outage is waited out, not raised
    spooler.close()  # its last delivery attempt fails: the record stays on disk
    store.down = False
    with EventSpool(tmp_path, worker_id="next") as successor:
        assert successor.flush(store) == 1 and logged(store) == [("a", "flaky")]


def test_where_the_spool_lives(tmp_path: Path) -> None:
    assert spool_dir(tmp_path / "art", "") == tmp_path / "art" / "spool"
    assert spool_dir(None, "") is None
    assert spool_dir(tmp_path / "art", str(tmp_path / "elsewhere")) == tmp_path / "elsewhere"
    store = MemoryStore()
    assert Spooler.open(store, tmp_path, enabled=False, directory="", max_records=10) is None
    assert Spooler.open(store, None, enabled=True, directory="", max_records=10) is None
    on = Spooler.open(store, tmp_path, enabled=True, directory="", max_records=10)
    assert on is not None and on.spool.path.parent == tmp_path / "spool"
    on.close()


def test_no_place_for_the_spool_turns_it_off_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert Spooler.open(MemoryStore(), None, enabled=True, directory=str(blocker / "spool"), max_records=10) is None
    assert "no event spool" in caplog.text
