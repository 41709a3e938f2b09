"""The item catalog view the retrieval sources read: creator, category, tags, creation time, deleted flag.

Built from a `Dataset`, then grown while serving (`add_item`) and pruned (`delete`). Arrays grow by
doubling and are swapped by reference, so a reader holding an old view keeps valid data for the items
it knew; per-item writes take a lock.

    cat = Catalog.from_dataset(ds)
    i = cat.add_item("v42", tags=["cats"], category="pets", creator="c7", created_at=1.7e9)
    cat.delete(i)          # cat.is_deleted[i] is now True
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from candgen.data.dataset import MISSING_TIME, Csr, Dataset, IdMap
from candgen.errors import ArtifactError
from candgen.sources.base import splice_rows

_FILE = "catalog.npz"
_META = "catalog.json"


def _grow(a: np.ndarray, n: int, fill: object) -> np.ndarray:
    """`a` with capacity for at least n rows (doubling), new slots filled with `fill`."""
    if len(a) >= n:
        return a
    out = np.full(max(n, 2 * len(a), 16), fill, dtype=a.dtype)
    out[: len(a)] = a
    return out


class Catalog:
    """Item → creator / category codes, tag ids, created_at (unix s), deleted flag.

    Codes index the `creators`, `categories` and `tags` vocabularies (-1 when missing); `tags` is the
    vocabulary shared with user interests. Thread-safety: readers may run concurrently with one writer.
    """

    def __init__(
        self,
        *,
        items: IdMap,
        tags: IdMap,
        categories: IdMap,
        creators: IdMap,
        category: np.ndarray,
        creator: np.ndarray,
        created_at: np.ndarray,
        deleted: np.ndarray,
        item_tags: Csr,
    ) -> None:
        self.items, self.tags, self.categories, self.creators = items, tags, categories, creators
        self._n = len(category)
        self._category = category.astype(np.int32, copy=False)
        self._creator = creator.astype(np.int32, copy=False)
        self._created_at = created_at.astype(np.int64, copy=False)
        self._deleted = deleted.astype(bool, copy=False)
        self._base_tags = item_tags
        self._extra_tags: dict[int, np.ndarray] = {}  # tags of items added after the base was built
        self._lock = threading.Lock()
        # (object array of the id strings, how many of its slots are filled): built on first use, grown by
        # doubling, swapped as one reference so a reader never pairs an old array with a new count
        self._names: tuple[np.ndarray, int] = (np.empty(0, object), 0)

    @staticmethod
    def from_dataset(ds: Dataset) -> Catalog:
        n = ds.n_items
        return Catalog(
            items=ds.items,
            tags=ds.tags,
            categories=ds.item_category.vocab if ds.item_category is not None else IdMap(),
            creators=ds.item_creator.vocab if ds.item_creator is not None else IdMap(),
            category=ds.item_category.codes if ds.item_category is not None else np.full(n, -1, np.int32),
            creator=ds.item_creator.codes if ds.item_creator is not None else np.full(n, -1, np.int32),
            created_at=ds.item_created_at if ds.item_created_at is not None else np.full(n, MISSING_TIME, np.int64),
            deleted=np.zeros(n, bool),
            item_tags=ds.item_tags if len(ds.item_tags) == n else _empty_csr(n),
        )

    # -- reads (views; valid for the first n_items rows) ------------------------------------------------

    @property
    def n_items(self) -> int:
        return self._n

    @property
    def category(self) -> np.ndarray:
        return self._category[: self._n]

    @property
    def creator(self) -> np.ndarray:
        return self._creator[: self._n]

    @property
    def created_at(self) -> np.ndarray:
        return self._created_at[: self._n]

    @property
    def is_deleted(self) -> np.ndarray:
        return self._deleted[: self._n]

    def live(self, ids: np.ndarray) -> np.ndarray:
        """Mask of `ids` that are catalog items and not deleted."""
        deleted = self._deleted
        n = min(self._n, len(deleted))
        ok = (ids >= 0) & (ids < n)
        ok[ok] = ~deleted[ids[ok]]
        return ok

    def item_ids(self, ids: np.ndarray) -> list[str]:
        """External ids of dense item indices (each < n_items): one take() from an object array of the id
        strings instead of a Python call per item (a 1000-item answer: ~10 µs instead of ~190 µs)."""
        ids = np.asarray(ids, np.int64)
        names, named = self._names
        if len(ids) and int(ids.max()) >= named:
            names = self._extend_names()
        return names.take(ids).tolist()

    def _extend_names(self) -> np.ndarray:
        with self._lock:
            names, named = self._names
            n = self._n
            if named < n:
                if len(names) < n:
                    grown = np.empty(max(n, 2 * len(names)), object)
                    grown[:named] = names[:named]
                    names = grown
                names[named:n] = self.items.ids(range(named, n))  # slots no reader uses yet
                self._names = (names, n)
            return names

    def tags_of(self, item: int) -> np.ndarray:
        """Tag ids (int32) of one item."""
        extra = self._extra_tags.get(item)
        if extra is not None:
            return extra
        if item < len(self._base_tags):
            return self._base_tags.row(item)
        return np.zeros(0, np.int32)

    def tags_of_items(self, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(tag ids of every item of `items`, concatenated, int64; how many belong to each item): `tags_of` for
        many items, gathered from the base CSR in a few numpy calls (items added while serving one by one)."""
        items = np.asarray(items, np.int64)
        base = self._base_tags
        extra = self._extra_tags
        in_base = items < len(base)
        if extra:
            in_base &= np.fromiter((int(i) not in extra for i in items.tolist()), bool, len(items))
        if not in_base.all():
            rows = [self.tags_of(int(i)) for i in items.tolist()]
            counts = np.fromiter((len(r) for r in rows), np.int64, len(rows))
            return (np.concatenate(rows).astype(np.int64) if rows else np.zeros(0, np.int64)), counts
        starts, ends = base.ptr[items], base.ptr[items + 1]
        counts = ends - starts
        total = int(counts.sum())
        # positions starts[j] .. ends[j]-1 of every item, as one arange shifted per item
        offsets = np.repeat(starts - np.cumsum(counts) + counts, counts)
        return base.idx[offsets + np.arange(total)].astype(np.int64), counts

    def tags_csr(self) -> Csr:
        """Tags of every item as one CSR (the base arrays themselves when nothing was added)."""
        with self._lock:
            if not self._extra_tags and len(self._base_tags) == self._n:
                return self._base_tags
            ptr, idx = splice_rows(self._base_tags.ptr, self._base_tags.idx, self._n, dict(self._extra_tags))
            return Csr(ptr, idx)

    def tag_ids(self, names: Sequence[str]) -> np.ndarray:
        """Ids of known tag names (unknown names are skipped)."""
        ids = self.tags.lookup(list(names))
        return ids[ids >= 0]

    # -- writes ---------------------------------------------------------------------------------------

    def add_item(
        self,
        item_id: str,
        *,
        tags: Sequence[str] = (),
        category: str | None = None,
        creator: str | None = None,
        created_at: float | None = None,
    ) -> int:
        """Add (or update) an item; returns its dense index. Re-adding a deleted item revives it."""
        with self._lock:
            idx = self.items.add(item_id)
            n = max(self._n, idx + 1)
            self._category = _grow(self._category, n, -1)
            self._creator = _grow(self._creator, n, -1)
            self._created_at = _grow(self._created_at, n, MISSING_TIME)
            self._deleted = _grow(self._deleted, n, False)
            self._category[idx] = self.categories.add(category) if category else -1
            self._creator[idx] = self.creators.add(creator) if creator else -1
            self._created_at[idx] = MISSING_TIME if created_at is None else int(created_at)
            self._deleted[idx] = False
            tag_ids = np.array([self.tags.add(t) for t in tags if t], dtype=np.int32)
            if idx >= len(self._base_tags) or len(tag_ids) or len(self._base_tags.row(idx)):
                self._extra_tags[idx] = tag_ids
            self._n = n
            return idx

    def delete(self, item: int) -> None:
        """Mark an item deleted: sources and the blend never return it again."""
        with self._lock:
            if 0 <= item < self._n:
                self._deleted[item] = True

    # -- persistence ----------------------------------------------------------------------------------

    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tags = self.tags_csr()
        with self._lock:
            np.savez(
                d / _FILE, category=self.category, creator=self.creator, created_at=self.created_at,
                deleted=self.is_deleted, tag_ptr=tags.ptr, tag_idx=tags.idx,
            )
            meta = {"items": self.items.ids(), "tags": self.tags.ids(), "categories": self.categories.ids(),
                    "creators": self.creators.ids()}
        (d / _META).write_text(json.dumps(meta))

    @staticmethod
    def load(directory: str | Path) -> Catalog:
        d = Path(directory)
        try:
            meta = json.loads((d / _META).read_text())
            with np.load(d / _FILE, allow_pickle=False) as z:
                a = {k: z[k] for k in z.files}
        except (FileNotFoundError, KeyError, ValueError) as e:
            raise ArtifactError(f"catalog in {d} is missing or unreadable: {e}") from None
        return Catalog(
            items=IdMap(meta["items"]), tags=IdMap(meta["tags"]), categories=IdMap(meta["categories"]),
            creators=IdMap(meta["creators"]), category=a["category"], creator=a["creator"],
            created_at=a["created_at"], deleted=a["deleted"], item_tags=Csr(a["tag_ptr"], a["tag_idx"]),
        )


def _empty_csr(n: int) -> Csr:
    return Csr(np.zeros(n + 1, np.int64), np.zeros(0, np.int32))
