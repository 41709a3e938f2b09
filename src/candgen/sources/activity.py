"""`RecentActivity`: each user's recent positive engagements, seen set, hidden items and blocked creators.

The base state is CSR arrays built in one vectorised pass over a dataset's log; events arriving while
serving go to small per-user overlays (a bounded ring newest-first, sets), so an update is O(1) and a
user the log never saw works the same way. History weights carry the early-engagement boost (the seed's
5x for a user's first 10 engagements, 2x for the next 40), so new users' first signals count more.

    >>> ra = RecentActivity.empty(capacity=3)
    >>> ra.record_engagement(0, item=5, weight=1.0, t=1.0)
    5.0
    >>> ra.history(0)[0].tolist()
    [5]
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from candgen.config import EventsConfig
from candgen.data.dataset import EVENT_CODE, Dataset
from candgen.sources.base import argsort_ints, load_parts, save_parts, splice_rows, union, unique

EARLY_BOOST: tuple[tuple[int, float], ...] = ((10, 5.0), (50, 2.0))  # (engagements below, multiplier)
_FILE, _META = "activity.npz", "activity.json"


def early_weights(rank: np.ndarray, boost: Sequence[tuple[int, float]] = EARLY_BOOST) -> np.ndarray:
    """Multiplier of a user's engagement number `rank` (0-based, lifetime order): 5x below 10, 2x below 50, 1x."""
    out = np.ones(len(rank), np.float32)
    for below, mult in reversed(boost):
        out[rank < below] = mult
    return out


def engagement_ranks(users: np.ndarray) -> np.ndarray:
    """Each row's 0-based number among its user's rows, in the given (time) order: the `rank` that
    `early_weights` takes when `users` are the users of a time-sorted log of positive engagements."""
    users = np.asarray(users, np.int64)
    if not len(users):
        return np.zeros(0, np.int64)
    order = argsort_ints(users)  # stable: time order within a user
    su = users[order]
    starts = np.flatnonzero(np.concatenate([[True], su[1:] != su[:-1]]))
    first = np.repeat(starts, np.diff(np.concatenate([starts, [len(su)]])))
    rank = np.empty(len(users), np.int64)
    rank[order] = np.arange(len(su)) - first
    return rank


def early_boosted(users: np.ndarray, weights: np.ndarray,
                  boost: Sequence[tuple[int, float]] = EARLY_BOOST) -> np.ndarray:
    """A float64 copy of `weights` with each positive one times its user's early-engagement multiplier
    (`early_weights` of its number among that user's positive rows); rows in time order."""
    out = np.array(weights, dtype=np.float64)
    pos = np.flatnonzero(out > 0)
    out[pos] *= early_weights(engagement_ranks(np.asarray(users)[pos]), boost)
    return out


def _csr(users: np.ndarray, values: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """ptr over users for `values` already grouped by user (ascending)."""
    ptr = np.zeros(n_users + 1, np.int64)
    np.cumsum(np.bincount(users, minlength=n_users), out=ptr[1:])
    return ptr, values


def _row(ptr: np.ndarray, values: np.ndarray, user: int) -> np.ndarray:
    if 0 <= user < len(ptr) - 1:
        return values[ptr[user] : ptr[user + 1]]
    return values[:0]


class RecentActivity:
    """Per-user recent engagements (bounded, newest first), seen items, hidden items, blocked creators.

    Thread-safety: every public method takes one lock for the few dict operations it needs; base arrays are
    never modified after construction (except the engagement counters, one integer per update).
    """

    def __init__(self, *, capacity: int, arrays: Mapping[str, np.ndarray], blocked: dict[int, set[int]] | None = None,
                 boost: Sequence[tuple[int, float]] = EARLY_BOOST) -> None:
        self.capacity, self.boost = capacity, tuple((int(b), float(m)) for b, m in boost)
        a = dict(arrays)
        self._h_ptr, self._h_items = a["hist_ptr"], a["hist_items"].astype(np.int64, copy=False)
        self._h_times, self._h_weights = a["hist_times"].astype(np.float64, copy=False), a["hist_weights"]
        self._s_ptr, self._s_items = a["seen_ptr"], a["seen_items"].astype(np.int64, copy=False)
        self._x_ptr, self._x_items = a["hidden_ptr"], a["hidden_items"].astype(np.int64, copy=False)
        self._count = a["n_engagements"].astype(np.int64, copy=True)
        self._blocked: dict[int, set[int]] = {u: set(c) for u, c in (blocked or {}).items()}
        self._recent: dict[int, deque[tuple[int, float, float]]] = {}
        self._seen_new: dict[int, set[int]] = {}
        self._hidden_new: dict[int, set[int]] = {}
        self._count_new: dict[int, int] = {}  # users beyond the base arrays
        self._lock = threading.Lock()

    @staticmethod
    def empty(*, capacity: int = 50, boost: Sequence[tuple[int, float]] = EARLY_BOOST) -> RecentActivity:
        z, p = np.zeros(0, np.int64), np.zeros(1, np.int64)
        arrays: dict[str, np.ndarray] = {"hist_ptr": p, "hist_items": z, "hist_times": z.astype(np.float64),
                  "hist_weights": z.astype(np.float32), "seen_ptr": p, "seen_items": z, "hidden_ptr": p,
                  "hidden_items": z, "n_engagements": z}
        return RecentActivity(capacity=capacity, arrays=arrays, boost=boost)

    # -- reads ----------------------------------------------------------------------------------------

    def early_weight(self, n_before: int) -> float:
        """Multiplier of an engagement that comes after `n_before` earlier ones."""
        for below, mult in self.boost:
            if n_before < below:
                return mult
        return 1.0

    def n_engagements(self, user: int) -> int:
        with self._lock:
            return self._n(user)

    def _n(self, user: int) -> int:
        if 0 <= user < len(self._count):
            return int(self._count[user])
        return self._count_new.get(user, 0)

    def history(self, user: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(items int64, times float64, weights float32) of recent positive engagements, newest first."""
        with self._lock:
            ring = self._recent.get(user)
            if ring is not None:
                n = len(ring)
                items = np.fromiter((e[0] for e in ring), np.int64, n)
                times = np.fromiter((e[1] for e in ring), np.float64, n)
                weights = np.fromiter((e[2] for e in ring), np.float32, n)
                return items, times, weights
        if 0 <= user < len(self._h_ptr) - 1:
            s, e = self._h_ptr[user], self._h_ptr[user + 1]
            return self._h_items[s:e], self._h_times[s:e], self._h_weights[s:e]
        return np.zeros(0, np.int64), np.zeros(0, np.float64), np.zeros(0, np.float32)

    def seen(self, user: int) -> np.ndarray:
        """Items the user engaged with (positive or negative), sorted."""
        return self._merged(self._s_ptr, self._s_items, self._seen_new, user)

    def hidden(self, user: int) -> np.ndarray:
        """Items the user hid, disliked, rated low or blocked, sorted."""
        return self._merged(self._x_ptr, self._x_items, self._hidden_new, user)

    def _merged(self, ptr: np.ndarray, values: np.ndarray, new: dict[int, set[int]], user: int) -> np.ndarray:
        base = _row(ptr, values, user)
        with self._lock:
            extra = new.get(user)
            if not extra:
                return base
            more = np.fromiter(extra, np.int64, len(extra))
        return union(base, more)

    def blocked_creators(self, user: int) -> np.ndarray:
        with self._lock:
            b = self._blocked.get(user)
            return np.zeros(0, np.int64) if not b else np.array(sorted(b), np.int64)

    def exclude(self, user: int) -> np.ndarray:
        """Seen and hidden items: what this user must not get again."""
        return union(self.seen(user), self.hidden(user))

    # -- writes ---------------------------------------------------------------------------------------

    def record_engagement(self, user: int, item: int, weight: float, t: float) -> float:
        """A positive engagement; returns its history weight (event weight times the early boost)."""
        with self._lock:
            n = self._n(user)
            w = weight * self.early_weight(n)
            ring = self._recent.get(user)
            if ring is None:
                ring = self._recent[user] = deque(maxlen=self.capacity)
                if 0 <= user < len(self._h_ptr) - 1:
                    s, e = self._h_ptr[user], self._h_ptr[user + 1]
                    # the base row is newest first; the ring appends newest on the left
                    ring.extend(zip(self._h_items[s:e].tolist(), self._h_times[s:e].tolist(),
                                    self._h_weights[s:e].tolist(), strict=True))
            ring.appendleft((int(item), float(t), float(w)))
            self._seen_new.setdefault(user, set()).add(int(item))
            if 0 <= user < len(self._count):
                self._count[user] += 1
            else:
                self._count_new[user] = n + 1
            return w

    def record_negative(self, user: int, item: int) -> None:
        """Hide, dislike or a low rating: the item is excluded for this user from now on."""
        with self._lock:
            self._hidden_new.setdefault(user, set()).add(int(item))
            self._seen_new.setdefault(user, set()).add(int(item))

    def block_creator(self, user: int, creator: int) -> None:
        with self._lock:
            if creator >= 0:
                self._blocked.setdefault(user, set()).add(int(creator))

    # -- bulk build -----------------------------------------------------------------------------------

    @staticmethod
    def from_dataset(
        ds: Dataset, *, events: EventsConfig, capacity: int = 50, now: float | None = None,
        boost: Sequence[tuple[int, float]] = EARLY_BOOST,
    ) -> RecentActivity:
        """Vectorised build from the log (events after `now` ignored)."""
        inter = ds.interactions
        if now is not None and len(inter) and inter.timestamp[-1] > now:
            inter = inter.take(inter.timestamp <= now)
        n_users, n_items = ds.n_users, max(ds.n_items, 1)
        w = inter.weights(events)
        pos = w > 0
        u, it, ts, pw = inter.user[pos].astype(np.int64), inter.item[pos], inter.timestamp[pos], w[pos]
        order = argsort_ints(u)  # by user, time ascending within a user (the log is time-sorted; stable)
        u, it, ts, pw = u[order], it[order], ts[order], pw[order]
        counts = np.bincount(u, minlength=n_users)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        rank = np.arange(len(u)) - starts[u]
        hw = pw * early_weights(rank, boost)
        keep = rank >= counts[u] - capacity
        ku, kr = u[keep], rank[keep]
        span = int(kr.max()) + 1 if len(kr) else 1
        newest_first = argsort_ints(ku * span + (span - 1 - kr))  # by user, then rank descending
        hist_ptr, _ = _csr(ku, ku, n_users)
        neg = inter.negative_mask(events)
        engaged = pos | neg
        s_ptr, s_items = _pairs(inter.user[engaged], inter.item[engaged], n_users, n_items)
        x_ptr, x_items = _pairs(inter.user[neg], inter.item[neg], n_users, n_items)
        blocked: dict[int, set[int]] = {}
        if ds.item_creator is not None:
            b = inter.event == EVENT_CODE["block"]
            for user, creator in zip(inter.user[b].tolist(), ds.item_creator.codes[inter.item[b]].tolist(),
                                     strict=True):
                if creator >= 0:
                    blocked.setdefault(int(user), set()).add(int(creator))
        arrays = {
            "hist_ptr": hist_ptr, "hist_items": it[keep][newest_first].astype(np.int64),
            "hist_times": ts[keep][newest_first].astype(np.float64), "hist_weights": hw[keep][newest_first],
            "seen_ptr": s_ptr, "seen_items": s_items, "hidden_ptr": x_ptr, "hidden_items": x_items,
            "n_engagements": counts.astype(np.int64),
        }
        return RecentActivity(capacity=capacity, arrays=arrays, blocked=blocked, boost=boost)

    # -- persistence ----------------------------------------------------------------------------------

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Base arrays with every overlay folded in (cost grows with the users touched since), and metadata."""
        with self._lock:
            ring_users = list(self._recent)
            seen_users, hidden_users = list(self._seen_new), list(self._hidden_new)
            touched = set(ring_users) | set(seen_users) | set(hidden_users) | set(self._count_new)
        n_users = max([len(self._h_ptr) - 1, len(self._count), *(u + 1 for u in touched)])
        hist = {u: self.history(u) for u in ring_users}
        arrays: dict[str, np.ndarray] = {}
        for j, key in enumerate(("hist_items", "hist_times", "hist_weights")):
            base = (self._h_items, self._h_times, self._h_weights)[j]
            rows = {u: h[j] for u, h in hist.items()}
            arrays["hist_ptr"], arrays[key] = splice_rows(self._h_ptr, base, n_users, rows)
        arrays["seen_ptr"], arrays["seen_items"] = splice_rows(
            self._s_ptr, self._s_items, n_users, {u: self.seen(u) for u in seen_users})
        arrays["hidden_ptr"], arrays["hidden_items"] = splice_rows(
            self._x_ptr, self._x_items, n_users, {u: self.hidden(u) for u in hidden_users})
        counts = np.zeros(n_users, np.int64)
        with self._lock:
            counts[: len(self._count)] = self._count
            for u, c in self._count_new.items():
                counts[u] = c
            blocked = {str(u): sorted(c) for u, c in self._blocked.items()}
        arrays["n_engagements"] = counts
        return arrays, {"capacity": self.capacity, "boost": [list(b) for b in self.boost], "blocked": blocked}

    @staticmethod
    def from_arrays(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> RecentActivity:
        blocked = {int(u): set(c) for u, c in meta.get("blocked", {}).items()}
        return RecentActivity(capacity=int(meta["capacity"]), arrays=arrays, blocked=blocked,
                              boost=[tuple(b) for b in meta["boost"]])

    def save(self, directory: str | Path) -> None:
        arrays, meta = self.to_arrays()
        save_parts(directory, "activity", arrays, meta)

    @staticmethod
    def load(directory: str | Path) -> RecentActivity:
        return RecentActivity.from_arrays(*load_parts(directory, "activity"))


def _pairs(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (user, item) pairs as CSR over users, items sorted within a row."""
    key = unique(users.astype(np.int64) * n_items + items.astype(np.int64))
    return _csr(key // n_items, key % n_items, n_users)
