"""The engine interface the HTTP layer serves, and the plain values that cross it.

`serve/` talks to the request path only through `Engine`, so the real engine (`candgen.engine`) and the
in-memory fake used by the tests are interchangeable. Everything here is plain dataclasses: an engine
may import this module without pulling in FastAPI or pydantic.

Errors an engine raises and what the client sees:

- `candgen.errors.UnknownIdError` (unknown item or user where one is required) → 404
- `candgen.errors.CandgenError` (bad input the schemas could not catch) → 422
- `EngineNotReadyError` (artifacts still loading, reload in progress) → 503
- `EngineOverloadedError` (queue full, shed this request) → 503
- anything else → 500; the process keeps serving and logs the traceback.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from candgen.errors import CandgenError
from candgen.types import Request


class EngineNotReadyError(CandgenError):
    """The engine cannot answer yet (still loading artifacts). The client should retry later."""


class EngineOverloadedError(CandgenError):
    """The engine sheds this request to keep latency for the others. The client should back off."""


@dataclass(slots=True)
class CandidatesResult:
    """One answer of the request path, aligned by position: `item_ids[i]`, `scores[i]`, `sources[i]`.

    `sources[i]` lists every source that found item i (provenance kept through dedup); candidates found by
    the same sources may share one list object, so treat the lists as read-only. `explain`, when
    asked for, maps item id → {source: that source's score}. `degraded` names sources dropped for this
    request (failed or late). `cache` is "L1", "L2", "L3" or "miss". `timings` are seconds per stage of
    the request path (e.g. "user_embedding", "collaborative", "blend"), exported as latency histograms.
    `source_counts` is how many candidates each source returned before blending (0 means it came back
    empty); when left empty the HTTP layer counts provenance from `sources` instead. `quality` carries
    optional online-quality numbers: "ann_recall" (sampled recall of the ANN search against exact search)
    and "diversity" (intra-list distance of the answer). `source_groups`, optional, is `sources` in compact
    form, `(distinct lists, index per candidate)` with `sources[i] == groups[index[i]]`: an engine that has
    it for free lets the HTTP layer encode each distinct list once.
    """

    item_ids: list[str]
    scores: np.ndarray | list[float]
    sources: list[list[str]]
    explain: dict[str, dict[str, float]] | None = None
    degraded: list[str] = field(default_factory=list)
    cache: str = "miss"
    variant: str = "default"
    model_version: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    source_counts: dict[str, int] = field(default_factory=dict)
    quality: dict[str, float] = field(default_factory=dict)
    source_groups: tuple[list[list[str]], np.ndarray] | None = None

    def __post_init__(self) -> None:
        if not (len(self.item_ids) == len(self.scores) == len(self.sources)):
            raise ValueError(
                f"item_ids ({len(self.item_ids)}), scores ({len(self.scores)}) and sources ({len(self.sources)}) "
                "differ in length"
            )
        if self.source_groups is not None:
            groups, index = self.source_groups
            idx = np.asarray(index)
            if len(idx) != len(self.sources) or (len(idx) and (idx.min() < 0 or idx.max() >= len(groups))):
                raise ValueError("source_groups: expected one index per candidate into the distinct lists")


@dataclass(slots=True)
class EventIn:
    """One engagement as posted to `POST /v1/events`; `timestamp` is unix seconds (None: the server's now)."""

    user_id: str
    item_id: str
    event: str
    timestamp: float | None = None
    value: float | None = None


@dataclass(slots=True)
class ItemIn:
    """One item as posted to `POST /v1/items`; the engine embeds it from this content."""

    item_id: str
    tags: list[str] = field(default_factory=list)
    category: str | None = None
    creator_id: str | None = None
    title: str | None = None
    created_at: float | None = None  # unix seconds; None: the server's now


@dataclass(slots=True)
class UserProfileIn:
    """Onboarding data of one user, as put to `PUT /v1/users/{user_id}`."""

    attributes: dict[str, str] = field(default_factory=dict)
    interests: list[str] = field(default_factory=list)
    friends: list[str] = field(default_factory=list)


class Engine(Protocol):
    """What the HTTP layer needs from the request path.

    Thread-safety: the app calls `candidates`, `similar` and the write methods from several worker
    threads at once, so an engine must be safe for concurrent calls (or lock internally). `reload` is
    never called concurrently with itself. An optional `close()` method, if present, is called once at
    shutdown (SIGTERM) so that the engine can flush its journal. An optional `snapshot()` method serves
    `POST /v1/admin/snapshot`: it returns a `candgen.snapshot.SnapshotResult` and raises
    `EngineOverloadedError` while another worker takes one.
    """

    @property
    def ready(self) -> bool:
        """True once artifacts are loaded and requests can be answered."""
        ...

    @property
    def model_version(self) -> str:
        """Version of the model currently serving (changes on `reload`)."""
        ...

    def candidates(self, req: Request) -> CandidatesResult:
        """Personalised candidates for one request; unknown users get the cold-start path, not an error."""
        ...

    def similar(self, item_id: str, k: int) -> CandidatesResult:
        """Item-to-item candidates; raises `UnknownIdError` for an unknown or deleted item."""
        ...

    def ingest_events(self, events: list[EventIn]) -> int:
        """Record engagements (recent activity, trending, seen/blocked, L1 invalidation); returns how many."""
        ...

    def add_items(self, items: list[ItemIn]) -> int:
        """Embed and index new (or updated) items so every source can return them at once; returns how many."""
        ...

    def delete_item(self, item_id: str) -> None:
        """Never return this item again; raises `UnknownIdError` if it is not in the catalog."""
        ...

    def put_user(self, user_id: str, profile: UserProfileIn) -> None:
        """Create or replace a user's onboarding profile (attributes, interests, friends)."""
        ...

    def reload(self, art_path: str | None) -> str:
        """Swap in the artifacts at `art_path` (None: re-read the current directory); returns the new version."""
        ...

    def stats(self) -> dict[str, Any]:
        """Numbers worth exporting as gauges, e.g. {"index_size": 1_000_000, "users": ...}."""
        ...
