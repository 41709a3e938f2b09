"""Merging several sources' candidate lists into one ranked list, with dedup and provenance.

Two strategies, both pure functions over numpy arrays:

- `quota_merge`: each source gets its share of the k slots by the configured mix (default 40/30/20/10
  collaborative/content/trending/social); quota a source cannot use is shared among the others by their
  weights, so a source with nothing to offer leaves the list exactly as if it were not in the mix.
- `weighted_merge`: the seed's probabilistic merge; each slot is drawn from a source with probability
  proportional to its weight, without replacement, deterministic given the random generator.

An item found by several sources is counted once, keeps every source that found it (a bitmask over
`Blended.source_names`) and each source's own score (`Blended.source_scores`, NaN where a source did not
find it). Work per request is a handful of numpy calls per source, never a Python loop per candidate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from candgen.blend.normalize import normalize
from candgen.idset import argsort_desc, compact
from candgen.types import Candidates

MAX_SOURCES = 64  # one bit per source in a uint64 mask


@dataclass(slots=True)
class Blended:
    """The blended candidate list of one request.

    `ids` (int64) are dense item indices, best first; `scores` (float32) the blended scores (comparable
    across sources; the order of `ids` is the ranking). `source_mask[i]` has bit j set when
    `source_names[j]` found `ids[i]`; `source_scores[name][i]` is that source's own (raw) score for
    `ids[i]`, NaN when it did not find it.
    """

    ids: np.ndarray
    scores: np.ndarray
    source_mask: np.ndarray
    source_names: tuple[str, ...]
    source_scores: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.ids)

    @staticmethod
    def empty(source_names: Sequence[str] = ()) -> Blended:
        names = tuple(source_names)
        return Blended(
            ids=np.empty(0, dtype=np.int64),
            scores=np.empty(0, dtype=np.float32),
            source_mask=np.empty(0, dtype=np.uint64),
            source_names=names,
            source_scores={name: np.empty(0, dtype=np.float32) for name in names},
        )

    def sources(self, i: int) -> tuple[str, ...]:
        """Names of the sources that found the i-th candidate, in `source_names` order."""
        m = int(self.source_mask[i])
        return tuple(name for j, name in enumerate(self.source_names) if m >> j & 1)

    def source_lists(self) -> list[tuple[str, ...]]:
        """`sources(i)` for every candidate (one tuple per distinct mask, so cheap for long lists)."""
        uniq, inv = np.unique(self.source_mask, return_inverse=True)
        decoded = [tuple(name for j, name in enumerate(self.source_names) if int(m) >> j & 1) for m in uniq]
        return [decoded[i] for i in inv.tolist()]

    def explain(self, i: int) -> dict[str, float]:
        """Each source that found the i-th candidate and its own score for it (for `--explain`)."""
        return {name: float(s[i]) for name, s in self.source_scores.items() if not np.isnan(s[i])}

    def found_by(self, name: str) -> np.ndarray:
        """Boolean mask of the candidates that the source `name` found."""
        if name not in self.source_names:
            return np.zeros(len(self), dtype=bool)
        bit = np.uint64(1 << self.source_names.index(name))
        return (self.source_mask & bit) != 0

    def take(self, positions: np.ndarray | slice) -> Blended:
        """The candidates at `positions` (an index array, or a slice: views, no copy), in that order."""
        return Blended(
            ids=self.ids[positions],
            scores=self.scores[positions],
            source_mask=self.source_mask[positions],
            source_names=self.source_names,
            source_scores={name: s[positions] for name, s in self.source_scores.items()},
        )

    def insert(self, positions: np.ndarray, extra: Candidates, scores: np.ndarray) -> Blended:
        """A new list with `extra`'s items placed at `positions` of the result (sorted, unique, < len + n).

        The extra items are tagged with `extra.source` (added to `source_names` if new), keep their own
        scores in `source_scores[extra.source]` and get the blended `scores` given here.
        """
        names = self.source_names if extra.source in self.source_names else (*self.source_names, extra.source)
        if len(names) > MAX_SOURCES:
            raise ValueError(f"at most {MAX_SOURCES} sources can be blended")
        bit = np.uint64(1 << names.index(extra.source))
        n_out = len(self) + len(extra)
        is_extra = np.zeros(n_out, dtype=bool)
        is_extra[positions] = True
        rest = ~is_extra

        def place(old: np.ndarray, new: np.ndarray, dtype: type) -> np.ndarray:
            out: np.ndarray = np.empty(n_out, dtype=dtype)
            out[rest] = old
            out[positions] = new
            return out

        nan_old = np.full(len(self), np.nan, dtype=np.float32)
        nan_new = np.full(len(extra), np.nan, dtype=np.float32)
        source_scores = {name: place(s, nan_new, np.float32) for name, s in self.source_scores.items()}
        own = np.asarray(extra.scores, dtype=np.float32)
        old_own = self.source_scores.get(extra.source, nan_old)
        source_scores[extra.source] = place(old_own, own, np.float32)
        return Blended(
            ids=place(self.ids, np.asarray(extra.ids, dtype=np.int64), np.int64),
            scores=place(self.scores, np.asarray(scores, dtype=np.float32), np.float32),
            source_mask=place(self.source_mask, np.full(len(extra), bit, dtype=np.uint64), np.uint64),
            source_names=names,
            source_scores=source_scores,
        )

    def append(self, extra: Candidates, scores: np.ndarray) -> Blended:
        """`extra`'s items after the current ones (see `insert`)."""
        return self.insert(np.arange(len(self), len(self) + len(extra)), extra, scores)


def _check_weights(weights: Mapping[str, float]) -> None:
    bad = [f"{name}={w}" for name, w in weights.items() if not float(w) >= 0]  # also catches NaN
    if bad:
        raise ValueError(f"source weights must be >= 0; got {', '.join(bad)}")


def quota_shares(mix: Mapping[str, float], k: int) -> dict[str, int]:
    """Slots per source: `mix` scaled to sum to k, rounded by largest remainder so the shares add up to k."""
    weights = {name: float(w) for name, w in mix.items()}
    _check_weights(weights)
    total = sum(weights.values())
    if not weights or total <= 0:
        return {name: 0 for name in weights}
    exact = np.array([w / total * k for w in weights.values()])
    shares = np.floor(exact).astype(np.int64)
    left = k - int(shares.sum())
    if left > 0:
        # stable sort: equal remainders go to the earlier source in mix order
        shares[np.argsort(-(exact - shares), kind="stable")[:left]] += 1
    return dict(zip(weights, shares.tolist(), strict=True))


class _Pool:
    """All candidates of one request mapped to compact codes 0..U-1, with provenance and fused scores."""

    def __init__(
        self, lists: Sequence[Candidates], weights: Mapping[str, float], normalization: str | None
    ) -> None:
        """`normalization` None skips the fused score (the weighted merge ranks by draw order instead)."""
        lists = _one_list_per_source(lists)
        if len(lists) > MAX_SOURCES:
            raise ValueError(f"at most {MAX_SOURCES} sources can be blended, got {len(lists)}")
        self.names = tuple(c.source for c in lists)
        all_ids = np.concatenate([np.asarray(c.ids, dtype=np.int64) for c in lists]) if lists else np.empty(0, np.int64)
        self.uniq, inv = compact(all_ids)
        n = len(self.uniq)
        all_distinct = n == len(all_ids)  # then no source repeats an item either
        self.mask = np.zeros(n, dtype=np.uint64)
        self.fused = np.zeros(n, dtype=np.float32)
        self.own: dict[str, np.ndarray] = {}
        # a source not named in the mix still blends, ranked like the least-weighted named source
        positive = [w for w in weights.values() if w > 0]
        default_w = min(positive) if positive else 1.0
        self.segments: dict[str, np.ndarray] = {}
        start = 0
        for j, cand in enumerate(lists):
            seg = inv[start : start + len(cand)]
            start += len(cand)
            raw = np.asarray(cand.scores, dtype=np.float32)
            keep = None if all_distinct else _first_occurrences(seg, n)
            if keep is not None:  # a source listed an item twice: its first (best) occurrence counts
                seg, raw = seg[keep], raw[keep]
            self.segments[cand.source] = seg
            self.mask[seg] |= np.uint64(1 << j)
            own = np.full(n, np.nan, dtype=np.float32)
            own[seg] = raw
            self.own[cand.source] = own
            if normalization is not None:
                self.fused[seg] += np.float32(weights.get(cand.source, default_w)) * normalize(raw, normalization)
        self.taken = np.zeros(n, dtype=bool)

    def take_next(self, name: str, m: int) -> np.ndarray:
        """Mark up to m of source `name`'s best not-yet-taken items as taken; returns their codes in order."""
        seg = self.segments.get(name)
        if seg is None or m <= 0:
            return np.empty(0, dtype=np.int64)
        free = seg[~self.taken[seg]][:m]
        self.taken[free] = True
        return free

    def result(self, codes: np.ndarray, scores: np.ndarray | None = None) -> Blended:
        """The Blended list of `codes` in that order; blended scores are the fused ones unless given."""
        return Blended(
            ids=self.uniq[codes],
            scores=self.fused[codes] if scores is None else scores.astype(np.float32, copy=False),
            source_mask=self.mask[codes],
            source_names=self.names,
            source_scores={name: s[codes] for name, s in self.own.items()},
        )


def _first_occurrences(codes: np.ndarray, n: int) -> np.ndarray | None:
    """Positions of the first occurrence of each code, or None when nothing repeats (the common case, O(n))."""
    seen = np.zeros(n, dtype=bool)
    seen[codes] = True
    if np.count_nonzero(seen) == len(codes):
        return None
    _, first = np.unique(codes, return_index=True)
    return np.sort(first)


def _drop_negative(c: Candidates) -> Candidates:
    """The list without negative ids (padding from an index search that found fewer than asked)."""
    ids = np.asarray(c.ids)
    if len(ids) == 0 or int(ids.min()) >= 0:
        return c
    keep = ids >= 0
    return Candidates(ids[keep], np.asarray(c.scores)[keep], c.source)


def _one_list_per_source(lists: Sequence[Candidates]) -> list[Candidates]:
    """Lists that share a source name are concatenated into one, re-ranked by score; negative ids dropped."""
    lists = [_drop_negative(c) for c in lists]
    names = [c.source for c in lists]
    if len(set(names)) == len(names):
        return list(lists)
    merged: dict[str, list[Candidates]] = {}
    for c in lists:
        merged.setdefault(c.source, []).append(c)
    out = []
    for name, group in merged.items():
        if len(group) == 1:
            out.append(group[0])
            continue
        ids = np.concatenate([np.asarray(c.ids, dtype=np.int64) for c in group])
        scores = np.concatenate([np.asarray(c.scores, dtype=np.float32) for c in group])
        order = argsort_desc(scores)
        out.append(Candidates(ids[order], scores[order], name))
    return out


def _ordered_sources(names: Sequence[str], mix: Mapping[str, float]) -> list[str]:
    """Sources in mix order, then any source the mix does not name, in input order."""
    return [n for n in mix if n in names] + [n for n in names if n not in mix]


def quota_merge(
    lists: list[Candidates], mix: dict[str, float], k: int, *, normalization: str = "rank",
    rescore: Callable[[_Pool], np.ndarray] | None = None,
) -> Blended:
    """Merge by quota: each source fills its share of k; unused quota is shared among the others by weight.

    Each round walks the sources in mix order; each takes its best items not yet taken by an earlier source,
    up to its share (`quota_shares`) of the slots still open. A source that runs short (its list is shorter,
    or the mix names a source with no list) leaves, and the next round shares the slots left among the
    others by their weights, until k are filled or every named source is exhausted. An empty source thus
    changes nothing: the others keep the proportions of the mix. Sources absent from the mix (or weighted
    0) get no share; they fill, in input order, only what the named ones could not.

    The result is ranked by a fused score, `sum over the sources that found the item of mix[source] *
    normalize(score)`: with the default rank normalisation this is weighted reciprocal-rank fusion, so an
    item found by several sources ranks at least as high as its best single-source placement would put it.
    `rescore(pool)`, when given, replaces that fused score (one value per pool code): the quotas still decide
    which items are in, the new score their order (`candgen.blend.fusion.ordered_quota_merge`).
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    _check_weights(mix)
    pool = _Pool(lists, mix, None if rescore is not None else normalization)  # no fused score to throw away
    if rescore is not None and len(pool.uniq):
        pool.fused = np.asarray(rescore(pool), np.float32)
    if k == 0 or len(pool.uniq) == 0:
        return Blended.empty(pool.names)
    order = _ordered_sources(pool.names, mix)
    picked: list[np.ndarray] = []
    left = k
    # water-filling: the named sources share the open slots by their weights; a source that runs short
    # leaves the round, and the slots it could not fill are shared again among those that still have items
    # (at most one round per source: a round either fills every slot or exhausts a source)
    active = [n for n in order if mix.get(n, 0.0) > 0 and len(pool.segments[n])]  # an empty list is no source
    while left > 0 and active:
        shares = quota_shares({n: mix[n] for n in active}, left)
        still = []
        for name in active:
            got = pool.take_next(name, shares[name])
            picked.append(got)
            left -= len(got)
            if len(got) == shares[name]:
                still.append(name)
        active = still
    for name in order:  # sources without weight only take what the named ones could not fill
        if left <= 0:
            break
        if mix.get(name, 0.0) <= 0:
            got = pool.take_next(name, left)
            picked.append(got)
            left -= len(got)
    codes = np.concatenate(picked)
    codes = codes[argsort_desc(pool.fused[codes])]
    return pool.result(codes)


def weighted_merge(
    lists: list[Candidates],
    weights: dict[str, float],
    k: int,
    *,
    rng: np.random.Generator | None = None,
) -> Blended:
    """The probabilistic weighted merge: each slot comes from a source drawn with probability ∝ its weight.

    Slots are drawn in rounds: for the slots still open, a source is drawn for each slot among the sources
    that still have untaken items; each source hands out its next best items not yet taken, in draw order.
    Draws that hit an already taken item or an exhausted source are redrawn in the next round. The order of
    the draws is the ranking (so a source with weight 0.1 gets roughly every tenth slot from the top), and
    the blended score falls linearly with the position, from 1. Sources missing from `weights` (or with
    weight 0) are never drawn. Deterministic given `rng` (a fixed-seed generator when None).
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    _check_weights(weights)
    rng = np.random.default_rng(0) if rng is None else rng
    pool = _Pool(lists, weights, None)
    names = [n for n in _ordered_sources(pool.names, weights) if weights.get(n, 0.0) > 0]
    # per source, its codes in rank order and a cursor over them
    cursors = dict.fromkeys(names, 0)
    taken_codes: list[np.ndarray] = []
    taken_keys: list[np.ndarray] = []  # (round, slot) sort keys giving the draw order
    left = k
    round_ = 0
    while left > 0:
        alive = [n for n in names if cursors[n] < len(pool.segments[n])]
        if not alive:
            break
        w = np.array([weights[n] for n in alive], dtype=np.float64)
        draws = rng.choice(len(alive), size=left, p=w / w.sum())
        got_total = 0
        for j, name in enumerate(alive):
            slots = np.flatnonzero(draws == j)
            if len(slots) == 0:
                continue
            seg = pool.segments[name]
            cur = cursors[name]
            # walk forward past items other sources took already; a window of 2x the draws is usually enough
            window = seg[cur : cur + 2 * len(slots) + 8]
            free_pos = np.flatnonzero(~pool.taken[window])
            if len(free_pos) < len(slots) and cur + len(window) < len(seg):
                window = seg[cur:]
                free_pos = np.flatnonzero(~pool.taken[window])
            free_pos = free_pos[: len(slots)]
            codes = window[free_pos]
            if len(codes):
                pool.taken[codes] = True
                cursors[name] = cur + int(free_pos[-1]) + 1
                taken_codes.append(codes)
                taken_keys.append(round_ * (k + 1) + slots[: len(codes)])
                got_total += len(codes)
            else:
                cursors[name] = len(seg)
        left -= got_total
        round_ += 1
    if not taken_codes:
        return Blended.empty(pool.names)
    codes = np.concatenate(taken_codes)
    codes = codes[np.argsort(np.concatenate(taken_keys))]  # keys are unique: no need for a stable sort
    scores = 1.0 - np.arange(len(codes), dtype=np.float32) / np.float32(max(k, 1))
    return pool.result(codes, scores)
