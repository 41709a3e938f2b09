"""The cold-start popularity's calibration (half-life and early boost) on the new validation users."""

from __future__ import annotations

import numpy as np
import polars as pl

from candgen.calibrate import HALF_LIVES_H, MIN_USERS, _calibrate_popularity
from candgen.config import Config
from candgen.data.dataset import Dataset
from candgen.data.split import time_split
from candgen.eval.evaluate import ground_truth


def _world() -> Dataset:
    """100 veterans start with 3 of the items e0..e4, then binge L0..L59 (shuffled); 150 newcomers (over 10% of
    the log), all after the veterans, engage with e0..e4 only. Plain popularity ranks the L items first, the
    early boost the e items."""
    rng = np.random.default_rng(0)
    users, items, ts = [], [], []
    for v in range(100):
        seq = [f"e{i}" for i in rng.choice(5, 3, replace=False)] + [f"L{i}" for i in rng.permutation(60)]
        users += [f"v{v}"] * len(seq)
        items += seq
        ts += list(range(v * 40, v * 40 + len(seq)))
    for n in range(150):
        users += [f"n{n}"] * 5
        items += [f"e{i}" for i in range(5)]
        ts += [10_000] * 5
    order = np.argsort(ts, kind="stable")
    inter = pl.DataFrame({"user_id": np.array(users)[order].tolist(), "item_id": np.array(items)[order].tolist(),
                          "timestamp": np.array(ts)[order].tolist()})
    return Dataset.from_frames(inter)


def _run(cfg: Config, n_users: int | None = None):  # type: ignore[no-untyped-def]
    split = time_split(_world(), fraction=0.9)
    fit, truth = split.train, ground_truth(split, cfg.events)
    users = np.asarray(split.cold_users, np.int64)[:n_users]
    inter = fit.interactions
    w = inter.weights(cfg.events).astype(np.float64)
    age_h = (float(split.cutoff) - inter.timestamp.astype(np.float64)) / 3600.0  # type: ignore[arg-type]
    seen = [np.zeros(0, np.int64) for _ in users]
    return _calibrate_popularity(cfg, fit, users, truth, seen, w=w, age_h=age_h, ks=(5,))


def test_the_boost_is_chosen_when_early_engagements_predict_new_users():
    cfg = Config()
    cfg.sources.popular_early_boost, cfg.sources.popular_half_life_hours = False, 24.0 * 365
    report = _run(cfg)
    assert cfg.sources.popular_early_boost and cfg.sources.popular_half_life_hours in HALF_LIVES_H
    assert report["chosen"][1] is True and report["margin"] > 0.5 and report["users"] == 150
    assert report["recall"]["8760h+boost"] == 1.0 and report["recall"]["8760h"] == 0.0


def test_the_setting_is_kept_with_too_few_new_validation_users():
    cfg = Config()
    cfg.sources.popular_early_boost = False
    report = _run(cfg, n_users=MIN_USERS - 1)
    assert "kept" in report and "cold validation users" in report["why"]
    assert not cfg.sources.popular_early_boost and cfg.sources.popular_half_life_hours == 720.0
