"""Shared result types passed between stages. Imports nothing else of candgen's.

Every retrieval call returns a named result, never a bare tuple whose order differs per library.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, slots=True)
class Candidates:
    """Candidates from one source (or one index search) for one query.

    `ids` are dense internal item indices (int64), `scores` higher-is-better (float32), sorted
    descending. `source` names who produced them.
    """

    ids: np.ndarray
    scores: np.ndarray
    source: str = ""

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.scores):
            raise ValueError(f"ids ({len(self.ids)}) and scores ({len(self.scores)}) differ in length")

    def __len__(self) -> int:
        return len(self.ids)

    @staticmethod
    def empty(source: str = "") -> Candidates:
        return Candidates(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32), source)


@dataclass(frozen=True, slots=True)
class BatchCandidates:
    """Search results for a batch of queries: `ids` and `scores` are (n_queries, k); missing slots hold id -1."""

    ids: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def __getitem__(self, i: int) -> Candidates:
        row = self.ids[i]
        keep = row >= 0
        return Candidates(row[keep].astype(np.int64, copy=False), self.scores[i][keep].astype(np.float32, copy=False))


@dataclass(slots=True)
class Request:
    """One candidate request as the engine sees it."""

    user_id: str
    k: int = 1000
    context: dict[str, str] = field(default_factory=dict)
    exclude: list[str] = field(default_factory=list)
    explain: bool = False
    now: float | None = None


class Progress:
    """A progress sink that library code reports to; the CLI subclasses it with rich bars.

    Library code never prints: it calls `task(name, total)` once, then `advance(name, n)`.
    The base class ignores everything (used by tests and as the `quiet` default).
    """

    def task(self, name: str, total: float | None = None) -> None:  # noqa: B027 - optional hook
        pass

    def advance(self, name: str, n: float = 1, **fields: object) -> None:  # noqa: B027 - optional hook
        pass

    def done(self, name: str) -> None:  # noqa: B027 - optional hook
        pass


NO_PROGRESS = Progress()
