"""The self-describing artifacts directory that `train` writes and `serve`/`recommend`/`tune-index` read.

Layout (DESIGN §5)::

    ART/manifest.json          format version, model version, dataset fingerprint, data end time,
                               config, library versions, counts
    ART/dataset/               the training snapshot: id maps (parquet) + columnar arrays (npz)
    ART/model/                 the numpy two-tower export (npz + json, no pickle)
    ART/item_embeddings.npy    float32 (n_items, dim), memory-mappable
    ART/index/                 the VectorIndex directory (metadata.json + index file)
    ART/state/                 source state: trending, activity, social graph, tag index, bandit

A directory is complete only once `manifest.json` exists: `train` writes it last, into a temporary
directory that is then renamed into place, so readers never see half an artifact.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from candgen import __version__
from candgen.data.dataset import Categorical, Csr, Dataset, IdMap, Interactions
from candgen.errors import ArtifactError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


@dataclass
class Manifest:
    model_version: str
    dataset_fingerprint: str
    data_end_time: int
    config: dict[str, Any]
    counts: dict[str, int] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    created_at: float = field(default_factory=time.time)
    libraries: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def write(self, art: Path) -> None:
        if not self.libraries:
            self.libraries = library_versions()
        (art / MANIFEST).write_text(json.dumps(self.__dict__, indent=2, sort_keys=True))

    @staticmethod
    def read(art: str | Path) -> Manifest:
        p = Path(art) / MANIFEST
        if not p.exists():
            raise ArtifactError(f"{art} is not a candgen artifacts directory (no {MANIFEST}); run `candgen train`")
        try:
            d = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ArtifactError(f"{p} is not valid JSON: {e}") from None
        if d.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(
                f"{p}: artifacts format {d.get('format_version')} but this candgen reads format {FORMAT_VERSION}; "
                "retrain with this version"
            )
        known = set(Manifest.__dataclass_fields__)
        return Manifest(**{k: v for k, v in d.items() if k in known})


def library_versions() -> dict[str, str]:
    import faiss

    return {
        "candgen": __version__, "numpy": np.__version__, "faiss": faiss.__version__,
        "python": platform.python_version(),
    }


def fingerprint(ds: Dataset) -> str:
    """A content hash of the interaction log and catalog size (cheap: hashes the arrays' bytes)."""
    h = hashlib.sha256()
    inter = ds.interactions
    for a in (inter.user, inter.item, inter.timestamp, inter.event):
        h.update(np.ascontiguousarray(a).tobytes())
    h.update(f"{ds.n_users}:{ds.n_items}".encode())
    return h.hexdigest()[:16]


# --- dataset snapshot -------------------------------------------------------------------------------

def _write_ids(path: Path, ids: IdMap) -> None:
    pq.write_table(pa.table({"id": pa.array(ids.ids(), pa.string())}), path)


def _read_ids(path: Path) -> IdMap:
    m = IdMap()
    for x in pq.read_table(path).column("id").to_pylist():
        m.add(x)
    return m


def save_dataset(ds: Dataset, out: Path) -> None:
    """Write a Dataset so that `load_dataset_snapshot` restores it exactly, without re-validating files."""
    out.mkdir(parents=True, exist_ok=True)
    _write_ids(out / "users.parquet", ds.users)
    _write_ids(out / "items.parquet", ds.items)
    _write_ids(out / "tags.parquet", ds.tags)
    arrays: dict[str, np.ndarray] = {
        "user": ds.interactions.user, "item": ds.interactions.item, "timestamp": ds.interactions.timestamp,
        "event": ds.interactions.event, "value": ds.interactions.value,
        "item_tags_ptr": ds.item_tags.ptr, "item_tags_idx": ds.item_tags.idx,
        "user_interests_ptr": ds.user_interests.ptr, "user_interests_idx": ds.user_interests.idx,
        "social_src": ds.social_src, "social_dst": ds.social_dst,
    }
    if ds.item_created_at is not None:
        arrays["item_created_at"] = ds.item_created_at
    cats: dict[str, Categorical] = {}
    if ds.item_category is not None:
        cats["item.category"] = ds.item_category
    if ds.item_creator is not None:
        cats["item.creator"] = ds.item_creator
    cats.update({f"item_attr.{k}": v for k, v in ds.item_attributes.items()})
    cats.update({f"user_attr.{k}": v for k, v in ds.user_attributes.items()})
    for name, c in cats.items():
        arrays[f"cat.{name}"] = c.codes
        _write_ids(out / f"vocab.{name}.parquet", c.vocab)
    np.savez(str(out / "arrays.npz"), **arrays)  # type: ignore[arg-type]
    if ds.item_title is not None:
        pq.write_table(pa.table({"title": pa.array(ds.item_title, pa.string())}), out / "titles.parquet")
    (out / "categoricals.json").write_text(json.dumps(sorted(cats)))


def load_dataset_snapshot(path: Path) -> Dataset:
    if not (path / "arrays.npz").exists():
        raise ArtifactError(f"{path} holds no dataset snapshot (arrays.npz missing)")
    with np.load(path / "arrays.npz", allow_pickle=False) as z:
        a = {k: z[k] for k in z.files}
    ds = Dataset(
        users=_read_ids(path / "users.parquet"), items=_read_ids(path / "items.parquet"),
        interactions=Interactions(a["user"], a["item"], a["timestamp"], a["event"], a["value"]),
        tags=_read_ids(path / "tags.parquet"),
        item_tags=Csr(a["item_tags_ptr"], a["item_tags_idx"]),
        user_interests=Csr(a["user_interests_ptr"], a["user_interests_idx"]),
        social_src=a["social_src"], social_dst=a["social_dst"],
        item_created_at=a.get("item_created_at"),
    )
    for name in json.loads((path / "categoricals.json").read_text()):
        c = Categorical(_read_ids(path / f"vocab.{name}.parquet"), a[f"cat.{name}"])
        kind, _, col = name.partition(".")
        if name == "item.category":
            ds.item_category = c
        elif name == "item.creator":
            ds.item_creator = c
        elif kind == "item_attr":
            ds.item_attributes[col] = c
        elif kind == "user_attr":
            ds.user_attributes[col] = c
    if (path / "titles.parquet").exists():
        ds.item_title = pq.read_table(path / "titles.parquet").column("title").to_pylist()
    return ds
