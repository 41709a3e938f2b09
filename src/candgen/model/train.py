"""Training of the two-tower model on CPU (PyTorch), ending in the numpy export `TwoTowerModel`.

One training example per positive engagement, weighted by its event weight; the user features of an
example come from that user's positives strictly before it (sequential, no leakage). Negatives are
mixed: the other positives of the batch, `random_negatives` uniform catalog items shared by the batch,
and one hard negative per user (an item they hid, disliked, blocked or rated low) when the data has
them. The sampled softmax subtracts log(expected count of each candidate in the sampled set)
= log(B * p_item + M / n_items), which is the logQ correction for this mixture.

Early stopping on recall@`eval_k` of a validation slice (by default the last 10% of the training
interactions by time; the model is then retrained on all the data for the best number of epochs, so the
freshest engagements are not lost).

Speed (benchmarks/README.md, "training"): a background thread assembles the next batches in numpy
(`batches.py`) while this thread trains; each embedding table is read once per batch through weighted bags
(`TwoTower.encode`), the item tower and the softmax see each distinct candidate once, and the dense
parameters share one fused AdamW kernel (tables of `towers.SPARSE_ROWS` rows or more use SparseAdam).
"""

from __future__ import annotations

import os

# Before torch loads OpenMP: busy-waiting worker threads make every step ~10x slower as soon as the machine
# has more runnable threads than cores (measured: 2 threads on a loaded 2-core machine, 800 vs 11k examples
# per CPU-second). A user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import copy  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F

from candgen.config import EventsConfig, ModelConfig
from candgen.data.dataset import Csr, Dataset, Interactions
from candgen.errors import CandgenError
from candgen.model.batches import Batch, BatchMaker
from candgen.model.export import TwoTowerModel
from candgen.model.features import FeatureSpace, ItemCodes, PositiveLog, age_bucket, negatives_by_user
from candgen.model.fused import fused_softmax_loss
from candgen.model.losses import accidental_hits, retrieval_loss
from candgen.model.prefetch import can_fork, prefetch
from candgen.model.towers import TwoTower
from candgen.types import NO_PROGRESS, Progress

VALID_FRACTION = 0.1
LOSSES = ("softmax", "contrastive", "triplet")
TASK = "two-tower training"


def check_config(config: ModelConfig) -> None:
    """Reject settings that cannot train, with a message naming the field."""
    problems = []
    if config.loss not in LOSSES:
        problems.append(f"model.loss is {config.loss!r}; expected one of {', '.join(LOSSES)}")
    for name in ("dim", "epochs", "batch_size", "history_len", "id_buckets", "eval_k"):
        if getattr(config, name) < 1:
            problems.append(f"model.{name} must be >= 1, got {getattr(config, name)}")
    if config.batch_size < 2:
        problems.append("model.batch_size must be >= 2 (in-batch negatives)")
    if config.temperature <= 0 or config.learning_rate <= 0:
        problems.append("model.temperature and model.learning_rate must be > 0")
    if not 0 <= config.id_dropout < 1:
        problems.append(f"model.id_dropout must be in [0, 1), got {config.id_dropout}")
    if config.random_negatives < 0 or config.patience < 0 or config.threads < 0 or config.valid_users < 0:
        problems.append("model.random_negatives, model.patience, model.threads and model.valid_users must be >= 0")
    if problems:
        raise CandgenError("; ".join(problems))


def split_last(interactions: Interactions, fraction: float = VALID_FRACTION) -> tuple[Interactions, Interactions]:
    """(earlier, later) parts of a time-sorted log; `later` holds about the last `fraction` of rows by time."""
    if len(interactions) == 0:
        return interactions, interactions
    cutoff = np.quantile(interactions.timestamp, 1 - fraction, method="higher")
    later = interactions.timestamp >= cutoff
    if later.all():  # one timestamp: fall back to row order
        later = np.arange(len(interactions)) >= int(len(interactions) * (1 - fraction))
    return interactions.take(~later), interactions.take(later)


@dataclass
class TrainReport:
    epochs_run: int = 0
    best_epoch: int = 0
    best_valid_recall: float = float("nan")
    valid_recalls: list[float] | None = None
    examples: int = 0
    examples_per_s: float = 0.0
    seconds: float = 0.0
    final_loss: float = float("nan")
    epoch_losses: list[float] | None = None  # mean training loss of each epoch (of the last fit)


class _Trainer:
    """State of one training run: encoded features, the torch model, optimisers and the history bank."""

    def __init__(self, ds: Dataset, space: FeatureSpace, config: ModelConfig, events: EventsConfig) -> None:
        self.ds, self.space, self.config, self.events = ds, space, config, events
        self.rng = np.random.default_rng(config.seed)
        torch.manual_seed(config.seed)
        self.batches = BatchMaker(ds, space, config, self.rng)
        self.codes = self.batches.codes
        self.user_attrs, self.user_interests = self.batches.user_attrs, self.batches.user_interests
        self.model = TwoTower(space, config.dim)
        sparse = self.model.tables.sparse_parameters()
        dense = [p for p in self.model.parameters() if all(p is not q for q in sparse)]
        self.opt_sparse = torch.optim.SparseAdam(sparse, lr=config.learning_rate) if sparse else None
        # fused: one kernel over all dense tensors instead of a dozen small ops per tensor per step
        self.opt_dense = torch.optim.AdamW(dense, lr=config.learning_rate, weight_decay=config.weight_decay,
                                           fused=True)
        self.now = int(ds.interactions.timestamp.max()) if len(ds.interactions) else 0
        # (version, vectors): replaced whole by each refresh, never written in place, so the batch thread can pool
        # a batch's history from the version it reads while this thread refreshes
        self._bank = (0, torch.zeros(ds.n_items, config.dim))
        self._inv_q_of: torch.Tensor | None = None
        self._inv_q_table = np.zeros(0)

    def _item_tensors(self, items: np.ndarray, now: np.ndarray | int) -> list[torch.Tensor]:
        """Padded per-feature codes of `items` for the reference `ItemTower.forward`."""
        c = self.codes.take(items)
        return [torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)) for a in
                (c.id_bucket, c.tags, c.category, c.creator, age_bucket(c.created_at, now))]

    @property
    def bank(self) -> torch.Tensor:
        return self._bank[1]

    def refresh_bank(self) -> None:
        """Item-tower outputs of the whole catalog: the (gradient-free) history item vectors."""
        self.model.eval()
        bank = torch.empty_like(self.bank)
        with torch.no_grad():
            for s in range(0, self.ds.n_items, 65_536):
                rows = np.arange(s, min(self.ds.n_items, s + 65_536))
                bank[rows] = self.model.item(*self._item_tensors(rows, self.now))
        self.model.train()
        self._bank = (self._bank[0] + 1, bank)

    def pool_history(self, batch: Batch) -> Batch:
        """Pools `batch`'s history over the current bank ahead of its step (the batch thread calls this); the step
        uses the pool only if the bank has not been refreshed since."""
        version, bank = self._bank
        batch.history_pool = (version, _pool(batch, bank))
        return batch

    def history_vectors(self, batch: Batch) -> torch.Tensor:
        """(B, D) weighted pool of the history items' bank vectors (no gradient)."""
        version, bank = self._bank
        if batch.history_pool is not None and batch.history_pool[0] == version:
            return batch.history_pool[1]
        return _pool(batch, bank)

    def loss(self, batch: Batch, users: torch.Tensor, items: torch.Tensor, *, log_q_table: torch.Tensor | None,
             weight_scale: float) -> torch.Tensor:
        """The retrieval loss (any `ModelConfig.loss`) of a batch given its user vectors (B, D) and one vector per
        candidate occurrence (C, D): the straightforward form, and the path of the contrastive and triplet losses."""
        cfg = self.config
        b, m = len(batch.items), batch.n_random
        scores = users @ items[: b + m].T
        ids = torch.from_numpy(batch.cand[: b + m])
        log_q = log_q_table[ids] if log_q_table is not None else None
        target = torch.arange(b)
        valid = ~accidental_hits(torch.from_numpy(batch.items), ids, target)
        hard = batch.hard
        if hard is not None:  # one more column per user: its own hard negative (no logQ: not sampled by popularity)
            scores = torch.cat([scores, (users * items[b + m:]).sum(dim=1, keepdim=True)], dim=1)
            valid = torch.cat([valid, torch.from_numpy((hard >= 0) & (hard != batch.items))[:, None]], dim=1)
            if log_q is not None:
                log_q = torch.cat([log_q, torch.zeros(1)])
        weight = torch.from_numpy(batch.weight * weight_scale)
        return retrieval_loss(cfg.loss, scores, target, valid, temperature=cfg.temperature, margin=cfg.margin,
                              log_q=log_q, weight=weight)

    def batch(self, log: PositiveLog, ex: np.ndarray, neg: Csr, log_q_table: torch.Tensor | None) -> Batch:
        return self.batches.make(log, ex, neg, self.inv_q(log_q_table))

    def step(self, log: PositiveLog, ex: np.ndarray, *, log_q_table: torch.Tensor | None, neg: Csr,
             weight_scale: float) -> float:
        """Assemble and train on the batch of examples `ex` (rows of `log`); returns the loss."""
        return self.train_batch(self.batch(log, ex, neg, log_q_table), log_q_table=log_q_table,
                                weight_scale=weight_scale)

    def train_batch(self, batch: Batch, *, log_q_table: torch.Tensor | None, weight_scale: float) -> float:
        loss = self.batch_loss(batch, log_q_table=log_q_table, weight_scale=weight_scale)
        for opt in (self.opt_sparse, self.opt_dense):
            if opt is not None:
                opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in (self.opt_sparse, self.opt_dense):
            if opt is not None:
                opt.step()
        return float(loss.detach())

    def batch_loss(self, batch: Batch, *, log_q_table: torch.Tensor | None, weight_scale: float) -> torch.Tensor:
        """The training loss of a batch through the fast path: each table read once (`TwoTower.encode`), each
        distinct candidate embedded and (for the softmax) scored once."""
        if batch.softmax is not None and batch.softmax_weight is not None:
            # weight_scale cancels in the weighted mean
            return fused_softmax_loss(self.model, batch.id_bags, batch.feat_bags, batch.n_unique,
                                      self.history_vectors(batch), batch.softmax, temperature=self.config.temperature,
                                      weight=torch.from_numpy(batch.softmax_weight))
        users, unique_items = self.model.encode(batch.id_bags, batch.feat_bags, batch.n_unique,
                                                self.history_vectors(batch))
        items = unique_items[torch.from_numpy(batch.inverse)]
        return self.loss(batch, users, items, log_q_table=log_q_table, weight_scale=weight_scale)

    def inv_q(self, log_q_table: torch.Tensor | None) -> np.ndarray | None:
        """exp(-logQ) per item (cached per table)."""
        if log_q_table is None:
            return None
        if self._inv_q_of is not log_q_table:
            self._inv_q_of, self._inv_q_table = log_q_table, np.exp(-log_q_table.numpy().astype(np.float64))
        return self._inv_q_table

    def export(self, config: ModelConfig, info: dict[str, object]) -> TwoTowerModel:
        self.refresh_bank()
        return TwoTowerModel(space=self.space, weights=self.model.export_weights(),
                             catalog_vectors=self.bank.numpy().copy(), catalog_id_bucket=self.codes.id_bucket,
                             config=asdict(config), info=info)


def _pool(batch: Batch, bank: torch.Tensor) -> torch.Tensor:
    return F.embedding_bag(torch.from_numpy(batch.hist), bank, mode="sum",
                           per_sample_weights=torch.from_numpy(batch.hist_weights))


def batch_bytes(config: ModelConfig) -> int:
    """A shared-memory slot big enough for one batch's arrays, with room to spare: the softmax bias (B x the
    B + M sampled candidates) and the histories dominate (measured 1.0 MB at the default B=256, 6.3 MB at 1024)."""
    b, m, h = config.batch_size, config.random_negatives, config.history_len
    return 2 * (b * (b + m) * 4 + b * h * 24) + (1 << 20)


def _log_q_table(log: PositiveLog, n_items: int, batch: int, n_random: int) -> torch.Tensor:
    """log of the expected count of each item in one batch's sampled candidates (in-batch + uniform)."""
    freq = np.bincount(log.item, weights=None, minlength=n_items).astype(np.float64)
    p = freq / max(freq.sum(), 1)
    return torch.from_numpy(np.log(batch * p + n_random / n_items + 1e-12).astype(np.float32))


def recall_at_k(model: TwoTowerModel, history: Dataset, future: Interactions, events: EventsConfig,
                k: int, *, max_users: int = 0, seed: int = 0) -> float:
    """Mean recall@k over users with positive future engagements on items they had not seen in `history`: all of
    them, or `max_users` drawn at random (by `seed`) when there are more. Scoring a user against the whole catalog
    is the cost (at 1M items, ~10 ms each): early stopping needs an estimate, not every user."""
    fut = future.take(future.weights(events) > 0)
    if not len(fut):
        return float("nan")
    n_items = max(history.n_items, int(fut.item.max()) + 1)
    seen = np.unique(history.interactions.user.astype(np.int64) * n_items + history.interactions.item)
    key = np.unique(fut.user.astype(np.int64) * n_items + fut.item)  # distinct (user, item) pairs, sorted by user
    key = key[~np.isin(key, seen, assume_unique=True)]
    if not len(key):
        return float("nan")
    user, item = key // n_items, key % n_items
    users, starts = np.unique(user, return_index=True)
    truth = np.split(item, starts[1:])
    if max_users and len(users) > max_users:
        pick = np.sort(np.random.default_rng(seed).choice(len(users), size=max_users, replace=False))
        users, truth = users[pick], [truth[i] for i in pick]
    rec = model.recommend(history, users, k, events=events, now=int(future.timestamp.min()))
    hits = [np.isin(t, rec.ids[r]).sum() / len(t) for r, t in enumerate(truth)]
    return float(np.mean(hits))


def train_two_tower(train: Dataset, *, config: ModelConfig, events: EventsConfig, valid: Interactions | None = None,
                    progress: Progress = NO_PROGRESS, refit: bool = True,
                    held_out: list[TwoTowerModel] | None = None) -> TwoTowerModel:
    """Train both towers on `train` and return the numpy export (its `info["train"]` is a `TrainReport`).

    Without `valid`, the last 10% of `train` by time is held out to choose the number of epochs (early
    stopping on recall@eval_k); with `refit` the model is then retrained on all of `train` for that many
    epochs, so the freshest engagements are learnt too. With `valid`, `train` is used whole.

    `held_out`, when given, receives the early-stopped model that never saw the held-out last 10% (before
    the refit): the train-time calibration measures the sources on that slice without leakage.
    """
    check_config(config)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(default_threads(config))
    try:
        refit = refit and valid is None
        valid_inter: Interactions | None
        fit_inter, valid_inter = split_last(train.interactions) if valid is None else (train.interactions, valid)
        space = FeatureSpace.from_dataset(train, id_buckets=config.id_buckets, history_len=config.history_len)
        total = config.epochs + (config.epochs if refit else 0)
        if valid is None and int((fit_inter.weights(events) > 0).sum()) < 2:
            # too little data before the validation slice: train on everything without early stopping
            fit_inter, valid_inter, refit = train.interactions, None, False
        model, report = _fit(train.with_interactions(fit_inter), space, config, events, valid=valid_inter,
                             epochs=config.epochs, progress=progress, total_epochs=total)
        if refit and valid_inter is not None and len(valid_inter):
            if held_out is not None:
                held_out.append(model)
            model, refit_report = _fit(train, space, config, events, valid=None, epochs=report.best_epoch,
                                       progress=progress, total_epochs=report.epochs_run + report.best_epoch)
            report.examples += refit_report.examples
            report.seconds += refit_report.seconds
            report.examples_per_s = report.examples / max(report.seconds, 1e-9)
            report.final_loss, report.epoch_losses = refit_report.final_loss, refit_report.epoch_losses
        progress.done(TASK)
        model.info["train"] = asdict(report)
        return model
    finally:
        torch.set_num_threads(prev_threads)


def default_threads(config: ModelConfig) -> int:
    """`config.threads`, or the machine's cores (at most 2 per the design) less the one the batch process takes
    (`batch_process`) - and 1 when the machine is already busy: OpenMP threads spin-waiting on an oversubscribed
    machine make each step many times slower (measured: 2 torch threads beside the batch process on 2 cores,
    26-40k examples/s against 67k with 1)."""
    if config.threads:
        return config.threads
    cores = min(2, os.cpu_count() or 1) - (1 if config.batch_process and can_fork() else 0)
    try:
        busy = os.getloadavg()[0] > (os.cpu_count() or 1) - 0.5
    except OSError:  # not available on this platform
        busy = False
    return 1 if busy else max(1, cores)


def _fit(ds: Dataset, space: FeatureSpace, config: ModelConfig, events: EventsConfig, *, valid: Interactions | None,
         epochs: int, progress: Progress, total_epochs: int) -> tuple[TwoTowerModel, TrainReport]:
    """Train a fresh model on `ds` for up to `epochs`; with `valid`, keep the epoch of best recall@eval_k and
    stop after `patience` epochs without improvement."""
    trainer = _Trainer(ds, space, config, events)
    log = PositiveLog.build(ds.interactions, events, ds.n_users)
    if len(log.item) < 2:
        raise CandgenError("training data has fewer than 2 positive engagements; nothing to learn from")
    neg = negatives_by_user(ds.interactions, events, ds.n_users)
    report = TrainReport(valid_recalls=[], epoch_losses=[])
    n, bs = len(log.item), min(config.batch_size, len(log.item))
    steps = n // bs  # drop the ragged last batch: the logQ correction assumes full batches
    log_q = _log_q_table(log, ds.n_items, bs, config.random_negatives) if config.logq_correction else None
    scale = float(1.0 / log.weight.mean())
    refresh_every = max(1, steps // 4)
    progress.task(TASK, total=total_epochs * steps * bs)
    best_state, best, stale = None, -1.0, 0
    t0, loss = time.perf_counter(), float("nan")

    inv_q = trainer.inv_q(log_q)

    def batches() -> Iterator[Batch]:  # runs in the prefetch process: the only user of trainer.rng during the fit
        for _ in range(epochs):
            perm = trainer.rng.permutation(n)
            for s in range(steps):
                yield trainer.batches.make(log, perm[s * bs:(s + 1) * bs], neg, inv_q)

    def pooled() -> Iterator[Batch]:  # the thread fallback also pools each history ahead (torch: not in a fork)
        return map(trainer.pool_history, batches())

    forked = config.batch_process and can_fork()
    with prefetch(batches if forked else pooled, slot_bytes=batch_bytes(config), processes=forked) as stream:
        for epoch in range(epochs):
            total_loss = 0.0
            for s in range(steps):
                if s % refresh_every == 0:
                    trainer.refresh_bank()
                loss = trainer.train_batch(next(stream), log_q_table=log_q, weight_scale=scale)
                total_loss += loss
                report.examples += bs
                rate = report.examples / (time.perf_counter() - t0)
                progress.advance(TASK, bs, epoch=epoch + 1, loss=loss, ex_s=rate)
            report.epochs_run = epoch + 1
            report.final_loss = loss
            report.epoch_losses.append(total_loss / max(steps, 1))  # type: ignore[union-attr]
            if valid is None:
                report.best_epoch = epoch + 1
                continue
            recall = recall_at_k(trainer.export(config, {}), ds, valid, events, config.eval_k,
                                 max_users=config.valid_users, seed=config.seed)
            report.valid_recalls.append(recall)  # type: ignore[union-attr]
            if math.isnan(recall) or recall > best:
                best, best_state, stale = recall, copy.deepcopy(trainer.model.state_dict()), 0
                report.best_epoch, report.best_valid_recall = epoch + 1, recall
            else:
                stale += 1
                if stale > config.patience:
                    break
    if best_state is not None:
        trainer.model.load_state_dict(best_state)
    report.seconds = time.perf_counter() - t0
    report.examples_per_s = report.examples / max(report.seconds, 1e-9)
    return trainer.export(config, {}), report


__all__ = ["ItemCodes", "TrainReport", "check_config", "recall_at_k", "split_last", "train_two_tower"]
