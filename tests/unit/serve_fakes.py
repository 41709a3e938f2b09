"""An in-memory engine that really behaves (dict state, a cache, the engine's errors) for the HTTP tests.

Candidates are the active catalog ranked by engagement, tagged "content" when they match the user's
interests and "trending" when they have engagement, minus deleted, hidden and excluded items. A second
request of the same user is an L1 hit until one of their events invalidates it.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from candgen.config import NEGATIVE_EVENTS
from candgen.errors import ArtifactError, CandgenError, UnknownIdError
from candgen.serve.protocol import CandidatesResult, EventIn, ItemIn, UserProfileIn
from candgen.types import Request

WEIGHTS = {"view": 1.0, "click": 2.0, "like": 3.0, "share": 5.0}


class FakeEngine:
    def __init__(self, n_items: int = 50, *, ready: bool = True) -> None:
        self.ready = ready
        self.model_version = "v1"
        self.items: dict[str, ItemIn] = {
            f"i{j}": ItemIn(item_id=f"i{j}", tags=[f"t{j % 5}"], category=f"c{j % 3}", creator_id=f"u{j % 7}")
            for j in range(n_items)
        }
        self.deleted: set[str] = set()
        self.users: dict[str, UserProfileIn] = {}
        self.events: list[EventIn] = []
        self.engagement: dict[str, float] = {}
        self.hidden: dict[str, set[str]] = {}
        self.l1: dict[tuple[str, int, tuple[str, ...]], CandidatesResult] = {}
        self.degraded: list[str] = []
        self.fail_with: Exception | None = None  # raised by the next candidates() call
        self.calls = 0
        self.closed = False
        self.snapshots: list[Any] = []  # candgen.snapshot.SnapshotMeta of every snapshot "taken"
        self.snapshot_busy = False  # another worker holds the snapshot lease
        self._lock = threading.Lock()

    # --- reads --------------------------------------------------------------------------------------

    def candidates(self, req: Request) -> CandidatesResult:
        t0 = time.perf_counter()
        with self._lock:
            self.calls += 1
            if self.fail_with is not None:
                e, self.fail_with = self.fail_with, None
                raise e
            key = (req.user_id, req.k, tuple(req.exclude))
            if key in self.l1 and not req.explain:
                cached = self.l1[key]
                return CandidatesResult(
                    item_ids=cached.item_ids, scores=cached.scores, sources=cached.sources, cache="L1",
                    variant=cached.variant, model_version=self.model_version,
                )
            interests = set(self.users[req.user_id].interests) if req.user_id in self.users else set()
            skip = self.deleted | self.hidden.get(req.user_id, set()) | set(req.exclude)
            ranked = sorted((i for i in self.items if i not in skip),
                            key=lambda i: (-self.engagement.get(i, 0.0), int(i[1:]) if i[1:].isdigit() else 0))
            ids = ranked[: req.k]
            sources = []
            for i in ids:
                srcs = [s for s, hit in (("content", bool(interests & set(self.items[i].tags))),
                                         ("trending", self.engagement.get(i, 0.0) > 0)) if hit]
                sources.append(srcs or ["collaborative"])
            scores = np.linspace(1.0, 0.5, num=len(ids), dtype=np.float32)
            explain = {i: {s: float(sc) for s in srcs} for i, sc, srcs in zip(ids, scores, sources, strict=True)}
            cats = {self.items[i].category for i in ids}
            res = CandidatesResult(
                item_ids=ids, scores=scores, sources=sources, explain=explain if req.explain else None,
                degraded=list(self.degraded), cache="miss", variant="B" if req.user_id.endswith("b") else "A",
                model_version=self.model_version,
                timings={"sources": time.perf_counter() - t0, "blend": 0.0001},
                source_counts={"collaborative": sum("collaborative" in x for x in sources),
                               "content": sum("content" in x for x in sources),
                               "trending": sum("trending" in x for x in sources), "social": 0},
                quality={"ann_recall": 0.97, "diversity": len(cats) / max(len(ids), 1)},
            )
            self.l1[key] = res
            return res

    def similar(self, item_id: str, k: int) -> CandidatesResult:
        with self._lock:
            if item_id not in self.items or item_id in self.deleted:
                raise UnknownIdError(f"unknown item {item_id!r}")
            tags = set(self.items[item_id].tags)
            ids = [i for i, it in self.items.items()
                   if i != item_id and i not in self.deleted and tags & set(it.tags)][:k]
            return CandidatesResult(item_ids=ids, scores=[1.0] * len(ids), sources=[["content"]] * len(ids),
                                    model_version=self.model_version)

    # --- writes -------------------------------------------------------------------------------------

    def ingest_events(self, events: list[EventIn]) -> int:
        with self._lock:
            n = 0
            for e in events:
                if e.item_id not in self.items:
                    continue  # events on items the catalog does not know are dropped (and not counted)
                self.events.append(e)
                if e.event in NEGATIVE_EVENTS:
                    self.hidden.setdefault(e.user_id, set()).add(e.item_id)
                self.engagement[e.item_id] = self.engagement.get(e.item_id, 0.0) + WEIGHTS.get(e.event, 0.0)
                self.l1 = {k: v for k, v in self.l1.items() if k[0] != e.user_id}  # invalidate that user's L1
                n += 1
            return n

    def add_items(self, items: list[ItemIn]) -> int:
        with self._lock:
            for it in items:
                if it.item_id.startswith("bad"):
                    raise CandgenError(f"item {it.item_id!r}: cannot embed an item without tags")
            for it in items:
                self.items[it.item_id] = it
                self.deleted.discard(it.item_id)
            self.l1.clear()
            return len(items)

    def delete_item(self, item_id: str) -> None:
        with self._lock:
            if item_id not in self.items or item_id in self.deleted:
                raise UnknownIdError(f"unknown item {item_id!r}")
            self.deleted.add(item_id)
            self.l1.clear()

    def put_user(self, user_id: str, profile: UserProfileIn) -> None:
        with self._lock:
            self.users[user_id] = profile
            self.l1 = {k: v for k, v in self.l1.items() if k[0] != user_id}

    def reload(self, art_path: str | None) -> str:
        if art_path is not None and not (Path(art_path) / "manifest.json").exists():
            raise ArtifactError(f"{art_path} is not a candgen artifacts directory (no manifest.json)")
        with self._lock:
            self.model_version = f"v{int(self.model_version[1:]) + 1}"
            self.l1.clear()
            return self.model_version

    def snapshot(self) -> Any:
        """A snapshot of the events so far (a seq per event); nothing new since the last one: meta None."""
        from candgen.serve.protocol import EngineOverloadedError
        from candgen.snapshot import SnapshotMeta, SnapshotResult

        with self._lock:
            if self.snapshot_busy:
                raise EngineOverloadedError("another worker is taking a snapshot of the state log; retry later")
            n, base = len(self.events), (self.snapshots[-1] if self.snapshots else None)
            done = base.records if base is not None else 0
            if base is not None and n == done:
                return SnapshotResult(meta=None, base=base, replayed=0, trimmed=0, seconds={})
            meta = SnapshotMeta(key="f" * 16, generation=len(self.snapshots) + 1, seq=str(n), records=n,
                                created_at=time.time(), model_version=self.model_version, size=100 * n, sha256="",
                                worker="fake")
            self.snapshots.append(meta)
            return SnapshotResult(meta=meta, base=base, replayed=n - done, trimmed=done, seconds={})

    def stats(self) -> dict[str, Any]:
        return {"index_size": len(self.items) - len(self.deleted), "users": len(self.users),
                "events": len(self.events), "loaded": True}

    def close(self) -> None:
        self.closed = True


class SlowLoadingFactory:
    """A factory whose engine appears only after `release()` is called, to test /readyz while loading."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.engine = FakeEngine()

    def __call__(self) -> FakeEngine:
        self.gate.wait(timeout=10)
        return self.engine


def metric_lines(text: str) -> dict[str, float]:
    """Prometheus text → {'name{labels}': value}."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def open_fake(art: str, state_url: str | None) -> FakeEngine:
    """Stand-in for `candgen.engine.open_engine`, selected through CANDGEN_ENGINE in the factory tests."""
    eng = FakeEngine()
    eng.model_version = f"fake:{Path(art).name}:{state_url}"
    return eng


def wait_until_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    """Poll `url`/readyz until 200; fail with the server's stderr if it exits or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.05)
