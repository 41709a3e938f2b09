"""Snapshots of the shared write log: what the log's records made of one artifacts directory, up to a seq.

Every write (event, item, deletion, profile) is a record in the state store's log, and every worker applies
every record to its `Runtime`. Without snapshots a start or a reload replays the whole log; with them
(Redis' RDB + AOF, Kafka's compaction):

    res = take_snapshot("art", store)          # load the newest snapshot, replay the log after it, write
                                               # a new one, trim the log up to the one before it
    rt = load_runtime("art", store)            # a start: the artifacts restored from their newest snapshot
    info = replay_onto(rt, store, follower)    # then only the log after it

A snapshot is everything `Runtime.apply` changes: the source state (catalog additions and deletions,
recent activity and seen/hidden sets, trending and popularity counters, social edges, tag index, bandit;
`save_state`'s npz + JSON files), the users the log added, profiles, and the vectors written to the
index. It is one zip of those files (stored, no pickle: npz with `allow_pickle=False` and JSON), kept as
two blobs in the state store: `snapshot-<key>-<generation>.zip` and its `.json` metadata (seq, record
count, size, SHA-256), written data first, so a listed snapshot is complete. `key` fingerprints the
artifacts (model version, dataset, training time, event weights): a snapshot is never applied to other
artifacts. Where the blobs live: files beside the SQLite journal, chunked keys in Redis, memory.

Snapshots are taken on a *replica*: a fresh `Runtime` of the same artifacts that loads the newest
snapshot and replays the log after it in log order, off the serving runtime (no lock held while
serving, no record applied out of order), so a snapshot is exactly the log's prefix up to its seq.
The two newest generations per artifacts are kept and the log is trimmed up to the *older* one: a
corrupt newest snapshot still leaves an older one plus the whole log after it, and a worker lagging
less than one snapshot interval never loses a record. A worker whose cursor is before the trimmed
range gets `LogGap` and reloads from the newest snapshot (`Engine`). Snapshots of other artifacts
still in use (a rolling deploy) hold trimming back until they are `snapshot_retire_s` old.

Limitation: artifacts that never had a snapshot (a new model deployed after trims) replay only what is
left of the log: the trimmed records are not applied to them (logged as a warning, `missing_upto`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from candgen.artifacts import Manifest
from candgen.config import Config, StateConfig
from candgen.errors import ArtifactError, CandgenError
from candgen.runtime import Profile, Runtime
from candgen.sources.build import SourceState, load_state, save_state
from candgen.state.base import LogGap, Record, StateStore, StateUnavailable
from candgen.state.follow import LogFollower

log = logging.getLogger(__name__)

FORMAT = 1
PREFIX = "snapshot-"
KEEP = 2  # generations kept per artifacts; the log is trimmed up to the older one
ATTEMPTS = 3  # replays restarted when a trim overtakes them
LEASE_TTL_S = 900.0  # how long one worker holds the right to snapshot (released when done)
_MEMBER = re.compile(r"state/[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_NAME = re.compile(r"snapshot-([0-9a-f]{16})-([0-9]{10})\.json")


class SnapshotError(CandgenError):
    """A snapshot that cannot be used (corrupt, incomplete, for other artifacts) or cannot be built."""


def artifacts_key(rt: Runtime) -> str:
    """The fingerprint a snapshot is bound to: format, model version, dataset, training time, event weights."""
    return key_of(rt.manifest, rt.config)


def key_of(manifest: Manifest, config: Config) -> str:
    """`artifacts_key` from the manifest and the config the runtime applies records with."""
    m = manifest
    parts = [FORMAT, m.model_version, m.dataset_fingerprint, m.created_at, config.digest("events")]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SnapshotMeta:
    """What the `.json` blob says about one snapshot."""

    key: str
    generation: int
    seq: str  # the last record folded in (a store seq)
    records: int  # records with seq <= `seq` (the log's length at `seq`, trimmed ones included)
    created_at: float
    model_version: str
    size: int
    sha256: str
    worker: str
    format: int = FORMAT

    @property
    def name(self) -> str:
        return f"{PREFIX}{self.key}-{self.generation:010d}"

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @staticmethod
    def from_json(data: bytes) -> SnapshotMeta:
        try:
            d = orjson.loads(data)
            meta = SnapshotMeta(**d)
        except (orjson.JSONDecodeError, TypeError) as e:
            raise SnapshotError(f"unreadable snapshot metadata: {e}") from None
        if meta.format != FORMAT:
            raise SnapshotError(f"snapshot {meta.name} has format {meta.format}, this candgen reads {FORMAT}")
        return meta


@dataclass
class Snapshot:
    """A decoded snapshot, ready for `restore`."""

    meta: SnapshotMeta
    state: SourceState
    runtime: dict[str, Any]
    index_ids: np.ndarray
    index_vectors: np.ndarray
    removed: np.ndarray


# -- encoding ------------------------------------------------------------------------------------------

def encode(rt: Runtime) -> bytes:
    """The snapshot bytes of `rt` (a zip of npz + JSON members). Nothing may write to `rt` meanwhile."""
    catalog = rt.state.catalog
    users = rt.dataset.users
    live = [i for i in rt.written if not catalog.is_deleted[i]]
    dim = rt.index.dim
    vectors = np.stack([rt.written[i] for i in live]).astype(np.float32) if live else np.zeros((0, dim), np.float32)
    runtime = {
        "base_users": rt.base_users, "users": users.ids()[rt.base_users:],
        "profiles": {u: [p.attributes, p.interests, p.friends] for u, p in rt.profiles.items()},
        "activity_counts": rt.activity_counts, "catalog_writes": rt.catalog_writes,
    }
    index = io.BytesIO()
    np.savez(index, ids=np.asarray(live, np.int64), vectors=vectors,
             removed=np.flatnonzero(catalog.is_deleted).astype(np.int64))
    buf = io.BytesIO()
    with tempfile.TemporaryDirectory(prefix="candgen-snapshot-") as tmp, \
            zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
        save_state(rt.state, tmp)
        for f in sorted(Path(tmp).iterdir()):
            z.write(f, "state/" + f.name)
        z.writestr("runtime.json", orjson.dumps(runtime))
        z.writestr("index.npz", index.getvalue())
    return buf.getvalue()


def decode(blob: bytes, meta: SnapshotMeta) -> Snapshot:
    """Check the bytes against `meta` (size, SHA-256; each member's CRC) and load them; SnapshotError if bad."""
    if len(blob) != meta.size or hashlib.sha256(blob).hexdigest() != meta.sha256:
        raise SnapshotError(f"snapshot {meta.name} is corrupt (size or checksum differs from its metadata)")
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as z, tempfile.TemporaryDirectory(prefix="candgen-snapshot-") as tmp:
            members = [n for n in z.namelist() if n.startswith("state/")]
            bad = [n for n in members if not _MEMBER.fullmatch(n)]
            if bad:
                raise SnapshotError(f"snapshot {meta.name} holds unexpected members {bad[:3]}")
            for n in members:  # by name into our own directory: nothing is extracted by the archive's paths
                (Path(tmp) / n.removeprefix("state/")).write_bytes(z.read(n))
            state = load_state(tmp)
            runtime = orjson.loads(z.read("runtime.json"))
            with np.load(io.BytesIO(z.read("index.npz")), allow_pickle=False) as npz:
                ids, vectors, removed = npz["ids"], npz["vectors"], npz["removed"]
    except SnapshotError:
        raise
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, ArtifactError, orjson.JSONDecodeError) as e:
        raise SnapshotError(f"snapshot {meta.name} is unreadable: {e}") from None
    return Snapshot(meta=meta, state=state, runtime=runtime, index_ids=ids, index_vectors=vectors, removed=removed)


def restore(rt: Runtime, snap: Snapshot) -> None:
    """Make a freshly loaded `rt` what the log made of it up to `snap.meta.seq`. Everything is checked before
    anything changes: a SnapshotError leaves `rt` as it was."""
    if snap.meta.key != artifacts_key(rt):
        raise SnapshotError(f"snapshot {snap.meta.name} is for other artifacts")
    r = snap.runtime
    users = rt.dataset.users
    if (len(users) != rt.base_users or r["base_users"] != rt.base_users or rt.catalog_writes or rt.written
            or rt.restored is not None):
        raise SnapshotError("a snapshot is restored onto freshly loaded artifacts only")
    added = [str(u) for u in r["users"]]
    if len(set(added)) != len(added) or any(u in users for u in added):
        raise SnapshotError(f"snapshot {snap.meta.name}: its users repeat each other or the artifacts' users")
    vectors = np.ascontiguousarray(snap.index_vectors, np.float32)
    if vectors.ndim != 2 or vectors.shape != (len(snap.index_ids), rt.index.dim) or not np.isfinite(vectors).all():
        raise SnapshotError(f"snapshot {snap.meta.name}: index vectors of shape {vectors.shape} (expected "
                            f"({len(snap.index_ids)}, {rt.index.dim}), finite)")
    n_items = snap.state.catalog.n_items
    for ids in (snap.index_ids, snap.removed):
        if len(ids) and not (int(ids.min()) >= 0 and int(ids.max()) < n_items):
            raise SnapshotError(f"snapshot {snap.meta.name}: index ids outside its catalog of {n_items} items")
    for uid in added:
        users.add(uid)
    rt.replace_state(snap.state)
    rt.profiles = {u: Profile(attributes=dict(a), interests=list(i), friends=list(f))
                   for u, (a, i, f) in r["profiles"].items()}
    rt.activity_counts = {str(u): int(n) for u, n in r["activity_counts"].items()}
    rt.catalog_writes = int(r["catalog_writes"])
    rt.written = {int(i): vectors[j] for j, i in enumerate(snap.index_ids.tolist())}
    if len(snap.index_ids):
        rt.index.add(vectors, snap.index_ids.astype(np.int64))
    if len(snap.removed):
        rt.index.remove(snap.removed.astype(np.int64))
    rt.restored = snap.meta


def load_runtime(art: str | Path, store: StateStore, *, config: Config | None = None) -> Runtime:
    """`Runtime.load(art)` restored from the newest usable snapshot of these artifacts in `store`, loading the
    snapshot's source state instead of the artifacts' own (one load, not two); `rt.restored` says which
    (None: no usable snapshot, the plain artifacts)."""
    manifest = Manifest.read(art)
    key = key_of(manifest, config if config is not None else Config.from_dict(manifest.config))
    for snap in newest_first(store, key):
        rt = Runtime.load(art, config=config, state=snap.state)
        try:
            restore(rt, snap)
            return rt
        except SnapshotError as e:
            log.warning("snapshot %s cannot be restored (%s); trying an older one", snap.meta.name, e)
    return Runtime.load(art, config=config)


# -- the snapshots in a store --------------------------------------------------------------------------

def list_snapshots(store: StateStore, key: str | None = None) -> list[SnapshotMeta]:
    """Snapshots whose metadata is readable, oldest first (by artifacts key, then generation)."""
    out = []
    for name in store.list_blobs(PREFIX + (key or "")):
        if not _NAME.fullmatch(name):
            continue
        data = store.get_blob(name)
        if data is None:  # deleted meanwhile
            continue
        try:
            out.append(SnapshotMeta.from_json(data))
        except SnapshotError as e:
            log.warning("skipping snapshot metadata %s: %s", name, e)
    return sorted(out, key=lambda m: (m.key, m.generation))


def newest_first(store: StateStore, key: str) -> Iterator[Snapshot]:
    """The snapshots of these artifacts that decode, newest first (a corrupt one is logged and skipped).
    An unreachable store raises `StateUnavailable` (no silent fallback to an older state)."""
    for meta in reversed(list_snapshots(store, key)):
        try:
            blob = store.get_blob(meta.name + ".zip")
            if blob is None:
                raise SnapshotError(f"snapshot {meta.name} has metadata but no data")
            snap = decode(blob, meta)
        except StateUnavailable:
            raise
        except CandgenError as e:
            log.warning("snapshot %s is unusable (%s); trying an older one", meta.name, e)
            continue
        yield snap


def load_newest(store: StateStore, key: str) -> Snapshot | None:
    """The newest snapshot of these artifacts that decodes, or None."""
    return next(newest_first(store, key), None)


def write_snapshot(store: StateStore, rt: Runtime, *, seq: str, records: int) -> SnapshotMeta:
    """Encode `rt` as the next generation of its artifacts' snapshots (data first, then metadata)."""
    key = artifacts_key(rt)
    own = list_snapshots(store, key)
    blob = encode(rt)
    meta = SnapshotMeta(key=key, generation=own[-1].generation + 1 if own else 1, seq=seq, records=records,
                        created_at=time.time(), model_version=rt.model_version, size=len(blob),
                        sha256=hashlib.sha256(blob).hexdigest(), worker=store.worker_id)
    store.put_blob(meta.name + ".zip", blob)
    store.put_blob(meta.name + ".json", meta.to_json())
    return meta


def delete_snapshot(store: StateStore, meta: SnapshotMeta) -> None:
    store.delete_blob(meta.name + ".json")  # metadata first: a listed snapshot always has its data
    store.delete_blob(meta.name + ".zip")


def compact(store: StateStore, key: str, *, retire_s: float) -> int:
    """Keep the newest `KEEP` snapshots of `key`, delete other artifacts' snapshots older than `retire_s`,
    and trim the log up to the oldest snapshot kept of every artifacts still in use. Returns records trimmed."""
    by_key: dict[str, list[SnapshotMeta]] = {}
    for m in list_snapshots(store):
        by_key.setdefault(m.key, []).append(m)
    own = by_key.pop(key, [])
    for m in own[:-KEEP]:
        delete_snapshot(store, m)
    if len(own) < KEEP:
        return 0  # keep one snapshot interval of log behind the only snapshot
    upto = own[-KEEP].seq
    now = time.time()
    for other, metas in by_key.items():
        if metas[-1].created_at < now - retire_s:
            log.warning("deleting the snapshots of retired artifacts %s (model %s)", other, metas[-1].model_version)
            for m in metas:
                delete_snapshot(store, m)
            continue
        theirs = metas[-KEEP:][0].seq
        if store.seq_key(theirs) < store.seq_key(upto):
            upto = theirs
    return store.trim(upto)


def snapshot_due(store: StateStore, key: str, config: StateConfig, *, since: float) -> bool:
    """True when `config.snapshot_every_records` records arrived since the newest snapshot of `key`, or
    `config.snapshot_every_s` seconds passed (since it, or since `since` when there is none) with some."""
    own = list_snapshots(store, key)
    newest = own[-1] if own else None
    pending = store.appended() - (newest.records if newest else 0)
    if pending <= 0:
        return False
    if 0 < config.snapshot_every_records <= pending:
        return True
    last = newest.created_at if newest else since
    return config.snapshot_every_s > 0 and time.time() - last >= config.snapshot_every_s


# -- replaying with snapshots ---------------------------------------------------------------------------

@dataclass
class Replayed:
    """What a start from the log did: the snapshot it loaded (None: full replay), records replayed after it,
    and `missing_upto` when the log was trimmed and no snapshot of these artifacts covers it."""

    snapshot: SnapshotMeta | None
    records: int
    seconds: float
    missing_upto: str | None = None


def replay_onto(rt: Runtime, store: StateStore, follower: LogFollower) -> Replayed:
    """Replay the log after the snapshot `rt` was restored from (`load_runtime`) through `follower` (whose
    `apply` writes to `rt`). A freshly loaded `rt` that was not is restored here from the newest usable
    snapshot first; without one the whole log is replayed. `LogGap` propagates when a trim overtakes the
    replay: start again with a fresh runtime."""
    t0 = time.perf_counter()
    if rt.restored is None:
        for candidate in newest_first(store, artifacts_key(rt)):
            try:
                restore(rt, candidate)
                break
            except SnapshotError as e:  # nothing was changed: try an older one
                log.warning("snapshot %s cannot be restored (%s); trying an older one", candidate.meta.name, e)
    snap: SnapshotMeta | None = rt.restored
    with follower.lock:
        follower.cursor = snap.seq if snap is not None else None
    before = follower.records_read
    follower.replay()
    missing = None
    if snap is None and (mark := store.trimmed_upto()) is not None:
        missing = mark
        log.warning("the state log was trimmed up to %s and no snapshot of these artifacts (model %s) covers it: "
                    "the records up to it are not applied here", mark, rt.model_version)
    return Replayed(snapshot=snap, records=follower.records_read - before, seconds=time.perf_counter() - t0,
                    missing_upto=missing)


def replay_fresh(load: Callable[[], Runtime], store: StateStore, follower_for: Callable[[Runtime], LogFollower],
                 *, first: Runtime | None = None) -> tuple[Runtime, LogFollower, Replayed]:
    """`replay_onto` on `first` (or `load()`), starting again on a fresh `load()` when a trim overtakes it."""
    rt = first if first is not None else load()
    for attempt in range(ATTEMPTS):
        follower = follower_for(rt)
        try:
            return rt, follower, replay_onto(rt, store, follower)
        except LogGap as gap:
            log.warning("the log was trimmed during the replay (%s); starting again (%d/%d)", gap, attempt + 1,
                        ATTEMPTS)
            rt = load()
    raise CandgenError(f"the state log was trimmed during {ATTEMPTS} replays in a row; snapshots are taken "
                       "faster than a replay runs: raise state.snapshot_every_records")


# -- taking one ----------------------------------------------------------------------------------------

@dataclass
class SnapshotResult:
    """`meta`: the snapshot written (None: nothing new since the newest, `base`); seconds per phase."""

    meta: SnapshotMeta | None
    base: SnapshotMeta | None
    replayed: int
    trimmed: int
    seconds: dict[str, float]


def take_snapshot(art: str | Path, store: StateStore, *, config: Config | None = None, trim: bool = True,
                  retire_s: float | None = None) -> SnapshotResult:
    """Build the current state of `art` on a replica (newest snapshot + the log after it), write it as a new
    snapshot and (with `trim`) compact. Raises SnapshotError when the log was trimmed past anything a
    snapshot of these artifacts covers (an exact snapshot cannot be built)."""
    t0 = time.perf_counter()

    def load() -> Runtime:
        return load_runtime(art, store, config=config)

    def follower_for(rt: Runtime) -> LogFollower:
        def apply(r: Record) -> None:
            rt.apply(r.kind, r.data)

        return LogFollower(store, apply)

    rt, follower, rep = replay_fresh(load, store, follower_for)
    t_replay = time.perf_counter()
    if rep.missing_upto is not None:
        raise SnapshotError(f"the state log was trimmed up to {rep.missing_upto} and no snapshot of these artifacts "
                            f"(model {rt.model_version}) covers it: an exact snapshot cannot be built")
    seconds = {"load_and_replay": t_replay - t0}
    base = rep.snapshot
    if rep.records == 0 or follower.cursor is None:  # nothing since the newest snapshot (or an empty log)
        return SnapshotResult(meta=None, base=base, replayed=rep.records, trimmed=0, seconds=seconds)
    records = (base.records if base is not None else 0) + rep.records
    meta = write_snapshot(store, rt, seq=follower.cursor, records=records)
    t_write = time.perf_counter()
    seconds["encode_and_write"] = t_write - t_replay
    trimmed = 0
    if trim:
        retire = retire_s if retire_s is not None else rt.config.state.snapshot_retire_s
        trimmed = compact(store, meta.key, retire_s=retire)
        seconds["compact"] = time.perf_counter() - t_write
    log.info("snapshot %s at seq %s (%d records, %d bytes; %d replayed, %d trimmed)", meta.name, meta.seq,
             meta.records, meta.size, rep.records, trimmed)
    return SnapshotResult(meta=meta, base=base, replayed=rep.records, trimmed=trimmed, seconds=seconds)


def take_snapshot_leased(art: str | Path, store: StateStore, *, config: Config | None = None,
                         trim: bool = True) -> SnapshotResult | None:
    """`take_snapshot` holding the snapshot lease of these artifacts (one worker, or one `candgen state
    snapshot`, at a time); None when someone else holds it."""
    manifest = Manifest.read(art)
    lease = PREFIX + key_of(manifest, config if config is not None else Config.from_dict(manifest.config))
    if not store.try_log_lease(lease, LEASE_TTL_S):
        return None
    try:
        return take_snapshot(art, store, config=config, trim=trim)
    finally:
        store.release_log_lease(lease)
