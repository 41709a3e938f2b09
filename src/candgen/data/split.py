"""Train/test splits of a `Dataset` for offline evaluation: by time (a cutoff or a quantile) or random.

The train part keeps the whole catalog and user table (so test-only users and items stay known, as new
users and new items); the test part is the raw interaction log after the cutoff, kept as it is: the
evaluator decides which rows count as positives. Test users are `warm` when they have at least one
train interaction and `cold` otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from candgen.data.dataset import Dataset, Interactions
from candgen.errors import CandgenError


@dataclass
class Split:
    """A train dataset, the held-out test interactions and the test users by cohort."""

    train: Dataset
    test: Interactions
    cutoff: int | None  # train holds timestamps < cutoff, test >= cutoff; None for a random split
    warm_users: np.ndarray  # int32, sorted: test users with >= 1 train interaction
    cold_users: np.ndarray  # int32, sorted: test users with no train interaction


def time_split(ds: Dataset, *, until: int | None = None, fraction: float | None = None) -> Split:
    """Train on interactions before a cutoff, test on those at or after it.

    Give exactly one of `until` (unix seconds) or `fraction` (0 < f < 1: the cutoff is that quantile of
    the interaction timestamps, so fraction=0.8 trains on about the first 80% of the log).
    """
    if (until is None) == (fraction is None):
        raise CandgenError("time_split needs exactly one of until (a unix time) or fraction (0 < f < 1)")
    ts = ds.interactions.timestamp
    if len(ts) == 0:
        raise CandgenError("cannot split a dataset without interactions")
    if fraction is not None:
        if not 0.0 < fraction < 1.0:
            raise CandgenError(f"split fraction must be between 0 and 1 (exclusive), got {fraction}")
        # 'higher' keeps the cutoff on a real timestamp, so ties at the quantile all go to test
        cutoff = int(np.quantile(ts, fraction, method="higher"))
    else:
        cutoff = int(until)  # type: ignore[arg-type]
    is_train = ts < cutoff
    if not is_train.any() or is_train.all():
        raise CandgenError(
            f"time split at {cutoff} leaves an empty {'train' if not is_train.any() else 'test'} part; "
            f"interactions span {int(ts.min())}..{int(ts.max())}"
        )
    return _make_split(ds, is_train, cutoff)


def random_split(ds: Dataset, *, test_fraction: float, seed: int = 0) -> Split:
    """Hold out a random `test_fraction` of interactions (per interaction, not per user), deterministic by seed."""
    if not 0.0 < test_fraction < 1.0:
        raise CandgenError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    n = len(ds.interactions)
    n_test = int(round(n * test_fraction))
    if n_test == 0 or n_test == n:
        raise CandgenError(f"test_fraction {test_fraction} of {n} interactions leaves an empty train or test part")
    rng = np.random.default_rng(seed)
    is_train = np.ones(n, dtype=bool)
    is_train[rng.choice(n, size=n_test, replace=False)] = False
    return _make_split(ds, is_train, None)


def _make_split(ds: Dataset, is_train: np.ndarray, cutoff: int | None) -> Split:
    inter = ds.interactions
    train, test = inter.take(is_train), inter.take(~is_train)
    has_train = np.zeros(ds.n_users, dtype=bool)
    has_train[train.user] = True
    test_users = np.unique(test.user).astype(np.int32)
    warm = has_train[test_users]
    return Split(
        train=ds.with_interactions(train),
        test=test,
        cutoff=cutoff,
        warm_users=test_users[warm],
        cold_users=test_users[~warm],
    )
