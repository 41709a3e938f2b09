import dataclasses

import numpy as np
import pytest

from candgen.blend.pipeline import blend
from candgen.config import BlendConfig, ConfigError
from candgen.types import Candidates

MIX = {"collaborative": 0.4, "content": 0.3, "trending": 0.2, "social": 0.1}
N_ITEMS = 10_000


def cands(ids, source):
    ids = np.asarray(ids, dtype=np.int64)
    return Candidates(ids, np.linspace(1, 0.01, len(ids)).astype(np.float32) if len(ids) else np.empty(0), source)


def sources(n=200):
    return [cands(np.arange(n) + 1000 * j, name) for j, name in enumerate(MIX)]


def test_default_chain_filters_before_filling_the_quotas():
    out = blend(sources(), k=100, config=BlendConfig(), mix=MIX, exclude={0, 1, 1000})
    assert len(out) == 100 and len(np.unique(out.ids)) == 100
    assert not set(out.ids.tolist()) & {0, 1, 1000}
    got = {name: int(out.found_by(name).sum()) for name in MIX}
    assert got == {"collaborative": 40, "content": 30, "trending": 20, "social": 10}


def test_fallback_fills_the_rest_and_is_filtered_too():
    lists = [cands([1, 2], "collaborative"), cands([], "social")]
    popular = cands([2, 3, 4, 5, 6], "popular")
    out = blend(lists, k=4, config=BlendConfig(), mix=MIX, exclude={4}, fallback=popular)
    assert out.ids.tolist()[:2] == [1, 2] and out.ids.tolist()[2:] == [3, 5]
    assert out.sources(2) == ("popular",) and np.all(np.diff(out.scores) < 0)


def test_empty_sources_get_only_the_fallback_and_nothing_gives_nothing():
    out = blend([], k=3, config=BlendConfig(), mix=MIX, fallback=cands([7, 8, 9, 10], "popular"))
    assert out.ids.tolist() == [7, 8, 9]
    assert len(blend([], k=3, config=BlendConfig(), mix=MIX)) == 0
    assert len(blend(sources(), k=0, config=BlendConfig(), mix=MIX)) == 0


def test_k_larger_than_all_candidates():
    out = blend(sources(5), k=1000, config=BlendConfig(), mix=MIX)
    assert len(out) == 20


def test_caps_from_config_use_a_larger_pool():
    creator = np.arange(N_ITEMS) // 4  # creator of item i: blocks of 4 consecutive ids
    config = BlendConfig(max_per_creator=2)
    out = blend(sources(), k=100, config=config, mix=MIX, item_creator=creator)
    assert len(out) == 100
    _, per_creator = np.unique(creator[out.ids], return_counts=True)
    assert per_creator.max() <= 2
    uncapped = blend(sources(), k=100, config=BlendConfig(), mix=MIX)
    assert np.unique(creator[uncapped.ids], return_counts=True)[1].max() == 4


def test_blocked_creators_and_deleted_items():
    creator = np.zeros(N_ITEMS, dtype=np.int64)
    creator[1000:1200] = 5  # everything content found is by creator 5
    deleted = np.zeros(N_ITEMS, dtype=bool)
    deleted[2000:2010] = True
    out = blend(sources(), k=100, config=BlendConfig(), mix=MIX, blocked_creators={5}, item_creator=creator,
                deleted=deleted)
    assert len(out) == 100 and not out.found_by("content").any()
    assert not np.isin(out.ids, np.arange(2000, 2010)).any()


def test_mmr_from_config_and_its_missing_vectors_error():
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(N_ITEMS, 8)).astype(np.float32)
    config = BlendConfig(mmr_lambda=0.7)
    out = blend(sources(50), k=40, config=config, mix=MIX, item_vectors=vecs)
    assert len(out) == 40 and len(np.unique(out.ids)) == 40
    with pytest.raises(ValueError, match="no item_vectors"):
        blend(sources(50), k=40, config=config, mix=MIX)


def test_exploration_from_config():
    config = BlendConfig(exploration_fraction=0.1)
    out = blend(sources(), k=100, config=config, mix=MIX, explore=cands(np.arange(5000, 5100), "new_items"),
                exclude={5000})
    pos = np.flatnonzero(out.found_by("new_items"))
    assert pos.tolist() == [5, 15, 25, 35, 45, 55, 65, 75, 85, 95]
    assert 5000 not in out.ids.tolist() and len(out) == 100


def test_weighted_strategy_is_deterministic_given_rng():
    config = BlendConfig(strategy="weighted")
    a = blend(sources(), k=100, config=config, mix=MIX, rng=np.random.default_rng(5))
    b = blend(sources(), k=100, config=config, mix=MIX, rng=np.random.default_rng(5))
    assert len(a) == 100 and a.ids.tolist() == b.ids.tolist()


@pytest.mark.parametrize(
    "change, field",
    [
        ({"strategy": "best"}, "blend.strategy"),
        ({"normalization": "softmax"}, "blend.normalization"),
        ({"max_per_creator": -1}, "max_per_creator"),
        ({"mmr_lambda": 2.0}, "blend.mmr_lambda"),
        ({"exploration_fraction": -0.1}, "blend.exploration_fraction"),
        ({"diversity_pool": 0.5}, "blend.diversity_pool"),
    ],
)
def test_bad_config_is_a_clear_error(change, field):
    config = dataclasses.replace(BlendConfig(), **change)
    with pytest.raises(ConfigError, match=field):
        blend(sources(), k=10, config=config, mix=MIX)


def test_negative_k_is_an_error():
    with pytest.raises(ValueError, match="k must be >= 0"):
        blend(sources(), k=-1, config=BlendConfig(), mix=MIX)


def test_inputs_are_never_modified_and_explain_names_every_source():
    lists = sources(50) + [cands(np.arange(10), "social")]  # social twice: items 0-9 overlap collaborative
    before = [(c.ids.copy(), c.scores.copy()) for c in lists]
    exclude = np.array([3, 1001])
    config = BlendConfig(max_per_creator=3, exploration_fraction=0.1)
    out = blend(lists, k=60, config=config, mix=MIX, exclude=exclude, item_creator=np.arange(N_ITEMS) // 5,
                explore=cands([9000, 9001], "new_items"), fallback=cands([7000], "popular"))
    for c, (ids, scores) in zip(lists, before, strict=True):
        np.testing.assert_array_equal(c.ids, ids)
        np.testing.assert_array_equal(c.scores, scores)
    assert exclude.tolist() == [3, 1001]
    i = out.ids.tolist().index(0)
    assert set(out.explain(i)) == {"collaborative", "social"}
    assert out.explain(i)["collaborative"] == pytest.approx(1.0)
