"""The user and item towers (PyTorch, training only; `export.py` mirrors them in numpy for serving).

Both towers sum embeddings of their features, apply one residual MLP block and L2-normalise, so the
score is a dot product (cosine). Row 0 of every categorical table is the "unknown" code and stays a
zero vector; new items therefore get a content-only embedding, which ID dropout trains for.

The user tower pools the history twice: the *item tower outputs* of the history items (a bank that
the trainer refreshes, no gradient; serving passes the same vectors, so items added while serving can
appear in a history), and the item id embeddings (shared with the item tower; zero for new items).

Storage and the two ways through the towers:
- all tables live in two parameters (`EmbeddingTables`): the item id table and one fused table holding the
  row ranges of every other categorical feature (`bags.TableLayout`); `export_weights` hands them out
  under the per-feature names the numpy export reads;
- `ItemTower.forward` / `UserTower.forward` take padded per-feature codes and are the readable reference
  (used to embed the catalog and by the tests);
- `TwoTower.encode` is the training path: each table is read once per batch through `bag_sum` (one
  `embedding_bag` forward, one sparse-transpose product backward; see `bags.py`). The tests check that
  both paths give the same outputs and gradients.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from candgen.model.bags import FEATURE_TABLES, Bags, TableLayout
from candgen.model.features import FeatureSpace

INIT_STD = 0.1
SPARSE_ROWS = 100_000  # tables this large get row-sparse gradients (SparseAdam); smaller ones are cheaper dense
# numpy export name -> table (`EmbeddingTables.table`)
EXPORT_TABLES = {
    "item.id_emb.weight": "id", "item.tag_emb.weight": "tag", "item.category_emb.weight": "category",
    "item.creator_emb.weight": "creator", "item.age_emb.weight": "age", "user.attr_emb.weight": "attr",
    "user.device_emb.weight": "device", "user.hour_emb.weight": "hour",
    "user.history_len_emb.weight": "history_len",
}


class _BagSum(torch.autograd.Function):
    """out[b] = sum of weight[r] * w over the (r, w) entries of bag b, i.e. P @ weight with P the bags' sparse
    matrix, returned as two tensors (bags before `split`, bags from `split` on) so that callers need no slicing.
    The backward pass is P.T @ grad (scipy, no sort of the entries): a dense gradient, or a row-sparse one over
    the rows the bags touch (for SparseAdam)."""

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, bags: Bags, split: int,  # type: ignore[override]
                sparse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.bags, ctx.sparse, ctx.shape = bags, sparse, tuple(weight.shape)
        return embedding_sum(weight, bags, split)

    @staticmethod
    def backward(ctx: Any, grad_head: torch.Tensor | None,  # type: ignore[override]
                 grad_tail: torch.Tensor | None) -> tuple[torch.Tensor, None, None, None]:
        bags: Bags = ctx.bags
        g = _joined(grad_head, grad_tail, bags.n_bags, ctx.shape[1])
        return bag_gradient(bags, g, ctx.shape, ctx.sparse), None, None, None


def embedding_sum(weight: torch.Tensor, bags: Bags, split: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The bag sums of bags [0, split) and [split, n_bags) (no autograd: the forward pass of `_BagSum`)."""
    cut = int(bags.ptr[split])
    return (_embedding_sum(weight, bags.idx[:cut], bags.ptr[:split], bags.weight[:cut]),
            _embedding_sum(weight, bags.idx[cut:], bags.ptr[split:-1] - cut, bags.weight[cut:]))


def bag_gradient(bags: Bags, g: np.ndarray, shape: tuple[int, ...], sparse: bool) -> torch.Tensor:
    """The gradient of a table of `shape` given g (n_bags, dim), the gradient of each bag sum: P.T @ g, dense or
    row-sparse over the rows the bags touch (for SparseAdam)."""
    if not sparse:
        return torch.from_numpy(np.asarray(bags.transposed(shape[0]) @ g, dtype=np.float32))
    rows, local = np.unique(bags.idx, return_inverse=True)
    values = Bags(bags.ptr, local.reshape(-1).astype(np.int64), bags.weight).transposed(len(rows)) @ g
    return torch.sparse_coo_tensor(torch.from_numpy(rows)[None], torch.from_numpy(np.asarray(values, np.float32)),
                                   shape, is_coalesced=True, check_invariants=False)


def _embedding_sum(weight: torch.Tensor, idx: np.ndarray, offsets: np.ndarray, w: np.ndarray) -> torch.Tensor:
    if len(idx) == 0:
        return weight.new_zeros(len(offsets), weight.shape[1])
    return F.embedding_bag(torch.from_numpy(idx), weight, torch.from_numpy(offsets), mode="sum",
                           per_sample_weights=torch.from_numpy(w))


def _joined(head: torch.Tensor | None, tail: torch.Tensor | None, n_bags: int, dim: int) -> np.ndarray:
    """The two output gradients as one contiguous (n_bags, dim) float32 array (an unused output has none)."""
    out = np.zeros((n_bags, dim), np.float32)
    if head is not None:
        out[:len(head)] = head.detach().numpy()
    if tail is not None:
        out[n_bags - len(tail):] = tail.detach().numpy()
    return out


def bag_sum(weight: torch.Tensor, bags: Bags, *, sparse: bool = False) -> torch.Tensor:
    """(n_bags, dim): each bag's weighted sum of rows of `weight`, differentiable in `weight`."""
    head, _ = _BagSum.apply(weight, bags, bags.n_bags, sparse)
    return head  # type: ignore[no-any-return]


def bag_sum_split(weight: torch.Tensor, bags: Bags, split: int, *, sparse: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """`bag_sum` of bags [0, split) and [split, n_bags) as two tensors (one pass over the table each way)."""
    head, tail = _BagSum.apply(weight, bags, split, sparse)
    return head, tail


class EmbeddingTables(nn.Module):
    """The item id table (`ids`) and the fused table of all other categorical features (`feats`)."""

    def __init__(self, space: FeatureSpace, dim: int) -> None:
        super().__init__()
        self.layout = TableLayout.of(space)
        self.ids = nn.Parameter(_init(max(space.id_buckets, 1), dim, zero_rows=[0]))
        zero = [start for name, (start, _) in self.layout.spans.items() if FEATURE_TABLES[name]]
        dev_start, dev_n = self.layout.spans["device"]
        zero += list(range(dev_start, dev_start + dev_n))  # data rarely has devices: start neutral
        self.feats = nn.Parameter(_init(self.layout.n_rows, dim, zero_rows=zero))
        self.sparse_ids = self.ids.shape[0] >= SPARSE_ROWS
        self.sparse_feats = self.feats.shape[0] >= SPARSE_ROWS

    def table(self, name: str) -> torch.Tensor:
        """The rows of one table (a view: gradients flow into the fused parameter)."""
        if name == "id":
            return self.ids
        start, n = self.layout.spans[name]
        return self.feats[start:start + n]

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [p for p, s in ((self.ids, self.sparse_ids), (self.feats, self.sparse_feats)) if s]


def _init(n: int, dim: int, *, zero_rows: list[int]) -> torch.Tensor:
    w = torch.empty(n, dim).normal_(0.0, INIT_STD)
    w[zero_rows] = 0.0
    return w


class ResidualMLP(nn.Module):
    """x + W2 relu(W1 x + b1) + b2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.relu(self.fc1(x)))


class ItemTower(nn.Module):
    def __init__(self, tables: EmbeddingTables, dim: int) -> None:
        super().__init__()
        self.mlp = ResidualMLP(dim, 2 * dim)
        self._tables = [tables]  # shared with the user tower: not registered here

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Embedding sum -> L2-normalised item vector."""
        return F.normalize(self.mlp(x), dim=-1)

    def forward(self, id_bucket: torch.Tensor, tags: torch.Tensor, category: torch.Tensor,
                creator: torch.Tensor, age: torch.Tensor) -> torch.Tensor:
        t = self._tables[0]
        x = (
            F.embedding(id_bucket, t.table("id"), padding_idx=0)
            + F.embedding_bag(tags, t.table("tag"), mode="mean", padding_idx=0)
            + F.embedding(category, t.table("category"), padding_idx=0)
            + F.embedding(creator, t.table("creator"), padding_idx=0)
            + F.embedding(age, t.table("age"))
        )
        return self.head(x)


class UserTower(nn.Module):
    def __init__(self, tables: EmbeddingTables, dim: int) -> None:
        super().__init__()
        self.history_bank_proj = nn.Linear(dim, dim, bias=False)
        self.history_id_proj = nn.Linear(dim, dim, bias=False)
        self.mlp = ResidualMLP(dim, 2 * dim)
        self._tables = [tables]  # shared with the item tower: not registered here

    def head(self, features: torch.Tensor, history_vectors: torch.Tensor, history_ids: torch.Tensor) -> torch.Tensor:
        """Feature embedding sum, pooled history vectors and pooled history ids -> L2-normalised user vector."""
        x = features + self.history_bank_proj(history_vectors) + self.history_id_proj(history_ids)
        return F.normalize(self.mlp(x), dim=-1)

    def forward(self, attributes: torch.Tensor, interests: torch.Tensor, device: torch.Tensor,
                hour: torch.Tensor, history_len: torch.Tensor, history_ids: torch.Tensor,
                history_vectors: torch.Tensor, history_weights: torch.Tensor) -> torch.Tensor:
        """history_vectors: (B, D) weighted pool of the history items' item-tower outputs (no gradient);
        history_ids: (B, L) id buckets and history_weights (B, L) normalised to sum 1 per row."""
        t = self._tables[0]
        x = (
            F.embedding(attributes, t.table("attr"), padding_idx=0).sum(dim=1)
            + F.embedding_bag(interests, t.table("tag"), mode="mean", padding_idx=0)
            + F.embedding(device, t.table("device"), padding_idx=0)
            + F.embedding(hour, t.table("hour"), padding_idx=0)
            + F.embedding(history_len, t.table("history_len"))
        )
        pooled_ids = F.embedding_bag(history_ids, t.table("id"), mode="sum", per_sample_weights=history_weights,
                                     padding_idx=0)
        return self.head(x, history_vectors, pooled_ids)


class TwoTower(nn.Module):
    def __init__(self, space: FeatureSpace, dim: int) -> None:
        super().__init__()
        self.tables = EmbeddingTables(space, dim)
        self.item = ItemTower(self.tables, dim)
        self.user = UserTower(self.tables, dim)

    def encode(self, ids: Bags, feats: Bags, n_items: int, history_vectors: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(user vectors, item vectors) of a training batch in one pass over each table.

        ids: the first `n_items` bags are the items' id rows, the rest each user's weighted history ids;
        feats: the first `n_items` bags are the items' feature rows (`TableLayout.item_bags`), the rest the
        users' (`TableLayout.user_bags`); history_vectors: (users, dim) pooled item-tower outputs (no gradient).
        """
        t = self.tables
        item_ids, history_ids = bag_sum_split(t.ids, ids, n_items, sparse=t.sparse_ids)
        item_feats, user_feats = bag_sum_split(t.feats, feats, n_items, sparse=t.sparse_feats)
        items = self.item.head(item_ids + item_feats)
        users = self.user.head(user_feats, history_vectors, history_ids)
        return users, items

    def export_weights(self) -> dict[str, np.ndarray]:
        """Every weight under the names the numpy export (`TwoTowerModel`) reads, as float32 copies."""
        with torch.no_grad():
            out = {key: self.tables.table(name).numpy().copy() for key, name in EXPORT_TABLES.items()}
            out.update({k: v.numpy().copy() for k, v in self.state_dict().items() if not k.startswith("tables.")})
        return out
