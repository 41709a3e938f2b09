"""Pydantic models of every HTTP request and answer (DESIGN §4); they also generate the OpenAPI at /docs.

Limits that depend on `ServeConfig` (max_k, max_batch) are checked again by the app, because a model's
constraints are fixed when the class is defined; the ones here are the contract's defaults.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from candgen.config import KNOWN_EVENTS

MAX_K = 10_000
MAX_EXCLUDE = 10_000
MAX_BATCH = 10_000

Id = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Label = Annotated[str, StringConstraints(max_length=256)]


def to_unix_seconds(value: float | str | None) -> float | None:
    """Unix seconds or an ISO-8601 string (naive times are UTC) → float unix seconds."""
    if value is None or isinstance(value, int | float):
        return None if value is None else float(value)
    try:
        return float(value)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"got {value!r}, expected unix seconds or an ISO-8601 time") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


class _Strict(BaseModel):
    # unknown fields are a client bug worth reporting, not something to drop silently
    model_config = ConfigDict(extra="forbid")


# --- candidates -------------------------------------------------------------------------------------

class CandidatesRequest(_Strict):
    user_id: Id
    k: int = Field(1000, ge=1, le=MAX_K, description="how many candidates to return")
    context: dict[Label, Label] = Field(
        default_factory=dict, max_length=64,
        description="request context: device, country, language, ... (strings)",
        examples=[{"device": "mobile", "country": "DE", "language": "de"}],
    )
    exclude: list[Id] = Field(default_factory=list, max_length=MAX_EXCLUDE, description="item ids never to return")
    explain: bool = Field(False, description="add each source's score to every candidate")


class Candidate(BaseModel):
    item_id: str
    score: float
    sources: list[str]
    explain: dict[str, float] | None = Field(None, description="source → score; only when explain was asked")


class CandidatesResponse(BaseModel):
    user_id: str
    model_version: str
    variant: str
    candidates: list[Candidate]
    degraded: list[str] = Field(description="sources dropped for this request (failed or late)")
    cache: Literal["L1", "L2", "L3", "miss"]
    took_ms: float = Field(description="server time from request arrival to answer")


class SimilarResponse(BaseModel):
    item_id: str
    model_version: str
    candidates: list[Candidate]
    degraded: list[str]
    took_ms: float


# --- writes -----------------------------------------------------------------------------------------

class EventModel(_Strict):
    user_id: Id
    item_id: Id
    event: str = Field(json_schema_extra={"enum": list(KNOWN_EVENTS)})
    timestamp: float | str | None = Field(None, description="unix seconds or ISO-8601; default: now")
    value: float | None = Field(None, allow_inf_nan=False)

    @field_validator("event")
    @classmethod
    def _known_event(cls, v: str) -> str:
        if v not in KNOWN_EVENTS:
            raise ValueError(f"unknown event {v!r}; known events: {', '.join(KNOWN_EVENTS)}")
        return v

    @field_validator("timestamp")
    @classmethod
    def _unix_seconds(cls, v: float | str | None) -> float | None:
        return to_unix_seconds(v)


class EventsRequest(_Strict):
    events: list[EventModel] = Field(min_length=1, description=f"at most ServeConfig.max_batch ({MAX_BATCH})")


class EventsResponse(BaseModel):
    accepted: int


class ItemModel(_Strict):
    item_id: Id
    tags: list[Label] = Field(default_factory=list, max_length=1000)
    category: Label | None = None
    creator_id: Label | None = None
    title: Annotated[str, StringConstraints(max_length=4096)] | None = None
    created_at: float | str | None = Field(None, description="unix seconds or ISO-8601; default: now")

    @field_validator("created_at")
    @classmethod
    def _unix_seconds(cls, v: float | str | None) -> float | None:
        return to_unix_seconds(v)


class ItemsRequest(_Strict):
    items: list[ItemModel] = Field(min_length=1, description=f"at most ServeConfig.max_batch ({MAX_BATCH})")


class ItemsResponse(BaseModel):
    added: int


class UserProfile(_Strict):
    attributes: dict[Label, Label] = Field(
        default_factory=dict, max_length=256, examples=[{"age_group": "25-34", "country": "DE"}]
    )
    interests: list[Label] = Field(default_factory=list, max_length=1000)
    friends: list[Id] = Field(default_factory=list, max_length=MAX_BATCH)


class UserResponse(BaseModel):
    user_id: str


class ReloadRequest(_Strict):
    art: str | None = Field(None, description="artifacts directory to swap in; default: re-read the current one")


class ReloadResponse(BaseModel):
    model_version: str


class SnapshotResponse(BaseModel):
    snapshot: str | None = Field(description="the snapshot written; null when nothing was new since the last one")
    seq: str | None = Field(description="the last log record the newest snapshot holds")
    records: int = Field(description="log records folded into the newest snapshot")
    bytes: int = Field(description="size of the snapshot written (0 when none was)")
    replayed: int = Field(description="records replayed after the previous snapshot to build it")
    trimmed: int = Field(description="records trimmed off the log")
    took_ms: float


# --- health and errors ------------------------------------------------------------------------------

class Health(BaseModel):
    status: str
    model_version: str | None = None


class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. 'validation_error', 'unknown_id'")
    message: str
    field: str | None = Field(None, description="path of the offending field, e.g. 'k' or 'events.0.event'")


class ErrorBody(BaseModel):
    error: ErrorDetail
