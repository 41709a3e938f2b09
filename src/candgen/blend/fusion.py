"""Calibrated rank fusion: merge sources by the measured chance that their item at rank r is a hit.

A quota mix ("40% collaborative, 30% content, ...") is a guess about how good each source is; the right
shares differ by orders of magnitude between data sets and between warm and new users. Rank fusion
measures it instead. At train time (`candgen.calibrate`) every source is run alone for held-out
validation users, and for each source and each rank bin we count how often the item at that rank was
one the user engaged with in the validation period. That gives a *rank curve* per source: `p_s(r)`, the
hit rate at rank r, smoothed towards the source's mean and made non-increasing (pool adjacent
violators). At request time an item found at rank r_s by each source s gets

    score = 1 - prod_s (1 - p_s(r_s))          (noisy-OR: found by two good sources ranks higher)

and the blend keeps the k best. With calibrated curves this is the recall-optimal merge under
independence: each of the k slots goes to the candidate most likely to be a hit, whichever source
found it, so a strong source takes many slots and a weak one few, per cohort and per depth, without a
hand-set mix. Curves are small (one float per rank bin) and live in the config
(`blend.rank_curves`, per cohort), so they are versioned with the artifacts and can be set by hand.

Pure functions over numpy arrays; per request a handful of vector operations per source.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from candgen.blend.merge import Blended, _Pool, quota_merge
from candgen.idset import argsort_desc
from candgen.types import Candidates

# Upper ends (1-based ranks, inclusive) of the rank bins: 1, 2, 3, 4, then geometric with ratio ~sqrt(2)
# up to 16384. Bin b holds the ranks RANK_EDGES[b-1]+1 .. RANK_EDGES[b].
RANK_EDGES = np.array(
    [1, 2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64, 91, 128, 181, 256, 362, 512, 724, 1024, 1448, 2048,
     2896, 4096, 5793, 8192, 11585, 16384],
    dtype=np.int64,
)
_LOG_CENTRES = np.log(np.sqrt(np.maximum(np.concatenate([[1], RANK_EDGES[:-1] + 1]), 1) * RANK_EDGES))
PRIOR_STRENGTH = 20.0  # pseudo-observations pulling a sparse bin towards the source's mean hit rate
FLOOR = 1e-6  # no source's item scores exactly 0: an unseen-quality source still fills empty slots


def rank_bins(ranks: np.ndarray) -> np.ndarray:
    """Bin index of each 1-based rank (ranks past the last edge fall in the last bin)."""
    return np.minimum(np.searchsorted(RANK_EDGES, ranks, side="left"), len(RANK_EDGES) - 1)


def pava_decreasing(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The weighted least-squares non-increasing fit of `values` (pool adjacent violators)."""
    vals: list[float] = []
    wts: list[float] = []
    sizes: list[int] = []
    for v, w in zip(values.tolist(), weights.tolist(), strict=True):
        vals.append(v)
        wts.append(w)
        sizes.append(1)
        while len(vals) > 1 and vals[-2] < vals[-1]:
            w2 = wts[-2] + wts[-1]
            v2 = (vals[-2] * wts[-2] + vals[-1] * wts[-1]) / w2 if w2 > 0 else (vals[-2] + vals[-1]) / 2
            s2 = sizes[-2] + sizes[-1]
            del vals[-1], wts[-1], sizes[-1]
            vals[-1], wts[-1], sizes[-1] = v2, w2, s2
    return np.repeat(np.asarray(vals, dtype=np.float64), sizes)


def fit_curve(hits: np.ndarray, shown: np.ndarray, *, prior_strength: float = PRIOR_STRENGTH) -> np.ndarray:
    """A rank curve from counts per rank bin: `hits[b]` hits among `shown[b]` items shown in bin b.

    Each bin's rate is shrunk towards the source's overall rate (`prior_strength` pseudo-items), then made
    non-increasing in rank; bins no list reached are FLOOR. Returns float32 of
    len(RANK_EDGES), every value in [FLOOR, 1]."""
    hits = np.asarray(hits, np.float64)
    shown = np.asarray(shown, np.float64)
    if hits.shape != (len(RANK_EDGES),) or shown.shape != hits.shape:
        raise ValueError(f"expected {len(RANK_EDGES)} bins of hits and shown counts")
    if np.any(hits < 0) or np.any(shown < hits):
        raise ValueError("hit counts must be >= 0 and at most the shown counts")
    total = shown.sum()
    mean = hits.sum() / total if total > 0 else 0.0
    denom = shown + prior_strength
    rate = np.divide(hits + prior_strength * mean, denom, out=np.full_like(denom, mean), where=denom > 0)
    reached = np.flatnonzero(shown > 0)
    if len(reached) == 0:
        return np.full(len(RANK_EDGES), FLOOR, np.float32)
    last = int(reached[-1])
    fitted = pava_decreasing(rate[: last + 1], shown[: last + 1])
    # ranks no list reached are unmeasured: FLOOR, not the last value (a source whose lists were short,
    # like social's, would otherwise claim every deep slot of a long fused list)
    out = np.concatenate([fitted, np.full(len(RANK_EDGES) - last - 1, FLOOR)])
    return np.clip(out, FLOOR, 1.0).astype(np.float32)


def curve_at(curve: Sequence[float] | np.ndarray, n: int) -> np.ndarray:
    """p(r) for ranks 1..n: the curve interpolated in log-rank between bin centres, then made strictly
    decreasing by a tiny rank penalty so that a source's own order is kept among equal values."""
    c = np.asarray(curve, np.float64)
    if len(c) != len(RANK_EDGES):
        raise ValueError(f"a rank curve has {len(RANK_EDGES)} values, got {len(c)}")
    ranks = np.arange(1, n + 1, dtype=np.float64)
    p = np.interp(np.log(ranks), _LOG_CENTRES, c)
    return p * (1.0 - 1e-9 * ranks)


def fusion_merge(lists: list[Candidates], curves: Mapping[str, Sequence[float] | np.ndarray], k: int) -> Blended:
    """The k candidates with the highest noisy-OR hit probability over the sources that found them.

    A source without a curve counts as the weakest curve given (or FLOOR when none is). Items keep every
    source that found them and each source's raw score (provenance as in `quota_merge`); the blended
    score is the fused probability."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    pool = _Pool(lists, {}, None)
    if k == 0 or len(pool.uniq) == 0:
        return Blended.empty(pool.names)
    fused = noisy_or(pool, curves)
    top = argsort_desc(fused)[:k]
    return pool.result(top, fused[top].astype(np.float32))


def noisy_or(pool: _Pool, curves: Mapping[str, Sequence[float] | np.ndarray]) -> np.ndarray:
    """Per pool code, 1 - prod over the sources that found it of (1 - p_source(its rank there)). A source
    without a curve counts as the weakest curve given (FLOOR when none is)."""
    weakest = min(curves.values(), key=lambda c: float(np.sum(c))) if curves else None
    log_miss = np.zeros(len(pool.uniq), np.float64)
    for name, seg in pool.segments.items():
        curve = curves.get(name, weakest)
        p = curve_at(curve, len(seg)) if curve is not None else np.full(len(seg), FLOOR)
        log_miss[seg] += np.log1p(-np.minimum(p, 1.0 - 1e-12))
    return -np.expm1(log_miss)


def ordered_quota_merge(lists: list[Candidates], mix: dict[str, float],
                        curves: Mapping[str, Sequence[float] | np.ndarray], k: int, *,
                        normalization: str = "rank") -> Blended:
    """The quota merge's items (the mix decides which k are in), ordered by their noisy-OR hit probability
    under the rank curves instead of weighted reciprocal rank: the head of a long list goes to the items
    most likely to be hits, whichever source found them. The blended score is that probability."""
    return quota_merge(lists, mix, k, normalization=normalization, rescore=lambda pool: noisy_or(pool, curves))


def curve_shares(curves: Mapping[str, Sequence[float] | np.ndarray], names: Sequence[str], k: int) -> dict[str, float]:
    """Each source's expected number of slots in a fused top-k (ignoring overlap): the ranks of every
    source whose p clears one common threshold, which is chosen so that the ranks add up to k. Used to
    decide how many candidates to ask each source for."""
    names = [n for n in names if n in curves]
    if not names or k <= 0:
        return {}
    depth = min(int(RANK_EDGES[-1]), max(k, 1))
    ps = {n: curve_at(curves[n], depth) for n in names}
    allp = np.sort(np.concatenate(list(ps.values())))[::-1]
    tau = allp[min(k, len(allp)) - 1]
    counts = {n: float(np.count_nonzero(p >= tau)) for n, p in ps.items()}
    total = sum(counts.values()) or 1.0
    return {n: c * k / total for n, c in counts.items()}


def check_curves(curves: Mapping[str, object], where: str) -> None:
    """Raise ValueError naming the bad entry of a {source: curve} mapping."""
    for name, c in curves.items():
        try:
            arr = np.asarray(c, np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{where}.{name}: expected a list of {len(RANK_EDGES)} numbers") from None
        if arr.shape != (len(RANK_EDGES),):
            raise ValueError(f"{where}.{name}: expected {len(RANK_EDGES)} numbers, got shape {arr.shape}")
        if not np.all((arr >= 0) & (arr <= 1)):  # also rejects NaN
            raise ValueError(f"{where}.{name}: expected probabilities in [0, 1]")
