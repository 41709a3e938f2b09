"""The user and item towers (PyTorch, training only; `export.py` mirrors them in numpy for serving).

Both towers sum embeddings of their features, apply one residual MLP block and L2-normalise, so the
score is a dot product (cosine). Row 0 of every categorical table is the "unknown" code and stays a
zero vector; new items therefore get a content-only embedding, which ID dropout trains for.

The user tower pools the history twice: the *item tower outputs* of the history items (a bank that
the trainer refreshes, no gradient; serving passes the same vectors, so items added while serving can
appear in a history), and the item id embeddings (shared with the item tower; zero for new items).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from candgen.model.features import N_AGE, N_HISTORY_LEN, N_HOURS, FeatureSpace

INIT_STD = 0.1
SPARSE_ROWS = 100_000  # tables this large get sparse gradients (SparseAdam); smaller ones are cheaper dense


def _table(n: int, dim: int, *, padding: bool = True, zero: bool = False) -> nn.Embedding:
    emb = nn.Embedding(max(n, 1), dim, padding_idx=0 if padding else None, sparse=n >= SPARSE_ROWS)
    with torch.no_grad():
        if zero:
            emb.weight.zero_()
        else:
            emb.weight.normal_(0.0, INIT_STD)
            if padding:
                emb.weight[0].zero_()
    return emb


class ResidualMLP(nn.Module):
    """x + W2 relu(W1 x + b1) + b2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.relu(self.fc1(x)))


class ItemTower(nn.Module):
    def __init__(self, space: FeatureSpace, dim: int) -> None:
        super().__init__()
        self.id_emb = _table(space.id_buckets, dim)
        self.tag_emb = _table(len(space.tags) + 1, dim)  # shared with the user tower's interests
        self.category_emb = _table(len(space.categories) + 1, dim)
        self.creator_emb = _table(len(space.creators) + 1, dim)
        self.age_emb = _table(N_AGE, dim, padding=False)
        self.mlp = ResidualMLP(dim, 2 * dim)

    def forward(self, id_bucket: torch.Tensor, tags: torch.Tensor, category: torch.Tensor,
                creator: torch.Tensor, age: torch.Tensor) -> torch.Tensor:
        x = (
            self.id_emb(id_bucket)
            + F.embedding_bag(tags, self.tag_emb.weight, mode="mean", padding_idx=0, sparse=self.tag_emb.sparse)
            + self.category_emb(category)
            + self.creator_emb(creator)
            + self.age_emb(age)
        )
        return F.normalize(self.mlp(x), dim=-1)


class UserTower(nn.Module):
    def __init__(self, space: FeatureSpace, dim: int, item_tower: ItemTower) -> None:
        super().__init__()
        self.attr_emb = _table(space.n_attr_codes, dim)
        self.device_emb = _table(len(space.devices) + 1, dim, zero=True)  # data rarely has devices
        self.hour_emb = _table(N_HOURS, dim)
        self.history_len_emb = _table(N_HISTORY_LEN, dim, padding=False)
        self.history_bank_proj = nn.Linear(dim, dim, bias=False)
        self.history_id_proj = nn.Linear(dim, dim, bias=False)
        self.mlp = ResidualMLP(dim, 2 * dim)
        # shared tables (not registered twice): interests use the item tags' embeddings
        self._items = [item_tower]

    def forward(self, attributes: torch.Tensor, interests: torch.Tensor, device: torch.Tensor,
                hour: torch.Tensor, history_len: torch.Tensor, history_ids: torch.Tensor,
                history_vectors: torch.Tensor, history_weights: torch.Tensor) -> torch.Tensor:
        """history_vectors: (B, D) weighted pool of the history items' item-tower outputs (no gradient);
        history_ids: (B, L) id buckets and history_weights (B, L) normalised to sum 1 per row."""
        items = self._items[0]
        x = (
            self.attr_emb(attributes).sum(dim=1)
            + F.embedding_bag(interests, items.tag_emb.weight, mode="mean", padding_idx=0,
                              sparse=items.tag_emb.sparse)
            + self.device_emb(device)
            + self.hour_emb(hour)
            + self.history_len_emb(history_len)
            + self.history_bank_proj(history_vectors)
            + self.history_id_proj(
                F.embedding_bag(history_ids, items.id_emb.weight, mode="sum", per_sample_weights=history_weights,
                                padding_idx=0, sparse=items.id_emb.sparse)
            )
        )
        return F.normalize(self.mlp(x), dim=-1)


class TwoTower(nn.Module):
    def __init__(self, space: FeatureSpace, dim: int) -> None:
        super().__init__()
        self.item = ItemTower(space, dim)
        self.user = UserTower(space, dim, self.item)
