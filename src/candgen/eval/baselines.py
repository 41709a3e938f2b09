"""Baseline recommenders that candgen's sources and blend must beat: popular, recent-popular, item-kNN,
ALS and EASE, behind one small `Recommender` base class.

Shared conventions (all baselines):
- The engagement matrix (users x items) sums `Interactions.weights(events)` per (user, item) pair;
  a pair with any explicit negative (hide, dislike, block, a low rating) is left out entirely.
- "Seen" items are every item the user interacted with in train except by mere impression
  (negatives included, so a hidden item never comes back); `exclude_seen=True` filters them.
- Cold users (no positive engagement in train, or ids beyond the train user table) get the
  recommender's popularity list (overall popularity; recent popularity for `RecentPopularRecommender`).
- Ties are broken by overall popularity (then by item id), so a model that has no evidence about an
  item still fills the list with the most popular unseen items, deterministically.

Example:
    >>> rec = ItemKNNRecommender(neighbours=100).fit(split.train, EventsConfig())  # doctest: +SKIP
    >>> batch = rec.recommend(np.array([0, 1, 2]), k=100)  # BatchCandidates (3, 100)  # doctest: +SKIP

Thread safety: `fit` is not; `recommend` is safe to call concurrently once fitted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

import numpy as np
import scipy.sparse as sp
from scipy.linalg import lapack
from threadpoolctl import threadpool_limits

from candgen.config import EventsConfig
from candgen.data.dataset import IMPRESSION_CODE, Dataset
from candgen.errors import CandgenError
from candgen.types import BatchCandidates

# Scores are compared in float64 with a popularity tie-break scaled to 1e-8 of |score|: below the
# relative gap between two distinct float32 values (2**-24), so it never reorders distinct scores,
# yet resolves exact ties (e.g. the many zero scores of item-kNN) even for 10M items.
_TIEBREAK_RELATIVE = 1e-8
_TIEBREAK_ZERO = 1e-300
# Rows of the dense (users x items) score block computed at once: ~4M floats, a few tens of MB.
_SCORE_BLOCK = 1 << 22


@dataclass
class TrainMatrices:
    """What every baseline learns from: engagement, seen items and popularity of the train part."""

    engagement: sp.csr_matrix  # float32 (n_users, n_items): summed event weights, negative pairs dropped
    seen: sp.csr_matrix  # bool (n_users, n_items): any non-impression interaction
    popularity: np.ndarray  # float64 (n_items,): weighted engagement count
    tiebreak: np.ndarray  # float64 (n_items,) in [0, 1): popularity rank, higher is more popular
    warm: np.ndarray  # bool (n_users,): has positive engagement

    @property
    def n_users(self) -> int:
        return int(self.engagement.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.engagement.shape[1])


def engagement_matrix(train: Dataset, events: EventsConfig) -> sp.csr_matrix:
    """Users x items, float32: summed positive event weights; pairs with any explicit negative are dropped."""
    inter = train.interactions
    n_users, n_items = train.n_users, train.n_items
    w = inter.weights(events)
    pos = w > 0
    keys = inter.user[pos].astype(np.int64) * n_items + inter.item[pos]
    neg = inter.negative_mask(events)
    if neg.any():
        neg_keys = np.unique(inter.user[neg].astype(np.int64) * n_items + inter.item[neg])
        keep = ~np.isin(keys, neg_keys)
        keys, wpos = keys[keep], w[pos][keep]
    else:
        wpos = w[pos]
    m = sp.csr_matrix((wpos.astype(np.float32), (keys // n_items, keys % n_items)), shape=(n_users, n_items))
    m.sum_duplicates()
    return m


def seen_matrix(train: Dataset) -> sp.csr_matrix:
    """Users x items, bool: items the user interacted with in any way but an impression."""
    inter = train.interactions
    rows = inter.event != IMPRESSION_CODE
    m = sp.csr_matrix(
        (np.ones(int(rows.sum()), dtype=bool), (inter.user[rows], inter.item[rows])),
        shape=(train.n_users, train.n_items),
    )
    m.sum_duplicates()
    return m


def train_matrices(train: Dataset, events: EventsConfig) -> TrainMatrices:
    if train.n_items == 0:
        raise CandgenError("cannot fit a recommender on a dataset without items")
    eng = engagement_matrix(train, events)
    pop = np.asarray(eng.sum(axis=0), dtype=np.float64).ravel()
    return TrainMatrices(
        engagement=eng, seen=seen_matrix(train), popularity=pop, tiebreak=popularity_rank(pop),
        warm=np.diff(eng.indptr) > 0,
    )


def popularity_rank(popularity: np.ndarray) -> np.ndarray:
    """Rank of each item by popularity scaled to [0, 1): the most popular gets the largest value; equal
    popularity goes to the lower item id."""
    n = len(popularity)
    order = np.lexsort((np.arange(n), -popularity))  # most popular first, then by id
    rank = np.empty(n, dtype=np.float64)
    rank[order] = (n - 1 - np.arange(n)) / max(n, 1)
    return rank


def top_k(scores: np.ndarray, k: int, *, tiebreak: np.ndarray, exclude: sp.csr_matrix | None = None,
          ) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64, scores float32), each (n_rows, k), best first, from a dense (n_rows, n_items) score block.

    -inf or NaN scores and `exclude`d (row, item) pairs are never returned; empty slots hold id -1 and
    score -inf."""
    n_rows, n_items = scores.shape
    key = scores.astype(np.float64)
    with np.errstate(invalid="ignore"):  # -inf * 0 and -inf + inf give NaN: excluded anyway, just below
        key += np.abs(key) * (_TIEBREAK_RELATIVE * tiebreak) + _TIEBREAK_ZERO * tiebreak
    key[np.isnan(key)] = -np.inf
    if exclude is not None and exclude.nnz:
        coo = exclude.tocoo()
        key[coo.row, coo.col] = -np.inf
    kk = min(k, n_items)
    if kk < n_items:
        part = np.argpartition(-key, kk - 1, axis=1)[:, :kk]
    else:
        part = np.broadcast_to(np.arange(n_items), (n_rows, n_items))
    part_key = np.take_along_axis(key, part, axis=1)
    order = np.argsort(-part_key, axis=1, kind="stable")
    ids = np.take_along_axis(part, order, axis=1).astype(np.int64)
    valid = np.take_along_axis(part_key, order, axis=1) > -np.inf
    vals = np.take_along_axis(scores, ids, axis=1).astype(np.float32)
    out_ids = np.full((n_rows, k), -1, dtype=np.int64)
    out_scores = np.full((n_rows, k), -np.inf, dtype=np.float32)
    out_ids[:, :kk] = np.where(valid, ids, -1)
    out_scores[:, :kk] = np.where(valid, vals, -np.inf)
    return out_ids, out_scores


class Recommender:
    """Base of the baselines: `fit(train, events)` then `recommend(users, k)` on dense user indices.

    Subclasses implement `_fit(data, train)` and `_score(users)`, which returns a dense float32
    (len(users), n_items) block of higher-is-better scores for warm users (never called for cold ones).
    Anything else with a `name` and a batched `recommend(users, k)` can join an evaluation too.
    """

    name = "recommender"

    def __init__(self, *, name: str | None = None) -> None:
        if name:
            self.name = name
        self.events = EventsConfig()
        self._data: TrainMatrices | None = None

    @property
    def fitted(self) -> bool:
        return self._data is not None

    @property
    def data(self) -> TrainMatrices:
        if self._data is None:
            raise CandgenError(f"recommender '{self.name}' is not fitted yet; call fit(train, events) first")
        return self._data

    def fit(self, train: Dataset, events: EventsConfig | None = None) -> Self:
        self.events = events or EventsConfig()
        data = train_matrices(train, self.events)
        self._fit(data, train)
        self._data = data
        return self

    def _fit(self, data: TrainMatrices, train: Dataset) -> None:  # noqa: B027 - popular needs nothing more
        pass

    def _score(self, users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self._cold_scores(), (len(users), self.data.n_items))

    def _cold_scores(self) -> np.ndarray:
        """Scores for cold users: overall weighted popularity."""
        return self.data.popularity.astype(np.float32)

    def recommend(self, users: np.ndarray, k: int, *, exclude_seen: bool = True) -> BatchCandidates:
        """Top-k items for each of `users` (dense user indices), best first; -1 pads short lists."""
        data = self.data
        users = np.asarray(users)
        if users.ndim != 1 or (users.size and not np.issubdtype(users.dtype, np.integer)):
            raise ValueError(f"users must be a 1-d array of integer user indices, got {users.dtype} {users.shape}")
        if users.size and users.min() < 0:
            raise ValueError("user indices must be >= 0")
        if int(k) != k or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        users = users.astype(np.int64)
        known = users < data.n_users
        warm = known.copy()
        warm[known] = data.warm[users[known]]
        ids = np.full((len(users), k), -1, dtype=np.int64)
        scores = np.full((len(users), k), -np.inf, dtype=np.float32)
        block = max(1, _SCORE_BLOCK // data.n_items)
        for is_warm in (True, False):
            rows = np.flatnonzero(warm == is_warm)
            for start in range(0, len(rows), block):
                r = rows[start : start + block]
                u = users[r]
                s = self._score(u) if is_warm else np.broadcast_to(self._cold_scores(), (len(u), data.n_items))
                exclude = self._seen_rows(u) if exclude_seen else None
                ids[r], scores[r] = top_k(np.asarray(s), k, tiebreak=data.tiebreak, exclude=exclude)
        return BatchCandidates(ids, scores)

    def _seen_rows(self, users: np.ndarray) -> sp.csr_matrix:
        data = self.data
        known = users < data.n_users
        rows = data.seen[np.where(known, users, 0)]
        if not known.all():  # users beyond the train table have seen nothing
            rows = sp.csr_matrix(sp.diags(known.astype(np.float32)) @ rows)
        return sp.csr_matrix(rows)


class PopularRecommender(Recommender):
    """The same list for everyone: items by weighted engagement count over the whole train period."""

    name = "popular"


class RecentPopularRecommender(Recommender):
    """Items by weighted engagement count in the last `window` fraction (default 10%) of the train time span;
    items without recent engagement follow by overall popularity. Cold users get this list too."""

    name = "recent_popular"

    def __init__(self, *, window: float = 0.1, name: str | None = None) -> None:
        super().__init__(name=name)
        if not 0.0 < window <= 1.0:
            raise ValueError(f"window must be a fraction of the train span in (0, 1], got {window}")
        self.window = window
        self._recent = np.zeros(0, dtype=np.float32)

    def _fit(self, data: TrainMatrices, train: Dataset) -> None:
        recent = np.zeros(data.n_items, dtype=np.float64)
        inter = train.interactions
        if len(inter):
            t0, t1 = int(inter.timestamp.min()), int(inter.timestamp.max())
            last = inter.take(inter.timestamp >= t1 - self.window * (t1 - t0))
            # weights() already gives 0 to impressions, negatives and low ratings
            np.add.at(recent, last.item, last.weights(self.events))
        self._recent = recent.astype(np.float32)

    def _cold_scores(self) -> np.ndarray:
        return self._recent


class ItemKNNRecommender(Recommender):
    """Item-item collaborative filtering: cosine similarity between item columns of the engagement matrix,
    pruned to the `neighbours` most similar items per item; a user's score for item j is the sum, over
    the items i they engaged with, of engagement(i) * sim(i, j)."""

    name = "item_knn"

    def __init__(self, *, neighbours: int = 100, name: str | None = None) -> None:
        super().__init__(name=name)
        if neighbours < 1:
            raise ValueError(f"neighbours must be >= 1, got {neighbours}")
        self.neighbours = neighbours
        self.similarity = sp.csr_matrix((0, 0), dtype=np.float32)

    def _fit(self, data: TrainMatrices, train: Dataset) -> None:
        x = data.engagement.astype(np.float64)
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=0)).ravel())
        x = sp.csr_matrix(x @ sp.diags(np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)))
        xt = sp.csr_matrix(x.T)
        n = data.n_items
        nb = min(self.neighbours, max(n - 1, 1))
        rows, cols, vals = [], [], []
        # dense blocks of item rows keep memory at ~_SCORE_BLOCK floats whatever the catalog size
        step = max(1, _SCORE_BLOCK // n)
        for start in range(0, n, step):
            stop = min(n, start + step)
            sim = (xt[start:stop] @ x).toarray()
            sim[np.arange(stop - start), np.arange(start, stop)] = 0.0  # an item is not its own neighbour
            top = (np.argpartition(-sim, nb - 1, axis=1)[:, :nb] if nb < n
                   else np.broadcast_to(np.arange(n), sim.shape))
            v = np.take_along_axis(sim, top, axis=1)
            keep = v > 0
            rows.append(np.nonzero(keep)[0] + start)
            cols.append(top[keep])
            vals.append(v[keep])
        self.similarity = sp.csr_matrix(
            (np.concatenate(vals).astype(np.float32), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
        )

    def _score(self, users: np.ndarray) -> np.ndarray:
        return np.asarray((self.data.engagement[users] @ self.similarity).toarray(), dtype=np.float32)


class ALSRecommender(Recommender):
    """Implicit-feedback matrix factorisation (Hu, Koren, Volinsky 2008) with the `implicit` library's
    conjugate-gradient ALS. Confidence = alpha * engagement weight. Scores are dot products of factors.

    `threads` is passed to implicit and BLAS is held to one thread while fitting (implicit's own
    advice; a BLAS thread pool inside its solver makes it much slower). The default of one thread keeps
    fits reproducible and polite on shared machines. Defaults are general choices for implicit feedback
    (on ml-latest-small, factors 32-64, regularization 0.05-10 and alpha 1-20 all land within noise of
    each other; see notes/eval-baselines.md), not tuned to one data set."""

    name = "als"

    def __init__(self, *, factors: int = 64, regularization: float = 0.05, alpha: float = 5.0,
                 iterations: int = 15, threads: int = 1, seed: int = 0, name: str | None = None) -> None:
        super().__init__(name=name)
        if factors < 1 or iterations < 1 or threads < 0 or regularization < 0 or alpha <= 0:
            raise ValueError("ALS needs factors >= 1, iterations >= 1, threads >= 0, regularization >= 0, "
                             f"alpha > 0; got {factors=}, {iterations=}, {threads=}, {regularization=}, {alpha=}")
        self.factors, self.regularization, self.alpha = factors, regularization, alpha
        self.iterations, self.threads, self.seed = iterations, threads, seed
        self.user_factors = np.zeros((0, factors), dtype=np.float32)
        self.item_factors = np.zeros((0, factors), dtype=np.float32)

    def _fit(self, data: TrainMatrices, train: Dataset) -> None:
        from implicit.cpu.als import AlternatingLeastSquares

        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(
                factors=self.factors, regularization=self.regularization, alpha=self.alpha,
                iterations=self.iterations, num_threads=self.threads, random_state=self.seed,
                calculate_training_loss=False,
            )
            model.fit(data.engagement.astype(np.float32), show_progress=False)
        self.user_factors = np.asarray(model.user_factors, dtype=np.float32)
        self.item_factors = np.asarray(model.item_factors, dtype=np.float32)

    def _score(self, users: np.ndarray) -> np.ndarray:
        return self.user_factors[users] @ self.item_factors.T


class EASERecommender(Recommender):
    """EASE (Steck 2019): a closed-form item-item model B = I - P / diag(P), P = (X'X + lambda I)^-1.

    The Gram matrix is dense (items x items), so EASE is fitted on at most `max_items` items: the items
    with train engagement, and when there are more, the `max_items` most popular of them (20k items
    take ~3.2 GB and a minute or more per core). Items outside that set are never recommended by EASE
    (their score is -inf), which the evaluation report notes via `modelled_items`."""

    name = "ease"

    def __init__(self, *, l2: float = 500.0, max_items: int = 20_000, threads: int = 1,
                 name: str | None = None) -> None:
        super().__init__(name=name)
        if l2 <= 0 or max_items < 1 or threads < 1:
            raise ValueError(f"EASE needs l2 > 0, max_items >= 1, threads >= 1; got {l2=}, {max_items=}, {threads=}")
        self.l2, self.max_items, self.threads = l2, max_items, threads
        self.items = np.zeros(0, dtype=np.int64)  # the modelled items, ascending
        self.weights = np.zeros((0, 0), dtype=np.float32)

    @property
    def modelled_items(self) -> int:
        return len(self.items)

    def _fit(self, data: TrainMatrices, train: Dataset) -> None:
        active = np.flatnonzero(data.popularity > 0)
        if len(active) > self.max_items:
            order = np.lexsort((active, -data.popularity[active]))
            active = np.sort(active[order[: self.max_items]])
        x = sp.csc_matrix(data.engagement)[:, active].astype(np.float64)
        gram = (x.T @ x).toarray()
        gram[np.diag_indices_from(gram)] += self.l2
        with threadpool_limits(self.threads, "blas"):
            p = _spd_inverse(gram)
        p /= -np.diag(p)[None, :]
        np.fill_diagonal(p, 0.0)
        self.items = active
        self.weights = p.astype(np.float32)

    def _score(self, users: np.ndarray) -> np.ndarray:
        scores = np.full((len(users), self.data.n_items), -np.inf, dtype=np.float32)
        x = sp.csr_matrix(self.data.engagement[users])[:, self.items]
        scores[:, self.items] = np.asarray(x @ self.weights, dtype=np.float32)
        return scores


def _spd_inverse(a: np.ndarray, *, block: int = 1024) -> np.ndarray:
    """Inverse of a symmetric positive definite matrix via Cholesky (half the work of LU), in place."""
    if a.size == 0:
        return a
    c, info = lapack.dpotrf(a, lower=False, overwrite_a=True, clean=False)
    if info != 0:
        raise CandgenError(f"EASE Gram matrix is not positive definite (LAPACK dpotrf info={info}); raise l2")
    inv, info = lapack.dpotri(c, lower=False, overwrite_c=True)
    if info != 0:
        raise CandgenError(f"EASE Gram matrix could not be inverted (LAPACK dpotri info={info}); raise l2")
    # dpotri fills the upper triangle only; mirror it block by block to avoid a second n x n copy
    n = inv.shape[0]
    for start in range(0, n, block):
        stop = min(n, start + block)
        inv[start:stop, :start] = inv[:start, start:stop].T
        blk = inv[start:stop, start:stop]
        inv[start:stop, start:stop] = np.triu(blk) + np.triu(blk, 1).T
    return np.asarray(inv)


BASELINES: dict[str, type[Recommender]] = {
    "popular": PopularRecommender,
    "recent_popular": RecentPopularRecommender,
    "item_knn": ItemKNNRecommender,
    "als": ALSRecommender,
    "ease": EASERecommender,
}


def make_baselines(names: list[str] | None = None) -> list[Recommender]:
    """Fresh, unfitted baselines with their default settings, in the order given (default: all five)."""
    names = list(BASELINES) if names is None else names
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise CandgenError(f"unknown baseline(s) {', '.join(unknown)}; known: {', '.join(BASELINES)}")
    return [BASELINES[n]() for n in names]
