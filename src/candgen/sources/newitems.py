"""New-item exploration: `NewItemBandit` (Thompson sampling over fresh items with an exposure budget) and
`NewItemSource`, which draws k items by sampled engagement rate.

Each new item has a Beta(1 + successes, 1 + failures) posterior of its engagement rate: a success is a
positive engagement, a failure an impression without one. An item leaves the pool once it has used its
budget of impressions (`SourcesConfig.new_item_budget`) or is older than `new_item_max_age_hours`; from
then on the regular sources must earn it its exposure.

    >>> b = NewItemBandit(budget=100, max_age_hours=48.0)
    >>> b.add_item(3, created_at=0.0); b.record_impression(3); b.record_engagement(3)
    >>> b.posterior(3)
    (2.0, 1.0)
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from candgen.config import EventsConfig
from candgen.data.dataset import IMPRESSION_CODE, MISSING_TIME, Dataset
from candgen.sources.base import CandidateSource, UserContext, isin, load_parts, save_parts, thread_rng
from candgen.sources.catalog import Catalog
from candgen.types import Candidates

_FILE, _META = "new_items.npz", "new_items.json"
CUT_TTL_S = 0.2  # how long requests share one optimistic cut of the pool (see NewItemBandit._candidates)
TIE_BREAK = 1e-9  # scale of the random tie-break between items whose posteriors are identical


def posterior_ab(succ: np.ndarray, imp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Beta posterior (alpha, beta) = (1 + successes, 1 + failures), failures = impressions without success."""
    return 1.0 + succ, 1.0 + np.maximum(imp - succ, 0.0)


def optimistic(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Posterior mean + 3 standard deviations of Beta(a, b): an item below the cut of the most optimistic
    ones has a negligible chance of a Thompson draw among the best."""
    n = a + b
    return a / n + 3.0 * np.sqrt(a * b / (n * n * (n + 1.0)))


def optimistic_scalar(a: float, b: float) -> float:
    n = a + b
    return a / n + 3.0 * math.sqrt(a * b / (n * n * (n + 1.0)))


OPTIMISTIC_NEW = optimistic_scalar(1.0, 1.0)  # an item nobody has seen yet


class NewItemBandit:
    """The pool of new items with their impression and engagement counts.

    Each item's optimistic bound (posterior mean + 3 standard deviations, plus a tiny random tie-break drawn
    when it joins) is kept up to date by the writes, so cutting the pool to its most promising items is one
    partial sort, with no copy of the pool. Requests share that cut for `CUT_TTL_S`; an item added or removed
    meanwhile is added to or dropped from the shared cut at once (a new item is drawable from the next
    request on, an item whose budget is spent is never drawn again).

    Thread-safety: one lock around the pool; a cut is an immutable tuple swapped by reference, so sampling
    reads it without the lock.
    """

    def __init__(self, *, budget: int, max_age_hours: float) -> None:
        self.budget, self.max_age_s = budget, max_age_hours * 3600.0
        self._slot: dict[int, int] = {}
        self._items = np.zeros(0, np.int64)
        self._created = np.zeros(0, np.float64)
        self._succ = np.zeros(0, np.float64)
        self._imp = np.zeros(0, np.float64)
        self._opt = np.zeros(0, np.float64)  # optimistic bound + tie-break, per slot (see `optimistic`)
        self._tie = np.zeros(0, np.float64)  # each item's random tie-break among identical posteriors
        self._tiebreak = np.random.default_rng()
        self._lock = threading.Lock()
        self._cut: tuple[int, float, float, np.ndarray, np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, item: object) -> bool:
        return item in self._slot

    def add_item(self, item: int, created_at: float) -> None:
        """Put a new item in the pool (no-op if it is already there)."""
        with self._lock:
            if item in self._slot:
                return
            n = len(self._slot)
            if n == len(self._items):
                cap = max(16, 2 * n)
                self._items, self._created = np.resize(self._items, cap), np.resize(self._created, cap)
                self._succ, self._imp = np.resize(self._succ, cap), np.resize(self._imp, cap)
                self._opt, self._tie = np.resize(self._opt, cap), np.resize(self._tie, cap)
            self._items[n], self._created[n], self._succ[n], self._imp[n] = item, created_at, 0.0, 0.0
            self._tie[n] = TIE_BREAK * self._tiebreak.random()
            self._opt[n] = OPTIMISTIC_NEW + self._tie[n]
            self._slot[int(item)] = n
            cut = self._cut
            if cut is not None:  # a new item competes from the next request on: into the shared cut at once
                one = np.ones(1)
                self._cut = (*cut[:3], np.append(cut[3], np.int64(item)), np.concatenate([cut[4], one]),
                             np.concatenate([cut[5], one]))

    def _remove(self, item: int) -> None:
        """Swap-remove under the lock; the item leaves the shared cut too."""
        cut = self._cut
        if cut is not None and (gone := cut[3] == item).any():
            keep = ~gone
            self._cut = (*cut[:3], cut[3][keep], cut[4][keep], cut[5][keep])
        s = self._slot.pop(item)
        last = len(self._slot)
        if s != last:
            for a in (self._items, self._created, self._succ, self._imp, self._opt, self._tie):
                a[s] = a[last]
            self._slot[int(self._items[s])] = s

    def _update_bound(self, s: int) -> None:
        """Under the lock, after slot s's counts changed."""
        succ, imp = float(self._succ[s]), float(self._imp[s])
        self._opt[s] = optimistic_scalar(1.0 + succ, 1.0 + max(imp - succ, 0.0)) + self._tie[s]

    def remove(self, item: int) -> None:
        with self._lock:
            if item in self._slot:
                self._remove(item)

    def record_impression(self, item: int, n: int = 1) -> None:
        """`item` was shown; it leaves the pool when its budget is used up."""
        with self._lock:
            s = self._slot.get(item)
            if s is None:
                return
            self._imp[s] += n
            if self._imp[s] >= self.budget:
                self._remove(item)
            else:
                self._update_bound(s)

    def record_engagement(self, item: int, n: int = 1) -> None:
        """A positive engagement with `item` (a success)."""
        with self._lock:
            s = self._slot.get(item)
            if s is not None:
                self._succ[s] += n
                self._update_bound(s)

    def posterior(self, item: int) -> tuple[float, float]:
        """(alpha, beta) of the item's Beta posterior: 1 + successes, 1 + failures."""
        with self._lock:
            s = self._slot[item]
            succ, imp = float(self._succ[s]), float(self._imp[s])
        return 1.0 + succ, 1.0 + max(imp - succ, 0.0)  # as `posterior_ab`, for one item

    def expire(self, now: float) -> int:
        """Drop items older than the maximum age; returns how many left."""
        with self._lock:
            n = len(self._slot)
            old = self._items[:n][now - self._created[:n] > self.max_age_s]
            for item in old.tolist():
                self._remove(int(item))
            return len(old)

    def snapshot(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Copies of (items, created_at, successes, impressions) of the pool."""
        with self._lock:
            n = len(self._slot)
            return self._items[:n].copy(), self._created[:n].copy(), self._succ[:n].copy(), self._imp[:n].copy()

    def sample(self, k: int, *, now: float, rng: np.random.Generator, exclude: np.ndarray | None = None,
               max_draws: int | None = None) -> Candidates:
        """k pool items (younger than the maximum age) ranked by one Thompson draw each.

        Beta draws cost ~100 ns each, so a pool larger than `max_draws` (default max(4k, 2048)) is first cut to
        the items with the highest optimistic estimate (posterior mean + 3 standard deviations): an item below
        that cut has a negligible chance of a draw among the top k."""
        cap = max_draws if max_draws is not None else max(4 * k, 2048)
        items, a, b = self._candidates(now, cap)
        if not len(items) or k <= 0:
            return Candidates.empty("new_items")
        draws = rng.beta(a, b)
        if exclude is not None and len(exclude):
            # the user's exclusions are dropped from the k + len(exclude) best draws, not searched in the cut:
            # at most len(exclude) of those can go, so the k best remaining are the k best of the rest
            m = k + len(exclude)
            if len(items) > m:
                part = np.argpartition(-draws, m - 1)[:m]
                items, draws = items[part], draws[part]
            keep = ~isin(items, exclude)
            items, draws = items[keep], draws[keep]
        if len(items) > k:
            part = np.argpartition(-draws, k - 1)[:k]
            items, draws = items[part], draws[part]
        order = np.argsort(-draws, kind="stable")
        return Candidates(items[order], draws[order].astype(np.float32), "new_items")

    def _candidates(self, now: float, cap: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(items, alpha, beta) of the eligible pool cut to the `cap` most optimistic items. Shared between
        requests for `CUT_TTL_S` (posteriors move only with events; a fresh Thompson draw per request still picks
        among them; items added or removed meanwhile are patched into it), so the pool is not scanned per
        request; a new cut is one partial sort of the maintained bounds, under the lock, with no copy."""
        cached = self._cut
        if cached is not None and cached[0] == cap and abs(cached[1] - now) < 1.0 \
                and time.monotonic() - cached[2] < CUT_TTL_S:
            return cached[3], cached[4], cached[5]
        with self._lock:
            n = len(self._slot)
            slots = np.flatnonzero((now - self._created[:n] <= self.max_age_s) & (self._imp[:n] < self.budget))
            if len(slots) > cap:
                slots = slots[np.argpartition(-self._opt[slots], cap - 1)[:cap]]
            items = self._items[slots]  # fancy indexing copies: the cut owns its arrays
            a, b = posterior_ab(self._succ[slots], self._imp[slots])
            self._cut = (cap, now, time.monotonic(), items, a, b)
        return items, a, b

    @staticmethod
    def from_dataset(ds: Dataset, *, events: EventsConfig, budget: int, max_age_hours: float,
                     now: float) -> NewItemBandit:
        """Pool = items created within the maximum age before `now` whose budget is not spent (vectorised)."""
        b = NewItemBandit(budget=budget, max_age_hours=max_age_hours)
        if ds.item_created_at is None:
            return b
        created = ds.item_created_at
        fresh = np.flatnonzero((created != MISSING_TIME) & (created <= now) & (now - created <= b.max_age_s))
        if not len(fresh):
            return b
        inter = ds.interactions
        upto = inter.timestamp <= now
        n = ds.n_items
        succ = np.bincount(inter.item[upto & (inter.weights(events) > 0)], minlength=n)[fresh]
        imp = np.bincount(inter.item[upto & (inter.event == IMPRESSION_CODE)], minlength=n)[fresh]
        keep = imp < budget
        b._load(fresh[keep], created[fresh][keep].astype(np.float64), succ[keep].astype(np.float64),
                imp[keep].astype(np.float64))
        return b

    def _load(self, items: np.ndarray, created: np.ndarray, succ: np.ndarray, imp: np.ndarray) -> None:
        with self._lock:
            self._items, self._created = items.astype(np.int64), created.astype(np.float64)
            self._succ, self._imp = succ.astype(np.float64), imp.astype(np.float64)
            self._tie = TIE_BREAK * self._tiebreak.random(len(self._items))
            self._opt = optimistic(*posterior_ab(self._succ, self._imp)) + self._tie
            self._slot = {int(i): s for s, i in enumerate(self._items.tolist())}
            self._cut = None

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        items, created, succ, imp = self.snapshot()
        return ({"items": items, "created_at": created, "successes": succ, "impressions": imp},
                {"budget": self.budget, "max_age_hours": self.max_age_s / 3600.0})

    @staticmethod
    def from_arrays(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> NewItemBandit:
        b = NewItemBandit(budget=int(meta["budget"]), max_age_hours=float(meta["max_age_hours"]))
        b._load(arrays["items"], arrays["created_at"], arrays["successes"], arrays["impressions"])
        return b

    def save(self, directory: str | Path) -> None:
        arrays, meta = self.to_arrays()
        save_parts(directory, "new_items", arrays, meta)

    @staticmethod
    def load(directory: str | Path) -> NewItemBandit:
        return NewItemBandit.from_arrays(*load_parts(directory, "new_items"))


class NewItemSource(CandidateSource):
    """k new items drawn by Thompson sampling (deleted and excluded items skipped)."""

    name = "new_items"
    inline = True  # a few hundred µs of numpy that holds the GIL: run on the request thread

    def __init__(self, bandit: NewItemBandit, catalog: Catalog | None = None, *, seed: int | None = None) -> None:
        self.bandit, self.catalog, self.seed = bandit, catalog, seed

    def retrieve(self, ctx: UserContext, k: int) -> Candidates:
        # over-draw a little, then drop deleted items (cheaper than building a deleted list per request)
        c = self.bandit.sample(k + 16 if self.catalog is not None else k, now=ctx.now, rng=thread_rng(self.seed),
                               exclude=ctx.exclude)
        ids, scores = c.ids, c.scores
        if self.catalog is not None:
            live = self.catalog.live(ids)
            ids, scores = ids[live], scores[live]
        return self.result(ids[:k], scores[:k])
