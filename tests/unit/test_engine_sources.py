"""Engine.run_sources: GIL-bound sources inline on the request thread, the others on the pool, deadlines for both;
the result build (item-id strings, provenance lists) and the catalog's vectorised lookups."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
from test_sources_build import _dataset

from candgen.blend.merge import Blended
from candgen.config import Config
from candgen.engine import Engine, provenance_lists
from candgen.sources.base import CandidateSource, UserContext
from candgen.sources.build import build_state
from candgen.types import Candidates


class Recording(CandidateSource):
    """Returns k ids and records the thread it ran on; optionally sleeps, raises or waits for an event."""

    def __init__(self, name: str, *, inline: bool, sleep: float = 0.0, fail: bool = False,
                 wait_for: threading.Event | None = None, sets: threading.Event | None = None) -> None:
        self.name, self.inline = name, inline  # type: ignore[misc]  # per instance in these tests
        self.sleep, self.fail, self.wait_for, self.sets = sleep, fail, wait_for, sets
        self.threads: list[int] = []

    def retrieve(self, ctx: UserContext, k: int) -> Candidates:
        self.threads.append(threading.get_ident())
        if self.sets is not None:
            self.sets.set()
        if self.wait_for is not None and not self.wait_for.wait(timeout=5.0):
            raise RuntimeError("the event this source waits for was never set")
        if self.sleep:
            time.sleep(self.sleep)
        if self.fail:
            raise RuntimeError("backend down")
        ids = np.arange(k, dtype=np.int64)
        return self.result(ids, np.ones(k, np.float32))


def engine_with(sources: list[Recording], *, deadline_ms: float | dict[str, float] = 1000.0,
                request_deadline_ms: float = 5000.0, deadlines: bool = True) -> Engine:
    cfg = Config()
    cfg.sources.deadline_ms = deadline_ms if isinstance(deadline_ms, dict) else {s.name: deadline_ms for s in sources}
    cfg.serve.request_deadline_ms = request_deadline_ms
    rt = SimpleNamespace(config=cfg, sources={s.name: s for s in sources})
    return Engine(rt, deadlines=deadlines)  # type: ignore[arg-type]  # only what run_sources reads


@pytest.fixture()
def ctx() -> UserContext:
    return UserContext.anonymous(now=0.0, user_id="u")


def run(engine: Engine, fetch: dict[str, int], ctx: UserContext, t_start: float | None = None):
    try:
        return engine.run_sources(engine.rt, fetch, ctx, time.perf_counter() if t_start is None else t_start)
    finally:
        engine.close()


def test_inline_sources_run_on_the_request_thread_and_the_others_on_the_pool(ctx):
    cheap, search = Recording("trending", inline=True), Recording("collaborative", inline=False)
    lists, degraded, timings = run(engine_with([search, cheap]), {"collaborative": 5, "trending": 3}, ctx)
    assert cheap.threads == [threading.get_ident()]
    assert len(search.threads) == 1 and search.threads[0] != threading.get_ident()
    assert [c.source for c in lists] == ["collaborative", "trending"]  # the lists come back in fetch order
    assert [len(c) for c in lists] == [5, 3] and degraded == [] and set(timings) == {"collaborative", "trending"}


def test_pooled_sources_are_handed_off_before_the_inline_ones_run(ctx):
    # the pooled source can only finish once the inline one has run (and the inline one only after the pooled
    # one started): this passes only if the pool works while the request thread runs the inline sources
    pooled_started, inline_ran = threading.Event(), threading.Event()
    pooled = Recording("content", inline=False, sets=pooled_started, wait_for=inline_ran)
    inline = Recording("social", inline=True, wait_for=pooled_started, sets=inline_ran)
    lists, degraded, _ = run(engine_with([pooled, inline]), {"social": 2, "content": 4}, ctx)
    assert degraded == [] and [c.source for c in lists] == ["social", "content"]


def test_a_failing_inline_source_is_named_in_degraded(ctx):
    lists, degraded, timings = run(engine_with([Recording("trending", inline=True, fail=True),
                                                Recording("social", inline=True)]),
                                   {"trending": 3, "social": 3}, ctx)
    assert degraded == ["trending"] and [c.source for c in lists] == ["social"] and "trending" not in timings


def test_a_late_inline_source_is_dropped_but_the_others_kept(ctx):
    late = Recording("trending", inline=True, sleep=0.05)
    lists, degraded, _ = run(engine_with([late, Recording("collaborative", inline=False)], deadline_ms=20.0),
                             {"trending": 3, "collaborative": 3}, ctx)
    assert late.threads and degraded == ["trending"] and [c.source for c in lists] == ["collaborative"]


def test_a_pooled_source_that_finished_late_while_inline_sources_ran_is_dropped(ctx):
    late = Recording("content", inline=False, sleep=0.05)
    busy = Recording("trending", inline=True, sleep=0.15)  # the pooled task is done by the time it is looked at
    lists, degraded, _ = run(engine_with([late, busy], deadline_ms={"content": 20.0, "trending": 1000.0}),
                             {"content": 3, "trending": 3}, ctx)
    assert degraded == ["content"] and [c.source for c in lists] == ["trending"]


def test_an_inline_source_past_the_request_deadline_is_not_started(ctx):
    cheap = Recording("trending", inline=True)
    lists, degraded, _ = run(engine_with([cheap], request_deadline_ms=10.0), {"trending": 3}, ctx,
                             t_start=time.perf_counter() - 1.0)
    assert cheap.threads == [] and degraded == ["trending"] and lists == []


def test_a_late_pooled_source_is_abandoned_while_inline_ones_answer(ctx):
    slow = Recording("content", inline=False, sleep=0.5)
    t = time.perf_counter()
    lists, degraded, _ = run(engine_with([slow, Recording("social", inline=True)], deadline_ms=20.0),
                             {"content": 3, "social": 3}, ctx)
    assert time.perf_counter() - t < 0.4  # not waited for
    assert degraded == ["content"] and [c.source for c in lists] == ["social"]


def test_without_deadlines_late_sources_are_kept_and_failing_ones_still_dropped(ctx):
    sources = [Recording("trending", inline=True, sleep=0.03), Recording("content", inline=False, sleep=0.03),
               Recording("social", inline=True, fail=True)]
    lists, degraded, _ = run(engine_with(sources, deadline_ms=1.0, deadlines=False),
                             {"trending": 2, "content": 2, "social": 2}, ctx)
    assert [c.source for c in lists] == ["trending", "content"] and degraded == ["social"]


def test_the_shipped_sources_declare_where_they_run():
    from candgen.sources.build import make_sources

    sources = make_sources(build_state(_dataset(), config=Config()), config=Config())
    assert {n for n, s in sources.items() if s.inline} == {"trending", "social", "cold_start", "new_items"}
    assert not sources["content"].inline  # its item-to-item ANN search releases the GIL: the pool


def test_item_ids_by_take_follow_items_added_later():
    st = build_state(_dataset(), config=Config())
    cat = st.catalog
    assert cat.item_ids(np.array([3, 0, 3])) == ["d", "a", "d"] and cat.item_ids(np.zeros(0, np.int64)) == []
    new = [st.add_item(f"new{i}", created_at=0.0) for i in range(40)]  # grows the id array more than once
    assert cat.item_ids(np.array([new[-1], 1, new[0]])) == ["new39", "b", "new0"]
    st.add_item("a", tags=["x"], created_at=1.0)  # an update keeps the id
    assert cat.item_ids(np.arange(cat.n_items)) == cat.items.ids()


def test_provenance_lists_decode_each_mask():
    names = ("collaborative", "content", "trending")
    b = Blended(ids=np.arange(4, dtype=np.int64), scores=np.ones(4, np.float32),
                source_mask=np.array([1, 5, 1, 6], np.uint64), source_names=names, source_scores={})
    assert provenance_lists(b) == [["collaborative"], ["collaborative", "trending"], ["collaborative"],
                                   ["content", "trending"]]
    assert provenance_lists(Blended.empty(names)) == []


def test_tags_of_items_matches_tags_of_with_and_without_items_added_later():
    st = build_state(_dataset(), config=Config())
    cat = st.catalog

    def one_by_one(items):
        rows = [cat.tags_of(int(i)) for i in items]
        return np.concatenate(rows).tolist(), [len(r) for r in rows]

    items = np.array([4, 0, 0, 2, 3])
    keys, counts = cat.tags_of_items(items)
    assert (keys.tolist(), counts.tolist()) == one_by_one(items) and keys.dtype == np.int64
    new = st.add_item("f", tags=["x", "w"], created_at=0.0)
    st.add_item("b", tags=["z"], created_at=0.0)  # an update of a base item's tags
    items = np.array([new, 1, 0, new])
    keys, counts = cat.tags_of_items(items)
    assert (keys.tolist(), counts.tolist()) == one_by_one(items)
    assert cat.tags_of_items(np.zeros(0, np.int64))[0].tolist() == []
