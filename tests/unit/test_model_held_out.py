"""`train_two_tower(held_out=...)`: the early-stopped model that never learnt the last 10% (for calibration)."""

from __future__ import annotations

import numpy as np
from model_world import planted_world

from candgen.config import EventsConfig, ModelConfig
from candgen.model.train import train_two_tower


def cfg() -> ModelConfig:
    return ModelConfig(dim=8, epochs=2, batch_size=64, random_negatives=8, patience=5, eval_k=10, threads=1, seed=3)


def test_the_held_out_model_is_the_one_before_the_refit():
    ds = planted_world()
    held: list = []
    final = train_two_tower(ds, config=cfg(), events=EventsConfig(), held_out=held)
    assert len(held) == 1 and held[0] is not final
    a = held[0].item_embeddings(ds, now=int(ds.interactions.timestamp.max()))
    b = final.item_embeddings(ds, now=int(ds.interactions.timestamp.max()))
    assert a.shape == b.shape and not np.allclose(a, b)  # the refit learnt more
    # without a refit there is no second model, and nothing is appended
    none: list = []
    train_two_tower(ds, config=cfg(), events=EventsConfig(), held_out=none, refit=False)
    assert none == []
