"""The contract every `CandidateSource` passes: one mixin, each source's class only says how to build itself."""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from candgen.config import Config
from candgen.data.dataset import Dataset
from candgen.index.base import VectorIndex
from candgen.sources.base import CandidateSource, UserContext
from candgen.sources.build import SourceState, build_state, make_sources
from candgen.types import BatchCandidates

H = 3600.0
NOW = 100 * H
DIM = 8


class BruteIndex(VectorIndex):
    """Exact inner-product search (the real FlatIndex lives in candgen.index; this keeps the test self-contained)."""

    kind = "brute"
    is_exact = True

    def __init__(self, vectors: np.ndarray) -> None:
        super().__init__(vectors.shape[1])
        self.vectors = vectors.astype(np.float32)
        self._lock = threading.Lock()

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        with self._lock:
            n = max(len(self.vectors), int(ids.max()) + 1)
            v = np.zeros((n, self.dim), np.float32)
            v[: len(self.vectors)] = self.vectors
            v[ids] = vectors
            self.vectors = v

    def remove(self, ids: np.ndarray) -> None:
        with self._lock:
            self.vectors[ids] = 0

    def search(
        self, queries: np.ndarray, k: int, exclude: Sequence[set[int] | np.ndarray | None] | None = None
    ) -> BatchCandidates:
        vectors = self.vectors
        scores = queries @ vectors.T
        ids = np.full((len(queries), k), -1, np.int64)
        out = np.full((len(queries), k), -np.inf, np.float32)
        for i, row in enumerate(scores):
            ex = exclude[i] if exclude is not None else None
            if ex is not None and len(ex):
                row = row.copy()
                ex_ids = np.asarray(list(ex), np.int64)
                row[ex_ids[ex_ids < len(row)]] = -np.inf  # ids the index does not hold are ignored
            top = np.argsort(-row)[:k]
            top = top[np.isfinite(row[top])]
            ids[i, : len(top)], out[i, : len(top)] = top, row[top]
        return BatchCandidates(ids, out)

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def params(self) -> dict[str, Any]:
        return {}

    def set_search_params(self, **params: Any) -> None:
        pass

    def save(self, path: str | Path) -> None:
        raise NotImplementedError

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        return self.vectors[ids]


class MeanEncoder:
    """A stand-in user tower: the weighted mean of the history's item vectors (a fixed vector otherwise)."""

    def embed_user(self, *, attributes: Any, interests: Any, context: Any, history_items: np.ndarray,
                   history_weights: np.ndarray, history_item_vectors: np.ndarray | None = None,
                   now: float) -> np.ndarray:
        if history_item_vectors is None or not len(history_item_vectors):
            v = np.ones(DIM, np.float32)
        else:
            v = (history_weights[:, None] * history_item_vectors).sum(0)
        return (v / np.linalg.norm(v)).astype(np.float32)


def make_world(seed: int = 0, n_users: int = 40, n_items: int = 120, n_events: int = 1500) -> Dataset:
    rng = np.random.default_rng(seed)
    events = rng.choice(["view", "click", "like", "share"], size=n_events, p=[0.6, 0.2, 0.15, 0.05])
    inter = pl.DataFrame({
        "user_id": [f"u{u}" for u in rng.integers(0, n_users, n_events)],
        "item_id": [f"i{i}" for i in rng.zipf(1.5, n_events) % n_items],
        "timestamp": np.sort(rng.integers(0, int(NOW), n_events)),
        "event": events.tolist(),
    })
    items = pl.DataFrame({
        "item_id": [f"i{i}" for i in range(n_items)],
        "tags": [[f"t{i % 7}", f"t{i % 5 + 7}"] for i in range(n_items)],
        "category": [f"cat{i % 4}" for i in range(n_items)],
        "creator_id": [f"c{i % 10}" for i in range(n_items)],
        "created_at": [int(NOW - (i % 60) * H) for i in range(n_items)],
    })
    users = pl.DataFrame({
        "user_id": [f"u{u}" for u in range(n_users + 5)],  # 5 users with no interactions
        "interests": [[f"t{u % 7}"] for u in range(n_users + 5)],
        "age_group": [["18-24", "25-34"][u % 2] for u in range(n_users + 5)],
        "country": [["US", "BR", "DE"][u % 3] for u in range(n_users + 5)],
        "language": [["en", "pt", "de"][u % 3] for u in range(n_users + 5)],
    })
    social = pl.DataFrame({
        "user_id": [f"u{u}" for u in range(n_users) for d in (1, 2)],
        "friend_id": [f"u{(u + d) % n_users}" for u in range(n_users) for d in (1, 2)],
    })
    return Dataset.from_frames(inter, items, users, social)


def user_context(ds: Dataset, state: SourceState, user_id: str) -> UserContext:
    u = ds.users.get(user_id)
    items, times, weights = state.activity.history(u)
    attrs = {a: c.vocab.id(int(c.codes[u])) for a, c in ds.user_attributes.items() if c.codes[u] >= 0}
    return UserContext(
        user_id=user_id, user=u, now=NOW, history_items=items, history_times=times, history_weights=weights,
        n_engagements=state.activity.n_engagements(u), attributes=attrs,
        interests=ds.tags.ids(ds.user_interests.row(u)), exclude=state.activity.exclude(u),
    )


class World:
    def __init__(self) -> None:
        self.ds = make_world()
        self.config = Config()
        self.state = build_state(self.ds, config=self.config, now=NOW)
        rng = np.random.default_rng(1)
        vectors = rng.normal(size=(self.ds.n_items, DIM)).astype(np.float32)
        self.vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        self.index = BruteIndex(self.vectors)
        self.sources = make_sources(self.state, config=self.config, model=MeanEncoder(), index=self.index,
                                    item_vectors=self.vectors)

    def ctx(self, user_id: str = "u3") -> UserContext:
        return user_context(self.ds, self.state, user_id)

    def update(self, i: int) -> None:
        """One live event or catalog change, cycling through every kind."""
        u, item = i % self.ds.n_users, (i * 7) % self.ds.n_items
        kind = i % 5
        if kind == 0:
            self.state.add_item(f"new{i}", tags=["t1"], category="cat1", creator="c1", created_at=NOW)
        elif kind == 1:
            self.state.record_event(user=u, item=item, event="impression", t=NOW)
        else:
            self.state.record_event(user=u, item=item, event=["like", "share", "view"][kind - 2], t=NOW,
                                    attributes={"country": "US", "age_group": "18-24", "language": "en"})
        if i % 11 == 0:
            self.state.social.follow(u, (u + 5) % self.ds.n_users)


class SourceContract:
    """Mixin: subclasses set `name` (a key of `make_sources`) and what the source promises."""

    name: str = ""
    personal: bool = True  # a user it knows nothing about gets an empty answer
    respects_exclude: bool = True

    @pytest.fixture
    def world(self) -> World:
        return World()

    def source(self, world: World) -> CandidateSource:
        return world.sources[self.name]

    def check(self, c: Any, k: int, name: str) -> None:
        assert c.source == name
        assert len(c) <= k
        assert c.ids.dtype == np.int64 and c.scores.dtype == np.float32
        assert len(np.unique(c.ids)) == len(c.ids)
        assert np.all(np.diff(c.scores) <= 0)

    def test_at_most_k_distinct_ids_sorted_and_named(self, world: World) -> None:
        src = self.source(world)
        for k in (1, 5, 50, 500):
            c = src.retrieve(world.ctx(), k)
            self.check(c, k, src.name)
        assert src.name == self.name
        assert len(src.retrieve(world.ctx(), 20)) > 0, "the known user gets something"

    def test_k_zero_is_empty(self, world: World) -> None:
        assert len(self.source(world).retrieve(world.ctx(), 0)) == 0

    def test_unknown_user_gets_a_valid_answer(self, world: World) -> None:
        src = self.source(world)
        c = src.retrieve(UserContext.anonymous(now=NOW, user_id="stranger"), 20)
        self.check(c, 20, src.name)
        if self.personal:
            assert len(c) == 0

    def test_respects_exclude(self, world: World) -> None:
        if not self.respects_exclude:
            pytest.skip("this source does not promise to filter excludes")
        src = self.source(world)
        ctx = world.ctx()
        first = src.retrieve(ctx, 10)
        ctx.exclude = np.union1d(ctx.exclude, first.ids[:5])
        again = src.retrieve(ctx, 10)
        assert not np.isin(again.ids, ctx.exclude).any()

    def test_never_returns_deleted_items(self, world: World) -> None:
        src = self.source(world)
        first = src.retrieve(world.ctx(), 10)
        for i in first.ids[:3].tolist():
            world.state.delete_item(i)
        again = src.retrieve(world.ctx(), 50)
        assert not np.isin(again.ids, first.ids[:3]).any()

    def test_thread_safe_under_concurrent_retrieve_and_update(self, world: World) -> None:
        src = self.source(world)
        errors: list[BaseException] = []
        stop = threading.Event()

        def reader(user_id: str) -> None:
            try:
                while not stop.is_set():
                    self.check(src.retrieve(world.ctx(user_id), 30), 30, src.name)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(RuntimeError(traceback.format_exc()))
                errors.append(e)

        def writer(updates: Callable[[int], None]) -> None:
            try:
                for i in range(400):
                    updates(i)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)
            finally:
                stop.set()

        threads = [threading.Thread(target=reader, args=(f"u{j}",)) for j in range(3)]
        threads.append(threading.Thread(target=writer, args=(world.update,)))
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors, errors


class TestTrendingSource(SourceContract):
    name = "trending"
    personal = False


class TestContentSource(SourceContract):
    name = "content"


class TestSocialSource(SourceContract):
    name = "social"


class TestCollaborativeSource(SourceContract):
    name = "collaborative"


class TestColdStartSource(SourceContract):
    name = "cold_start"
    personal = False


class TestNewItemSource(SourceContract):
    name = "new_items"
    personal = False
