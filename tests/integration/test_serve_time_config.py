"""`candgen serve --config` (and `CANDGEN_SERVE__*`) on real artifacts: the engine runs with the artifacts' config
and the serve-time [serve] settings on top, also after a reload; a bad serve-time config is a clear error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tiny_model

from candgen.artifacts import Manifest
from candgen.config import CONFIG_ENV, Config, ConfigError
from candgen.data.io import load_dataset
from candgen.data.synthetic import generate_world
from candgen.engine import open_engine
from candgen.pipeline import train_artifacts
from candgen.types import Request

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def art(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("servetime")
    generate_world(root / "w", users=200, items=400, days=10, seed=3)
    ds = load_dataset(root / "w")
    cfg = tiny_model.tiny_config()
    cfg.serve.max_k = 77  # set at training time, named by no serve-time setting below: must be kept
    cfg.serve.compute_slots = 3
    train_artifacts(ds, root / "art", config=cfg)
    counts = np.bincount(ds.interactions.user, minlength=ds.n_users)
    return root / "art", ds.users.id(int(np.argmax(counts)))


def test_the_engine_runs_the_artifacts_config_with_the_serve_time_settings_on_top(
        art: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, user = art
    toml = tmp_path / "serve.toml"
    toml.write_text("[serve]\nrequest_deadline_ms = 40.0\ncompute_slots = 2\n[model]\ndim = 8\n")
    monkeypatch.setenv(CONFIG_ENV, str(toml))
    monkeypatch.setenv("CANDGEN_SERVE__COMPUTE_SLOTS", "1")  # the environment wins over the file
    trained = Config.from_dict(Manifest.read(path).config)
    assert trained.serve.compute_slots == 3 and trained.serve.request_deadline_ms == 100.0
    engine = open_engine(str(path), f"sqlite:///{tmp_path}/j.db")
    try:
        for _ in range(2):  # as opened, then after a reload of the same artifacts
            serve = engine.config.serve
            assert (serve.request_deadline_ms, serve.compute_slots, serve.max_k) == (40.0, 1, 77)
            assert engine.config.model == trained.model  # [model] is not a serve-time section: the artifacts' own
            assert engine.config.sources == trained.sources
            assert len(engine.candidates(Request(user_id=user, k=20)).item_ids) == 20
            engine.reload()
        assert (engine.gate.slots, engine.gate.budget_s) == (1, 0.04)
    finally:
        engine.close()


def test_without_serve_time_settings_the_engine_runs_the_artifacts_config(
        art: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    engine = open_engine(str(art[0]), f"sqlite:///{tmp_path}/j.db")
    try:
        assert engine.config == Config.from_dict(Manifest.read(art[0]).config)
        assert engine.gate.slots == 3
    finally:
        engine.close()


@pytest.mark.parametrize("text, words", [("[serve]\ncompute_slots = 'many'\n", ["serve.compute_slots", "int"]),
                                         ("[serve]\ncompute_slot = 1\n", ["compute_slot"])])
def test_a_bad_serve_time_config_is_a_clear_error(art: tuple[Path, str], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch, text: str, words: list[str]) -> None:
    toml = tmp_path / "serve.toml"
    toml.write_text(text)
    monkeypatch.setenv(CONFIG_ENV, str(toml))
    with pytest.raises(ConfigError) as e:
        open_engine(str(art[0]), f"sqlite:///{tmp_path}/j.db")
    assert all(w in str(e.value) for w in words)
