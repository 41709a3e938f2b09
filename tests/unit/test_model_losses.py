"""Retrieval losses on hand-made cases: logQ correction, accidental hits, temperature, contrastive, triplet."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from candgen.model.losses import (
    MASKED,
    accidental_hits,
    contrastive_loss,
    grouped_softmax_inputs,
    grouped_softmax_loss,
    retrieval_loss,
    softmax_loss,
    triplet_loss,
)


def _ce(logits: list[float], target: int) -> float:
    return -logits[target] + math.log(sum(math.exp(x) for x in logits))


def test_softmax_matches_hand_computation_with_temperature():
    scores = torch.tensor([[0.5, 0.1, -0.2]])
    valid = torch.ones(1, 3, dtype=torch.bool)
    got = softmax_loss(scores, torch.tensor([0]), valid, temperature=0.5)
    assert got.item() == pytest.approx(_ce([1.0, 0.2, -0.4], 0), rel=1e-6)


def test_logq_correction_subtracts_log_sampling_probability():
    scores = torch.tensor([[0.2, 0.2]])  # a tie: the popular negative (column 1) is down-weighted by logQ
    valid = torch.ones(1, 2, dtype=torch.bool)
    log_q = torch.log(torch.tensor([0.1, 0.9]))
    plain = softmax_loss(scores, torch.tensor([0]), valid, temperature=1.0)
    corrected = softmax_loss(scores, torch.tensor([0]), valid, temperature=1.0, log_q=log_q)
    assert plain.item() == pytest.approx(math.log(2))
    assert corrected.item() == pytest.approx(_ce([0.2 - math.log(0.1), 0.2 - math.log(0.9)], 0), rel=1e-6)
    assert corrected.item() < plain.item()  # the positive is rarer than the negative: its logit rises relatively


def test_accidental_hits_are_masked():
    pos = torch.tensor([7, 8])
    cands = torch.tensor([7, 8, 7, 3])  # column 2 repeats user 0's positive
    hits = accidental_hits(pos, cands, torch.tensor([0, 1]))
    assert hits.tolist() == [[False, False, True, False], [False, False, False, False]]
    scores = torch.tensor([[0.3, 0.1, 0.9, 0.0], [0.0, 0.4, 0.2, 0.1]])
    masked = softmax_loss(scores, torch.tensor([0, 1]), ~hits, temperature=1.0)
    by_hand = (_ce([0.3, 0.1, 0.0], 0) + _ce([0.0, 0.4, 0.2, 0.1], 1)) / 2
    assert masked.item() == pytest.approx(by_hand, rel=1e-6)
    # also works with per-row candidate ids (B, C)
    assert accidental_hits(pos, cands.expand(2, -1), torch.tensor([0, 1])).tolist() == hits.tolist()


def test_weights_average_rows():
    scores = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    valid = torch.ones(2, 2, dtype=torch.bool)
    w = torch.tensor([1.0, 0.0])
    got = softmax_loss(scores, torch.tensor([0, 0]), valid, temperature=1.0, weight=w)
    assert got.item() == pytest.approx(_ce([1.0, 0.0], 0), rel=1e-6)


def test_contrastive_loss_by_hand():
    scores = torch.tensor([[0.8, 0.5, 0.1, 0.9]])
    valid = torch.tensor([[True, True, True, False]])  # the 0.9 column is masked
    got = contrastive_loss(scores, torch.tensor([0]), valid, margin=0.2)
    assert got.item() == pytest.approx((1 - 0.8) ** 2 + ((0.5 - 0.2) ** 2 + 0.0) / 2, rel=1e-5)


def test_triplet_loss_uses_hardest_valid_negative():
    scores = torch.tensor([[0.6, 0.5, 0.1, 0.99], [0.9, 0.1, 0.2, 0.3]])
    valid = torch.tensor([[True, True, True, False], [True, True, True, True]])
    got = triplet_loss(scores, torch.tensor([0, 0]), valid, margin=0.2)
    assert got.item() == pytest.approx((max(0, 0.2 - 0.6 + 0.5) + max(0, 0.2 - 0.9 + 0.3)) / 2, rel=1e-5)
    # a row without any valid negative contributes nothing
    lone = triplet_loss(torch.tensor([[0.1, 0.9]]), torch.tensor([0]), torch.tensor([[True, False]]), margin=0.2)
    assert lone.item() == 0.0


def test_retrieval_loss_dispatches_and_rejects_unknown_names():
    scores = torch.tensor([[0.6, 0.5]])
    valid = torch.ones(1, 2, dtype=torch.bool)
    t = torch.tensor([0])
    for name, fn in [("softmax", lambda: softmax_loss(scores, t, valid, temperature=0.1)),
                     ("contrastive", lambda: contrastive_loss(scores, t, valid, margin=0.2)),
                     ("triplet", lambda: triplet_loss(scores, t, valid, margin=0.2))]:
        got = retrieval_loss(name, scores, t, valid, temperature=0.1, margin=0.2, log_q=None, weight=None)
        assert got.item() == pytest.approx(fn().item())
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        retrieval_loss("hinge", scores, t, valid, temperature=0.1, margin=0.2, log_q=None, weight=None)


def _per_occurrence_softmax(users, cand_vecs, cand, items, n_random, hard, log_q, weight, temperature):
    """The plain form: one column per sampled candidate occurrence, plus each user's hard-negative column."""
    b, s = len(items), len(items) + n_random
    scores = users @ cand_vecs[:s].T
    ids = torch.from_numpy(cand[:s])
    valid = ~accidental_hits(torch.from_numpy(items), ids, torch.arange(b))
    lq = None if log_q is None else torch.from_numpy(log_q[cand[:s]]).float()
    if hard is not None:
        scores = torch.cat([scores, (users * cand_vecs[s:]).sum(1, keepdim=True)], dim=1)
        valid = torch.cat([valid, torch.from_numpy((hard >= 0) & (hard != items))[:, None]], dim=1)
        lq = None if lq is None else torch.cat([lq, torch.zeros(1)])
    return softmax_loss(scores, torch.arange(b), valid, temperature=temperature, log_q=lq, weight=weight)


@pytest.mark.parametrize("with_hard", [True, False])
@pytest.mark.parametrize("with_logq", [True, False])
def test_grouped_softmax_equals_the_per_occurrence_softmax(with_hard, with_logq):
    """Duplicated candidates scored once with log-multiplicity give the same loss and gradients."""
    rng = np.random.default_rng(0)
    items = np.array([3, 5, 3, 8])  # users 0 and 2 share a positive: accidental hits both ways
    rand = np.array([5, 9, 9, 3, 1])  # 5 and 3 are other users' positives; 9 appears twice
    hard = np.array([9, -1, 3, 1])  # user 2's hard negative is its own positive: masked
    cand = np.concatenate([items, rand] + ([np.maximum(hard, 0)] if with_hard else []))
    # distinct candidates: by item here, except that occurrence 7 of item 3 is a different group (e.g. its id
    # was dropped), so the same item can sit in two groups
    key = cand * 2 + (np.arange(len(cand)) == 7)
    _, inverse = np.unique(key, return_inverse=True)
    # number the groups of sampled candidates first; hard negatives 9 and 1 share groups with random negatives,
    # hard negative 3 (user 2's own positive) shares its positive's group
    sampled = np.isin(np.arange(inverse.max() + 1), inverse[:9])
    rank = np.argsort(np.argsort(~sampled, kind="stable"))
    inverse = rank[inverse]
    if with_hard:
        with pytest.raises(ValueError, match="numbered 0..S-1"):
            grouped_softmax_inputs(inverse.max() - inverse, cand, items, len(rand), hard, None)
    log_q = np.log(rng.uniform(0.05, 2.0, 10)) if with_logq else None
    users = torch.nn.functional.normalize(torch.randn(4, 6, generator=torch.Generator().manual_seed(1)), dim=1)
    groups = torch.nn.functional.normalize(torch.randn(inverse.max() + 1, 6,
                                                       generator=torch.Generator().manual_seed(2)), dim=1)
    users.requires_grad_(), groups.requires_grad_()
    weight = torch.tensor([1.0, 2.0, 0.5, 1.5])
    ref = _per_occurrence_softmax(users, groups[torch.from_numpy(inverse)], cand, items, len(rand),
                                  hard if with_hard else None, log_q, weight, 0.2)
    inputs = grouped_softmax_inputs(inverse, cand, items, len(rand), hard if with_hard else None,
                                    None if log_q is None else np.exp(-log_q))
    bias, target = inputs.bias, inputs.target
    got = grouped_softmax_loss(users, groups, inputs, temperature=0.2, weight=weight / weight.sum())
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    g_ref = torch.autograd.grad(ref, (users, groups))
    g_got = torch.autograd.grad(got, (users, groups))
    for a, b in zip(g_got, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert target.tolist() == inverse[:4].tolist()
    # users 0 and 2 share their positive's group: it counts once (the target), not twice
    assert inverse[0] == inverse[2]
    assert bias[0, inverse[0]] == pytest.approx(-log_q[3] if log_q is not None else 0.0, rel=1e-6)
    assert bias[0, inverse[7]] == bias[2, inverse[7]] == MASKED  # the positive item in another group: a hit
