"""Every state backend passes the `StateStoreContract` mixin; each class only says how to open itself.

`opener()` opens a new store on the SAME backend location each time it is called: a second call plays a
second worker process (two SQLiteStore on one file, two RedisStore on one prefix, two `memory://NAME`).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from candgen.config import CacheConfig
from candgen.errors import CandgenError
from candgen.state import Record, StateStore, open_state
from candgen.state.base import LogGap
from candgen.state.memory import forget

SMALL = CacheConfig(l1_max_entries=3, l2_max_entries=3, l3_max_entries=3)
Opener = Callable[[], StateStore]


def beyond(seq: str) -> str:
    """A well-formed seq far after `seq` (one the store has not assigned yet)."""
    ms, dash, n = seq.partition("-")
    return f"{int(ms) + 10**6}-0" if dash else str(int(seq) + 10**6)


def events(n: int, tag: str = "") -> list[Record]:
    return [Record(kind="event", data={"user_id": f"u{i}", "item_id": f"i{i}", "tag": tag, "i": i}) for i in range(n)]


class StateStoreContract:
    persistent = True  # the log survives closing every store and reopening
    local_caches = True  # per-process LRU caches: bounded, count their size
    shared_caches = False  # a second worker sees the first one's cache entries
    shared_lease = False  # only one worker at a time holds a lease

    @pytest.fixture
    def opener(self) -> Iterator[Opener]:
        raise NotImplementedError

    @pytest.fixture
    def store(self, opener: Opener) -> StateStore:
        return opener()

    # ---- the log ----

    def test_empty_log(self, store: StateStore) -> None:
        assert store.read_since(None) == ([], None)
        assert store.tail_cursor() is None
        assert store.append([]) == []

    def test_append_then_read_everything_in_order(self, store: StateStore) -> None:
        first, second = events(3, "a"), events(2, "b")
        s1 = store.append(first)
        s2 = store.append(second)
        assert [r.seq for r in first + second] == s1 + s2
        records, cursor = store.read_since(None)
        assert [(r.data["tag"], r.data["i"]) for r in records] == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1)]
        assert [r.seq for r in records] == s1 + s2
        assert len(set(s1 + s2)) == 5
        assert cursor == s2[-1] == store.tail_cursor()

    def test_read_since_a_cursor_returns_only_newer_records(self, store: StateStore) -> None:
        store.append(events(3, "old"))
        _, cursor = store.read_since(None)
        assert store.read_since(cursor) == ([], cursor)  # nothing new: the cursor stays
        store.append(events(2, "new"))
        records, cursor2 = store.read_since(cursor)
        assert [r.data["tag"] for r in records] == ["new", "new"]
        assert cursor2 != cursor
        assert store.read_since(cursor2) == ([], cursor2)

    def test_limit_pages_through_the_log(self, store: StateStore) -> None:
        store.append(events(5))
        cursor, pages = None, []
        while True:
            page, cursor = store.read_since(cursor, limit=2)
            if not page:
                break
            pages.append([r.data["i"] for r in page])
        assert pages == [[0, 1], [2, 3], [4]]
        with pytest.raises(CandgenError, match="limit"):
            store.read_since(None, limit=0)

    def test_origin_defaults_to_the_worker_id(self, store: StateStore) -> None:
        store.append([Record(kind="user", data={"x": 1}), Record(kind="item", data={}, origin="elsewhere")])
        records, _ = store.read_since(None)
        assert [(r.kind, r.origin) for r in records] == [("user", store.worker_id), ("item", "elsewhere")]

    def test_json_round_trip_of_unicode_and_nested_data(self, store: StateStore) -> None:
        data = {"title": "Amélie — 千と千尋 🎬", "tags": ["a|b", "ü"], "nested": {"x": [1, 2.5, None, True]},
                "empty": {}, "quote": 'say "hi"\n'}
        store.append([Record(kind="item", data=data)])
        (record,), _ = store.read_since(None)
        assert record.data == data

    def test_unserialisable_data_raises_and_appends_nothing(self, store: StateStore) -> None:
        with pytest.raises(CandgenError, match="JSON"):
            store.append([Record(kind="event", data={"ok": 1}), Record(kind="event", data={"bad": object()})])
        assert store.read_since(None) == ([], None)

    def test_bad_cursor_raises(self, store: StateStore) -> None:
        store.append(events(1))
        with pytest.raises(CandgenError, match="cursor"):
            store.read_since("not-a-seq")

    def test_concurrent_appends_land_exactly_once_and_each_call_stays_together(self, store: StateStore) -> None:
        n_threads, calls = 6, 20
        errors: list[BaseException] = []

        def work(t: int) -> None:
            try:
                for c in range(calls):
                    store.append([Record(kind="event", data={"t": t, "c": c, "part": p}) for p in range(2)])
            except BaseException as e:  # reported below: a thread's exception would be lost otherwise
                errors.append(e)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not errors
        records, _ = store.read_since(None)
        keys = [(r.data["t"], r.data["c"], r.data["part"]) for r in records]
        assert sorted(keys) == [(t, c, p) for t in range(n_threads) for c in range(calls) for p in range(2)]
        assert len({r.seq for r in records}) == len(records)
        for a, b in zip(records[::2], records[1::2], strict=True):  # atomic per call: the pair is adjacent
            assert (a.data["t"], a.data["c"], a.data["part"]) == (b.data["t"], b.data["c"], 0)
            assert b.data["part"] == 1

    def test_a_second_worker_sees_appends_immediately(self, opener: Opener) -> None:
        a, b = opener(), opener()
        assert a.worker_id != b.worker_id
        b_cursor = b.tail_cursor()
        a.append([Record(kind="item", data={"item_id": "new"})])
        records, b_cursor = b.read_since(b_cursor)
        assert [(r.data, r.origin) for r in records] == [({"item_id": "new"}, a.worker_id)]
        b.append([Record(kind="delete", data={"item_id": "new"})])
        records, _ = a.read_since(records[0].seq)
        assert [(r.kind, r.origin) for r in records] == [("delete", b.worker_id)]
        # one order for everyone
        assert [r.seq for r in a.read_since(None)[0]] == [r.seq for r in b.read_since(None)[0]]

    def test_trim_deletes_up_to_a_seq_and_keeps_the_order(self, opener: Opener) -> None:
        a, b = opener(), opener()
        seqs = a.append(events(5))
        assert a.trim(seqs[1]) == 2
        records, cursor = b.read_since(None)
        assert [r.seq for r in records] == seqs[2:] and cursor == seqs[-1]
        assert b.read_since(seqs[1])[0] == records  # a cursor at the trim point misses nothing
        assert a.trim(seqs[1]) == 0
        new = b.append(events(1))
        assert [r.seq for r in a.read_since(cursor)[0]] == new  # seqs keep growing after a trim
        assert a.trim(new[0]) == 4 and a.read_since(None) == ([], None)
        assert a.tail_cursor() is None
        later = a.append(events(1))
        assert [r.seq for r in a.read_since(new[0])[0]] == later  # still after the old cursors
        with pytest.raises(CandgenError, match="cursor"):
            a.trim("not-a-seq")

    def test_a_cursor_from_before_a_trim_raises_log_gap(self, opener: Opener) -> None:
        a, b = opener(), opener()
        assert a.trimmed_upto() is None
        seqs = a.append(events(6))
        a.trim(seqs[2])
        assert b.trimmed_upto() == seqs[2]
        for stale in seqs[:2]:
            with pytest.raises(LogGap) as gap:
                b.read_since(stale)  # never a silent skip of the records it missed
            assert (gap.value.cursor, gap.value.trimmed_upto) == (stale, seqs[2])
        assert [r.seq for r in b.read_since(seqs[2])[0]] == seqs[3:]
        assert [r.seq for r in b.read_since(None)[0]] == seqs[3:]  # a full read returns what is left
        a.trim(seqs[0])  # an older trim point never lowers the mark
        assert a.trimmed_upto() == seqs[2]

    def test_the_origin_cursor_reads_everything_until_a_trim(self, opener: Opener) -> None:
        a = opener()
        origin = a.origin_cursor()
        assert a.read_since(origin) == ([], origin)
        seqs = a.append(events(3))
        assert [r.seq for r in a.read_since(origin)[0]] == seqs and a.seq_key(origin) < a.seq_key(seqs[0])
        a.trim(seqs[0])
        with pytest.raises(LogGap):  # unlike None, which reads what is left
            a.read_since(origin)

    def test_trimming_past_the_newest_record_marks_only_what_exists(self, opener: Opener) -> None:
        a = opener()
        assert a.trim(beyond("1-0" if a.url.startswith("redis") else "1")) == 0  # empty log: nothing to mark
        assert a.trimmed_upto() is None
        seqs = a.append(events(3))
        assert a.trim(beyond(seqs[-1])) == 3
        assert a.trimmed_upto() == seqs[-1]
        new = a.append(events(2))
        assert [r.seq for r in a.read_since(seqs[-1])[0]] == new  # the tail's cursor is not stale

    def test_appended_counts_every_record_ever_and_seq_key_orders_seqs(self, opener: Opener) -> None:
        a, b = opener(), opener()
        assert a.appended() == 0
        seqs = a.append(events(4)) + b.append(events(3))
        a.trim(seqs[3])
        assert a.appended() == b.appended() == 7
        keys = [a.seq_key(s) for s in seqs]
        assert keys == sorted(keys) and len(set(keys)) == 7
        with pytest.raises(CandgenError, match="cursor"):
            a.seq_key("not-a-seq")

    # ---- blobs and the log lease ----

    def test_blobs_round_trip_replace_list_and_delete(self, opener: Opener) -> None:
        a, b = opener(), opener()
        assert a.get_blob("snap-1") is None and a.list_blobs() == []
        big = bytes(range(256)) * (9 * 4096 + 7)  # ~9.4 MB: several Redis chunks
        a.put_blob("snap-1", big)
        a.put_blob("snap-2", b"")
        a.put_blob("other", b"x")
        assert b.get_blob("snap-1") == big and b.get_blob("snap-2") == b""  # every worker reaches them
        assert b.list_blobs("snap-") == ["snap-1", "snap-2"] and b.list_blobs() == ["other", "snap-1", "snap-2"]
        b.put_blob("snap-1", b"replaced")
        assert a.get_blob("snap-1") == b"replaced"
        a.delete_blob("snap-1")
        a.delete_blob("never-stored")
        assert b.get_blob("snap-1") is None and b.list_blobs("snap-") == ["snap-2"]
        for bad in ("", "../escape", "a/b", ".hidden", "x" * 201):
            with pytest.raises(CandgenError, match="blob name"):
                a.put_blob(bad, b"")

    def test_blobs_persist_across_reopen(self, opener: Opener) -> None:
        if not self.persistent:
            pytest.skip("this backend keeps nothing across restarts")
        a = opener()
        a.put_blob("kept", b"\x00payload")
        a.close()
        assert opener().get_blob("kept") == b"\x00payload"

    def test_log_lease_is_shared_by_every_worker(self, opener: Opener) -> None:
        a, b = opener(), opener()
        assert a.try_log_lease("snapshot", ttl_s=5) is True
        assert a.try_log_lease("snapshot", ttl_s=5) is True  # the holder renews
        assert b.try_log_lease("snapshot", ttl_s=5) is False  # whatever the backend's caches
        assert b.try_log_lease("other", ttl_s=5) is True
        b.release_log_lease("snapshot")  # not b's: left alone
        assert b.try_log_lease("snapshot", ttl_s=5) is False
        a.release_log_lease("snapshot")
        assert b.try_log_lease("snapshot", ttl_s=0.2) is True
        time.sleep(0.35)
        assert a.try_log_lease("snapshot", ttl_s=5) is True  # b's lease expired

    def test_log_persists_across_reopen(self, opener: Opener) -> None:
        if not self.persistent:
            pytest.skip("this backend keeps nothing across restarts")
        a = opener()
        old = a.append(events(3, "before"))
        a.close()
        b = opener()
        records, cursor = b.read_since(None)
        assert [r.seq for r in records] == old and cursor == old[-1] == b.tail_cursor()
        b.append(events(1, "after"))
        records, _ = b.read_since(cursor)
        assert [r.data["tag"] for r in records] == ["after"]

    def test_health_and_close(self, opener: Opener) -> None:
        s = opener()
        assert s.health() is True
        s.close()
        assert s.health() is False
        with pytest.raises(CandgenError):
            s.append(events(1))

    # ---- caches ----

    def test_cache_get_set_delete_and_stats(self, store: StateStore) -> None:
        c = store.cache("L1")
        assert c.get("u1") is None
        c.set("u1", b"\x00\x01bytes", ttl_s=30)
        c.set("u2", b"two", ttl_s=30)
        assert c.get("u1") == b"\x00\x01bytes"
        assert c.get_many(["u2", "nope", "u1"]) == [b"two", None, b"\x00\x01bytes"]
        assert c.get_many([]) == []
        c.delete("u1", "never-set")
        assert c.get("u1") is None
        st = c.stats()
        assert (st["hits"], st["misses"]) == (3, 3)
        if self.local_caches:
            assert st["size"] == 1

    def test_cache_entries_expire(self, store: StateStore) -> None:
        c = store.cache("L2")
        c.set("short", b"s", ttl_s=0.2)
        c.set("long", b"l", ttl_s=30)
        assert c.get("short") == b"s"
        time.sleep(0.35)
        assert c.get("short") is None
        assert c.get("long") == b"l"

    def test_cache_clear_empties_one_level_only(self, store: StateStore) -> None:
        store.cache("L1").set("a", b"1", ttl_s=30)
        store.cache("L1").set("b", b"2", ttl_s=30)
        store.cache("L3").set("a", b"3", ttl_s=30)
        store.cache("L1").clear()
        assert store.cache("L1").get_many(["a", "b"]) == [None, None]
        assert store.cache("L3").get("a") == b"3"

    def test_cache_levels_and_ttl_are_checked(self, store: StateStore) -> None:
        with pytest.raises(CandgenError, match="cache level"):
            store.cache("L4")
        with pytest.raises(CandgenError, match="ttl"):
            store.cache("L1").set("k", b"v", ttl_s=0)

    def test_cache_is_bounded_lru(self, store: StateStore) -> None:
        if not self.local_caches:
            pytest.skip("Redis bounds memory with its own eviction policy")
        c = store.cache("L1")  # SMALL: 3 entries
        for k in "abc":
            c.set(k, k.encode(), ttl_s=30)
        assert c.get("a") == b"a"  # a is now the most recently used
        c.set("d", b"d", ttl_s=30)
        assert c.get_many(["a", "b", "c", "d"]) == [b"a", None, b"c", b"d"]
        assert c.stats()["size"] == 3

    def test_caches_between_workers(self, opener: Opener) -> None:
        a, b = opener(), opener()
        a.cache("L2").set("u1", b"emb", ttl_s=30)
        assert b.cache("L2").get("u1") == (b"emb" if self.shared_caches else None)

    def test_lease_between_workers(self, opener: Opener) -> None:
        a, b = opener(), opener()
        assert a.try_lease("job", ttl_s=5) is True
        assert a.try_lease("job", ttl_s=5) is True  # the holder renews
        assert b.try_lease("job", ttl_s=5) is (not self.shared_lease)


class TestMemoryStore(StateStoreContract):
    persistent = False
    shared_caches = True  # memory://NAME shares its caches inside the process
    local_caches = True

    @pytest.fixture
    def opener(self) -> Iterator[Opener]:
        name = f"contract-{uuid.uuid4().hex[:8]}"
        n = iter(range(1000))
        yield lambda: open_state(f"memory://{name}", worker_id=f"w{next(n)}", cache_config=SMALL)
        forget(name)


class TestSQLiteStore(StateStoreContract):
    @pytest.fixture
    def opener(self, tmp_path) -> Iterator[Opener]:  # type: ignore[no-untyped-def]
        stores: list[StateStore] = []

        def open_() -> StateStore:
            s = open_state(f"sqlite:///{tmp_path}/journal.db", worker_id=f"w{len(stores)}", cache_config=SMALL)
            stores.append(s)
            return s

        yield open_
        for s in stores:
            s.close()


@pytest.mark.redis
class TestRedisStore(StateStoreContract):
    local_caches = False
    shared_caches = True
    shared_lease = True

    @pytest.fixture
    def opener(self, redis_url: str) -> Iterator[Opener]:
        stores: list[StateStore] = []

        def open_() -> StateStore:
            s = open_state(redis_url, worker_id=f"w{len(stores)}", cache_config=SMALL)
            stores.append(s)
            return s

        yield open_
        for s in stores:
            s.close()


# ---- opening by URL ----

@pytest.mark.parametrize(("url", "message"), [
    ("mongodb://localhost/x", "unknown state URL scheme"),
    ("sqlite://relative/path.db", "three slashes"),
    ("sqlite:///", "names no file"),
    ("sqlite:///proc/no/such/dir/j.db", "cannot open the state journal"),
    ("sqlite:///tmp/x.db?synchronous=sometimes", "synchronous"),
    ("sqlite:///tmp/x.db?fsync=1", "unknown option"),
    ("memory://name/with/path", "memory://"),
    ("redis://127.0.0.1:1/0", "cannot reach the Redis state backend"),
    ("redis://127.0.0.1:6379/0?prefix=", "prefix"),
])
def test_bad_urls_raise_candgen_error(url: str, message: str) -> None:
    with pytest.raises(CandgenError, match=message):
        open_state(url)


def test_embedded_default_is_a_journal_beside_the_artifacts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with open_state(None, art_dir=tmp_path) as s:
        s.append(events(1))
    assert (tmp_path / "journal.sqlite3").exists()
    with open_state("", art_dir=tmp_path) as s:
        assert len(s.read_since(None)[0]) == 1
    with pytest.raises(CandgenError, match="art_dir"):
        open_state(None)


def test_file_scheme_is_sqlite(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with open_state(f"file://{tmp_path}/j.db") as s:
        assert s.url.startswith("sqlite:///") and s.health()


def test_plain_memory_stores_are_private() -> None:
    a, b = open_state("memory://"), open_state("memory://")
    a.append(events(1))
    assert b.read_since(None) == ([], None)
