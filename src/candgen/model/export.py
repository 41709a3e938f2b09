"""The trained two-tower model in numpy: what `serve` and `recommend` load. Never imports torch.

`TwoTowerModel` mirrors `towers.py` exactly (the tests check it to 1e-5): the item tower embeds the
whole catalog offline and items added while serving from their content (id part zero); the user tower
embeds one request in well under a millisecond. Saved as `weights.npz` (allow_pickle=False) plus
`model.json` (vocabularies, config); no pickle anywhere.

    >>> model = TwoTowerModel.load("artifacts/model")                           # doctest: +SKIP
    >>> items = model.item_embeddings(ds)                                       # (n_items, dim), L2-normalised
    >>> u = model.embed_user(attributes={"country": "de"}, interests=["jazz"], context={"device": "mobile"},
    ...                      history_items=np.array([3, 7]), history_weights=np.array([1.0, 3.0]),
    ...                      history_item_vectors=items[[3, 7]], now=1_700_000_000)
    >>> scores = items @ u                                                      # dot product = cosine
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from candgen.config import EventsConfig
from candgen.data.dataset import Dataset
from candgen.errors import ArtifactError
from candgen.model.features import (
    FeatureSpace,
    ItemCodes,
    PositiveLog,
    age_bucket,
    history_len_bucket,
    hour_bucket,
    recency_weights,
)
from candgen.types import BatchCandidates

FORMAT_VERSION = 1
# `recommend` scores users in blocks of at most this many (user, item) scores: 1024 users x 1M items at once
# took ~16 GB (scores, their negation and argpartition's int64 indices) and was OOM-killed on a 24 GB machine
RECOMMEND_BLOCK_SCORES = 1 << 25
CHUNK = 32_768  # rows per chunk when embedding a large catalog (bounds the (rows, tags, dim) temporaries)


def _normalize(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32, copy=False)


def _bag_mean(table: np.ndarray, bags: np.ndarray) -> np.ndarray:
    """Mean of the rows of `table` over each bag; code 0 is padding (a zero row, not counted)."""
    count = (bags > 0).sum(axis=-1, keepdims=True)
    return table[bags].sum(axis=-2) / np.maximum(count, 1)


class TwoTowerModel:
    """Numpy user and item towers, vocabularies and the catalog's item embeddings at training end."""

    def __init__(self, *, space: FeatureSpace, weights: Mapping[str, np.ndarray], catalog_vectors: np.ndarray,
                 catalog_id_bucket: np.ndarray, config: Mapping[str, Any] | None = None,
                 info: Mapping[str, Any] | None = None, version: str | None = None) -> None:
        self.space = space
        self.weights = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}
        self.catalog_vectors = np.ascontiguousarray(catalog_vectors, dtype=np.float32)
        self.catalog_id_bucket = np.asarray(catalog_id_bucket, dtype=np.int64)
        self.config = dict(config or {})
        self.info = dict(info or {})
        self.dim = int(self.weights["item.id_emb.weight"].shape[1])
        self.version = version or self._digest()
        w = self.weights
        # transposed once so every call is x @ W (contiguous) rather than x @ W.T
        self._item_fc = (w["item.mlp.fc1.weight"].T.copy(), w["item.mlp.fc1.bias"],
                         w["item.mlp.fc2.weight"].T.copy(), w["item.mlp.fc2.bias"])
        self._user_fc = (w["user.mlp.fc1.weight"].T.copy(), w["user.mlp.fc1.bias"],
                         w["user.mlp.fc2.weight"].T.copy(), w["user.mlp.fc2.bias"])
        self._bank_proj = w["user.history_bank_proj.weight"].T.copy()
        self._id_proj = w["user.history_id_proj.weight"].T.copy()

    def _digest(self) -> str:
        h = hashlib.sha256()
        for k in sorted(self.weights):
            h.update(k.encode())
            h.update(self.weights[k].tobytes())
        return "twotower-" + h.hexdigest()[:12]

    # ----- item tower -----
    def id_buckets(self, dense: np.ndarray) -> np.ndarray:
        """Id bucket of dense item indices: 0 (no id embedding) for items not in the training catalog."""
        dense = np.asarray(dense, dtype=np.int64)
        known = (dense >= 0) & (dense < len(self.catalog_id_bucket))
        return np.where(known, self.catalog_id_bucket[np.where(known, dense, 0)], 0)

    def embed_item_codes(self, codes: ItemCodes, now: int | None) -> np.ndarray:
        """Item tower over encoded features; `now` fixes the age buckets (unknown age when None)."""
        n = len(codes.id_bucket)
        out = np.empty((n, self.dim), dtype=np.float32)
        w = self.weights
        w1, b1, w2, b2 = self._item_fc
        for s in range(0, n, CHUNK):
            c = codes.take(np.arange(s, min(n, s + CHUNK)))
            age = np.zeros(len(c.id_bucket), np.int32) if now is None else age_bucket(c.created_at, now)
            x = (w["item.id_emb.weight"][c.id_bucket] + _bag_mean(w["item.tag_emb.weight"], c.tags)
                 + w["item.category_emb.weight"][c.category] + w["item.creator_emb.weight"][c.creator]
                 + w["item.age_emb.weight"][age])
            out[s: s + len(x)] = _normalize(x + np.maximum(x @ w1 + b1, 0) @ w2 + b2)
        return out

    def item_embeddings(self, ds: Dataset, now: int | None = None) -> np.ndarray:
        """(n_items, dim) float32 embeddings of every item of `ds`; `now` defaults to its last event time."""
        codes = self.space.encode_catalog(ds)
        codes.id_bucket = self.id_buckets(np.arange(ds.n_items))
        return self.embed_item_codes(codes, _default_now(ds, now))

    def embed_items(self, tags: Sequence[Sequence[str]], categories: Sequence[str | None],
                    creators: Sequence[str | None], created_at: Sequence[int | None] | np.ndarray,
                    item_ids: np.ndarray | None = None, now: int | None = None) -> np.ndarray:
        """Embed items from their content (items added while serving). `item_ids` are dense indices, -1 or
        None for new items; only items of the training catalog keep an id embedding."""
        n = len(tags)
        buckets = np.zeros(n, np.int64) if item_ids is None else self.id_buckets(np.asarray(item_ids))
        codes = self.space.encode_new_items(tags=tags, categories=categories, creators=creators,
                                            created_at=created_at, id_buckets=buckets)
        return self.embed_item_codes(codes, now)

    # ----- user tower -----
    def embed_user_codes(self, *, attributes: np.ndarray, interests: np.ndarray, device: np.ndarray,
                         hour: np.ndarray, history_ids: np.ndarray, history_weights: np.ndarray,
                         history_vectors: np.ndarray) -> np.ndarray:
        """Batched user tower over encoded features. history_vectors: (B, dim) weighted pool of the history
        items' embeddings; history_weights: (B, L), normalised here to sum 1 per row."""
        w = self.weights
        wsum = history_weights.sum(axis=1, keepdims=True)
        wn = history_weights / np.where(wsum > 0, wsum, 1)
        n_hist = (history_weights > 0).sum(axis=1)
        pooled_ids = np.einsum("bl,bld->bd", wn, w["item.id_emb.weight"][history_ids])
        x = (w["user.attr_emb.weight"][attributes].sum(axis=1) + _bag_mean(w["item.tag_emb.weight"], interests)
             + w["user.device_emb.weight"][device] + w["user.hour_emb.weight"][hour]
             + w["user.history_len_emb.weight"][history_len_bucket(n_hist)]
             + history_vectors @ self._bank_proj + pooled_ids @ self._id_proj)
        w1, b1, w2, b2 = self._user_fc
        return _normalize(x + np.maximum(x @ w1 + b1, 0) @ w2 + b2)

    def embed_user(self, *, attributes: Mapping[str, str], interests: Sequence[str], context: Mapping[str, str],
                   history_items: np.ndarray, history_weights: np.ndarray,
                   history_item_vectors: np.ndarray | None = None, now: int | None = None) -> np.ndarray:
        """(dim,) embedding of one user request.

        history_items: dense item indices of positive engagements, most recent first (truncated to the
        model's history_len); history_weights: each one's event weight (the model applies the same recency
        decay per position as in training); history_item_vectors: the items' embeddings (needed for items
        added while serving; defaults to the catalog's).
        context: "device", and "hour" (0-23, else taken from `now`).
        """
        w = self.weights
        items = np.asarray(history_items, dtype=np.int64)[: self.space.history_len]
        hw = np.asarray(history_weights, dtype=np.float32)[: len(items)]
        if len(hw) != len(items):
            raise ValueError(f"history_weights has {len(hw)} entries for {len(items)} history items")
        hw = recency_weights(hw, self.space.history_decay)
        if history_item_vectors is None:
            known = (items >= 0) & (items < len(self.catalog_vectors))
            items, hw = items[known], hw[known]
            vecs = self.catalog_vectors[items]
        else:
            vecs = np.asarray(history_item_vectors, dtype=np.float32)[: len(items)]
            if len(vecs) != len(items):
                raise ValueError(f"history_item_vectors has {len(vecs)} rows for {len(items)} history items")
        total = float(hw.sum())
        wn = hw / total if total > 0 else hw
        x = w["user.attr_emb.weight"][self.space.encode_attributes(attributes)].sum(axis=0)
        tags = [self.space.tag_index[t] + 1 for t in interests if t in self.space.tag_index]
        if tags:
            x = x + w["item.tag_emb.weight"][tags].mean(axis=0)
        device = self.space.encode_device(context.get("device"))
        h = _hour_code(context.get("hour"), now)
        x = x + w["user.device_emb.weight"][device] + w["user.hour_emb.weight"][h]
        x = x + w["user.history_len_emb.weight"][int(history_len_bucket(np.array((hw > 0).sum())))]
        if len(items):
            pooled_ids = wn @ w["item.id_emb.weight"][self.id_buckets(items)]
            x = x + (wn @ vecs) @ self._bank_proj + pooled_ids @ self._id_proj
        w1, b1, w2, b2 = self._user_fc
        out = x + np.maximum(x @ w1 + b1, 0) @ w2 + b2
        return (out / max(float(np.sqrt(out @ out)), 1e-12)).astype(np.float32)

    def embed_users(self, ds: Dataset, users: np.ndarray, *, events: EventsConfig | None = None,
                    now: int | None = None, context: Mapping[str, str] | None = None,
                    item_vectors: np.ndarray | None = None) -> np.ndarray:
        """(len(users), dim) embeddings of dataset users from their attributes, interests and their positive
        engagements in `ds` before `now` (all of them when now is None), for offline recommend/eval.
        The hour-of-day context is used only when `context` gives "hour" (an offline run has no request time)."""
        users = np.asarray(users, dtype=np.int64)
        log = PositiveLog.build(ds.interactions, events or EventsConfig(), ds.n_users)
        n_before = np.minimum(log.count_before(users, now), len(log.item))
        hist, hw = log.history(users, n_before, self.space.history_len, self.space.history_decay)
        vectors = item_vectors if item_vectors is not None else self._vectors_for(ds, now)
        out = np.empty((len(users), self.dim), dtype=np.float32)
        ctx = context or {}
        device = self.space.encode_device(ctx.get("device"))
        hour = _hour_code(ctx.get("hour"), None)  # offline: no request time unless the context gives one
        for s in range(0, len(users), 4096):
            sl = slice(s, s + 4096)
            wsum = hw[sl].sum(axis=1, keepdims=True)
            wn = hw[sl] / np.where(wsum > 0, wsum, 1)
            out[sl] = self.embed_user_codes(
                attributes=self.space.encode_user_attributes(ds, users[sl]),
                interests=self.space.encode_user_interests(ds, users[sl]),
                device=np.full(len(users[sl]), device, np.int32), hour=np.full(len(users[sl]), hour, np.int32),
                history_ids=self.id_buckets(hist[sl]) * (hw[sl] > 0), history_weights=hw[sl],
                history_vectors=np.einsum("bl,bld->bd", wn, vectors[hist[sl]]),
            )
        return out

    def _vectors_for(self, ds: Dataset, now: int | None) -> np.ndarray:
        if now is None and ds.n_items == len(self.catalog_vectors):
            return self.catalog_vectors
        return self.item_embeddings(ds, now)

    def recommend(self, ds: Dataset, users: np.ndarray, k: int, *, exclude_seen: bool = True,
                  item_vectors: np.ndarray | None = None, events: EventsConfig | None = None,
                  now: int | None = None) -> BatchCandidates:
        """Top-`k` items per user by exact dot-product search (for offline evaluation); items the user
        interacted with in `ds` in any way are excluded when `exclude_seen`."""
        users = np.asarray(users, dtype=np.int64)
        vectors = item_vectors if item_vectors is not None else self.item_embeddings(ds, now)
        queries = self.embed_users(ds, users, events=events, now=now, item_vectors=vectors)
        kk = min(k, len(vectors))
        ids = np.full((len(users), k), -1, dtype=np.int64)
        scores = np.full((len(users), k), -np.inf, dtype=np.float32)
        seen_ptr, seen_items = _seen_lists(ds, users) if exclude_seen else (None, None)
        block = max(1, min(1024, RECOMMEND_BLOCK_SCORES // max(len(vectors), 1)))
        for s in range(0, len(users), block):
            sc = queries[s: s + block] @ vectors.T
            if seen_ptr is not None and seen_items is not None:
                for r in range(len(sc)):
                    sc[r, seen_items[seen_ptr[s + r]: seen_ptr[s + r + 1]]] = -np.inf
            top = np.argpartition(-sc, kk - 1, axis=1)[:, :kk] if kk < sc.shape[1] else np.tile(
                np.arange(sc.shape[1]), (len(sc), 1))
            top_sc = np.take_along_axis(sc, top, axis=1)
            order = np.argsort(-top_sc, axis=1, kind="stable")
            top, top_sc = np.take_along_axis(top, order, axis=1), np.take_along_axis(top_sc, order, axis=1)
            top = np.where(np.isfinite(top_sc), top, -1)
            ids[s: s + len(sc), :kk], scores[s: s + len(sc), :kk] = top, top_sc
        return BatchCandidates(ids, scores)

    # ----- persistence -----
    def save(self, path: str | Path) -> None:
        """Write `model.json` and `weights.npz` into directory `path` (created if needed)."""
        d = Path(path)
        d.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = dict(self.weights)
        arrays["catalog_vectors"] = self.catalog_vectors
        arrays["catalog_id_bucket"] = self.catalog_id_bucket
        np.savez(d / "weights.npz", **arrays)  # type: ignore[arg-type]
        meta = {"format": FORMAT_VERSION, "kind": "two-tower", "version": self.version, "dim": self.dim,
                "features": self.space.to_dict(), "config": self.config, "info": self.info}
        (d / "model.json").write_text(json.dumps(meta, indent=1, sort_keys=True))

    @staticmethod
    def load(path: str | Path) -> TwoTowerModel:
        d = Path(path)
        meta_path, weights_path = d / "model.json", d / "weights.npz"
        if not meta_path.is_file() or not weights_path.is_file():
            raise ArtifactError(f"{d}: not a two-tower model directory (needs model.json and weights.npz)")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise ArtifactError(f"{meta_path}: not valid JSON ({e})") from None
        if meta.get("kind") != "two-tower" or meta.get("format") != FORMAT_VERSION:
            raise ArtifactError(f"{meta_path}: format {meta.get('format')!r} of kind {meta.get('kind')!r}; "
                                f"this candgen reads two-tower format {FORMAT_VERSION}")
        with np.load(weights_path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        try:
            vectors, buckets = arrays.pop("catalog_vectors"), arrays.pop("catalog_id_bucket")
        except KeyError as e:
            raise ArtifactError(f"{weights_path}: missing array {e}") from None
        return TwoTowerModel(space=FeatureSpace.from_dict(meta["features"]), weights=arrays,
                             catalog_vectors=vectors, catalog_id_bucket=buckets, config=meta.get("config"),
                             info=meta.get("info"), version=meta["version"])


def _hour_code(hour: object, now: int | None) -> int:
    """Hour-of-day code from a context value ("0".."23"), else from `now`; 0 (unknown) when neither is usable."""
    if hour is not None:
        try:
            return int(str(hour)) % 24 + 1
        except ValueError:
            return 0  # a malformed context value must not fail the request
    return int(hour_bucket(now)) if now is not None else 0


def _default_now(ds: Dataset, now: int | None) -> int | None:
    if now is not None:
        return int(now)
    ts = ds.interactions.timestamp
    return int(ts.max()) if len(ts) else None


def _seen_lists(ds: Dataset, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each of `users` (in order), the items it interacted with in `ds` (CSR ptr, items)."""
    inter = ds.interactions
    pos = np.full(ds.n_users, -1, np.int64)
    pos[users] = np.arange(len(users))
    row_user = pos[inter.user]
    keep = row_user >= 0
    order = np.argsort(row_user[keep], kind="stable")
    items = inter.item[keep][order].astype(np.int64)
    ptr = np.zeros(len(users) + 1, np.int64)
    np.cumsum(np.bincount(row_user[keep], minlength=len(users)), out=ptr[1:])
    return ptr, items
