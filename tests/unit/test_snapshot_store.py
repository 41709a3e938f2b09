"""Snapshots in a store without artifacts: metadata, integrity checks, which generations are kept, how far the
log is trimmed (other artifacts hold it back until retired) and when the job finds a snapshot due.
Restoring real runtimes: tests/integration/test_snapshot.py."""

from __future__ import annotations

import hashlib
import io
import time
import zipfile

import pytest

from candgen.config import StateConfig
from candgen.snapshot import (
    KEEP,
    SnapshotError,
    SnapshotMeta,
    compact,
    decode,
    list_snapshots,
    snapshot_due,
)
from candgen.state import Record
from candgen.state.memory import MemoryStore

KEY, OTHER = "a" * 16, "b" * 16


def meta(key: str = KEY, gen: int = 1, seq: str = "1", records: int = 1, age_s: float = 0.0,
         blob: bytes = b"data") -> SnapshotMeta:
    return SnapshotMeta(key=key, generation=gen, seq=seq, records=records, created_at=time.time() - age_s,
                        model_version="m", size=len(blob), sha256=hashlib.sha256(blob).hexdigest(), worker="w")


def put(store: MemoryStore, m: SnapshotMeta, blob: bytes = b"data") -> None:
    store.put_blob(m.name + ".zip", blob)
    store.put_blob(m.name + ".json", m.to_json())


def log_of(n: int) -> tuple[MemoryStore, list[str]]:
    store = MemoryStore(worker_id="w")
    return store, store.append([Record(kind="event", data={"i": i}) for i in range(n)])


def test_metadata_round_trip_and_errors() -> None:
    m = meta(gen=12)
    assert m.name == f"snapshot-{KEY}-0000000012"
    assert SnapshotMeta.from_json(m.to_json()) == m
    with pytest.raises(SnapshotError, match="unreadable"):
        SnapshotMeta.from_json(b"{not json")
    with pytest.raises(SnapshotError, match="unreadable"):
        SnapshotMeta.from_json(b'{"key": "x"}')
    future = m.to_json().replace(b'"format":1', b'"format":99')
    with pytest.raises(SnapshotError, match="format 99"):
        SnapshotMeta.from_json(future)


def test_list_skips_unreadable_metadata_and_foreign_names() -> None:
    store, _ = log_of(1)
    put(store, meta(gen=2))
    put(store, meta(key=OTHER, gen=1))
    store.put_blob(f"snapshot-{KEY}-0000000003.json", b"garbage")
    store.put_blob("snapshot-notes.json", b"{}")
    assert [(m.key, m.generation) for m in list_snapshots(store)] == [(KEY, 2), (OTHER, 1)]
    assert [m.generation for m in list_snapshots(store, KEY)] == [2]


def zipped(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


@pytest.mark.parametrize(("blob", "tamper", "words"), [
    (b"abc", True, "corrupt"),  # bytes changed after the metadata was written
    (b"not a zip at all", False, "unreadable"),
    (zipped({"state/../../etc/passwd": b"x"}), False, "unexpected members"),
    (zipped({"state/catalog.json": b"{}"}), False, "unreadable"),  # incomplete source state
    (zipped({}), False, "unreadable"),
])
def test_decode_refuses_corrupt_or_foreign_bytes(blob: bytes, tamper: bool, words: str) -> None:
    m = meta(blob=blob)
    with pytest.raises(SnapshotError, match=words):
        decode(blob + b"!" if tamper else blob, m)


def test_compact_keeps_two_generations_and_trims_up_to_the_older() -> None:
    store, seqs = log_of(10)
    put(store, meta(gen=1, seq=seqs[2], records=3))
    assert compact(store, KEY, retire_s=3600) == 0  # one snapshot: keep a snapshot interval of log behind it
    put(store, meta(gen=2, seq=seqs[5], records=6))
    put(store, meta(gen=3, seq=seqs[8], records=9))
    assert compact(store, KEY, retire_s=3600) == 6  # up to generation 2, the older of the two kept
    assert [m.generation for m in list_snapshots(store, KEY)] == [2, 3]
    assert store.get_blob(meta(gen=1).name + ".zip") is None  # data deleted with its metadata
    assert store.trimmed_upto() == seqs[5] and KEEP == 2


def test_other_artifacts_hold_trimming_back_until_retired() -> None:
    store, seqs = log_of(10)
    put(store, meta(key=OTHER, gen=7, seq=seqs[1], records=2, age_s=60))  # a model still deployed
    put(store, meta(gen=1, seq=seqs[4], records=5))
    put(store, meta(gen=2, seq=seqs[8], records=9))
    assert compact(store, KEY, retire_s=3600) == 2 and store.trimmed_upto() == seqs[1]
    assert compact(store, KEY, retire_s=30) == 3  # now older than retire_s: deleted, no longer in the way
    assert store.trimmed_upto() == seqs[4] and list_snapshots(store, OTHER) == []


def test_snapshot_due_by_records_or_time() -> None:
    store, _ = log_of(10)
    cfg = StateConfig(snapshot_every_records=5, snapshot_every_s=100.0)
    now = time.time()
    assert snapshot_due(store, KEY, cfg, since=now) is True  # no snapshot yet, 10 records >= 5
    put(store, meta(gen=1, seq="8", records=8))
    assert snapshot_due(store, KEY, cfg, since=now) is False  # 2 new records, snapshot just taken
    put(store, meta(gen=2, seq="8", records=8, age_s=200))
    assert snapshot_due(store, KEY, cfg, since=now) is True  # older than snapshot_every_s
    put(store, meta(gen=3, seq="10", records=10, age_s=200))
    assert snapshot_due(store, KEY, cfg, since=now) is False  # nothing new: never a snapshot of nothing
    off = StateConfig(snapshot_every_records=0, snapshot_every_s=0.0)
    store.append([Record(kind="event", data={}) for _ in range(50)])
    assert snapshot_due(store, KEY, off, since=now - 1e6) is False
    assert snapshot_due(store, OTHER, StateConfig(snapshot_every_records=0, snapshot_every_s=10.0),
                        since=now - 20) is True  # no snapshot of these artifacts: counted from `since`
