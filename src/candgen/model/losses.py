"""The retrieval task: scores of users against sampled candidates, and the losses over them.

Every loss takes the same inputs, so the sampling (in-batch + uniform random + hard negatives) is
shared and only the objective changes with `ModelConfig.loss`:

- `scores` (B, C): cosine similarity of user b with candidate c;
- `target` (B,): the column holding user b's positive item;
- `valid` (B, C): False where a candidate must not count as a negative (accidental hits: the user's
  own positive appearing in another column; missing hard negatives);
- `log_q` (B, C) or None: log of the expected number of times each candidate appears in the sampled
  set, subtracted from the logits (the sampling-probability correction of Yi et al. 2019), so popular
  items are not over-penalised just for being sampled more often.

`grouped_softmax_inputs` + `grouped_softmax_loss` compute the same softmax loss with each distinct candidate
scored once: a candidate that occurs k times among a user's (logQ-corrected) candidates contributes
k * exp(s/T - logQ) to the partition function, i.e. one logit s/T + log(k exp(-logQ)). The training
step uses it because the item tower then runs once per distinct item of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

MASKED = -1e9  # finite, so a row whose negatives are all masked still has a defined softmax


def accidental_hits(positive_ids: torch.Tensor, candidate_ids: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, C) True where candidate c is user b's positive item but not in its target column."""
    hits = candidate_ids == positive_ids[:, None]
    hits[torch.arange(len(target)), target] = False
    return hits


def softmax_loss(scores: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, *, temperature: float,
                 log_q: torch.Tensor | None = None, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Sampled softmax cross-entropy with temperature, logQ correction and masked accidental hits."""
    logits = scores / temperature
    if log_q is not None:
        logits = logits - log_q
    logits = logits.masked_fill(~valid, MASKED)
    loss = F.cross_entropy(logits, target, reduction="none")
    return _mean(loss, weight)


def contrastive_loss(scores: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, *, margin: float,
                     weight: torch.Tensor | None = None) -> torch.Tensor:
    """Pairwise contrastive loss (Hadsell et al. 2006) on cosine similarity: pull the positive to 1,
    push each valid negative below `margin`: (1 - s+)^2 + mean over negatives of relu(s- - margin)^2."""
    rows = torch.arange(len(target))
    pos = scores[rows, target]
    neg_mask = valid.clone()
    neg_mask[rows, target] = False
    neg = F.relu(scores - margin).pow(2) * neg_mask
    n_neg = neg_mask.sum(dim=1).clamp(min=1)
    loss = (1 - pos).pow(2) + neg.sum(dim=1) / n_neg
    return _mean(loss, weight)


def triplet_loss(scores: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, *, margin: float,
                 weight: torch.Tensor | None = None) -> torch.Tensor:
    """Triplet margin loss with the hardest valid negative per user: relu(margin - s+ + max s-)."""
    rows = torch.arange(len(target))
    pos = scores[rows, target]
    neg_mask = valid.clone()
    neg_mask[rows, target] = False
    hardest = scores.masked_fill(~neg_mask, MASKED).max(dim=1).values
    loss = F.relu(margin - pos + hardest) * neg_mask.any(dim=1)
    return _mean(loss, weight)


@dataclass
class GroupedSoftmax:
    """A batch's inputs to `grouped_softmax_loss` (numpy), from `grouped_softmax_inputs`."""

    bias: np.ndarray  # (B, S) float32 over the S groups holding sampled candidates (the first S groups)
    target: np.ndarray  # (B,) int64, the group of each user's positive
    hard: np.ndarray | None  # (B,) int64, the group of each user's hard negative (any group when it has none)
    hard_bias: np.ndarray | None  # (B,) float32, 0 or MASKED (no valid hard negative)


def grouped_softmax_inputs(inverse: np.ndarray, cand: np.ndarray, items: np.ndarray, n_random: int,
                           hard: np.ndarray | None, inv_q: np.ndarray | None) -> GroupedSoftmax:
    """The sampled softmax of a batch over its distinct candidates ("groups").

    cand (C,): the B positives (user b's target is candidate b), `n_random` shared random negatives, then, if
    `hard` is given, one hard negative per user (hard[b] = -1: none); inverse (C,): each candidate's group, the
    groups of the B + n_random sampled candidates numbered first. inv_q (n_items,): exp(-logQ) per item, None
    for no correction. bias[b, g] = log of the summed correction weights of the sampled candidates in group g
    (log-multiplicity); the positive counts once, every other occurrence of the user's positive item (accidental
    hits) is MASKED. Each hard negative keeps a column of its own user (weight 1: not sampled by popularity).
    """
    b, s = len(items), len(items) + n_random
    present = np.bincount(inverse[:s]) > 0
    if not present.all():
        raise ValueError("the groups of the sampled candidates must be numbered 0..S-1, before the hard-only ones")
    n_sampled = len(present)
    corr = inv_q[cand[:s]] if inv_q is not None else np.ones(s)
    base = np.bincount(inverse[:s], weights=corr, minlength=n_sampled)
    group_item = np.empty(n_sampled, dtype=np.int64)
    group_item[inverse[:s]] = cand[:s]
    bias = np.repeat(np.log(base)[None, :], b, axis=0)  # every sampled group has a positive weight
    bias[group_item[None, :] == items[:, None]] = MASKED
    rows, target = np.arange(b), inverse[:b]
    bias[rows, target] = np.log(corr[:b])
    if hard is None:
        return GroupedSoftmax(bias.astype(np.float32), target.astype(np.int64), None, None)
    ok = (hard >= 0) & (hard != items)
    return GroupedSoftmax(bias.astype(np.float32), target.astype(np.int64), inverse[s:].astype(np.int64),
                          np.where(ok, 0.0, MASKED).astype(np.float32))


def grouped_softmax_loss(users: torch.Tensor, groups: torch.Tensor, inputs: GroupedSoftmax, *, temperature: float,
                         weight: torch.Tensor) -> torch.Tensor:
    """Sampled softmax over distinct candidates (see `grouped_softmax_inputs`); groups (U, D) are the groups'
    item vectors, weight (B,) sums to 1."""
    n_sampled = inputs.bias.shape[1]
    logits = torch.addmm(torch.from_numpy(inputs.bias), users, groups[:n_sampled].T, alpha=1.0 / temperature)
    if inputs.hard is not None and inputs.hard_bias is not None:
        hard = (users * groups[torch.from_numpy(inputs.hard)]).sum(dim=1, keepdim=True)
        logits = torch.cat([logits, torch.add(torch.from_numpy(inputs.hard_bias)[:, None], hard,
                                              alpha=1.0 / temperature)], dim=1)
    loss = F.cross_entropy(logits, torch.from_numpy(inputs.target), reduction="none")
    return (loss * weight).sum()


def retrieval_loss(name: str, scores: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, *,
                   temperature: float, margin: float, log_q: torch.Tensor | None,
                   weight: torch.Tensor | None) -> torch.Tensor:
    if name == "softmax":
        return softmax_loss(scores, target, valid, temperature=temperature, log_q=log_q, weight=weight)
    if name == "contrastive":
        return contrastive_loss(scores, target, valid, margin=margin, weight=weight)
    if name == "triplet":
        return triplet_loss(scores, target, valid, margin=margin, weight=weight)
    raise ValueError(f"unknown loss {name!r}; expected softmax, contrastive or triplet")


def _mean(loss: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    if weight is None:
        return loss.mean()
    return (loss * weight).sum() / weight.sum().clamp(min=1e-12)
