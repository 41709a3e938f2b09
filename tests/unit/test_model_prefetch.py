"""Prefetching training batches: the thread, the forked process and its shared memory ring, and the fallback."""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest
from model_world import planted_world
from test_model_train import small_config

from candgen.config import EventsConfig
from candgen.model.batches import BatchMaker
from candgen.model.features import FeatureSpace, PositiveLog, negatives_by_user
from candgen.model.prefetch import Prefetch, PrefetchError, ProcessPrefetch, can_fork, prefetch

needs_fork = pytest.mark.skipif(not can_fork(), reason="ProcessPrefetch forks: Linux only")


def test_prefetch_yields_in_order_ahead_of_the_consumer():
    produced: list[int] = []

    def source():
        for i in range(10):
            produced.append(i)
            yield i

    with Prefetch(source(), depth=2) as stream:
        first = next(stream)
        deadline = time.monotonic() + 5
        while len(produced) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert first == 0 and len(produced) <= 4  # at most `depth` items queued plus one being put
        assert [first, *stream] == list(range(10))
    with pytest.raises(StopIteration):
        next(stream)


def test_prefetch_reraises_the_sources_error_and_stops_early_on_close():
    def failing():
        yield 1
        raise RuntimeError("bad batch")

    stream = Prefetch(failing())
    assert next(stream) == 1
    with pytest.raises(RuntimeError, match="bad batch"):
        next(stream)

    stop = threading.Event()

    def endless():
        i = 0
        while not stop.is_set():
            i += 1
            yield i

    with Prefetch(endless(), depth=1) as stream:
        assert next(stream) == 1
    assert not stream._thread.is_alive()  # closed without draining the endless source
    stop.set()
    with pytest.raises(ValueError, match="depth must be >= 1"):
        Prefetch(iter([]), depth=0)


@dataclass
class _Item:
    i: int
    values: np.ndarray
    table: np.ndarray
    label: str


def _items(n: int, size: int = 100):
    rng = np.random.default_rng(0)
    for i in range(n):
        yield _Item(i, rng.random(size), np.arange(i, i + 12, dtype=np.int64).reshape(3, 4).T, f"item {i}")


@needs_fork
def test_process_prefetch_yields_the_sources_items_in_order_as_views_of_the_ring():
    expected = list(_items(20))
    with ProcessPrefetch(_items(20), slot_bytes=1 << 16, depth=2) as stream:
        got = []
        for item in stream:
            assert isinstance(item.values.base, memoryview) or item.values.base is not None
            got.append(_Item(item.i, item.values.copy(), item.table.copy(), item.label))
        assert stream.inline == 0
    assert [g.i for g in got] == list(range(20)) and [g.label for g in got] == [e.label for e in expected]
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g.values, e.values)
        np.testing.assert_array_equal(g.table, e.table)  # a Fortran-ordered array keeps its values
    with pytest.raises(StopIteration):
        next(stream)


@needs_fork
def test_process_prefetch_never_overwrites_the_item_the_consumer_holds():
    with ProcessPrefetch(_items(30), slot_bytes=1 << 16, depth=2) as stream:
        held = next(stream)
        before = held.values.copy()
        time.sleep(0.3)  # the child fills every other slot meanwhile
        np.testing.assert_array_equal(held.values, before)
        for expected, item in zip(list(_items(30))[1:], stream, strict=True):
            np.testing.assert_array_equal(item.values, expected.values)


@needs_fork
def test_process_prefetch_sends_an_item_larger_than_a_slot_through_the_pipe():
    def mixed():
        yield np.arange(10.0)
        yield np.arange(100_000.0)  # 800 kB: more than a slot
        yield np.arange(5.0)

    with ProcessPrefetch(mixed(), slot_bytes=4096) as stream:
        got = [a.copy() for a in stream]
        assert stream.inline == 1
    assert [len(a) for a in got] == [10, 100_000, 5] and got[1][-1] == 99_999.0


@needs_fork
def test_process_prefetch_raises_the_childs_error_with_its_traceback():
    def failing():
        yield np.zeros(3)
        raise ValueError("bad batch 7")

    stream = ProcessPrefetch(failing(), slot_bytes=4096)
    assert next(stream).tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(PrefetchError, match=r"(?s)failed.*ValueError: bad batch 7"):
        next(stream)
    assert not stream._proc.is_alive()
    with pytest.raises(StopIteration):
        next(stream)


@needs_fork
def test_process_prefetch_reports_a_dead_child_instead_of_hanging():
    def slow():
        yield np.zeros(1)
        time.sleep(60)
        yield np.ones(1)

    stream = ProcessPrefetch(slow(), slot_bytes=4096)
    next(stream)
    os.kill(stream._proc.pid, signal.SIGKILL)  # type: ignore[arg-type]
    with pytest.raises(PrefetchError, match="died"):
        next(stream)


@needs_fork
def test_process_prefetch_close_stops_an_endless_source():
    def endless():
        i = 0
        while True:
            i += 1
            yield np.full(4, i)

    with ProcessPrefetch(endless(), slot_bytes=4096, depth=1) as stream:
        assert next(stream).tolist() == [1, 1, 1, 1]
    assert not stream._proc.is_alive()
    with pytest.raises(ValueError, match="depth must be >= 1"):
        ProcessPrefetch(iter([]), slot_bytes=4096, depth=0)
    with pytest.raises(ValueError, match="slot_bytes"):
        ProcessPrefetch(iter([]), slot_bytes=1)


def test_prefetch_falls_back_to_the_thread():
    with prefetch(lambda: iter([1, 2]), slot_bytes=4096, processes=False) as stream:
        assert isinstance(stream, Prefetch) and list(stream) == [1, 2]


@needs_fork
def test_batches_from_the_process_equal_the_batches_made_in_process():
    """The child continues the parent's random generator: the same batches as a thread (or no prefetch) makes."""
    world = planted_world()
    cfg = small_config(id_dropout=0.3)
    space = FeatureSpace.from_dataset(world, id_buckets=cfg.id_buckets, history_len=cfg.history_len)
    events = EventsConfig()
    log = PositiveLog.build(world.interactions, events, world.n_users)
    neg = negatives_by_user(world.interactions, events, world.n_users)

    def batches(maker: BatchMaker):
        for s in range(6):
            yield maker.make(log, np.arange(s * 32, s * 32 + 32), neg, None)

    local = list(batches(BatchMaker(world, space, cfg, np.random.default_rng(4))))
    with prefetch(lambda: batches(BatchMaker(world, space, cfg, np.random.default_rng(4))),
                  slot_bytes=1 << 20) as stream:
        assert isinstance(stream, ProcessPrefetch)
        for want, got in zip(local, stream, strict=True):
            for name in ("cand", "cand_ids", "hist", "hist_weights", "hours", "inverse", "weight"):
                np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
            np.testing.assert_array_equal(got.feat_bags.idx, want.feat_bags.idx)
            assert got.softmax is not None and want.softmax is not None
            np.testing.assert_array_equal(got.softmax.bias, want.softmax.bias)
        assert stream.inline == 0
