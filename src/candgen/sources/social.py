"""Social retrieval: `SocialGraph` (who follows whom, with tie strength) and `SocialSource` (what friends
engaged with recently, weighted by how often, how recently and how close the friend is).

Tie strength is 1 for a one-way follow and `mutual_strength` (2 by default) when both follow each other.
The graph is CSR arrays from the dataset's `social` table plus a per-user overlay for follows made while
serving.

    >>> g = SocialGraph.empty()
    >>> g.follow(0, 1); g.follow(1, 0)
    >>> g.friends(0)[1].tolist()
    [2.0]
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from candgen.data.dataset import Dataset
from candgen.sources.activity import RecentActivity
from candgen.sources.base import (
    CandidateSource,
    UserContext,
    isin,
    load_parts,
    save_parts,
    splice_rows,
    sum_by_id,
    top_k,
    unique,
)
from candgen.sources.catalog import Catalog
from candgen.types import Candidates

_FILE, _META = "social.npz", "social.json"


class SocialGraph:
    """Directed follows `user -> friend` with a tie strength per edge.

    Thread-safety: one lock around the overlay; base arrays are immutable.
    """

    def __init__(self, *, ptr: np.ndarray, friends: np.ndarray, strength: np.ndarray,
                 mutual_strength: float = 2.0) -> None:
        self._ptr, self._friends = ptr.astype(np.int64, copy=False), friends.astype(np.int64, copy=False)
        self._strength = strength.astype(np.float32, copy=False)
        self.mutual_strength = mutual_strength
        self._overlay: dict[int, dict[int, float]] = {}  # users whose follows changed while serving
        self._lock = threading.Lock()

    @staticmethod
    def empty(mutual_strength: float = 2.0) -> SocialGraph:
        return SocialGraph(ptr=np.zeros(1, np.int64), friends=np.zeros(0, np.int64), strength=np.zeros(0, np.float32),
                           mutual_strength=mutual_strength)

    @staticmethod
    def from_edges(src: np.ndarray, dst: np.ndarray, *, n_users: int, mutual_strength: float = 2.0) -> SocialGraph:
        """Vectorised build from follow edges (duplicates and self-follows dropped)."""
        src, dst = src.astype(np.int64), dst.astype(np.int64)
        ok = src != dst
        n = max(n_users, int(src.max(initial=-1)) + 1, int(dst.max(initial=-1)) + 1)
        key = unique(src[ok] * n + dst[ok])
        s, d = key // n, key % n
        mutual = isin(d * n + s, key)
        strength = np.where(mutual, np.float32(mutual_strength), np.float32(1.0))
        ptr = np.zeros(n + 1, np.int64)
        np.cumsum(np.bincount(s, minlength=n), out=ptr[1:])
        return SocialGraph(ptr=ptr, friends=d, strength=strength, mutual_strength=mutual_strength)

    @staticmethod
    def from_dataset(ds: Dataset, *, mutual_strength: float = 2.0) -> SocialGraph:
        return SocialGraph.from_edges(ds.social_src, ds.social_dst, n_users=ds.n_users, mutual_strength=mutual_strength)

    def _row(self, user: int) -> dict[int, float]:
        if 0 <= user < len(self._ptr) - 1:
            s, e = self._ptr[user], self._ptr[user + 1]
            return dict(zip(self._friends[s:e].tolist(), self._strength[s:e].tolist(), strict=True))
        return {}

    def friends(self, user: int) -> tuple[np.ndarray, np.ndarray]:
        """(friend user indices int64, tie strengths float32) of `user`."""
        with self._lock:
            row = self._overlay.get(user)
            if row is not None:
                return (np.fromiter(row.keys(), np.int64, len(row)), np.fromiter(row.values(), np.float32, len(row)))
        if 0 <= user < len(self._ptr) - 1:
            s, e = self._ptr[user], self._ptr[user + 1]
            return self._friends[s:e], self._strength[s:e]
        return np.zeros(0, np.int64), np.zeros(0, np.float32)

    def strength(self, user: int, friends: np.ndarray) -> np.ndarray:
        """Tie strength from `user` to each of `friends` (0 where the user does not follow them)."""
        ids, st = self.friends(user)
        out = np.zeros(len(friends), np.float32)
        if len(ids):
            order = np.argsort(ids)
            ids, st = ids[order], st[order]
            pos = np.minimum(np.searchsorted(ids, friends), len(ids) - 1)
            hit = ids[pos] == friends
            out[hit] = st[pos[hit]]
        return out

    def _edit(self, user: int) -> dict[int, float]:
        row = self._overlay.get(user)
        if row is None:
            row = self._overlay[user] = self._row(user)
        return row

    def follow(self, user: int, friend: int, strength: float | None = None) -> None:
        """`user` follows `friend`; a follow back makes both ties mutual (stronger) unless `strength` is given."""
        if user == friend:
            return
        with self._lock:
            back = self._edit(friend)
            mine = self._edit(user)
            if strength is not None:
                mine[friend] = float(strength)
            elif user in back:
                mine[friend] = back[user] = max(back[user], self.mutual_strength)
            else:
                mine[friend] = 1.0

    def unfollow(self, user: int, friend: int) -> None:
        with self._lock:
            self._edit(user).pop(friend, None)
            back = self._edit(friend)
            if user in back:
                back[user] = min(back[user], 1.0)

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        with self._lock:
            overlay = {u: dict(r) for u, r in self._overlay.items()}
        n = max([len(self._ptr) - 1, *(u + 1 for u in overlay)])
        rows = {u: (np.fromiter(r.keys(), np.int64, len(r)), np.fromiter(r.values(), np.float32, len(r)))
                for u, r in overlay.items()}
        ptr, friends = splice_rows(self._ptr, self._friends, n, {u: r[0] for u, r in rows.items()})
        _, strength = splice_rows(self._ptr, self._strength, n, {u: r[1] for u, r in rows.items()})
        return ({"ptr": ptr, "friends": friends.astype(np.int64), "strength": strength.astype(np.float32)},
                {"mutual_strength": self.mutual_strength})

    @staticmethod
    def from_arrays(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> SocialGraph:
        return SocialGraph(ptr=arrays["ptr"], friends=arrays["friends"], strength=arrays["strength"],
                           mutual_strength=float(meta["mutual_strength"]))

    def save(self, directory: str | Path) -> None:
        arrays, meta = self.to_arrays()
        save_parts(directory, "social", arrays, meta)

    @staticmethod
    def load(directory: str | Path) -> SocialGraph:
        return SocialGraph.from_arrays(*load_parts(directory, "social"))


class SocialSource(CandidateSource):
    """Items the user's friends engaged with in the last `window_hours`: the sum over friends' engagements of
    tie strength x event weight x 2^(-age / recency_half_life). Friends come from the request context when it
    lists any (ties from the graph, 1 when unknown), else from the graph; the strongest `max_friends` count."""

    name = "social"
    inline = True  # a few hundred µs of numpy that holds the GIL: run on the request thread

    def __init__(self, graph: SocialGraph, activity: RecentActivity, *, catalog: Catalog | None = None,
                 window_hours: float = 72.0, recency_half_life_hours: float | None = None,
                 max_friends: int = 200) -> None:
        self.graph, self.activity, self.catalog = graph, activity, catalog
        self.window_s = window_hours * 3600.0
        self.half_life_s = (recency_half_life_hours or window_hours / 3.0) * 3600.0
        self.max_friends = max_friends

    def retrieve(self, ctx: UserContext, k: int) -> Candidates:
        if len(ctx.friends):
            friends = ctx.friends.astype(np.int64)
            ties = self.graph.strength(ctx.user, friends) if ctx.user >= 0 else np.zeros(len(friends), np.float32)
            ties = np.where(ties > 0, ties, np.float32(1.0))
        else:
            friends, ties = self.graph.friends(ctx.user)
        if not len(friends):
            return Candidates.empty(self.name)
        if len(friends) > self.max_friends:
            best = np.argpartition(-ties, self.max_friends - 1)[: self.max_friends]
            friends, ties = friends[best], ties[best]
        ids, contrib = [], []
        since = ctx.now - self.window_s
        for f, tie in zip(friends.tolist(), ties.tolist(), strict=True):
            items, times, weights = self.activity.history(f)
            recent = (times >= since) & (times <= ctx.now)
            if recent.any():
                ids.append(items[recent])
                contrib.append(tie * weights[recent] * np.exp2((times[recent] - ctx.now) / self.half_life_s))
        if not ids:
            return Candidates.empty(self.name)
        uniq, scores = sum_by_id(np.concatenate(ids), np.concatenate(contrib))
        if self.catalog is not None:
            live = self.catalog.live(uniq)
            uniq, scores = uniq[live], scores[live]
        uniq, scores = top_k(uniq, scores, k, ctx.exclude)
        return self.result(uniq, scores)
