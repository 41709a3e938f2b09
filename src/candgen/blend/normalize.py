"""Score normalisation that makes the scores of different retrieval sources comparable before blending.

Sources score on unrelated scales: a dot product of unit vectors, a decayed engagement count, a number of
friends. Their raw values cannot be added or compared, so each source's list is mapped onto a common scale
before merging.

The default is **rank-based**, `c / (c + rank)` with `c = 60` (the reciprocal-rank fusion of Cormack et al.,
2009, scaled so the top item scores 1). It uses only each source's ordering, which is the one thing every
source gets right, and so it is robust to outliers (one viral item does not flatten trending's whole list) and
to scale changes when a model is retrained. `percentile` is the linear version of the same idea. `minmax` and
`zscore` keep the shape of the score distribution (useful when a source's scores are calibrated, e.g. two
tower cosines), and `none` passes raw scores through for sources that share one scale.

All functions are vectorised over one list; the blend calls them once per source and request.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

from candgen.idset import argsort_desc
from candgen.types import Candidates

Normalization = Literal["rank", "percentile", "minmax", "zscore", "none"]
NORMALIZATIONS: tuple[str, ...] = get_args(Normalization)

RRF_C = 60.0
"""The reciprocal-rank constant: larger flattens the curve (rank 60 scores 0.5 with the default)."""


def ranks(scores: np.ndarray) -> np.ndarray:
    """0-based rank of each score, best (highest) first; ties keep their input order.

    Sources return lists sorted best first, so the common case is a cheap check and an `arange`.
    """
    n = len(scores)
    if n < 2 or bool(np.all(scores[:-1] >= scores[1:])):
        return np.arange(n, dtype=np.float32)
    out = np.empty(n, dtype=np.float32)
    out[argsort_desc(scores)] = np.arange(n, dtype=np.float32)
    return out


def normalize(scores: np.ndarray, method: str = "rank", *, c: float = RRF_C) -> np.ndarray:
    """Map one source's scores onto a common, higher-is-better float32 scale.

    - `rank`: `c / (c + rank)`, in (0, 1], 1 for the best item (reciprocal-rank fusion).
    - `percentile`: `1 - rank / n`, in (0, 1], 1 for the best item.
    - `minmax`: `(s - min) / (max - min)` in [0, 1]; all 1 when every score is equal.
    - `zscore`: `(s - mean) / std`; all 0 when every score is equal.
    - `none`: the raw scores as float32.

    >>> normalize(np.array([9.0, 5.0, 1.0]), "rank", c=1.0).tolist()
    [1.0, 0.5, 0.3333333432674408]
    """
    s = np.asarray(scores, dtype=np.float32)
    n = len(s)
    if n == 0:
        return s.copy()
    if method == "rank":
        return np.float32(c) / (np.float32(c) + ranks(s))
    if method == "percentile":
        return 1.0 - ranks(s) / np.float32(n)
    if method == "minmax":
        lo, hi = s.min(), s.max()
        if not hi > lo:
            return np.ones(n, dtype=np.float32)
        return (s - lo) / (hi - lo)
    if method == "zscore":
        sd = s.std()
        if not sd > 0:
            return np.zeros(n, dtype=np.float32)
        return (s - s.mean()) / sd
    if method == "none":
        return s.copy()
    raise ValueError(f"unknown score normalisation {method!r}; expected one of {', '.join(NORMALIZATIONS)}")


def normalize_lists(lists: list[Candidates], method: str = "rank", *, c: float = RRF_C) -> list[Candidates]:
    """`normalize` applied to every source's list; ids and source names are kept."""
    return [Candidates(cand.ids, normalize(cand.scores, method, c=c), cand.source) for cand in lists]
