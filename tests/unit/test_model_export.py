"""The numpy export: matches the torch towers, normalised shapes, save/load, new items, no torch at serve time."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from model_world import planted_world, topic_of_item
from test_model_train import small_config

from candgen.config import EventsConfig
from candgen.errors import ArtifactError
from candgen.model.export import TwoTowerModel
from candgen.model.features import FeatureSpace, PositiveLog, age_bucket, history_len_bucket, hour_bucket
from candgen.model.train import _log_q_table, _Trainer, train_two_tower

EVENTS = EventsConfig()


@pytest.fixture(scope="module")
def world():
    return planted_world()


@pytest.fixture(scope="module")
def trainer(world):
    """A torch model after a few training steps, so no weight is still at its initial value."""
    cfg = small_config()
    torch.set_num_threads(1)
    space = FeatureSpace.from_dataset(world, id_buckets=cfg.id_buckets, history_len=cfg.history_len)
    tr = _Trainer(world, space, cfg, EVENTS)
    log = PositiveLog.build(world.interactions, EVENTS, world.n_users)
    from candgen.model.features import negatives_by_user
    neg = negatives_by_user(world.interactions, EVENTS, world.n_users)
    lq = _log_q_table(log, world.n_items, 64, cfg.random_negatives)
    for s in range(5):
        tr.refresh_bank()
        tr.step(log, np.arange(s * 64, (s + 1) * 64), log_q_table=lq, neg=neg, weight_scale=1.0)
    return tr


@pytest.fixture(scope="module")
def model(trainer):
    return trainer.export(small_config(), {"note": "test"})


def test_item_tower_matches_torch(world, trainer, model):
    now = int(world.interactions.timestamp.max())
    rows = np.arange(world.n_items)
    with torch.no_grad():
        ref = trainer.model.item(*trainer._item_tensors(rows, now)).numpy()
    got = model.item_embeddings(world, now=now)
    assert got.shape == (world.n_items, model.dim) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert (age_bucket(world.item_created_at, now) > 0).all()  # the age feature is really exercised


def test_user_tower_matches_torch(world, trainer, model):
    log = PositiveLog.build(world.interactions, EVENTS, world.n_users)
    users = np.array([0, 5, 77])
    n_before = np.array([0, 3, 9])
    hist, hw = log.history(users, n_before, model.space.history_len, model.space.history_decay)
    wn = hw / np.maximum(hw.sum(1, keepdims=True), 1e-30)
    bank = model.catalog_vectors
    attrs = model.space.encode_user_attributes(world, users)
    interests = model.space.encode_user_interests(world, users)
    hour = hour_bucket(np.array([0, 3600 * 5, 3600 * 23]))
    device = np.array([0, 2, 1])
    ids = model.id_buckets(hist) * (hw > 0)
    with torch.no_grad():
        t = torch.from_numpy
        ref = trainer.model.user(
            t(attrs.astype(np.int64)), t(interests.astype(np.int64)), t(device), t(hour.astype(np.int64)),
            t(history_len_bucket((hw > 0).sum(1)).astype(np.int64)), t(ids),
            t((wn[:, :, None] * bank[hist]).sum(1).astype(np.float32)), t(wn.astype(np.float32)),
        ).numpy()
    got = model.embed_user_codes(attributes=attrs, interests=interests, device=device, hour=hour, history_ids=ids,
                                 history_weights=hw, history_vectors=(wn[:, :, None] * bank[hist]).sum(1))
    np.testing.assert_allclose(got, ref, atol=1e-5)
    # the one-request path agrees with the batched one
    segment = world.user_attributes["segment"]
    _, event_w = log.history(users, n_before, model.space.history_len, 1.0)  # event weights, no recency decay
    for r, u in enumerate(users):
        k = int((hw[r] > 0).sum())
        one = model.embed_user(
            attributes={"segment": segment.vocab.id(int(segment.codes[u]))},
            interests=[world.tags.id(int(i)) for i in world.user_interests.row(int(u))],
            context={"device": model.space.devices[device[r] - 1]} if device[r] else {},
            history_items=hist[r, :k], history_weights=event_w[r, :k], history_item_vectors=bank[hist[r, :k]],
            now=int([0, 3600 * 5, 3600 * 23][r]))
        np.testing.assert_allclose(one, ref[r], atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(one), 1.0, atol=1e-5)


def test_embed_users_and_recommend_exclude_seen(world, model):
    users = np.array([1, 2, 3])
    emb = model.embed_users(world, users)
    assert emb.shape == (3, model.dim)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    rec = model.recommend(world, users, 5)
    assert rec.ids.shape == (3, 5) and (np.diff(rec.scores, axis=1) <= 0).all()
    for r, u in enumerate(users):
        seen = set(world.interactions.item[world.interactions.user == u].tolist())
        assert not seen & set(rec.ids[r].tolist())
    big = model.recommend(world, users[:1], world.n_items + 3)  # more than the catalog: padded with -1
    n_seen = len(set(world.interactions.item[world.interactions.user == 1].tolist()))
    assert (big.ids[0] == -1).sum() == 3 + n_seen and len(big[0]) == world.n_items - n_seen


def test_recommend_in_small_blocks_gives_the_same_lists(world, model, monkeypatch):
    """Large catalogs are scored a few users at a time (memory); the lists do not depend on the block size (the
    scores up to the last bit of float32: BLAS sums in another order for another matrix shape)."""
    users = np.arange(1, 40)
    whole = model.recommend(world, users, 7)
    monkeypatch.setattr("candgen.model.export.RECOMMEND_BLOCK_SCORES", 3 * world.n_items)  # 3 users per block
    blocks = model.recommend(world, users, 7)
    np.testing.assert_array_equal(blocks.ids, whole.ids)
    np.testing.assert_allclose(blocks.scores, whole.scores, rtol=1e-6, atol=1e-6)


def test_embed_user_errors_and_catalog_default(model):
    with pytest.raises(ValueError, match="history_weights has 1 entries for 2"):
        model.embed_user(attributes={}, interests=[], context={}, history_items=np.array([1, 2]),
                         history_weights=np.array([1.0]))
    with pytest.raises(ValueError, match="history_item_vectors has 1 rows"):
        model.embed_user(attributes={}, interests=[], context={}, history_items=np.array([1, 2]),
                         history_weights=np.array([1.0, 1.0]), history_item_vectors=model.catalog_vectors[:1])
    w = np.array([1.0, 3.0])
    a = model.embed_user(attributes={}, interests=[], context={"hour": "3"}, history_items=np.array([4, 9]),
                         history_weights=w)
    b = model.embed_user(attributes={}, interests=[], context={"hour": "3"}, history_items=np.array([4, 9]),
                         history_weights=w, history_item_vectors=model.catalog_vectors[[4, 9]])
    np.testing.assert_allclose(a, b, atol=1e-6)
    # a malformed hour is treated as unknown; the hour also comes from `now`
    odd = model.embed_user(attributes={}, interests=[], context={"hour": "noon"}, history_items=np.array([4, 9]),
                           history_weights=w)
    none = model.embed_user(attributes={}, interests=[], context={}, history_items=np.array([4, 9]), history_weights=w)
    at3 = model.embed_user(attributes={}, interests=[], context={}, history_items=np.array([4, 9]), history_weights=w,
                           now=3 * 3600)
    np.testing.assert_allclose(odd, none, atol=1e-6)
    np.testing.assert_allclose(at3, a, atol=1e-6)
    # an item outside the catalog without its vector is ignored rather than failing
    c = model.embed_user(attributes={}, interests=[], context={"hour": "3"}, history_items=np.array([4, 9, 10**6]),
                         history_weights=np.append(w, 0.5))
    assert c.shape == (model.dim,)


def test_save_load_round_trip(tmp_path, world, model):
    model.save(tmp_path / "m")
    again = TwoTowerModel.load(tmp_path / "m")
    assert again.version == model.version and again.dim == model.dim and again.info == {"note": "test"}
    np.testing.assert_array_equal(again.item_embeddings(world), model.item_embeddings(world))
    np.testing.assert_array_equal(again.embed_users(world, np.arange(4)), model.embed_users(world, np.arange(4)))
    with np.load(tmp_path / "m" / "weights.npz", allow_pickle=False) as z:
        assert "catalog_vectors" in z.files


def test_load_errors(tmp_path, model):
    with pytest.raises(ArtifactError, match="not a two-tower model directory"):
        TwoTowerModel.load(tmp_path / "missing")
    model.save(tmp_path / "m")
    meta = tmp_path / "m" / "model.json"
    meta.write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        TwoTowerModel.load(tmp_path / "m")
    model.save(tmp_path / "m")
    d = json.loads(meta.read_text())
    d["format"] = 99
    meta.write_text(json.dumps(d))
    with pytest.raises(ArtifactError, match="format 99"):
        TwoTowerModel.load(tmp_path / "m")
    model.save(tmp_path / "m")
    arrays = dict(np.load(tmp_path / "m" / "weights.npz", allow_pickle=False))
    del arrays["catalog_id_bucket"]
    np.savez(tmp_path / "m" / "weights.npz", **arrays)
    with pytest.raises(ArtifactError, match="missing array"):
        TwoTowerModel.load(tmp_path / "m")


def test_new_item_from_content_lands_near_its_tags(world):
    trained = train_two_tower(world, config=small_config(id_dropout=0.3), events=EVENTS, refit=False)
    vectors = trained.item_embeddings(world)
    new = trained.embed_items(tags=[["t3", "x1"]], categories=["c3"], creators=["someone new"], created_at=[None])
    assert new.shape == (1, trained.dim)
    np.testing.assert_allclose(np.linalg.norm(new, axis=1), 1.0, atol=1e-5)
    top = np.argsort(-(vectors @ new[0]))[:10]
    assert (topic_of_item(world)[top] == 3).mean() >= 0.9
    # a catalog item re-embedded through embed_items with its dense id equals the catalog embedding
    now = int(world.interactions.timestamp.max())
    again = trained.embed_items(tags=[[world.tags.id(int(t)) for t in world.item_tags.row(0)]],
                                categories=[world.item_category.vocab.id(int(world.item_category.codes[0]))],
                                creators=[world.item_creator.vocab.id(int(world.item_creator.codes[0]))],
                                created_at=[int(world.item_created_at[0])], item_ids=np.array([0]), now=now)
    np.testing.assert_allclose(again[0], trained.item_embeddings(world, now=now)[0], atol=1e-6)
    with pytest.raises(ValueError, match="one entry per item"):
        trained.embed_items(tags=[["t1"]], categories=[], creators=[None], created_at=[None])


def test_export_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import candgen.model.export, candgen.model.features, candgen.model\n"
            "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
