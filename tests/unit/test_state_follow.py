"""LogFollower: two workers on one journal see each other's writes once, replay after restart, survive failures."""

from __future__ import annotations

from pathlib import Path

import pytest

from candgen.state import Record, StateUnavailable, open_state
from candgen.state.follow import LogFollower
from candgen.state.memory import MemoryStore


class Worker:
    """A worker's in-process structure: the set of items it knows."""

    def __init__(self, url: str, name: str) -> None:
        self.items: list[str] = []
        self.store = open_state(url, worker_id=name)
        self.follower = LogFollower(self.store, self.apply, page=3)

    def apply(self, r: Record) -> None:
        if r.kind == "boom":
            raise ValueError("bad record")
        self.items.append(r.data["item_id"])


def item(i: object) -> Record:
    return Record(kind="item", data={"item_id": f"i{i}"})


def test_workers_see_each_others_writes_exactly_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/journal.db"
    a, b = Worker(url, "a"), Worker(url, "b")
    a.follower.replay()
    b.follower.replay()
    a.follower.write([item(1), item(2)])
    assert a.items == ["i1", "i2"]  # applied at once by the writer
    assert b.follower.catch_up() == 2 and b.items == ["i1", "i2"]
    b.follower.write([item(3)])
    assert a.follower.catch_up() == 1 and a.items == ["i1", "i2", "i3"]  # its own records are skipped
    assert a.follower.catch_up() == 0 and b.follower.catch_up() == 0


def test_catch_up_pages_through_a_long_backlog(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/journal.db"
    a, b = Worker(url, "a"), Worker(url, "b")
    a.follower.write([item(i) for i in range(10)])  # page=3: four reads
    assert b.follower.catch_up() == 10 and b.items == [f"i{i}" for i in range(10)]


def test_a_restarted_worker_replays_everything(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/journal.db"
    a = Worker(url, "a")
    a.follower.write([item(i) for i in range(7)])
    a.store.close()
    again = Worker(url, "a")  # even with the same worker id: replay applies its own records too
    assert again.follower.replay() == 7 and again.items == [f"i{i}" for i in range(7)]


def test_a_bad_record_is_counted_and_skipped(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/journal.db"
    a, b = Worker(url, "a"), Worker(url, "b")
    a.store.append([item(1), Record(kind="boom"), item(2)])
    assert b.follower.catch_up() == 2
    assert b.items == ["i1", "i2"] and b.follower.apply_errors == 1
    assert b.follower.catch_up() == 0  # the cursor moved past it


def test_an_outage_degrades_reads_and_fails_writes() -> None:
    class Down(MemoryStore):
        def read_since(self, cursor: str | None, limit: int = 10_000) -> tuple[list[Record], str | None]:
            raise StateUnavailable("state backend unavailable: test")

        def append(self, records: list[Record]) -> list[str]:
            raise StateUnavailable("state backend unavailable: test")

    seen: list[Record] = []
    f = LogFollower(Down(), seen.append)
    assert f.catch_up() == -1 and f.read_errors == 1
    assert f.catch_up() == -1 and f.read_errors == 2  # a failed read is never shared
    with pytest.raises(StateUnavailable):
        f.write([item(1)])
    assert seen == []  # nothing applied that was not durable


def test_requests_queued_behind_a_read_share_it() -> None:
    import threading
    import time

    class Slow(MemoryStore):
        def read_since(self, cursor: str | None, limit: int = 10_000) -> tuple[list[Record], str | None]:
            time.sleep(0.05)  # a slow round trip: other requests queue behind the lock
            return super().read_since(cursor, limit)

    store = Slow(worker_id="me")
    other = Record(kind="item", data={"item_id": "x"}, origin="other")
    store.append([other])
    seen: list[Record] = []
    f = LogFollower(store, seen.append)
    threads = [threading.Thread(target=f.catch_up) for _ in range(8)]
    for t in threads:
        t.start()
        time.sleep(0.005)
    for t in threads:
        t.join()
    assert [r.data for r in seen] == [{"item_id": "x"}]
    assert f.reads + f.shared_reads == 8 and f.reads < 8
    f.catch_up()  # a request arriving after everything finished reads again
    assert f.reads + f.shared_reads == 9


def theirs(i: object) -> Record:
    """A record another worker wrote (catch_up skips a worker's own)."""
    return Record(kind="item", data={"item_id": f"i{i}"}, origin="another-worker")


def test_a_follower_behind_a_trim_reports_the_gap_until_its_cursor_is_reset() -> None:
    from candgen.state.base import LogGap

    store = MemoryStore(worker_id="writer")
    seen: list[Record] = []
    gaps: list[LogGap] = []
    f = LogFollower(store, seen.append, on_gap=gaps.append)
    store.append([theirs(1), theirs(2)])
    assert f.catch_up() == 2
    seqs = store.append([theirs(3), theirs(4), theirs(5)])
    store.trim(seqs[1])  # i3 and i4 are gone before this follower read them
    assert f.catch_up() == -1 and f.gap is not None and f.gap.trimmed_upto == seqs[1]
    assert f.catch_up() == -1  # still behind: the owner is told again, its recovery runs once
    assert len(gaps) == 2 and f.gaps == 1 and [r.data["item_id"] for r in seen] == ["i1", "i2"]
    with f.lock:
        f.cursor = seqs[1]  # what a reload from a snapshot at seqs[1] does
    assert f.gap is None
    assert f.catch_up() == 1 and seen[-1].data["item_id"] == "i5"
    stale = LogFollower(store, seen.append, on_gap=gaps.append)
    stale.cursor = seqs[0]
    with pytest.raises(LogGap):  # a replay from a cursor before the trim raises instead
        stale.replay()


def test_a_failing_gap_handler_does_not_fail_the_request() -> None:
    store = MemoryStore(worker_id="writer")

    def boom(_: object) -> None:
        raise RuntimeError("recovery could not start")

    f = LogFollower(store, lambda r: None, on_gap=boom)
    store.append([theirs(1)])
    f.catch_up()
    store.append([theirs(2), theirs(3)])
    store.trim(store.tail_cursor() or "")
    assert f.catch_up() == -1 and f.gaps == 1


def test_a_follower_that_replayed_an_empty_log_still_notices_a_later_trim() -> None:
    from candgen.state.base import LogGap

    store = MemoryStore(worker_id="me")
    f = LogFollower(store, lambda r: None)
    assert f.replay() == 0 and f.cursor == store.origin_cursor()  # not None: "from whatever is left"
    seqs = store.append([theirs(1), theirs(2)])
    store.trim(seqs[0])  # i1 is gone before this follower read it
    assert f.catch_up() == -1 and isinstance(f.gap, LogGap)
    late = LogFollower(store, lambda r: None)
    store.trim(seqs[1])
    assert late.replay() == 0 and late.cursor == seqs[1]  # a start after the trim leaves out what it knows is gone
    store.append([theirs(3)])
    assert late.catch_up() == 1 and late.gap is None
