"""Feature encoding for the two-tower model, in numpy only (serving imports this without torch).

`FeatureSpace` holds every vocabulary the towers need (item id buckets, tags, categories, creators,
user attribute values, devices) and turns a `Dataset`, or a new item / new user from an API call,
into the integer codes the towers embed. It is saved with the model (JSON) so that anything arriving
while serving is encoded exactly as in training.

Conventions: code 0 always means "unknown / missing" and maps to a zero embedding row, so unseen
values add nothing rather than noise. Bags (tags, interests) are padded int matrices, 0 = padding.
`PositiveLog` keeps each user's positive engagements in time order so that the history of an
example is exactly the positives *before* it (no leakage).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from candgen.config import EventsConfig
from candgen.data.dataset import MISSING_TIME, Csr, Dataset, Interactions

MAX_BAG = 32  # tags per item / interests per user kept (the first ones); bounds the padded matrices
AGE_EDGES_S = np.array([1, 3, 7, 30, 90, 365, 3 * 365], dtype=np.int64) * 86_400  # item age buckets 1..8
N_AGE = len(AGE_EDGES_S) + 2  # 0 = unknown creation time
N_HOURS = 25  # 0 = unknown, 1..24 = hour of day (UTC) + 1
N_HISTORY_LEN = 9  # log2 buckets of the history length: 0, 1, 2-3, 4-7, ..., >= 128
DEVICES = ("desktop", "mobile", "tablet", "tv", "other")
HISTORY_DECAY = 0.97  # recency weight per position back in the history (most recent = 1)


def stable_hash(key: str) -> int:
    """A hash of `key` that is the same in every process (Python's `hash` is salted per process)."""
    return zlib.crc32(key.encode("utf-8"))


def padded_bags(csr: Csr, rows: np.ndarray | None = None, width: int = MAX_BAG) -> np.ndarray:
    """Rows of a CSR list as an int32 matrix of codes+1, 0-padded to the longest row (at most `width`)."""
    if rows is None:
        starts, lens = csr.ptr[:-1], np.diff(csr.ptr)
    else:
        starts, lens = csr.ptr[rows], csr.ptr[rows + 1] - csr.ptr[rows]
    lens = np.minimum(lens, width)
    w = max(1, int(lens.max(initial=0)))
    out = np.zeros((len(starts), w), dtype=np.int32)
    for j in range(w):  # loop over at most `width` columns, vectorised over rows
        has = lens > j
        out[has, j] = csr.idx[starts[has] + j] + 1
    return out


def bag_codes(values: Sequence[Sequence[str]], vocab: Mapping[str, int], width: int = MAX_BAG) -> np.ndarray:
    """Padded codes (+1, 0 = padding) of string bags; unknown strings are dropped."""
    rows = [[vocab[v] + 1 for v in vs if v in vocab][:width] for vs in values]
    w = max(1, max((len(r) for r in rows), default=0))
    out = np.zeros((len(rows), w), dtype=np.int32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def age_bucket(created_at: np.ndarray, now: np.ndarray | int) -> np.ndarray:
    """Item age bucket (0 = unknown creation time, 1..8 from < 1 day to > 3 years)."""
    created_at = np.asarray(created_at, dtype=np.int64)
    age = np.asarray(now, dtype=np.int64) - created_at
    b = np.searchsorted(AGE_EDGES_S, np.maximum(age, 0), side="right").astype(np.int32) + 1
    return np.where(created_at == MISSING_TIME, 0, b).astype(np.int32)


def hour_bucket(timestamp: np.ndarray | int) -> np.ndarray:
    """Hour of day (UTC) + 1 of unix-second timestamps."""
    return ((np.asarray(timestamp, dtype=np.int64) // 3600) % 24 + 1).astype(np.int32)


def history_len_bucket(n: np.ndarray) -> np.ndarray:
    n = np.asarray(n, dtype=np.int64)
    b = np.floor(np.log2(np.maximum(n, 1))).astype(np.int32) + 1
    return np.where(n == 0, 0, np.minimum(b, N_HISTORY_LEN - 1)).astype(np.int32)


def recency_weights(event_weights: np.ndarray, decay: float = HISTORY_DECAY) -> np.ndarray:
    """History weights for a most-recent-first history: event weight x decay^position."""
    ew = np.asarray(event_weights, dtype=np.float32)
    return (ew * decay ** np.arange(ew.shape[-1], dtype=np.float32)).astype(np.float32)


@dataclass
class ItemCodes:
    """Integer features of a set of items (row-aligned)."""

    id_bucket: np.ndarray  # int64, 0 = no id embedding (new item or id dropped)
    tags: np.ndarray  # int32 (n, w), tag code + 1, 0 = padding
    category: np.ndarray  # int32, 0 = unknown
    creator: np.ndarray  # int32, 0 = unknown
    created_at: np.ndarray  # int64, MISSING_TIME when unknown

    def take(self, rows: np.ndarray) -> ItemCodes:
        return ItemCodes(self.id_bucket[rows], self.tags[rows], self.category[rows], self.creator[rows],
                         self.created_at[rows])


@dataclass
class FeatureSpace:
    """Vocabularies of the two towers; JSON-serialisable via `to_dict` / `from_dict`."""

    n_catalog: int  # items known at training time: dense indices below this have an id embedding
    id_buckets: int  # rows of the id table including row 0; hashed when the catalog is larger
    id_hashed: bool
    tags: list[str]
    categories: list[str]
    creators: list[str]
    user_attributes: dict[str, list[str]]  # attribute name -> values
    history_len: int = 50
    history_decay: float = HISTORY_DECAY
    devices: list[str] = field(default_factory=lambda: list(DEVICES))

    def __post_init__(self) -> None:
        self._tag = {t: i for i, t in enumerate(self.tags)}
        self._cat = {c: i for i, c in enumerate(self.categories)}
        self._creator = {c: i for i, c in enumerate(self.creators)}
        self._device = {d: i for i, d in enumerate(self.devices)}
        self._attr = {a: {v: i for i, v in enumerate(vs)} for a, vs in self.user_attributes.items()}
        # all attributes share one embedding table: attribute a's value v has code offset[a] + v + 1
        self.attr_offsets: dict[str, int] = {}
        off = 0
        for a, vs in self.user_attributes.items():
            self.attr_offsets[a] = off
            off += len(vs)
        self.n_attr_codes = off + 1

    @property
    def tag_index(self) -> Mapping[str, int]:
        return self._tag

    # ----- construction and persistence -----
    @staticmethod
    def from_dataset(ds: Dataset, *, id_buckets: int, history_len: int) -> FeatureSpace:
        n = ds.n_items
        hashed = n + 1 > id_buckets
        return FeatureSpace(
            n_catalog=n,
            id_buckets=id_buckets if hashed else n + 1,
            id_hashed=hashed,
            tags=ds.tags.ids(),
            categories=ds.item_category.vocab.ids() if ds.item_category is not None else [],
            creators=ds.item_creator.vocab.ids() if ds.item_creator is not None else [],
            user_attributes={a: c.vocab.ids() for a, c in sorted(ds.user_attributes.items())},
            history_len=history_len,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_catalog": self.n_catalog, "id_buckets": self.id_buckets, "id_hashed": self.id_hashed,
            "tags": self.tags, "categories": self.categories, "creators": self.creators,
            "user_attributes": self.user_attributes, "history_len": self.history_len,
            "history_decay": self.history_decay, "devices": self.devices,
        }

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> FeatureSpace:
        return FeatureSpace(**d)

    # ----- items -----
    def id_buckets_of(self, dense: np.ndarray, ds: Dataset | None = None) -> np.ndarray:
        """Id bucket of dense item indices; 0 for items not in the training catalog (or index < 0)."""
        dense = np.asarray(dense, dtype=np.int64)
        known = (dense >= 0) & (dense < self.n_catalog)
        if not self.id_hashed:
            return np.where(known, dense + 1, 0)
        if ds is None:
            raise ValueError("a hashed id space needs the dataset to look up external item ids")
        out = np.zeros(len(dense), dtype=np.int64)
        for j in np.flatnonzero(known):
            out[j] = 1 + stable_hash(ds.items.id(int(dense[j]))) % (self.id_buckets - 1)
        return out

    def encode_catalog(self, ds: Dataset) -> ItemCodes:
        """Features of every item of `ds` (items beyond the training catalog get no id embedding)."""
        n = ds.n_items
        cat = self._remap(ds.item_category.vocab.ids(), ds.item_category.codes, self._cat) \
            if ds.item_category is not None else np.zeros(n, np.int32)
        cre = self._remap(ds.item_creator.vocab.ids(), ds.item_creator.codes, self._creator) \
            if ds.item_creator is not None else np.zeros(n, np.int32)
        tags = padded_bags(ds.item_tags) if len(ds.item_tags) == n else np.zeros((n, 1), np.int32)
        if ds.tags.ids() != self.tags[: len(ds.tags)] or len(ds.tags) > len(self.tags):
            tags = self._remap_bag(tags, ds.tags.ids(), self._tag)
        created = ds.item_created_at if ds.item_created_at is not None else np.full(n, MISSING_TIME, np.int64)
        return ItemCodes(self.id_buckets_of(np.arange(n), ds), tags, cat, cre, created.astype(np.int64))

    def encode_new_items(
        self,
        *,
        tags: Sequence[Sequence[str]],
        categories: Sequence[str | None],
        creators: Sequence[str | None],
        created_at: Sequence[int | None] | np.ndarray,
        id_buckets: np.ndarray | None = None,
    ) -> ItemCodes:
        """Features of items described by content (an API call); unknown strings map to code 0."""
        n = len(tags)
        if not (len(categories) == len(creators) == len(created_at) == n):
            raise ValueError("tags, categories, creators and created_at must have one entry per item")
        cat = np.array([self._cat.get(c, -1) + 1 if c else 0 for c in categories], dtype=np.int32)
        cre = np.array([self._creator.get(c, -1) + 1 if c else 0 for c in creators], dtype=np.int32)
        ca = np.array([MISSING_TIME if t is None else int(t) for t in created_at], dtype=np.int64)
        ids = np.zeros(n, np.int64) if id_buckets is None else np.asarray(id_buckets, np.int64)
        return ItemCodes(ids, bag_codes(tags, self._tag), cat, cre, ca)

    # ----- users -----
    def encode_user_attributes(self, ds: Dataset, users: np.ndarray) -> np.ndarray:
        """(n, n_attributes) shared-table codes of the dataset's users; 0 = unknown."""
        out = np.zeros((len(users), max(1, len(self.user_attributes))), dtype=np.int32)
        for j, (a, vocab) in enumerate(self._attr.items()):
            col = ds.user_attributes.get(a)
            if col is None:
                continue
            codes = self._remap(col.vocab.ids(), col.codes, vocab)[users]
            out[:, j] = np.where(codes > 0, codes + self.attr_offsets[a], 0)
        return out

    def encode_attributes(self, attributes: Mapping[str, str]) -> np.ndarray:
        """(n_attributes,) codes of one user's attributes dict; unknown names and values are ignored."""
        out = np.zeros(max(1, len(self.user_attributes)), dtype=np.int32)
        for j, (a, vocab) in enumerate(self._attr.items()):
            v = attributes.get(a)
            if v is not None and v in vocab:
                out[j] = self.attr_offsets[a] + vocab[v] + 1
        return out

    def encode_user_interests(self, ds: Dataset, users: np.ndarray) -> np.ndarray:
        if len(ds.user_interests) != ds.n_users:
            return np.zeros((len(users), 1), np.int32)
        bags = padded_bags(ds.user_interests, np.asarray(users, np.int64))
        if ds.tags.ids() != self.tags[: len(ds.tags)] or len(ds.tags) > len(self.tags):
            bags = self._remap_bag(bags, ds.tags.ids(), self._tag)
        return bags

    def encode_interests(self, interests: Sequence[Sequence[str]]) -> np.ndarray:
        return bag_codes(interests, self._tag)

    def encode_device(self, device: str | None) -> int:
        return 0 if device is None else self._device.get(device.lower(), -1) + 1

    # ----- helpers -----
    @staticmethod
    def _remap(src_vocab: list[str], codes: np.ndarray, dst: Mapping[str, int]) -> np.ndarray:
        """Dataset codes (-1 = missing) -> our codes + 1 (0 = missing or unknown to the model)."""
        table = np.array([dst.get(v, -1) + 1 for v in src_vocab] + [0], dtype=np.int32)
        return table[np.where(codes < 0, len(src_vocab), codes)]

    @staticmethod
    def _remap_bag(bags: np.ndarray, src_vocab: list[str], dst: Mapping[str, int]) -> np.ndarray:
        table = np.array([0] + [dst.get(v, -1) + 1 for v in src_vocab], dtype=np.int32)
        return table[bags]


@dataclass
class PositiveLog:
    """Each user's positive engagements in time order: user u's are rows ptr[u]:ptr[u+1]."""

    ptr: np.ndarray  # int64 (n_users + 1)
    item: np.ndarray  # int64
    weight: np.ndarray  # float32, event weight
    timestamp: np.ndarray  # int64
    rank: np.ndarray  # int64, position of each row within its user (number of earlier positives)
    user: np.ndarray  # int64, user of each row

    @staticmethod
    def build(interactions: Interactions, events: EventsConfig, n_users: int) -> PositiveLog:
        w = interactions.weights(events)
        pos = np.flatnonzero(w > 0)
        # stable sort by user keeps the time order of the (time-sorted) log within each user
        order = pos[np.argsort(interactions.user[pos], kind="stable")]
        users = interactions.user[order].astype(np.int64)
        ptr = np.zeros(n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(users, minlength=n_users), out=ptr[1:])
        rank = np.arange(len(order), dtype=np.int64) - ptr[users]
        return PositiveLog(ptr, interactions.item[order].astype(np.int64), w[order].astype(np.float32),
                           interactions.timestamp[order].astype(np.int64), rank, users)

    def count_before(self, users: np.ndarray, now: int | None) -> np.ndarray:
        """Number of positives of each user strictly before `now` (all of them when now is None)."""
        users = np.asarray(users, np.int64)
        if now is None:
            return self.ptr[users + 1] - self.ptr[users]
        return np.array([np.searchsorted(self.timestamp[self.ptr[u]:self.ptr[u + 1]], now, side="left")
                         for u in users], dtype=np.int64)

    def history(self, users: np.ndarray, n_before: np.ndarray, length: int,
                decay: float = HISTORY_DECAY) -> tuple[np.ndarray, np.ndarray]:
        """Most-recent-first (items, weights) of the `length` positives before position `n_before` of each user.

        Padded slots hold item 0 with weight 0. Weights are event weight x decay^position.
        """
        users = np.asarray(users, np.int64)
        n_before = np.asarray(n_before, np.int64)
        back = np.arange(1, length + 1, dtype=np.int64)
        pos = n_before[:, None] - back[None, :]  # (B, L) rank within the user, most recent first
        valid = pos >= 0
        rows = np.where(valid, self.ptr[users][:, None] + pos, 0)
        items = np.where(valid, self.item[rows], 0) if len(self.item) else np.zeros(rows.shape, np.int64)
        w = np.where(valid, self.weight[rows], 0) if len(self.weight) else np.zeros(rows.shape, np.float32)
        w = w * (decay ** (back - 1)).astype(np.float32)[None, :]
        return items.astype(np.int64), w.astype(np.float32)


def negatives_by_user(interactions: Interactions, events: EventsConfig, n_users: int) -> Csr:
    """Items each user hid, disliked, blocked or rated low: the hard negatives."""
    neg = np.flatnonzero(interactions.negative_mask(events))
    order = neg[np.argsort(interactions.user[neg], kind="stable")]
    ptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(interactions.user[order].astype(np.int64), minlength=n_users), out=ptr[1:])
    return Csr(ptr, interactions.item[order].astype(np.int32))
