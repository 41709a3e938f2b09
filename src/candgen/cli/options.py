"""Parsing helpers shared by CLI commands (times, lists of k)."""

from __future__ import annotations

from datetime import UTC, datetime

from candgen.errors import CandgenError


def parse_time(value: str, option: str) -> int:
    """Unix seconds or ISO-8601 (naive times are UTC) → int unix seconds."""
    v = value.strip()
    try:
        return int(float(v))
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        raise CandgenError(f"{option}: got {value!r}, expected unix seconds or an ISO-8601 time") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp())


def parse_ks(value: str, option: str = "--k") -> list[int]:
    """'50,100,200' → [50, 100, 200]; each 1..100000."""
    try:
        ks = [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise CandgenError(f"{option}: got {value!r}, expected comma-separated integers like 50,100,200") from None
    if not ks or any(k < 1 or k > 100_000 for k in ks):
        raise CandgenError(f"{option}: got {value!r}, expected integers between 1 and 100000")
    return sorted(set(ks))
