"""The smallest model config the integration tests train with (a few seconds per world)."""

from __future__ import annotations

from candgen.config import Config


def tiny_config() -> Config:
    cfg = Config()
    cfg.model.epochs = 1
    cfg.model.dim = 16
    cfg.model.batch_size = 256
    return cfg
