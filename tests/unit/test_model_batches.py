"""Training batches: grouping of candidates, bags and softmax inputs, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from model_world import planted_world
from test_model_train import small_config

from candgen.config import EventsConfig
from candgen.model.batches import BatchMaker
from candgen.model.features import FeatureSpace, PositiveLog, age_bucket, negatives_by_user

EVENTS = EventsConfig()


@pytest.fixture(scope="module")
def world():
    return planted_world()


def _maker(world, seed=0, **kw):
    cfg = small_config(id_dropout=0.3, **kw)
    space = FeatureSpace.from_dataset(world, id_buckets=cfg.id_buckets, history_len=cfg.history_len)
    return BatchMaker(world, space, cfg, np.random.default_rng(seed)), cfg


def test_batch_groups_candidates_and_builds_bags(world):
    maker, cfg = _maker(world)
    log = PositiveLog.build(world.interactions, EVENTS, world.n_users)
    neg = negatives_by_user(world.interactions, EVENTS, world.n_users)
    ex = np.arange(200, 264)
    b = maker.make(log, ex, neg, inv_q=np.ones(world.n_items))
    n, m = len(ex), cfg.random_negatives
    assert b.items.tolist() == log.item[ex].tolist() and b.hard is not None
    assert len(b.cand) == 2 * n + m and b.cand[:n].tolist() == b.items.tolist()
    # one group per distinct (item, age bucket, id kept); the sampled candidates' groups first
    key = list(zip(b.cand.tolist(), b.cand_age.tolist(), (b.cand_ids > 0).tolist(), strict=True))
    assert len(set(key)) == b.n_unique < len(b.cand)
    for g in range(b.n_unique):
        assert len({k for k, i in zip(key, b.inverse, strict=True) if i == g}) == 1
    assert set(b.inverse[: n + m].tolist()) == set(range(b.inverse[: n + m].max() + 1))
    ts = log.timestamp[ex]
    now = np.concatenate([ts, np.full(m, int(np.median(ts))), ts])  # random negatives: the batch's median time
    assert (b.cand_age == age_bucket(maker.codes.created_at[b.cand], now)).all()
    assert ((b.cand_ids == 0) | (b.cand_ids == maker.codes.id_bucket[b.cand])).all() and (b.cand_ids == 0).any()
    # bags: groups first, then users; history weights sum to 1 per user with a history
    assert b.id_bags.n_bags == b.feat_bags.n_bags == b.n_unique + n
    np.testing.assert_allclose(b.hist_weights.sum(1)[b.hist_weights.sum(1) > 0], 1.0, rtol=1e-5)
    assert b.softmax is not None and b.softmax.bias.shape == (n, b.inverse[: n + m].max() + 1)
    assert b.softmax_weight is not None and b.softmax_weight.sum() == pytest.approx(1.0)
    # the backward's matrices are already built
    assert b.id_bags._transposed and b.feat_bags._transposed


def test_batches_are_deterministic_by_seed_and_other_losses_skip_the_softmax_inputs(world):
    log = PositiveLog.build(world.interactions, EVENTS, world.n_users)
    neg = negatives_by_user(world.interactions, EVENTS, world.n_users)
    ex = np.arange(64)
    a = _maker(world, seed=5)[0].make(log, ex, neg, None)
    b = _maker(world, seed=5)[0].make(log, ex, neg, None)
    c = _maker(world, seed=6)[0].make(log, ex, neg, None)
    assert a.cand.tolist() == b.cand.tolist() and a.hours.tolist() == b.hours.tolist()
    assert a.cand.tolist() != c.cand.tolist()
    other = _maker(world, loss="triplet")[0].make(log, ex, neg, None)
    assert other.softmax is None and other.softmax_weight is None
