"""Freshness probe: how long after a write the service's answers reflect it (MISSION target: < 1 s).

Four scenarios, each repeated n times, lag = from the moment the write is sent to the first answer that
shows its effect (reads poll on fresh connections, so with several workers they land on any of them):

- new_item: `POST /v1/items` with a tag, then a new user onboarded (`PUT /v1/users`) with that tag as
  interest; lag until the item is in that user's candidates (includes the onboarding write);
- trending: a burst of shares (`POST /v1/events`) on an item nobody engaged with; lag until it is in a
  cold (never seen) user's candidates;
- seen: a `view` of the first candidate of a warm user; lag until it is gone from their candidates;
- delete: `DELETE /v1/items/{id}` of a warm user's first candidate; lag until gone.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from candgen.bench.http import Endpoint
from candgen.errors import CandgenError
from candgen.types import Progress

SCENARIOS = ("new_item", "trending", "seen", "delete")


@dataclass
class FreshnessResult:
    """Lags of one scenario in ms; `failed` trials never showed the effect within the timeout."""

    scenario: str
    trials: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    write_p50_ms: float
    first_read_fraction: float  # share of trials whose first read after the write's answer showed it
    failed: int
    invalid: int = 0  # trials skipped: the effect was there before the write


def summarize_lags(scenario: str, lags_ms: Sequence[float], writes_ms: Sequence[float],
                   first_read: Sequence[bool], failed: int, invalid: int = 0) -> FreshnessResult:
    lags = np.asarray(lags_ms, dtype=np.float64)
    nan = float("nan")
    return FreshnessResult(
        scenario=scenario, trials=len(lags) + failed,
        p50_ms=float(np.percentile(lags, 50)) if len(lags) else nan,
        p99_ms=float(np.percentile(lags, 99)) if len(lags) else nan,
        max_ms=float(lags.max()) if len(lags) else nan,
        write_p50_ms=float(np.median(writes_ms)) if len(writes_ms) else nan,
        first_read_fraction=float(np.mean(first_read)) if len(first_read) else nan, failed=failed,
        invalid=invalid,
    )


class FreshnessProbe:
    """Runs the scenarios against one service; writes through one keep-alive connection."""

    def __init__(self, endpoint: Endpoint, *, warm_users: Sequence[str], unengaged_items: Sequence[str] = (),
                 api_key: str | None = None, k: int = 1000, timeout_s: float = 10.0, tag: str = "") -> None:
        self.url = endpoint.url
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.writer = httpx.Client(base_url=self.url, headers=headers, timeout=30)
        # "Connection: close" makes every read a fresh TCP connection (any worker may take it) without
        # building a new client per read (an httpx.Client costs ~10-50 ms to create: SSL context)
        self.reader = httpx.Client(base_url=self.url, headers={"Connection": "close"}, timeout=30)
        self.warm = list(warm_users)
        self.unengaged = list(unengaged_items)
        self.k, self.timeout_s = k, timeout_s
        self.tag = tag or f"{int(time.time() * 1000) % 10**9:x}"
        self._warm_next = 0
        # another order per run: an earlier run's bursts (kept in the service's journal) must not be reused
        random.Random(self.tag).shuffle(self.unengaged)
        random.Random(self.tag).shuffle(self.warm)

    def close(self) -> None:
        self.writer.close()
        self.reader.close()

    def _write(self, method: str, path: str, body: Any = None) -> None:
        r = self.writer.request(method, path, json=body)
        if r.status_code >= 300:
            raise CandgenError(f"{method} {path}: HTTP {r.status_code} {r.text[:200]}"
                               + (" (set CANDGEN_API_KEY)" if r.status_code == 401 else ""))

    def read_ids(self, user_id: str) -> list[str]:
        """One candidates read on a fresh connection (so several workers share the reads)."""
        r = self.reader.post("/v1/candidates", json={"user_id": user_id, "k": self.k})
        if r.status_code != 200:
            raise CandgenError(f"POST /v1/candidates: HTTP {r.status_code} {r.text[:200]}")
        return [c["item_id"] for c in r.json()["candidates"]]

    def _next_warm(self) -> str:
        if self._warm_next >= len(self.warm):
            raise CandgenError("ran out of warm users for the freshness probe")
        u = self.warm[self._warm_next]
        self._warm_next += 1
        return u

    def _wait(self, t0: float, user_id: str, item_id: str, present: bool) -> tuple[float | None, bool]:
        """Poll until `item_id` is (or is no longer) in the user's candidates: (lag ms or None, first read?)."""
        first = True
        while True:
            ids = self.read_ids(user_id)
            now = time.perf_counter()
            if (item_id in ids) == present:
                return (now - t0) * 1000.0, first
            first = False
            if now - t0 > self.timeout_s:
                return None, False

    def trial(self, scenario: str, i: int) -> tuple[float | None, float, bool]:
        """One trial: (lag ms or None, write ms, seen on the first read); write ms 0: invalid trial (the
        trending item was already in a cold user's list before the burst)."""
        tag = f"{self.tag}-{i}"
        if scenario == "new_item":
            item, user, label = f"bench-new-{tag}", f"bench-onboard-{tag}", f"bench-tag-{tag}"
            t0 = time.perf_counter()
            self._write("POST", "/v1/items", {"items": [{"item_id": item, "tags": [label]}]})
            tw = time.perf_counter()
            self._write("PUT", f"/v1/users/{user}", {"interests": [label]})
            lag, first = self._wait(t0, user, item, present=True)
        elif scenario == "trending":
            if i < len(self.unengaged):
                item = self.unengaged[i]
            else:  # no catalog item nobody engaged with: a fresh one (new-item exploration may also show it)
                item = f"bench-burst-{tag}"
                self._write("POST", "/v1/items", {"items": [{"item_id": item}]})
            user = f"bench-cold-fresh-{tag}"
            if item in self.read_ids(f"bench-cold-control-{tag}"):  # a cold user had it before the burst
                return None, 0.0, False
            events = [{"user_id": f"bench-sharer-{tag}-{j}", "item_id": item, "event": "share"} for j in range(20)]
            t0 = time.perf_counter()
            self._write("POST", "/v1/events", {"events": events})
            tw = time.perf_counter()
            lag, first = self._wait(t0, user, item, present=True)
        elif scenario in ("seen", "delete"):
            user = self._next_warm()
            ids = self.read_ids(user)
            if not ids:
                raise CandgenError(f"warm user {user!r} got no candidates")
            item = ids[0]
            t0 = time.perf_counter()
            if scenario == "seen":
                self._write("POST", "/v1/events", {"events": [{"user_id": user, "item_id": item, "event": "view"}]})
            else:
                self._write("DELETE", f"/v1/items/{item}")
            tw = time.perf_counter()
            lag, first = self._wait(t0, user, item, present=False)
        else:
            raise CandgenError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
        return lag, (tw - t0) * 1000.0, first

    def run(self, scenarios: Sequence[str] = SCENARIOS, repeat: int = 30,
            progress: Progress | None = None) -> list[FreshnessResult]:
        if repeat < 1:
            raise CandgenError(f"--repeat: got {repeat}, expected 1 or more")
        unknown = [s for s in scenarios if s not in SCENARIOS]
        if unknown:
            raise CandgenError(f"unknown scenario {unknown[0]!r}; known: {', '.join(SCENARIOS)}")
        p = progress or Progress()
        out = []
        for sc in scenarios:
            p.task(f"freshness {sc}", total=repeat)
            lags, writes, firsts, failed, invalid = [], [], [], 0, 0
            for i in range(repeat):
                lag, w, first = self.trial(sc, i)
                if w == 0.0:
                    invalid += 1
                    continue
                writes.append(w)
                if lag is None:
                    failed += 1
                else:
                    lags.append(lag)
                    firsts.append(first)
                p.advance(f"freshness {sc}")
            p.done(f"freshness {sc}")
            out.append(summarize_lags(sc, lags, writes, firsts, failed, invalid=invalid))
        return out


def unengaged_items_from_artifacts(art: Any, limit: int = 1000) -> list[str]:
    """Catalog items of the artifacts' snapshot that nobody engaged with (for the trending burst)."""
    from pathlib import Path

    import pyarrow.parquet as pq

    snap = Path(art) / "dataset"
    ids = pq.read_table(snap / "items.parquet").column("id").to_pylist()
    with np.load(snap / "arrays.npz", allow_pickle=False) as z:
        engaged = np.zeros(len(ids), dtype=bool)
        engaged[z["item"]] = True
    return [ids[i] for i in np.flatnonzero(~engaged)[:limit].tolist()]


FRESHNESS_HEADER = ("| scenario | trials | lag p50 ms | lag p99 ms | lag max ms | write p50 ms | on first read "
                    "| failed | invalid |")


def freshness_row(r: FreshnessResult, prefix: str = "") -> str:
    return (f"| {prefix}{r.scenario} | {r.trials} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.max_ms:.1f} "
            f"| {r.write_p50_ms:.1f} | {r.first_read_fraction:.2f} | {r.failed} | {r.invalid} |")

