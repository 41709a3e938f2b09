"""What one loaded artifacts directory holds while serving, and how a write record changes it.

A `Runtime` bundles the manifest, dataset snapshot (id maps, user attributes), numpy two-tower model,
item vectors, ANN index, source state and the sources over it. The engine swaps whole runtimes
atomically on reload, so a request always sees one consistent model version.

`Runtime.apply(kind, data)` applies one write record — an engagement event, a new item, a deletion or
a user profile — to the in-process structures; every worker applies the same records in the same
order (its own and, through the shared log, everybody else's), so all workers converge.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from candgen.artifacts import Manifest, load_dataset_snapshot
from candgen.config import KNOWN_EVENTS, Config
from candgen.data.dataset import Dataset
from candgen.errors import CandgenError
from candgen.index.base import VectorIndex
from candgen.sources.build import SourceSet, SourceState, load_state, make_sources


@dataclass
class Profile:
    """A user's onboarding data put over the API (it overrides the training snapshot's)."""

    attributes: dict[str, str] = field(default_factory=dict)
    interests: list[str] = field(default_factory=list)
    friends: list[str] = field(default_factory=list)


class Runtime:
    """One artifacts directory, loaded; plus everything written since (items, events, profiles)."""

    def __init__(
        self, *, config: Config, manifest: Manifest, dataset: Dataset, model: Any, item_vectors: np.ndarray,
        index: VectorIndex, state: SourceState, art: Path | None = None,
    ) -> None:
        self.config, self.manifest, self.dataset, self.model = config, manifest, dataset, model
        self.item_vectors, self.index, self.state, self.art = item_vectors, index, state, art
        self.sources: SourceSet = make_sources(state, config=config, model=model, index=index,
                                               item_vectors=self.vector_lookup)
        self.encoder: Any = model
        self.profiles: dict[str, Profile] = {}
        self.activity_counts: dict[str, int] = {}
        # what a snapshot needs beyond `state` (candgen.snapshot): the vectors written to the index while
        # serving (the newest per item, in order of writing) and the number of item and delete records
        self.written: dict[int, np.ndarray] = {}
        self.catalog_writes = 0
        self.base_users = len(dataset.users)  # users known to the artifacts; the log adds the others
        self.restored: Any = None  # the snapshot (candgen.snapshot.SnapshotMeta) this state was restored from
        self._lock = threading.RLock()  # serialises writes; reads go through the structures' own locks

    def use_encoder(self, encoder: Any) -> None:
        """Serve the user tower through `encoder` (e.g. the L2-cached one): rebuilds the sources over it."""
        self.encoder = encoder
        self.sources = make_sources(self.state, config=self.config, model=encoder, index=self.index,
                                    item_vectors=self.vector_lookup)

    def replace_state(self, state: SourceState) -> None:
        """Serve from `state` instead (a snapshot's): the sources are rebuilt over it."""
        with self._lock:
            self.state = state
            self.sources = make_sources(state, config=self.config, model=self.encoder, index=self.index,
                                        item_vectors=self.vector_lookup)

    def with_config(self, config: Config) -> Runtime:
        """The same loaded parts under another config (e.g. another mix, for ablations)."""
        return Runtime(config=config, manifest=self.manifest, dataset=self.dataset, model=self.model,
                       item_vectors=self.item_vectors, index=self.index, state=self.state, art=self.art)

    @property
    def model_version(self) -> str:
        return self.manifest.model_version

    @staticmethod
    def load(art: str | Path, *, config: Config | None = None, mmap: bool = True,
             state: SourceState | None = None) -> Runtime:
        """Open an artifacts directory written by `candgen train` (vectors and index memory-mapped); `state`:
        source state to use instead of the artifacts' own (a snapshot's, `candgen.snapshot.load_runtime`)."""
        from candgen.index.registry import load_index
        from candgen.model.export import TwoTowerModel

        art = Path(art)
        manifest = Manifest.read(art)
        cfg = config if config is not None else Config.from_dict(manifest.config)
        try:
            dataset = load_dataset_snapshot(art / "dataset")
            model = TwoTowerModel.load(art / "model")
            vectors = np.load(art / "item_embeddings.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
            index = load_index(art / "index", mmap=mmap)
            if mmap and hasattr(index, "ids"):  # mapped pages stay read-only: writes go to an in-memory delta
                from candgen.index.layered import LayeredIndex

                index = LayeredIndex(index)
            if state is None:
                state = load_state(art / "state")
        except FileNotFoundError as e:
            raise CandgenError(f"{art} is incomplete: {e}") from None
        return Runtime(config=cfg, manifest=manifest, dataset=dataset, model=model, item_vectors=vectors,
                       index=index, state=state, art=art)

    def vector_lookup(self, ids: np.ndarray) -> np.ndarray:
        """Item vectors by dense id: the trained catalog's from the (memory-mapped) array, items added
        while serving from the index."""
        ids = np.asarray(ids, np.int64)
        n = len(self.item_vectors)
        if len(ids) == 0 or bool((ids < n).all()):
            return np.asarray(self.item_vectors[ids], np.float32)
        out = np.empty((len(ids), self.item_vectors.shape[1]), np.float32)
        old = ids < n
        out[old] = self.item_vectors[ids[old]]
        out[~old] = self.index.reconstruct(ids[~old])
        return out

    # -- users ---------------------------------------------------------------------------------------

    def user_index(self, user_id: str, *, create: bool = False) -> int:
        users = self.dataset.users
        u = users.get(user_id)
        if u < 0 and create:
            with self._lock:
                u = users.add(user_id)
        return u

    def user_attributes(self, user_id: str, u: int) -> dict[str, str]:
        p = self.profiles.get(user_id)
        if p is not None and p.attributes:
            return dict(p.attributes)
        ds = self.dataset
        if u < 0:
            return {}
        return {name: col.vocab.id(int(col.codes[u]))
                for name, col in ds.user_attributes.items() if u < len(col.codes) and col.codes[u] >= 0}

    def user_interests(self, user_id: str, u: int) -> list[str]:
        p = self.profiles.get(user_id)
        if p is not None and p.interests:
            return list(p.interests)
        ds = self.dataset
        if 0 <= u < len(ds.user_interests):
            return ds.tags.ids(ds.user_interests.row(u))
        return []

    # -- writes --------------------------------------------------------------------------------------

    def check_event(self, data: dict[str, Any]) -> None:
        """Raise before anything is written: unknown event names or items."""
        if data["event"] not in KNOWN_EVENTS:
            raise CandgenError(f"unknown event {data['event']!r}; expected one of {', '.join(KNOWN_EVENTS)}")

    def apply(self, kind: str, data: dict[str, Any]) -> None:
        """Apply one write record (idempotent for items, profiles and deletions)."""
        with self._lock:
            if kind == "event":
                self._apply_event(data)
            elif kind == "item":
                self._apply_item(data)
            elif kind == "delete":
                self.catalog_writes += 1
                item = self.state.catalog.items.get(data["item_id"])
                if item >= 0:
                    self.state.delete_item(item)
                    self.index.remove(np.array([item], np.int64))
            elif kind == "user":
                self._apply_profile(data)

    def _apply_event(self, d: dict[str, Any]) -> None:
        item = self.state.catalog.items.get(d["item_id"])
        if item < 0:  # an item deleted and forgotten, or from another model's catalog: nothing to update
            return
        uid = d["user_id"]
        u = self.user_index(uid, create=True)
        attrs = self.user_attributes(uid, u)
        self.state.record_event(user=u, item=item, event=d["event"], t=float(d["timestamp"]), value=d.get("value"),
                                attributes=attrs)
        if d["event"] in self.config.events.weights:
            self.activity_counts[uid] = self.activity_counts.get(uid, 0) + 1

    def _apply_item(self, d: dict[str, Any]) -> None:
        st = self.state
        existing = st.catalog.items.get(d["item_id"])
        item = st.add_item(d["item_id"], tags=d.get("tags") or [], category=d.get("category"),
                           creator=d.get("creator_id"), created_at=float(d["created_at"]))
        vec = self.model.embed_items(
            [d.get("tags") or []], [d.get("category")], [d.get("creator_id")], np.array([int(d["created_at"])]),
            item_ids=np.array([existing if 0 <= existing < len(self.item_vectors) else -1]),
            now=int(d["created_at"]),
        )
        vec = np.ascontiguousarray(vec, np.float32)
        self.index.add(vec, np.array([item], np.int64))
        self.written.pop(item, None)  # re-inserted: the order is that of the latest write
        self.written[item] = vec[0].copy()
        self.catalog_writes += 1

    def _apply_profile(self, d: dict[str, Any]) -> None:
        uid = d["user_id"]
        p = Profile(attributes=dict(d.get("attributes") or {}), interests=list(d.get("interests") or []),
                    friends=list(d.get("friends") or []))
        self.profiles[uid] = p
        if p.friends:
            u = self.user_index(uid, create=True)
            for f in p.friends:
                self.state.social.follow(u, self.user_index(f, create=True))
