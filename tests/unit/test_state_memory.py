"""The in-process LRU+TTL cache with a fake clock, and the small helpers of the state package."""

from __future__ import annotations

import pytest

from candgen.errors import CandgenError
from candgen.state import Record, key
from candgen.state.memory import LocalCache, MemoryStore, parse_int_cursor


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_ttl_expiry_follows_the_clock() -> None:
    clock = Clock()
    c = LocalCache("L1", 10, clock=clock)
    c.set("a", b"1", ttl_s=5)
    clock.t += 4.9
    assert c.get("a") == b"1"
    clock.t += 0.2
    assert c.get("a") is None
    assert c.stats() == {"hits": 1, "misses": 1, "errors": 0, "size": 0}  # the expired entry is dropped


def test_set_refreshes_ttl_and_recency() -> None:
    clock = Clock()
    c = LocalCache("L2", 2, clock=clock)
    c.set("a", b"1", ttl_s=1)
    c.set("b", b"2", ttl_s=1)
    c.set("a", b"1b", ttl_s=10)  # a is now the newest
    c.set("c", b"3", ttl_s=10)  # evicts b
    clock.t += 5
    assert c.get_many(["a", "b", "c"]) == [b"1b", None, b"3"]


def test_values_are_copied_to_bytes() -> None:
    c = LocalCache("L1", 2)
    buf = bytearray(b"abc")
    c.set("k", buf, ttl_s=10)  # type: ignore[arg-type]
    buf[0] = 0
    assert c.get("k") == b"abc"


def test_bad_cache_arguments() -> None:
    with pytest.raises(CandgenError, match="max_entries"):
        LocalCache("L1", 0)
    with pytest.raises(CandgenError, match="ttl"):
        LocalCache("L1", 1).set("k", b"v", ttl_s=-1)


def test_cursor_parsing() -> None:
    assert parse_int_cursor(None) == 0 and parse_int_cursor("") == 0 and parse_int_cursor("17") == 17
    for bad in ("x", "-1", "1.5"):
        with pytest.raises(CandgenError, match="cursor"):
            parse_int_cursor(bad)


def test_key_helper_and_record_defaults() -> None:
    assert key("L1", "u1", 3) == "L1:u1:3"
    r = Record(kind="event")
    assert (r.data, r.origin, r.seq) == ({}, "", "")


def test_append_takes_records_only() -> None:
    with pytest.raises(TypeError, match="Record"):
        MemoryStore().append([{"kind": "event"}])  # type: ignore[list-item]


def test_closed_memory_store_refuses_reads() -> None:
    s = MemoryStore()
    s.close()
    with pytest.raises(CandgenError, match="closed"):
        s.read_since(None)
    with pytest.raises(CandgenError, match="closed"):
        s.tail_cursor()
