"""The training step's softmax loss as one autograd node: forward and backward of both towers written by hand.

`fused_softmax_loss` computes exactly what `TwoTower.encode` followed by `losses.grouped_softmax_loss` computes
(the same bag sums, residual MLPs, L2 normalisation, logits and weighted cross-entropy) and returns every
parameter's gradient from one hand-written backward pass, up to float rounding. Autograd would record ~60 nodes
per step for this (each small op with its own allocation, bookkeeping and gradient kernel); here the backward
is the 12 matrix products it needs plus a few elementwise passes, and each table's gradient is one sparse
product into the layout the bags were built for. The tests check loss and gradients against the autograd path.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from candgen.model.bags import Bags
from candgen.model.losses import GroupedSoftmax
from candgen.model.towers import ResidualMLP, TwoTower, bag_gradient, embedding_sum

NORM_EPS = 1e-12  # F.normalize's default


def _head_forward(x: torch.Tensor, mlp: ResidualMLP) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(hidden, norms, output) of `mlp` followed by L2 normalisation, as `ItemTower.head` / `UserTower.head`."""
    h = torch.addmm(mlp.fc1.bias, x, mlp.fc1.weight.T).clamp_min_(0.0)
    y = torch.addmm(mlp.fc2.bias, h, mlp.fc2.weight.T).add_(x)
    norm = torch.linalg.vector_norm(y, dim=1, keepdim=True).clamp_min_(NORM_EPS)
    return h, norm, y.div_(norm)


def _head_backward(g_out: torch.Tensor, x: torch.Tensor, h: torch.Tensor, norm: torch.Tensor, out: torch.Tensor,
                   mlp: ResidualMLP) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Gradient wrt the head's input and [fc1.weight, fc1.bias, fc2.weight, fc2.bias], given g_out."""
    # d(y / max(|y|, eps)): the norm's own term vanishes where the clamp is active (norm == eps)
    radial = torch.linalg.vecdot(g_out, out).unsqueeze_(1).masked_fill_(norm <= NORM_EPS, 0.0)
    g_y = torch.addcmul(g_out, out, radial, value=-1.0).div_(norm)
    g_h = torch.ops.aten.threshold_backward(g_y @ mlp.fc2.weight, h, 0.0)  # relu's backward: 0 where h == 0
    grads = [g_h.T @ x, g_h.sum(dim=0), g_y.T @ h, g_y.sum(dim=0)]
    return torch.addmm(g_y, g_h, mlp.fc1.weight), grads


class _FusedSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, model: TwoTower, id_bags: Bags, feat_bags: Bags, n_items: int,  # type: ignore[override]
                history_vectors: torch.Tensor, inputs: GroupedSoftmax, weight: torch.Tensor, temperature: float,
                *params: torch.Tensor) -> torch.Tensor:
        t, item_mlp, user = model.tables, model.item.mlp, model.user
        # detached: embedding_bag skips the bookkeeping of its own backward pass (measured ~35% faster)
        item_ids, history_ids = embedding_sum(t.ids.detach(), id_bags, n_items)
        item_feats, user_feats = embedding_sum(t.feats.detach(), feat_bags, n_items)
        x_item = item_ids.add_(item_feats)
        h_item, n_item, items = _head_forward(x_item, item_mlp)
        x_user = torch.addmm(user_feats, history_vectors, user.history_bank_proj.weight.T)
        x_user.addmm_(history_ids, user.history_id_proj.weight.T)
        h_user, n_user, users = _head_forward(x_user, user.mlp)
        n_sampled = inputs.bias.shape[1]
        hard = None if inputs.hard is None or inputs.hard_bias is None else torch.from_numpy(inputs.hard)
        logits = torch.empty(len(users), n_sampled + (hard is not None))
        torch.addmm(torch.from_numpy(inputs.bias), users, items[:n_sampled].T, alpha=1.0 / temperature,
                    out=logits[:, :n_sampled])
        if hard is not None and inputs.hard_bias is not None:
            logits[:, n_sampled] = torch.from_numpy(inputs.hard_bias).add((users * items[hard]).sum(dim=1),
                                                                          alpha=1.0 / temperature)
        target = torch.from_numpy(inputs.target)
        log_p = torch.log_softmax(logits, dim=1)
        loss = -(log_p.gather(1, target[:, None])[:, 0] * weight).sum()
        ctx.model, ctx.bags, ctx.n_items, ctx.temperature = model, (id_bags, feat_bags), n_items, temperature
        ctx.hard, ctx.target = hard, target
        ctx.save_for_backward(log_p, weight, history_vectors, history_ids, x_item, h_item, n_item, items, x_user,
                              h_user, n_user, users)
        return loss

    @staticmethod
    def backward(ctx: Any, g_loss: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        (log_p, weight, history_vectors, history_ids, x_item, h_item, n_item, items, x_user, h_user, n_user,
         users) = ctx.saved_tensors
        model: TwoTower = ctx.model
        id_bags, feat_bags = ctx.bags
        n_items, temp = ctx.n_items, ctx.temperature
        # d loss / d logits = w_b (softmax - onehot(target)), then / T for the scores
        d = log_p.exp_().mul_((weight * (g_loss / temp))[:, None])
        d[torch.arange(len(d)), ctx.target] -= weight * (g_loss / temp)
        n_sampled = d.shape[1] - (ctx.hard is not None)
        d_sampled = d[:, :n_sampled]
        g_users = d_sampled @ items[:n_sampled]
        g_items = torch.zeros_like(items)
        torch.mm(d_sampled.T, users, out=g_items[:n_sampled])
        if ctx.hard is not None:
            d_hard = d[:, n_sampled:]
            g_users.addcmul_(d_hard, items[ctx.hard])
            g_items.index_add_(0, ctx.hard, users * d_hard)
        g_x_item, item_grads = _head_backward(g_items, x_item, h_item, n_item, items, model.item.mlp)
        g_x_user, user_grads = _head_backward(g_users, x_user, h_user, n_user, users, model.user.mlp)
        user = model.user
        g_bank_proj = g_x_user.T @ history_vectors
        g_id_proj = g_x_user.T @ history_ids
        t = model.tables
        # each table's bags: the n_items item bags, then one bag per user
        g_id_rows = np.empty((id_bags.n_bags, x_item.shape[1]), np.float32)
        g_id_rows[:n_items] = g_x_item.numpy()
        torch.mm(g_x_user, user.history_id_proj.weight, out=torch.from_numpy(g_id_rows[n_items:]))
        g_feat_rows = np.concatenate([g_x_item.numpy(), g_x_user.numpy()])
        by_param = {
            id(t.ids): bag_gradient(id_bags, g_id_rows, tuple(t.ids.shape), t.sparse_ids),
            id(t.feats): bag_gradient(feat_bags, g_feat_rows, tuple(t.feats.shape), t.sparse_feats),
            id(user.history_bank_proj.weight): g_bank_proj, id(user.history_id_proj.weight): g_id_proj,
        }
        for mlp, grads in ((model.item.mlp, item_grads), (user.mlp, user_grads)):
            by_param.update(zip(map(id, (mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias)), grads,
                                strict=True))
        return (None,) * 8 + tuple(by_param[id(p)] for p in model.parameters())


def fused_softmax_loss(model: TwoTower, id_bags: Bags, feat_bags: Bags, n_items: int, history_vectors: torch.Tensor,
                       inputs: GroupedSoftmax, *, temperature: float, weight: torch.Tensor) -> torch.Tensor:
    """`grouped_softmax_loss(*model.encode(id_bags, feat_bags, n_items, history_vectors), inputs, ...)` as one
    autograd node; differentiable in every parameter of `model`."""
    return _FusedSoftmax.apply(model, id_bags, feat_bags, n_items, history_vectors.detach(), inputs,  # type: ignore
                               weight, temperature, *model.parameters())


__all__ = ["fused_softmax_loss"]
