"""Training of the two-tower model on a tiny planted world: it learns, is deterministic, rejects bad config."""

from __future__ import annotations

import numpy as np
import pytest
from model_world import planted_world, topic_of_item, topic_of_user

from candgen.config import EventsConfig, ModelConfig
from candgen.errors import CandgenError
from candgen.model.train import check_config, recall_at_k, split_last, train_two_tower
from candgen.types import Progress

EVENTS = EventsConfig()


def small_config(**kw: object) -> ModelConfig:
    base: dict[str, object] = dict(dim=16, epochs=6, batch_size=64, random_negatives=16, learning_rate=0.02,
                                   patience=10, eval_k=10, threads=1, seed=1)
    base.update(kw)
    return ModelConfig(**base)  # type: ignore[arg-type]


class Recorder(Progress):
    def __init__(self) -> None:
        self.tasks: list[tuple[str, float | None]] = []
        self.fields: list[dict[str, object]] = []

    def task(self, name: str, total: float | None = None) -> None:
        self.tasks.append((name, total))

    def advance(self, name: str, n: float = 1, **fields: object) -> None:
        self.fields.append(fields)


@pytest.fixture(scope="module")
def world():
    return planted_world()


@pytest.fixture(scope="module")
def trained(world):
    rec = Recorder()
    model = train_two_tower(world, config=small_config(), events=EVENTS, progress=rec, refit=False)
    return model, rec


def _topic_precision(model, ds, k=10):
    users = np.arange(ds.n_users)
    rec = model.recommend(ds, users, k)
    hit = topic_of_item(ds)[rec.ids] == topic_of_user(ds)[users][:, None]
    return float(hit.mean())


def test_training_lowers_the_loss_and_learns_the_planted_topics(world, trained):
    model, rec = trained
    report = model.info["train"]
    assert report["epoch_losses"][-1] < report["epoch_losses"][0]
    assert _topic_precision(model, world) > 0.8  # random would be 0.25
    assert report["best_epoch"] >= 1 and report["examples"] > 0 and report["examples_per_s"] > 0
    assert rec.tasks and rec.tasks[0][0] == "two-tower training"
    assert {"loss", "ex_s", "epoch"} <= set(rec.fields[-1])


def test_new_user_with_interests_only_gets_their_topic(world, trained):
    model, _ = trained
    vectors = model.item_embeddings(world)
    u = model.embed_user(attributes={"segment": "s2"}, interests=["t2"], context={}, history_items=np.array([], int),
                         history_weights=np.array([], np.float32))
    top = np.argsort(-(vectors @ u))[:10]
    assert (topic_of_item(world)[top] == 2).mean() >= 0.8


@pytest.mark.parametrize("loss", ["contrastive", "triplet"])
def test_other_losses_train_too(world, loss):
    model = train_two_tower(world, config=small_config(loss=loss, epochs=3, learning_rate=0.01), events=EVENTS,
                            refit=False)
    assert _topic_precision(model, world) > 0.5


def test_deterministic_by_seed(world):
    cfg = small_config(epochs=1)
    a = train_two_tower(world, config=cfg, events=EVENTS)
    b = train_two_tower(world, config=cfg, events=EVENTS)
    c = train_two_tower(world, config=small_config(epochs=1, seed=2), events=EVENTS)
    np.testing.assert_array_equal(a.catalog_vectors, b.catalog_vectors)
    assert a.version == b.version != c.version
    assert not np.allclose(a.catalog_vectors, c.catalog_vectors)


def test_batches_made_in_a_process_or_a_thread_train_the_same_model(world):
    """The forked batch process continues the run's random generator, so it yields the batches the thread
    would; only where the history is pooled differs, over the same bank."""
    forked = train_two_tower(world, config=small_config(epochs=2, batch_process=True), events=EVENTS)
    threaded = train_two_tower(world, config=small_config(epochs=2, batch_process=False), events=EVENTS)
    np.testing.assert_allclose(forked.catalog_vectors, threaded.catalog_vectors, rtol=0, atol=1e-6)
    assert forked.info["train"]["examples"] == threaded.info["train"]["examples"]


def test_explicit_validation_set_and_no_extras(world):
    fit, valid = split_last(world.interactions, 0.2)
    assert len(fit) + len(valid) == len(world.interactions) and fit.timestamp.max() <= valid.timestamp.min()
    cfg = small_config(epochs=2, hard_negatives=False, random_negatives=0, logq_correction=False, id_dropout=0.0)
    model = train_two_tower(world.with_interactions(fit), config=cfg, events=EVENTS, valid=valid)
    assert len(model.info["train"]["valid_recalls"]) == model.info["train"]["epochs_run"]


@pytest.mark.parametrize(("field", "value", "message"), [
    ("loss", "hinge", "model.loss"),
    ("dim", 0, "model.dim"),
    ("batch_size", 1, "batch_size"),
    ("temperature", 0.0, "temperature"),
    ("id_dropout", 1.0, "id_dropout"),
    ("random_negatives", -1, "random_negatives"),
    ("valid_users", -1, "valid_users"),
])
def test_bad_config_is_a_user_error(field, value, message):
    with pytest.raises(CandgenError, match=message):
        check_config(small_config(**{field: value}))


def test_tiny_data_trains_without_a_validation_slice():
    import polars as pl

    from candgen.data.dataset import Dataset
    inter = pl.DataFrame({"user_id": ["a", "a", "b"], "item_id": ["x", "y", "x"], "timestamp": [1, 2, 2],
                          "event": ["click", "like", "view"]})
    ds = Dataset.from_frames(inter)
    model = train_two_tower(ds, config=small_config(epochs=2), events=EVENTS)
    assert model.info["train"]["epochs_run"] == 2 and model.info["train"]["valid_recalls"] == []
    assert model.item_embeddings(ds).shape == (2, 16)


def test_no_positive_engagements_is_a_user_error(world):
    only_dislikes = world.interactions.take(world.interactions.event == world.interactions.event.max())
    with pytest.raises(CandgenError, match="fewer than 2 positive"):
        train_two_tower(world.with_interactions(only_dislikes), config=small_config(), events=EVENTS)


def _reference_loss(tr, batch, log_q, scale):
    """The step's loss the plain way: per-feature reference towers, one item-tower row per candidate occurrence."""
    import torch

    from candgen.model.features import history_len_bucket

    t = torch.from_numpy
    c = tr.codes.take(batch.cand)
    items = tr.model.item(t(batch.cand_ids), t(c.tags.astype(np.int64)), t(c.category.astype(np.int64)),
                          t(c.creator.astype(np.int64)), t(batch.cand_age.astype(np.int64)))
    users = tr.model.user(
        t(tr.user_attrs[batch.users].astype(np.int64)), t(tr.user_interests[batch.users].astype(np.int64)),
        torch.zeros(len(batch.users), dtype=torch.int64), t(batch.hours),
        t(history_len_bucket((batch.hist_weights > 0).sum(1)).astype(np.int64)),
        t(tr.codes.id_bucket[batch.hist] * (batch.hist_weights > 0)), tr.history_vectors(batch), t(batch.hist_weights))
    return tr.loss(batch, users, items, log_q_table=log_q, weight_scale=scale)


@pytest.mark.parametrize(("loss", "sparse", "hard"), [("softmax", False, True), ("softmax", True, True),
                                                      ("softmax", False, False), ("contrastive", False, True)])
def test_fast_step_loss_and_gradients_equal_the_reference_path(world, loss, sparse, hard):
    """The training step (for the softmax: `fused.fused_softmax_loss`, one autograd node with a hand-written
    backward) against the per-feature reference towers and the per-occurrence loss through autograd."""
    import torch

    from candgen.model.features import FeatureSpace, PositiveLog, negatives_by_user
    from candgen.model.train import _log_q_table, _Trainer

    cfg = small_config(loss=loss, id_dropout=0.3, hard_negatives=hard)
    space = FeatureSpace.from_dataset(world, id_buckets=cfg.id_buckets, history_len=cfg.history_len)
    tr = _Trainer(world, space, cfg, EVENTS)
    tr.model.tables.sparse_ids = sparse
    log = PositiveLog.build(world.interactions, EVENTS, world.n_users)
    neg = negatives_by_user(world.interactions, EVENTS, world.n_users)
    lq = _log_q_table(log, world.n_items, 64, cfg.random_negatives)
    tr.refresh_bank()
    batch = tr.batch(log, np.arange(100, 164), neg, lq)
    assert batch.n_unique < len(batch.cand)  # the planted world's 100 items repeat within a batch
    assert (batch.cand_ids == 0).any()
    assert (batch.hard is not None and (batch.hard >= 0).any()) if hard else batch.hard is None

    def grads(loss_value):
        params = list(tr.model.parameters())
        gs = torch.autograd.grad(loss_value, params)
        return [g.to_dense() for g in gs]

    fast = tr.batch_loss(batch, log_q_table=lq, weight_scale=0.7)
    ref = _reference_loss(tr, batch, lq, 0.7)
    assert fast.item() == pytest.approx(ref.item(), rel=1e-5)
    for a, b in zip(grads(fast), grads(ref), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_sparse_tables_train_with_sparse_adam(world, monkeypatch):
    import candgen.model.towers as towers

    monkeypatch.setattr(towers, "SPARSE_ROWS", 10)  # every table of the planted world counts as big
    model = train_two_tower(world, config=small_config(epochs=4), events=EVENTS, refit=False)
    assert _topic_precision(model, world) > 0.8
    assert not model.weights["item.id_emb.weight"][0].any()  # the unknown row never moves


def test_history_pooled_ahead_is_used_only_while_the_bank_is_unchanged(world):
    """The batch thread pools a batch's history over the bank it sees (`pool_history`); a refresh in between
    makes the step pool it again over the new bank, so prefetching never trains on stale history vectors."""
    import torch

    from candgen.model.features import FeatureSpace, PositiveLog, negatives_by_user
    from candgen.model.train import _Trainer

    cfg = small_config()
    space = FeatureSpace.from_dataset(world, id_buckets=cfg.id_buckets, history_len=cfg.history_len)
    tr = _Trainer(world, space, cfg, EVENTS)
    log = PositiveLog.build(world.interactions, EVENTS, world.n_users)
    neg = negatives_by_user(world.interactions, EVENTS, world.n_users)
    tr.refresh_bank()
    batch = tr.pool_history(tr.batch(log, np.arange(100, 164), neg, None))
    assert batch.history_pool is not None
    pooled = batch.history_pool[1]
    assert tr.history_vectors(batch) is pooled and pooled.abs().sum() > 0
    with torch.no_grad():
        tr.model.item.mlp.fc2.bias.add_(1.0)  # every item vector moves
    tr.refresh_bank()
    fresh = tr.history_vectors(batch)
    assert not torch.allclose(fresh, pooled)
    torch.testing.assert_close(fresh, tr.pool_history(batch).history_pool[1])  # type: ignore[index]


def test_default_threads_leave_a_core_to_the_batch_process(monkeypatch):
    import candgen.model.train as train_mod

    monkeypatch.setattr(train_mod.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(train_mod.os, "getloadavg", lambda: (0.2, 0.2, 0.2))
    monkeypatch.setattr(train_mod, "can_fork", lambda: True)
    assert train_mod.default_threads(small_config(threads=0, batch_process=True)) == 1
    assert train_mod.default_threads(small_config(threads=0, batch_process=False)) == 2
    assert train_mod.default_threads(small_config(threads=3)) == 3  # the user's setting wins
    monkeypatch.setattr(train_mod, "can_fork", lambda: False)  # no fork: the batches come from a thread
    assert train_mod.default_threads(small_config(threads=0, batch_process=True)) == 2
    monkeypatch.setattr(train_mod.os, "getloadavg", lambda: (5.0, 5.0, 5.0))
    assert train_mod.default_threads(small_config(threads=0, batch_process=False)) == 1  # a busy machine


def test_validation_recall_counts_only_unseen_positive_items_and_samples_users(world, trained):
    model = trained[0]
    fit, valid = split_last(world.interactions, 0.3)
    history = world.with_interactions(fit)
    # the reference: every user with a positive future item not seen in history, sets per user
    w = valid.weights(EVENTS)
    seen = set(zip(fit.user.tolist(), fit.item.tolist(), strict=True))
    truth: dict[int, set[int]] = {}
    for u, i, x in zip(valid.user.tolist(), valid.item.tolist(), w.tolist(), strict=True):
        if x > 0 and (u, i) not in seen:
            truth.setdefault(u, set()).add(i)
    users = np.array(sorted(truth))
    rec = model.recommend(history, users, 10, events=EVENTS, now=int(valid.timestamp.min()))
    want = np.mean([len(truth[int(u)] & set(rec.ids[r].tolist())) / len(truth[int(u)]) for r, u in enumerate(users)])
    assert len(users) > 20
    assert recall_at_k(model, history, valid, EVENTS, 10) == pytest.approx(want)
    assert recall_at_k(model, history, valid, EVENTS, 10, max_users=len(users)) == pytest.approx(want)
    # a sample: the mean over exactly those users, the same sample for the same seed
    a = recall_at_k(model, history, valid, EVENTS, 10, max_users=8, seed=3)
    assert a == recall_at_k(model, history, valid, EVENTS, 10, max_users=8, seed=3)
    pick = np.sort(np.random.default_rng(3).choice(len(users), size=8, replace=False))
    sample = [(r, int(users[r])) for r in pick]
    assert a == pytest.approx(np.mean([len(truth[u] & set(rec.ids[r].tolist())) / len(truth[u]) for r, u in sample]))
    nothing = valid.take(np.zeros(len(valid), dtype=bool))
    assert np.isnan(recall_at_k(model, history, nothing, EVENTS, 10))
