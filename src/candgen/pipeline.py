"""The offline pipeline behind `candgen train`: dataset → two-tower model → item embeddings → ANN index
→ source state → a self-describing artifacts directory, written atomically.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from candgen.artifacts import Manifest, fingerprint, save_dataset
from candgen.config import Config
from candgen.data.dataset import Dataset
from candgen.errors import CandgenError
from candgen.types import NO_PROGRESS, Progress


@dataclass
class TrainSummary:
    out: Path
    model_version: str
    n_users: int
    n_items: int
    n_interactions: int
    index_kind: str
    seconds: dict[str, float]


def restrict_until(ds: Dataset, until: int | None) -> Dataset:
    """Only the events before `until` (unix seconds); the catalog and users stay whole."""
    if until is None:
        return ds
    keep = ds.interactions.timestamp < until
    if not keep.any():
        raise CandgenError(f"--until {until}: no interactions before that time")
    return ds.with_interactions(ds.interactions.take(keep))


CALIBRATION_EXACT_ITEMS = 1_000_000
OWNER_FILE = ".owner"  # "host pid" of the train writing a temporary artifacts directory


def _owner() -> str:
    return f"{os.uname().nodename} {os.getpid()}"


def remove_abandoned_tmp(out: Path) -> list[Path]:
    """Remove the temporary directories (`.OUT.xxxx` beside `out`) of trains on this host whose process is
    gone: a train killed outright (the OOM killer, kill -9) cannot clean up after itself, and its partial
    artifacts can take gigabytes. A directory of a live process, of another host or without an owner
    file is left alone. Returns what was removed."""
    removed: list[Path] = []
    host = os.uname().nodename
    for d in out.parent.glob(f".{out.name}.*"):
        try:
            owner_host, pid = (d / OWNER_FILE).read_text().split()
            if owner_host != host or _alive(int(pid)):
                continue
        except (OSError, ValueError):
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def train_artifacts(ds: Dataset, out: str | Path, *, config: Config, progress: Progress = NO_PROGRESS,
                    force: bool = False) -> TrainSummary:
    """Train everything on `ds` and write the artifacts directory `out` (replaced atomically)."""
    from candgen.index.flat import FlatIndex
    from candgen.index.registry import choose_index, load_index
    from candgen.model.export import TwoTowerModel
    from candgen.model.train import train_two_tower
    from candgen.sources.build import build_sources, save_state

    out = Path(out)
    if len(ds.interactions) == 0:
        raise CandgenError("the dataset has no interactions to train on")
    if out.exists() and not (out / "manifest.json").exists() and any(out.iterdir()) and not force:
        raise CandgenError(f"{out} exists and is not an artifacts directory; refusing to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_tmp(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    (tmp / OWNER_FILE).write_text(_owner())
    seconds: dict[str, float] = {}
    try:
        t = time.perf_counter()
        now = int(ds.interactions.timestamp.max())
        held_out: list[TwoTowerModel] = []  # the model before it learnt the last 10%: for the calibration
        model = train_two_tower(ds, config=config.model, events=config.events, progress=progress, held_out=held_out)
        seconds["train"] = time.perf_counter() - t
        t = time.perf_counter()
        model.save(tmp / "model")
        vectors = np.ascontiguousarray(model.item_embeddings(ds, now=now), dtype=np.float32)
        np.save(tmp / "item_embeddings.npy", vectors)
        seconds["embed"] = time.perf_counter() - t
        t = time.perf_counter()
        progress.task("index", total=1)
        index = choose_index(ds.n_items, vectors.shape[1], config.index)
        index.add(vectors, np.arange(ds.n_items, dtype=np.int64))
        index.save(tmp / "index")
        progress.advance("index", 1)
        seconds["index"] = time.perf_counter() - t
        extra: dict[str, object] = {}
        if not index.is_exact and config.index.tune_at_train:
            extra["index_tuning"] = _tune(tmp, ds.n_items, config, progress)
        if config.sources.calibrate:
            from candgen.calibrate import calibrate

            t = time.perf_counter()
            cal_model, cal_vectors, cal_index = model, vectors, index
            if held_out:  # measure the sources with a model that did not learn the validation slice
                # the served vectors and index are on disk already: let them go while the held-out model's
                # are in memory (at 10M items each pair is ~5 GB), and read them back afterwards
                del index, vectors, cal_vectors, cal_index
                cal_model = held_out.pop()
                cal_vectors = np.ascontiguousarray(cal_model.item_embeddings(ds, now=now), dtype=np.float32)
                # exact search up to 1M items (a few hundred validation queries cost seconds); beyond, the
                # same kind of index as the served one, so calibration stays a fraction of training
                cal_index = (FlatIndex(dim=cal_vectors.shape[1]) if ds.n_items <= CALIBRATION_EXACT_ITEMS
                             else choose_index(ds.n_items, cal_vectors.shape[1], config.index))
                cal_index.add(cal_vectors, np.arange(ds.n_items, dtype=np.int64))
            cal = calibrate(ds, config=config, model=cal_model, index=cal_index, vectors=cal_vectors,
                            progress=progress)
            config = cal.config
            cal.report["model"] = ("final" if cal_model is model
                                   else "held-out (early-stopped, before the validation slice)")
            cal.report["index"] = cal_index.kind
            extra["calibration"] = cal.report
            if cal_model is not model:
                del cal_model, cal_vectors, cal_index
                vectors = np.load(tmp / "item_embeddings.npy", mmap_mode="r")  # pages the OS may drop and re-read
                index = load_index(tmp / "index")  # with the tuned search setting
            seconds["calibrate"] = time.perf_counter() - t
        t = time.perf_counter()
        progress.task("sources", total=1)
        sources = build_sources(ds, config=config, model=model, index=index, item_vectors=vectors, now=now)
        save_state(sources, tmp / "state")
        save_dataset(ds, tmp / "dataset")
        progress.advance("sources", 1)
        seconds["sources"] = time.perf_counter() - t
        Manifest(
            model_version=model.version, dataset_fingerprint=fingerprint(ds), data_end_time=now,
            config=config.to_dict(),
            counts={"users": ds.n_users, "items": ds.n_items, "interactions": len(ds.interactions)},
            extra={"index_kind": index.kind, "seconds": seconds, **extra},
        ).write(tmp)
        (tmp / OWNER_FILE).unlink()
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return TrainSummary(out, model.version, ds.n_users, ds.n_items, len(ds.interactions), index.kind, seconds)


def _tune(art: Path, n_items: int, config: Config, progress: Progress) -> dict[str, object]:
    """Pick the ANN search setting by measurement (recall against exact search at k, then the cheapest)."""
    from candgen.index.tune import tune_artifacts

    k = max(1, min(1000, n_items // 10))
    try:
        res = tune_artifacts(art, k=k, target_recall=config.index.target_recall, n_queries=100, progress=progress)
    except CandgenError as e:  # no setting met the target: keep the configured one, say so
        return {"k": k, "target_recall": config.index.target_recall, "kept": str(e)}
    chosen = res.chosen
    return {"k": k, "target_recall": config.index.target_recall,
            "chosen": None if chosen is None else {"params": chosen.params, "recall": round(chosen.recall, 4),
                                                   "p50_ms": round(chosen.p50_ms, 3)}}


def _replace_dir(src: Path, dst: Path) -> None:
    """Put `src` at `dst`; an existing `dst` is moved aside first and removed after the swap."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old.{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)
