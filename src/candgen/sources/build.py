"""Build every source's online structure from a `Dataset`, route live events to them, save and load them.

    state = build_state(ds, config=cfg, now=t)
    sources = make_sources(state, config=cfg, model=model, index=index, item_vectors=vectors)
    state.record_event(user=3, item=42, event="share", t=t + 5, attributes={"country": "US"})
    save_state(state, "artifacts/sources"); state = load_state("artifacts/sources")

`build_sources(ds, ...)` does both steps at once when the caller does not need the state itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from candgen.config import Config, EventsConfig
from candgen.data.dataset import Dataset
from candgen.errors import ArtifactError
from candgen.index.base import VectorIndex
from candgen.sources.activity import RecentActivity
from candgen.sources.base import CandidateSource
from candgen.sources.catalog import Catalog
from candgen.sources.coldstart import ColdStartSource, SegmentPopularity
from candgen.sources.collaborative import CollaborativeSource, UserEncoder, VectorLookup
from candgen.sources.content import ContentSource, TagIndex
from candgen.sources.newitems import NewItemBandit, NewItemSource
from candgen.sources.social import SocialGraph, SocialSource
from candgen.sources.trending import SEGMENT_ATTRIBUTES, TrendingCounter, TrendingSource, segment_key
from candgen.types import NO_PROGRESS, Progress

FORMAT_VERSION = 1
NEGATIVE = {"hide", "dislike", "block"}


@dataclass
class SourceState:
    """Every structure the sources read, and the one place live events and catalog changes are routed to."""

    catalog: Catalog
    activity: RecentActivity
    trending: TrendingCounter
    popularity: SegmentPopularity
    social: SocialGraph
    tags: TagIndex
    bandit: NewItemBandit
    events: EventsConfig

    def trending_segments(self, item: int, attributes: Mapping[str, str | None]) -> list[str]:
        keys = [segment_key(a, v) for a in SEGMENT_ATTRIBUTES if (v := attributes.get(a))]
        if 0 <= item < self.catalog.n_items and (c := int(self.catalog.category[item])) >= 0:
            keys.append(segment_key("category", self.catalog.categories.id(c)))
        return keys

    def record_event(self, *, user: int, item: int, event: str, t: float, value: float | None = None,
                     attributes: Mapping[str, str | None] | None = None) -> None:
        """One event (DESIGN §2 names). Positive events update recent activity, trending, segment popularity and
        the bandit; hide/dislike/block (and low ratings) exclude the item, block also its creator; impressions
        spend new items' budgets. Unknown event names raise ValueError."""
        attributes = attributes or {}
        low_rating = event == "rating" and value is not None and value < self.events.rating_negative_below
        if event in NEGATIVE or low_rating:
            self.activity.record_negative(user, item)
            if event == "block" and 0 <= item < self.catalog.n_items:
                self.activity.block_creator(user, int(self.catalog.creator[item]))
        elif event == "impression":
            self.bandit.record_impression(item)
        elif event in self.events.weights:
            weight = float(self.events.weights[event])
            boosted = self.activity.record_engagement(user, item, weight, t)
            self.trending.add(item, weight, t, self.trending_segments(item, attributes))
            self.popularity.add(item, weight, t, attributes, boosted_weight=boosted)
            self.bandit.record_engagement(item)
        else:
            raise ValueError(f"unknown event {event!r}; expected one of {sorted(self.events.weights)}, "
                             f"{sorted(NEGATIVE)} or 'impression'")

    def add_item(self, item_id: str, *, tags: Sequence[str] = (), category: str | None = None,
                 creator: str | None = None, created_at: float) -> int:
        """A new item: in the catalog, the tag index and the new-item pool at once. Returns its dense index."""
        item = self.catalog.add_item(item_id, tags=tags, category=category, creator=creator, created_at=created_at)
        self.tags.add_item(item, tags=self.catalog.tags_of(item), category=int(self.catalog.category[item]),
                           creator=int(self.catalog.creator[item]))
        self.bandit.add_item(item, created_at)
        return item

    def delete_item(self, item: int) -> None:
        self.catalog.delete(item)
        self.bandit.remove(item)


class SourceSet(dict[str, CandidateSource]):
    """The sources by name, and the `state` they read (what `save_state` writes)."""

    def __init__(self, sources: Mapping[str, CandidateSource], state: SourceState) -> None:
        super().__init__(sources)
        self.state = state


def _last_time(ds: Dataset) -> float:
    return float(ds.interactions.timestamp[-1]) if len(ds.interactions) else 0.0


def build_state(
    ds: Dataset, *, config: Config, now: float | None = None, threads: int = 2, progress: Progress = NO_PROGRESS,
) -> SourceState:
    """Every structure from a dataset's log and catalog (vectorised); `now` defaults to the last event.

    The structures are built on `threads` threads at once: their work is numpy sorts and gathers, which
    release the GIL. Progress: one task "sources" advancing once per structure."""
    now = _last_time(ds) if now is None else float(now)
    sc, ev = config.sources, config.events
    catalog = Catalog.from_dataset(ds)
    jobs: dict[str, Callable[[], Any]] = {
        "popularity": lambda: SegmentPopularity.from_dataset(
            ds, events=ev, half_life_hours=sc.popular_half_life_hours, now=now, early_boost=sc.popular_early_boost),
        "activity": lambda: RecentActivity.from_dataset(ds, events=ev, capacity=sc.recent_history, now=now),
        "trending": lambda: TrendingCounter.from_dataset(
            ds, events=ev, half_life_hours=sc.trending_half_life_hours, now=now),
        "social": lambda: SocialGraph.from_dataset(ds),
        "bandit": lambda: NewItemBandit.from_dataset(
            ds, events=ev, budget=sc.new_item_budget, max_age_hours=sc.new_item_max_age_hours, now=now),
    }
    progress.task("sources", total=len(jobs) + 1)
    built: dict[str, Any] = {}
    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="candgen-build") as pool:
        futures = {pool.submit(fn): name for name, fn in jobs.items()}
        for fut in as_completed(futures):
            built[futures[fut]] = fut.result()
            progress.advance("sources", 1)
    popularity: SegmentPopularity = built["popularity"]
    all_time = np.zeros(ds.n_items, np.float64)
    glob = popularity.counter.top(ds.n_items, now=now)  # an O(n) pass once at build time
    all_time[glob.ids] = glob.scores
    tags = TagIndex.from_catalog(catalog, all_time)
    progress.advance("sources", 1)
    progress.done("sources")
    return SourceState(catalog=catalog, activity=built["activity"], trending=built["trending"], popularity=popularity,
                       social=built["social"], tags=tags, bandit=built["bandit"], events=ev)


def make_sources(
    state: SourceState, *, config: Config, model: UserEncoder | None = None, index: VectorIndex | None = None,
    item_vectors: VectorLookup = None,
) -> SourceSet:
    """The sources over `state`, by name (`.state` holds the state). Collaborative needs a model and an
    index; content uses the index for item-to-item similarity when one is given."""
    sc = config.sources
    sources: dict[str, CandidateSource] = {
        "content": ContentSource(state.tags, state.catalog, index=index, item_vectors=item_vectors),
        "trending": TrendingSource(state.trending, state.catalog),
        "social": SocialSource(state.social, state.activity, catalog=state.catalog,
                               window_hours=sc.social_window_hours),
        "cold_start": ColdStartSource(state.popularity, state.tags, state.catalog, mix=sc.cold_mix,
                                      new_user_engagements=sc.new_user_engagements),
        "new_items": NewItemSource(state.bandit, state.catalog),
    }
    if model is not None and index is not None:
        sources["collaborative"] = CollaborativeSource(model, index, item_vectors, catalog=state.catalog)
    return SourceSet(sources, state)


def build_sources(
    ds: Dataset, *, config: Config, model: UserEncoder | None = None, index: VectorIndex | None = None,
    item_vectors: VectorLookup = None, now: float | None = None, progress: Progress = NO_PROGRESS,
) -> SourceSet:
    """`make_sources(build_state(ds, ...), ...)`: a dict of sources whose `.state` `save_state` accepts."""
    state = build_state(ds, config=config, now=now, progress=progress)
    return make_sources(state, config=config, model=model, index=index, item_vectors=item_vectors)


def save_state(state: SourceState | SourceSet, directory: str | Path) -> None:
    """Every structure as npz (no pickle) + JSON under `directory` (given the state or `build_sources`' result)."""
    if isinstance(state, SourceSet):
        state = state.state
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state.catalog.save(d)
    state.activity.save(d)
    state.trending.save(d, "trending")
    state.popularity.save(d)
    state.social.save(d)
    state.tags.save(d)
    state.bandit.save(d)
    meta: dict[str, Any] = {"format_version": FORMAT_VERSION, "events": {"weights": state.events.weights,
                            "rating_negative_below": state.events.rating_negative_below}}
    (d / "sources.json").write_text(json.dumps(meta, indent=1))


def load_state(directory: str | Path) -> SourceState:
    """What `save_state` wrote; raises ArtifactError when something is missing or from another format."""
    d = Path(directory)
    try:
        meta = json.loads((d / "sources.json").read_text())
    except (FileNotFoundError, ValueError) as e:
        raise ArtifactError(f"no source state in {d} (sources.json missing or unreadable: {e})") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"source state in {d} has format {meta.get('format_version')}, expected {FORMAT_VERSION}")
    return SourceState(
        catalog=Catalog.load(d), activity=RecentActivity.load(d), trending=TrendingCounter.load(d, "trending"),
        popularity=SegmentPopularity.load(d), social=SocialGraph.load(d), tags=TagIndex.load(d),
        bandit=NewItemBandit.load(d), events=EventsConfig(**meta["events"]),
    )
