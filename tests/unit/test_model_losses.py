"""Retrieval losses on hand-made cases: logQ correction, accidental hits, temperature, contrastive, triplet."""

from __future__ import annotations

import math

import pytest
import torch

from candgen.model.losses import (
    accidental_hits,
    contrastive_loss,
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
