"""Trending: time-decayed weighted engagement, global and per segment, and the `TrendingSource` over it.

`TrendingCounter` uses forward decay: an event of weight w at time t adds w * 2^((t - t0) / half_life)
to the item's running score; the decayed score at `now` is that sum times 2^((t0 - now) / half_life).
No per-tick decay pass is ever needed, an event costs one binary search (O(log n)) per segment, and when
the exponent grows large every score is scaled once and t0 moves (renormalisation).
Segments are strings `"<attribute>=<value>"`: `country=US`, `language=en`, `category=Drama`.

    >>> tc = TrendingCounter(half_life_hours=6.0, t0=0.0)
    >>> tc.add(7, 5.0, t=10.0, segments=["country=US"])
    >>> tc.top(10, segment="country=US", now=10.0).ids.tolist()
    [7]
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from candgen.config import EventsConfig
from candgen.data.dataset import Categorical, Dataset
from candgen.sources.activity import early_boosted
from candgen.sources.base import CandidateSource, UserContext, group_sum, load_parts, save_parts, sum_by_id, top_k
from candgen.sources.catalog import Catalog
from candgen.sources.decayed import SparseScores, group_scores
from candgen.types import Candidates

_RENORMALISE_AT = 40.0  # half-lives past t0 before scores are rescaled (2^40 stays far from float64 limits)
SEGMENT_ATTRIBUTES = ("country", "language")
HORIZON_HALF_LIVES = 40.0  # a bulk build ignores events older than this many half-lives


def segment_key(attribute: str, value: str) -> str:
    return f"{attribute}={value}"


class TrendingCounter:
    """Forward-decayed engagement scores: one global `SparseScores` and one per segment key.

    Thread-safety: every method takes the counter's lock; `top` and `add` are cheap (see `SparseScores`).
    """

    def __init__(
        self,
        *,
        half_life_hours: float,
        t0: float,
        global_scores: SparseScores | None = None,
        segments: dict[str, SparseScores] | None = None,
    ) -> None:
        if half_life_hours <= 0:
            raise ValueError(f"half_life_hours must be > 0, got {half_life_hours}")
        self.half_life_s = half_life_hours * 3600.0
        self.t0 = float(t0)
        self._global = global_scores if global_scores is not None else SparseScores()
        self._segments: dict[str, SparseScores] = dict(segments or {})
        self._lock = threading.RLock()

    @property
    def segments(self) -> list[str]:
        with self._lock:
            return sorted(self._segments)

    def _renormalise(self, t: float) -> None:
        factor = 2.0 ** ((self.t0 - t) / self.half_life_s)
        self._global.scale(factor)
        for s in self._segments.values():
            s.scale(factor)
        self.t0 = t

    def add(self, item: int, weight: float, t: float, segments: Iterable[str] = ()) -> None:
        """One engagement of `weight` at unix time `t`, counted globally and in each segment."""
        if weight <= 0:
            return
        with self._lock:
            if (t - self.t0) / self.half_life_s > _RENORMALISE_AT:
                self._renormalise(t)
            v = weight * 2.0 ** ((t - self.t0) / self.half_life_s)
            self._global.add(item, v)
            for key in segments:
                seg = self._segments.get(key)
                if seg is None:
                    seg = self._segments[key] = SparseScores()
                seg.add(item, v)

    def top(self, k: int, segment: str | None = None, *, now: float) -> Candidates:
        """The k items with the highest decayed score at `now`, globally or in one segment (empty if unknown)."""
        with self._lock:
            scores = self._global if segment is None else self._segments.get(segment)
            if scores is None:
                return Candidates.empty("trending")
            ids, vals = scores.top(k)
            decay = 2.0 ** ((self.t0 - now) / self.half_life_s)
        return Candidates(ids, (vals * decay).astype(np.float32), "trending")

    def score(self, items: np.ndarray, segment: str | None = None, *, now: float) -> np.ndarray:
        """Decayed scores of `items` at `now` (0 for items never engaged with)."""
        with self._lock:
            scores = self._global if segment is None else self._segments.get(segment)
            if scores is None:
                return np.zeros(len(items), np.float64)
            return scores.scores_of(np.asarray(items)) * 2.0 ** ((self.t0 - now) / self.half_life_s)

    # -- bulk build -----------------------------------------------------------------------------------

    @staticmethod
    def from_events(
        *,
        items: np.ndarray,
        weights: np.ndarray,
        timestamps: np.ndarray,
        segment_codes: Mapping[str, tuple[np.ndarray, Sequence[str]]],
        half_life_hours: float,
        now: float,
        max_items_per_segment: int | None = None,
    ) -> TrendingCounter:
        """Vectorised build. `segment_codes[dim] = (code per event (-1: none), vocabulary)` gives the segment
        `dim=vocab[code]` of each event."""
        hl = half_life_hours * 3600.0
        # events more than HORIZON half-lives old weigh < 1e-12 of a fresh one: dropping them first makes the
        # sorts below shorter without changing any ranking that matters
        recent = timestamps.astype(np.float64) >= now - HORIZON_HALF_LIVES * hl
        if not recent.all():
            items, weights, timestamps = items[recent], weights[recent], timestamps[recent]
            segment_codes = {d: (c[recent], v) for d, (c, v) in segment_codes.items()}
        contrib = weights.astype(np.float64) * np.exp2((timestamps.astype(np.float64) - now) / hl)
        n = int(items.max()) + 1 if len(items) else 0
        # the global list is dense (position = item): an event then needs no search at all
        glob = SparseScores(np.arange(n, dtype=np.int64), np.bincount(items, weights=contrib, minlength=n))
        segments: dict[str, SparseScores] = {}
        for dim, (codes, vocab) in segment_codes.items():
            for code, sc in group_scores(codes, items, contrib, keep=max_items_per_segment).items():
                segments[segment_key(dim, vocab[code])] = sc
        return TrendingCounter(half_life_hours=half_life_hours, t0=now, global_scores=glob, segments=segments)

    @staticmethod
    def from_dataset(
        ds: Dataset,
        *,
        events: EventsConfig,
        half_life_hours: float,
        now: float,
        attributes: Sequence[str] = SEGMENT_ATTRIBUTES,
        categories: bool = True,
        max_items_per_segment: int | None = 50_000,
    ) -> TrendingCounter:
        """Trending from a dataset's log (events after `now` are ignored): per user attribute and per category."""
        rows = SegmentRows.from_dataset(ds, events=events, half_life_hours=half_life_hours, now=now,
                                        attributes=attributes)
        codes: dict[str, tuple[np.ndarray, Sequence[str]]] = {
            a: (rows.attribute_code(j), cat.vocab.ids()) for j, (a, cat) in enumerate(rows.attributes)
        }
        if categories and ds.item_category is not None:
            codes["category"] = (ds.item_category.codes[rows.items], ds.item_category.vocab.ids())
        return rows.counter(codes, half_life_hours=half_life_hours, now=now,
                            max_items_per_segment=max_items_per_segment)

    # -- persistence ----------------------------------------------------------------------------------

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays (for npz) and JSON metadata that `from_arrays` restores."""
        with self._lock:
            names = sorted(self._segments)
            parts = [self._global] + [self._segments[n] for n in names]
            for p in parts:
                p.compact()
            lens = np.array([len(p.ids) for p in parts], np.int64)
            ptr = np.concatenate([[0], np.cumsum(lens)])
            arrays = {
                "ptr": ptr,
                "ids": np.concatenate([p.ids for p in parts]),
                "vals": np.concatenate([p.vals for p in parts]),
            }
            meta = {"half_life_hours": self.half_life_s / 3600.0, "t0": self.t0, "segments": names}
        return arrays, meta

    @staticmethod
    def from_arrays(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> TrendingCounter:
        ptr, ids, vals = arrays["ptr"], arrays["ids"], arrays["vals"]
        parts = [SparseScores(ids[ptr[i] : ptr[i + 1]], vals[ptr[i] : ptr[i + 1]]) for i in range(len(ptr) - 1)]
        return TrendingCounter(
            half_life_hours=float(meta["half_life_hours"]), t0=float(meta["t0"]), global_scores=parts[0],
            segments=dict(zip(meta["segments"], parts[1:], strict=True)),
        )

    def save(self, directory: str | Path, name: str = "trending") -> None:
        arrays, meta = self.to_arrays()
        save_parts(directory, name, arrays, meta)

    @staticmethod
    def load(directory: str | Path, name: str = "trending") -> TrendingCounter:
        return TrendingCounter.from_arrays(*load_parts(directory, name))


@dataclass
class SegmentRows:
    """A log reduced to one row per (user segment, item): the decayed engagement summed over the users of the
    finest segment. Segments of one attribute or of attribute prefixes are then derived from these rows,
    so a bulk build sorts the whole log once instead of once per segment dimension.

    `fine` packs one digit per attribute (digit = code + 1; 0 = the user has no value)."""

    fine: np.ndarray  # int64 per row
    items: np.ndarray  # int64 per row
    sums: np.ndarray  # float64 per row: decayed contributions at `now`
    attributes: list[tuple[str, Categorical]]

    @staticmethod
    def from_dataset(ds: Dataset, *, events: EventsConfig, half_life_hours: float, now: float,
                     attributes: Sequence[str], boost: Sequence[tuple[int, float]] | None = None) -> SegmentRows:
        """`boost`: weigh each engagement by its user's early-engagement multiplier (`early_weights` of its
        number among the user's positive engagements up to `now`), as `RecentActivity` weighs histories."""
        inter = ds.interactions
        hl = half_life_hours * 3600.0
        ts = inter.timestamp.astype(np.float64)
        w = inter.weights(events).astype(np.float64)
        if boost is not None:
            counted = ts <= now
            w[counted] = early_boosted(inter.user[counted], w[counted], boost)
        # events after now do not count; those beyond the horizon weigh < 1e-12 of a fresh one
        use = (ts <= now) & (ts >= now - HORIZON_HALF_LIVES * hl) & (w > 0)
        contrib = w[use] * np.exp2((ts[use] - now) / hl)
        cats = [(a, c) for a in attributes if (c := ds.user_attributes.get(a)) is not None]
        fine_user = np.zeros(ds.n_users, np.int64)
        for _, c in cats:
            fine_user = fine_user * (len(c.vocab) + 1) + (c.codes.astype(np.int64) + 1)
        users, items = inter.user[use], inter.item[use].astype(np.int64)
        n_items = max(ds.n_items, 1)
        keys, sums = group_sum(fine_user[users] * n_items + items, contrib)
        return SegmentRows(fine=keys // n_items, items=keys % n_items, sums=sums, attributes=cats)

    def attribute_code(self, j: int) -> np.ndarray:
        """Per row, the code of attribute j (-1 when the users of that row have none)."""
        below = 1
        for _, c in self.attributes[j + 1 :]:
            below *= len(c.vocab) + 1
        return (self.fine // below) % (len(self.attributes[j][1].vocab) + 1) - 1

    def prefix_code(self, n: int) -> np.ndarray:
        """Per row, the mixed-radix code of the first n attributes (-1 when any of them is missing)."""
        code = np.zeros(len(self.fine), np.int64)
        for j in range(n):
            digit = self.attribute_code(j)
            code = np.where((code >= 0) & (digit >= 0), code * len(self.attributes[j][1].vocab) + digit, -1)
        return code

    def counter(self, codes: Mapping[str, tuple[np.ndarray, Sequence[str]]], *, half_life_hours: float, now: float,
                max_items_per_segment: int | None) -> TrendingCounter:
        """A counter whose t0 is `now` (the rows' sums are already decayed to it)."""
        return TrendingCounter.from_events(
            items=self.items, weights=self.sums, timestamps=np.full(len(self.items), now), segment_codes=codes,
            half_life_hours=half_life_hours, now=now, max_items_per_segment=max_items_per_segment,
        )


def user_categories(ctx: UserContext, catalog: Catalog, n: int = 3) -> list[tuple[int, float]]:
    """The user's top-n categories among recent engagements, with their share of the history weight."""
    items = ctx.history_items
    items = items[(items >= 0) & (items < catalog.n_items)]
    if not len(items):
        return []
    cats = catalog.category[items]
    w = ctx.history_weights[: len(ctx.history_items)][(ctx.history_items >= 0) & (ctx.history_items < catalog.n_items)]
    ok = cats >= 0
    if not ok.any():
        return []
    ids, sums = sum_by_id(cats[ok], w[ok].astype(np.float64))
    order = np.argsort(-sums)[:n]
    total = float(sums.sum())
    return [(int(ids[i]), float(sums[i] / total)) for i in order]


class TrendingSource(CandidateSource):
    """Global trending merged with the user's segments: country and language (request context first, then
    profile) and the categories the user engages with. Each list is normalised by its best score and
    weighted; deleted and excluded items are dropped (over-fetching to make up for them)."""

    name = "trending"
    inline = True  # a few hundred µs of numpy that holds the GIL: run on the request thread

    def __init__(
        self,
        counter: TrendingCounter,
        catalog: Catalog,
        *,
        segment_weights: Mapping[str, float] | None = None,
        category_weight: float = 1.0,
        n_categories: int = 3,
    ) -> None:
        self.counter, self.catalog = counter, catalog
        self.segment_weights = dict(segment_weights or {"global": 1.0, "country": 1.0, "language": 0.5})
        self.category_weight, self.n_categories = category_weight, n_categories

    def segments_for(self, ctx: UserContext) -> list[tuple[str | None, float]]:
        segs: list[tuple[str | None, float]] = [(None, self.segment_weights.get("global", 1.0))]
        for attr, w in self.segment_weights.items():
            value = ctx.attribute(attr) if attr != "global" else None
            if value:
                segs.append((segment_key(attr, value), w))
        for code, share in user_categories(ctx, self.catalog, self.n_categories):
            segs.append((segment_key("category", self.catalog.categories.id(code)), self.category_weight * share))
        return segs

    def retrieve(self, ctx: UserContext, k: int) -> Candidates:
        fetch = k + min(len(ctx.exclude), k)
        all_ids, all_scores = [], []
        for seg, w in self.segments_for(ctx):
            c = self.counter.top(fetch, seg, now=ctx.now)
            if len(c) and c.scores[0] > 0:
                all_ids.append(c.ids)
                all_scores.append(w * c.scores.astype(np.float64) / float(c.scores[0]))
        if not all_ids:
            return Candidates.empty(self.name)
        ids, scores = sum_by_id(np.concatenate(all_ids), np.concatenate(all_scores))
        live = self.catalog.live(ids)
        ids, scores = top_k(ids[live], scores[live], k, ctx.exclude)
        return self.result(ids, scores)
