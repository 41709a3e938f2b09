import numpy as np
import pytest

from candgen.blend.experiments import Experiment, ExperimentError, assign, bucket, choose_mix, experiment_from_config
from candgen.config import BlendConfig
from candgen.errors import CandgenError

CONFIG = {
    "name": "social-boost",
    "variants": {"control": 0.5, "more_social": 0.3, "no_social": 0.2},
    "mixes": {
        "more_social": {"collaborative": 0.3, "content": 0.3, "trending": 0.2, "social": 0.2},
        "no_social": {"collaborative": 0.5, "content": 0.3, "trending": 0.2},
    },
}


def test_assignment_is_stable_and_independent_of_call_order():
    e = Experiment.from_config(CONFIG)
    users = [f"u{i}" for i in range(200)]
    first = [assign(u, e) for u in users]
    assert [assign(u, e) for u in reversed(users)] == first[::-1]
    assert [assign(u, Experiment.from_config(CONFIG)) for u in users] == first


def test_split_is_honoured_within_one_percent_on_100k_users():
    e = Experiment.from_config(CONFIG)
    got = [assign(f"user-{i}", e) for i in range(100_000)]
    names, cnt = np.unique(got, return_counts=True)
    share = dict(zip(names.tolist(), (cnt / len(got)).tolist(), strict=True))
    for variant, want in CONFIG["variants"].items():
        assert abs(share[variant] - want) < 0.01, variant


def test_another_experiment_name_reshuffles_users():
    a = [bucket(f"u{i}", "exp-a") < 0.5 for i in range(2000)]
    b = [bucket(f"u{i}", "exp-b") < 0.5 for i in range(2000)]
    agree = np.mean(np.array(a) == np.array(b))
    assert 0.4 < agree < 0.6
    assert all(0.0 <= bucket(f"u{i}", "x") < 1.0 for i in range(100))


def test_mix_per_variant_with_default_for_control():
    e = Experiment.from_config(CONFIG)
    default = {"collaborative": 0.4, "content": 0.3, "trending": 0.2, "social": 0.1}
    assert e.mix_for("control", default) == default
    assert e.mix_for("more_social", default)["social"] == 0.2
    with pytest.raises(ExperimentError, match="no variant 'nope'"):
        e.mix_for("nope", default)


def test_zero_share_variant_gets_no_users():
    e = Experiment("x", {"a": 1.0, "off": 0.0})
    assert {assign(f"u{i}", e) for i in range(500)} == {"a"}


@pytest.mark.parametrize(
    "change, words",
    [
        ({"variants": {"a": 0.5, "b": 0.4}}, "sum to 1"),
        ({"variants": {"a": 1.5, "b": -0.5}}, "in [0, 1]"),
        ({"variants": {}}, "variants"),
        ({"variants": {"a": "half", "b": 0.5}}, "expected a number"),
        ({"name": ""}, "experiment.name"),
        ({"mixes": {"control": {"telepathy": 1.0}}}, "unknown source(s) telepathy"),
        ({"mixes": {"ghost": {"social": 1.0}}}, "no such variant"),
        ({"mixes": {"control": {"social": -1.0}}}, ">= 0"),
        ({"mixes": {"control": {"social": 0.0}}}, "positive weight"),
        ({"mixes": {"control": {"social": True}}}, "expected a number"),
        ({"mixes": ["social"]}, "experiment.mixes"),
        ({"colour": "blue"}, "unknown key"),
    ],
)
def test_bad_config_is_a_clear_error(change, words):
    with pytest.raises(ExperimentError) as e:
        Experiment.from_config({**CONFIG, **change})
    assert words in str(e.value)
    assert isinstance(e.value, CandgenError)


def test_not_a_table_and_known_sources_override():
    with pytest.raises(ExperimentError, match="expected a table"):
        Experiment.from_config("social-boost")  # type: ignore[arg-type]
    e = Experiment.from_config(
        {"name": "cold", "variants": {"a": 1.0}, "mixes": {"a": {"popular": 1.0}}}, known_sources=["popular"]
    )
    assert e.mixes == {"a": {"popular": 1.0}}
    with pytest.raises(ExperimentError, match="sum to 1"):
        Experiment("direct", {"a": 0.2})


def test_choose_mix_from_the_blend_config():
    default = {"collaborative": 0.4, "content": 0.3, "trending": 0.2, "social": 0.1}
    assert experiment_from_config(BlendConfig().experiment) is None
    assert choose_mix("u1", None, default) == ("", default)
    e = experiment_from_config(CONFIG)
    variants = {choose_mix(f"u{i}", e, default)[0] for i in range(300)}
    assert variants == set(CONFIG["variants"])
    variant, mix = choose_mix("u1", e, default)
    assert variant == assign("u1", e) and mix == e.mix_for(variant, default)
