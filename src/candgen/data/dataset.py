"""The in-memory dataset every stage consumes: dense integer ids, columnar numpy arrays, CSR lists.

Loaders (`candgen.data.io`) validate files and hand clean polars frames to `Dataset.from_frames`.
Users and items that appear only in the users/items tables (no interactions) are real: new users
and new items.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import polars as pl

from candgen.config import KNOWN_EVENTS, NEGATIVE_EVENTS, EventsConfig

EVENT_CODE = {e: i for i, e in enumerate(KNOWN_EVENTS)}
NEGATIVE_CODES = np.array([EVENT_CODE[e] for e in NEGATIVE_EVENTS], dtype=np.int8)
IMPRESSION_CODE = EVENT_CODE["impression"]
MISSING_TIME = np.iinfo(np.int64).min


class IdMap:
    """External string id <-> dense int index. Append-only; thread-safe for readers while one writer adds."""

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self._ids: list[str] = []
        self._index: dict[str, int] = {}
        for i in ids:
            self.add(i)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def add(self, key: str) -> int:
        """Index of `key`, adding it if new."""
        idx = self._index.get(key)
        if idx is None:
            idx = len(self._ids)
            self._ids.append(key)
            self._index[key] = idx
        return idx

    def get(self, key: str, default: int = -1) -> int:
        return self._index.get(key, default)

    def lookup(self, keys: Sequence[str]) -> np.ndarray:
        """Indices of `keys` as int64, -1 for unknown ones."""
        g = self._index.get
        return np.fromiter((g(k, -1) for k in keys), dtype=np.int64, count=len(keys))

    def id(self, idx: int) -> str:
        return self._ids[idx]

    def ids(self, idxs: Iterable[int] | None = None) -> list[str]:
        if idxs is None:
            return list(self._ids)
        s = self._ids
        return [s[int(i)] for i in idxs]

    def to_array(self) -> np.ndarray:
        return np.array(self._ids, dtype=object)


@dataclass
class Categorical:
    """A categorical column: `codes[i]` indexes `vocab`, -1 when missing."""

    vocab: IdMap
    codes: np.ndarray  # int32


@dataclass
class Csr:
    """Variable-length int lists per row (tags of an item, interests of a user): row i is idx[ptr[i]:ptr[i+1]]."""

    ptr: np.ndarray  # int64, len n+1
    idx: np.ndarray  # int32

    def row(self, i: int) -> np.ndarray:
        return self.idx[self.ptr[i] : self.ptr[i + 1]]

    def __len__(self) -> int:
        return len(self.ptr) - 1

    @staticmethod
    def from_lists(rows: Sequence[Sequence[int]]) -> Csr:
        lens = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        ptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lens, out=ptr[1:])
        idx = np.fromiter((x for r in rows for x in r), dtype=np.int32, count=int(ptr[-1]))
        return Csr(ptr, idx)


@dataclass
class Interactions:
    """Columnar interaction log, sorted by timestamp. `event` codes index `candgen.config.KNOWN_EVENTS`."""

    user: np.ndarray  # int32
    item: np.ndarray  # int32
    timestamp: np.ndarray  # int64 unix seconds
    event: np.ndarray  # int8
    value: np.ndarray  # float32, NaN when absent

    def __len__(self) -> int:
        return len(self.user)

    def take(self, mask_or_idx: np.ndarray) -> Interactions:
        return Interactions(
            self.user[mask_or_idx], self.item[mask_or_idx], self.timestamp[mask_or_idx],
            self.event[mask_or_idx], self.value[mask_or_idx],
        )

    def weights(self, events: EventsConfig) -> np.ndarray:
        """Engagement weight per row: the event's weight for positive events, 0 for impressions and negatives;
        ratings below `events.rating_negative_below` count as negative (weight 0)."""
        table = np.zeros(len(KNOWN_EVENTS), dtype=np.float32)
        for name, weight in events.weights.items():
            if name in EVENT_CODE:
                table[EVENT_CODE[name]] = weight
        w: np.ndarray = table[self.event]
        rating = self.event == EVENT_CODE["rating"]
        if rating.any():
            low = rating & (self.value < events.rating_negative_below)
            w = np.where(low, np.float32(0), w)
        return w

    def negative_mask(self, events: EventsConfig) -> np.ndarray:
        """Rows that are explicit negative feedback: hide/dislike/block, or a low rating."""
        neg = np.isin(self.event, NEGATIVE_CODES)
        rating = self.event == EVENT_CODE["rating"]
        return neg | (rating & (self.value < events.rating_negative_below))


@dataclass
class Dataset:
    """A whole dataset with dense ids. Item and user tables cover every id seen anywhere."""

    users: IdMap
    items: IdMap
    interactions: Interactions
    tags: IdMap = field(default_factory=IdMap)  # shared vocabulary of item tags and user interests
    item_tags: Csr = field(default_factory=lambda: Csr(np.zeros(1, np.int64), np.zeros(0, np.int32)))
    item_category: Categorical | None = None
    item_creator: Categorical | None = None
    item_created_at: np.ndarray | None = None  # int64, MISSING_TIME when unknown
    item_title: list[str] | None = None
    item_attributes: dict[str, Categorical] = field(default_factory=dict)  # other categorical item columns
    user_interests: Csr = field(default_factory=lambda: Csr(np.zeros(1, np.int64), np.zeros(0, np.int32)))
    user_attributes: dict[str, Categorical] = field(default_factory=dict)  # age_group, country, language, ...
    social_src: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # user follows ...
    social_dst: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # ... friend

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    def with_interactions(self, interactions: Interactions) -> Dataset:
        """The same catalog and users with another interaction log (e.g. the train part of a split)."""
        return replace(self, interactions=interactions)

    @staticmethod
    def from_frames(
        interactions: pl.DataFrame,
        items: pl.DataFrame | None = None,
        users: pl.DataFrame | None = None,
        social: pl.DataFrame | None = None,
    ) -> Dataset:
        """Build from validated frames.

        interactions: user_id (str), item_id (str), timestamp (int64 unix s), event (str, known), value (float, opt).
        items: item_id, and optionally tags (list[str]), category, creator_id (str), created_at (int64), title,
        and any other string columns (categorical attributes). users: user_id, interests (list[str]), and string
        attribute columns. social: user_id, friend_id.
        """
        # Ids are numbered in order of first appearance: items and users tables first (their order fixes
        # the ids), then ids only seen in interactions (by time), then in social. Vectorised with polars
        # (hash maps in Rust) because Python loops take minutes on 20M interactions; the interaction
        # log is put in time order as int arrays (`perm`), never by sorting its string columns.
        ts = interactions["timestamp"].cast(pl.Int64).to_numpy()
        perm: np.ndarray | None = None
        if len(ts) > 1 and not bool((ts[1:] >= ts[:-1]).all()):
            perm = np.argsort(ts, kind="stable")
            ts = ts[perm]
        has_social = social is not None and len(social) > 0
        item_cols = ([items["item_id"]] if items is not None else []) + [interactions["item_id"]]
        user_cols = ([users["user_id"]] if users is not None else []) + [interactions["user_id"]]
        if social is not None and has_social:
            user_cols += [social["user_id"], social["friend_id"]]
        k_item, k = (1 if items is not None else 0), (1 if users is not None else 0)
        item_map, item_codes = _index_ids(item_cols, perms={k_item: perm})
        user_map, user_codes = _index_ids(user_cols, perms={k: perm})
        tag_map = IdMap()
        ev = (
            interactions["event"].replace_strict(EVENT_CODE, return_dtype=pl.Int8).to_numpy()
            if "event" in interactions.columns
            else np.full(len(interactions), EVENT_CODE["view"], np.int8)
        )
        val = (
            interactions["value"].cast(pl.Float32).fill_null(float("nan")).to_numpy()
            if "value" in interactions.columns
            else np.full(len(interactions), np.nan, np.float32)
        )
        if perm is not None:
            ev, val = ev[perm], val[perm]
        inter = Interactions(user_codes[k], item_codes[k_item], ts, ev.astype(np.int8), val.astype(np.float32))
        social_src = social_dst = np.zeros(0, np.int32)
        if has_social:
            social_src, social_dst = user_codes[k + 1], user_codes[k + 2]
        n_items, n_users = len(item_map), len(user_map)
        ds = Dataset(users=user_map, items=item_map, interactions=inter, tags=tag_map,
                     social_src=social_src, social_dst=social_dst)
        item_rows = item_codes[0] if items is not None else np.zeros(0, np.int32)
        user_rows = user_codes[0] if users is not None else np.zeros(0, np.int32)
        ds.item_tags = _csr_column(items, "tags", item_rows, tag_map, n_items)
        ds.user_interests = _csr_column(users, "interests", user_rows, tag_map, n_users)
        if items is not None:
            rows = item_rows
            if "category" in items.columns:
                ds.item_category = _categorical(items["category"], rows, n_items)
            if "creator_id" in items.columns:
                ds.item_creator = _categorical(items["creator_id"], rows, n_items)
            if "created_at" in items.columns:
                ca = np.full(n_items, MISSING_TIME, np.int64)
                ca[rows] = items["created_at"].cast(pl.Int64).fill_null(MISSING_TIME).to_numpy()
                ds.item_created_at = ca
            if "title" in items.columns:
                titles = [""] * n_items
                for r, t in zip(rows.tolist(), items["title"].to_list(), strict=True):
                    titles[r] = t or ""
                ds.item_title = titles
            skip = {"item_id", "tags", "category", "creator_id", "created_at", "title"}
            for c in items.columns:
                if c not in skip and items[c].dtype == pl.String:
                    ds.item_attributes[c] = _categorical(items[c], rows, n_items)
        if users is not None:
            rows = user_rows
            for c in users.columns:
                if c not in ("user_id", "interests") and users[c].dtype == pl.String:
                    ds.user_attributes[c] = _categorical(users[c], rows, n_users)
        return ds


def _index_ids(cols: list[pl.Series], perms: dict[int, np.ndarray | None] | None = None
               ) -> tuple[IdMap, list[np.ndarray]]:
    """An IdMap over the ids of `cols` in order of first appearance, and each column's dense codes (int32).

    `perms[i]` reorders column i (as `col[perm]`) before first appearances are counted and codes returned.
    """
    all_ids = pl.concat([c.cast(pl.String).rename("id") for c in cols])
    uniq = all_ids.unique()  # any order: ids are renumbered below with integer work only
    # a join is the fastest polars way to map 20M strings (replace_strict is ~2x slower)
    raw = (
        all_ids.to_frame().join(uniq.to_frame().with_row_index("code"), on="id", how="left", maintain_order="left")
        ["code"].cast(pl.Int64).to_numpy()
    )
    ends = np.cumsum([len(c) for c in cols])
    parts = list(np.split(raw, ends[:-1]))
    for i, perm in (perms or {}).items():
        if perm is not None:
            parts[i] = parts[i][perm]
    first_seen = pl.Series(np.concatenate(parts)).unique(maintain_order=True).to_numpy()
    rank = np.empty(len(uniq), np.int64)
    rank[first_seen] = np.arange(len(first_seen))
    keys = uniq.gather(pl.Series(first_seen)).to_list()
    m = IdMap()
    m._ids = keys
    m._index = dict(zip(keys, range(len(keys)), strict=True))
    return m, [rank[p].astype(np.int32) for p in parts]


def _categorical(col: pl.Series, rows: np.ndarray, n: int) -> Categorical:
    s = col.cast(pl.String)
    present = s.is_not_null() & (s != "")
    vocab, (codes_present,) = _index_ids([s.filter(present)])
    codes = np.full(n, -1, np.int32)
    mask = present.to_numpy()
    codes[rows[mask]] = codes_present
    return Categorical(vocab, codes)


def _csr_column(df: pl.DataFrame | None, col: str, rows: np.ndarray, vocab: IdMap, n: int) -> Csr:
    """Row `rows[i]` of the result holds the codes (in `vocab`, extended) of the list in df[col][i]."""
    if df is None or col not in df.columns:
        return Csr(np.zeros(n + 1, np.int64), np.zeros(0, np.int32))
    lists = df[col]
    if lists.dtype == pl.String:
        lists = lists.str.split("|")
    lists = lists.cast(pl.List(pl.String)).list.eval(pl.element().filter(pl.element() != "")).fill_null([])
    # a repeated row keeps its last list, as a dict would
    frame = pl.DataFrame({"row": rows, "vals": lists}).unique("row", keep="last", maintain_order=True).sort("row")
    flat = frame.explode("vals").drop_nulls("vals")["vals"]
    for t in flat.unique(maintain_order=True).to_list():
        vocab.add(t)
    keys = pl.Series("k", vocab.ids())
    idx = flat.replace_strict(keys, pl.Series("v", np.arange(len(keys), dtype=np.int32)), return_dtype=pl.Int32)
    lens = np.zeros(n, np.int64)
    lens[frame["row"].to_numpy()] = frame["vals"].list.len().to_numpy()
    ptr = np.zeros(n + 1, np.int64)
    np.cumsum(lens, out=ptr[1:])
    return Csr(ptr, idx.to_numpy().astype(np.int32, copy=False))
