import pytest

from candgen.config import Config, ConfigError, load_config, serve_time_config


def test_defaults_follow_the_seed():
    c = Config()
    assert c.events.weights["share"] == 5.0 and c.events.weights["view"] == 1.0
    assert c.sources.mix == {"collaborative": 0.4, "content": 0.3, "trending": 0.2, "social": 0.1}


def test_toml_file_and_env_override(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[model]\nepochs = 3\n[sources.mix]\ncollaborative = 0.5\n")
    c = load_config(p, env={"CANDGEN_MODEL__DIM": "32", "CANDGEN_BLEND__MMR_LAMBDA": "0.2"})
    assert c.model.epochs == 3 and c.model.dim == 32 and c.blend.mmr_lambda == 0.2
    assert c.sources.mix["collaborative"] == 0.5 and c.sources.mix["content"] == 0.3


def test_digest_changes_with_the_section():
    a, b = Config(), Config()
    b.model.dim = 8
    assert a.digest("model") != b.digest("model") and a.digest("index") == b.digest("index")


@pytest.mark.parametrize(
    "text, words",
    [("[model]\nepochs = 'many'\n", ["model.epochs", "int"]),
     ("[model]\nepoks = 3\n", ["epoks"]),
     ("[model\n", ["TOML"])],
)
def test_bad_config_is_a_clear_error(tmp_path, text, words):
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p, env={})
    assert all(w in str(e.value) for w in words)


def test_missing_file_and_bad_env(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", env={})
    with pytest.raises(ConfigError, match="no config section"):
        load_config(None, env={"CANDGEN_NOPE__X": "1"})


def test_serve_time_config_sets_only_the_serve_settings_it_names(tmp_path):
    trained = Config()
    trained.serve.max_k, trained.serve.request_deadline_ms, trained.model.dim = 77, 80.0, 32
    p = tmp_path / "serve.toml"
    p.write_text("[serve]\nrequest_deadline_ms = 50\n[model]\ndim = 8\n")
    c = serve_time_config(trained.to_dict(), p, env={"CANDGEN_SERVE__COMPUTE_SLOTS": "3",
                                                     "CANDGEN_MODEL__EPOCHS": "2"})
    assert (c.serve.request_deadline_ms, c.serve.compute_slots, c.serve.max_k) == (50.0, 3, 77)
    assert c.model == trained.model  # only [serve] is set at serve time
    assert serve_time_config(trained.to_dict(), None, env={}) == trained


def test_serve_time_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        serve_time_config({}, tmp_path / "nope.toml", env={})
    with pytest.raises(ConfigError, match="serve.max_k"):
        serve_time_config({}, None, env={"CANDGEN_SERVE__MAX_K": "lots"})
    with pytest.raises(ConfigError, match="no config section"):
        serve_time_config({}, None, env={"CANDGEN_SERVER__MAX_K": "1"})
