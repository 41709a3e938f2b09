"""Weighted bags of embedding rows for training, in numpy only: the sparse inputs of the towers' embedding sums.

The towers' categorical features (tags, category, creator, age; user attributes, interests, device, hour,
history length) live as row ranges of one fused table (`TableLayout`), and each training example's features
become one *bag*: a list of (row, weight) pairs whose weighted sum is the example's embedding sum (a mean bag
such as the tags has weights 1/count). A whole batch is then one CSR matrix (`Bags`, bags x table rows): the
forward pass is one `embedding_bag` call and the backward pass one sparse-transpose product, instead of a
lookup, a gradient kernel and an add per feature. "Unknown" codes (0 in a padded table) are left out of the
bags rather than pointing at a zero row, so they cost nothing and never receive a gradient.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from candgen.model.features import N_AGE, N_HISTORY_LEN, N_HOURS, FeatureSpace

# name -> padded (row 0 = unknown, a zero row that is never trained); order = row order in the fused table
FEATURE_TABLES: dict[str, bool] = {
    "tag": True, "category": True, "creator": True, "age": False,
    "attr": True, "device": True, "hour": True, "history_len": False,
}


@dataclass(frozen=True)
class Bags:
    """`n_bags` weighted bags of table rows in CSR form: bag b holds rows idx[ptr[b]:ptr[b+1]] with their weights."""

    ptr: np.ndarray  # int64 (n_bags + 1,)
    idx: np.ndarray  # int64 table rows
    weight: np.ndarray  # float32, one per entry of idx
    _transposed: dict[int, sp.csc_matrix] = field(default_factory=dict, compare=False, repr=False)

    @property
    def n_bags(self) -> int:
        return len(self.ptr) - 1

    @staticmethod
    def from_padded(rows: np.ndarray, weights: np.ndarray | None = None) -> Bags:
        """Bags from an (n, w) matrix of table rows, -1 = no entry; `weights` (n, w) default to 1."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim != 2:
            raise ValueError(f"rows must be a 2-d matrix (bags x slots), got shape {rows.shape}")
        keep = rows >= 0
        ptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(keep.sum(axis=1), out=ptr[1:])
        w = np.ones(int(ptr[-1]), np.float32) if weights is None else np.asarray(weights, np.float32)[keep]
        return Bags(ptr, rows[keep], w)

    @staticmethod
    def concat(parts: Sequence[Bags]) -> Bags:
        """The bags of `parts`, one after the other."""
        sizes = np.array([len(p.idx) for p in parts], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]) if len(parts) else sizes
        ptr = np.concatenate([[0]] + [p.ptr[1:] + s for p, s in zip(parts, starts, strict=True)]).astype(np.int64)
        return Bags(ptr, np.concatenate([p.idx for p in parts]).astype(np.int64),
                    np.concatenate([p.weight for p in parts]).astype(np.float32))

    def matrix(self, n_rows: int) -> sp.csr_matrix:
        """The (n_bags, n_rows) sparse matrix P with P[b, r] = summed weight of row r in bag b."""
        self._check(n_rows)
        return sp.csr_matrix((self.weight, self.idx, self.ptr), shape=(self.n_bags, n_rows))

    def transposed(self, n_rows: int) -> sp.csc_matrix:
        """P.T, (n_rows, n_bags), the backward pass of a bag sum; built once (a batch can build it ahead)."""
        if n_rows not in self._transposed:
            self._check(n_rows)
            self._transposed[n_rows] = sp.csc_matrix((self.weight, self.idx, self.ptr), shape=(n_rows, self.n_bags))
        return self._transposed[n_rows]

    def _check(self, n_rows: int) -> None:
        if len(self.idx) and (self.idx.min() < 0 or self.idx.max() >= n_rows):
            raise ValueError(f"bag rows must lie in [0, {n_rows}), got {self.idx.min()}..{self.idx.max()}")


@dataclass(frozen=True)
class TableLayout:
    """Where each categorical feature table sits in the fused feature table: name -> (first row, rows)."""

    spans: Mapping[str, tuple[int, int]]
    n_rows: int

    @staticmethod
    def of(space: FeatureSpace) -> TableLayout:
        sizes = {
            "tag": len(space.tags) + 1, "category": len(space.categories) + 1, "creator": len(space.creators) + 1,
            "age": N_AGE, "attr": space.n_attr_codes, "device": len(space.devices) + 1, "hour": N_HOURS,
            "history_len": N_HISTORY_LEN,
        }
        spans, start = {}, 0
        for name in FEATURE_TABLES:
            spans[name] = (start, sizes[name])
            start += sizes[name]
        return TableLayout(spans, start)

    def rows(self, name: str, codes: np.ndarray) -> np.ndarray:
        """Fused-table rows of `codes` of table `name`; -1 (no entry) for code 0 of a padded table."""
        start, n = self.spans[name]
        codes = np.asarray(codes, dtype=np.int64)
        if len(codes.ravel()) and (codes.min() < 0 or codes.max() >= n):
            raise ValueError(f"{name} codes must lie in [0, {n}), got {codes.min()}..{codes.max()}")
        rows = codes + start
        return np.where(codes == 0, -1, rows) if FEATURE_TABLES[name] else rows

    def mean_bag(self, name: str, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, weights) of padded bag matrices averaged over their known entries (weights 1/count)."""
        rows = self.rows(name, codes)
        count = (rows >= 0).sum(axis=1, keepdims=True)
        return rows, np.broadcast_to(1.0 / np.maximum(count, 1), rows.shape).astype(np.float32)

    def item_bags(self, tags: np.ndarray, category: np.ndarray, creator: np.ndarray, age: np.ndarray) -> Bags:
        """One bag per item: mean of its tags + category + creator + age bucket."""
        tag_rows, tag_w = self.mean_bag("tag", tags)
        singles = np.stack([self.rows("category", category), self.rows("creator", creator),
                            self.rows("age", age)], axis=1)
        return Bags.from_padded(np.concatenate([tag_rows, singles], axis=1),
                                np.concatenate([tag_w, np.ones(singles.shape, np.float32)], axis=1))

    def user_bags(self, attributes: np.ndarray, interests: np.ndarray, device: np.ndarray, hour: np.ndarray,
                  history_len: np.ndarray) -> Bags:
        """One bag per user: sum of attribute values + mean of interest tags + device + hour + history length."""
        attr_rows = self.rows("attr", attributes)
        int_rows, int_w = self.mean_bag("tag", interests)
        singles = np.stack([self.rows("device", device), self.rows("hour", hour),
                            self.rows("history_len", history_len)], axis=1)
        return Bags.from_padded(np.concatenate([attr_rows, int_rows, singles], axis=1),
                                np.concatenate([np.ones(attr_rows.shape, np.float32), int_w,
                                                np.ones(singles.shape, np.float32)], axis=1))


def id_bags(id_bucket: np.ndarray) -> Bags:
    """One bag per item holding its id row (none for id bucket 0: a new item or a dropped id)."""
    return Bags.from_padded(np.where(id_bucket > 0, id_bucket, -1)[:, None])


def history_bags(rows: np.ndarray, weights: np.ndarray) -> Bags:
    """One bag per user over its history slots (rows (B, L), weights (B, L)); slots of weight 0 or row -1 are
    left out."""
    return Bags.from_padded(np.where(weights > 0, rows, -1), weights)


__all__ = ["FEATURE_TABLES", "Bags", "TableLayout", "history_bags", "id_bags"]
