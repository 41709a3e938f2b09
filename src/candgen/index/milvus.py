"""`MilvusIndex`: the `VectorIndex` interface over a Milvus server (the distributed vector engine).

The vectors live in the server, one collection per index (int64 primary key = item id, one
FLOAT_VECTOR field, an HNSW or IVF_FLAT index with the inner-product metric); this object holds a
gRPC client and the search settings. `save` writes only metadata.json (uri, collection, params);
`load` reconnects to the same collection.

    >>> idx = MilvusIndex(dim=64, uri="http://127.0.0.1:19530", index_type="HNSW")  # doctest: +SKIP
    >>> idx.add(vectors, ids)                 # upsert: visible to this process's next search
    >>> idx.search(queries, k=1000, exclude=[{3, 5}]).ids

Consistency: Milvus is eventually consistent across clients. Searches use "Session" consistency by
default: they wait until the server has applied every write *this process* made to the collection
(pymilvus tracks the last write timestamp per collection), and otherwise do not wait at all. "Strong"
makes every search wait for the newest server timestamp (up to one time tick, ~200 ms on Milvus
2.3: far too slow for serving). Milvus 2.3.5 returns no timestamp for deletes, so `remove` ends with
one Strong read (waits up to one time tick) and returns only once the deletion is applied: removed
ids never come back, from any thread.

Exclusion: Milvus takes one filter expression per request, so each query with an exclude set is a
request of its own: `id not in [...]` for up to `max_filter_ids` ids, else over-fetch `k + len`
results and drop the excluded ones here (cheaper than parsing a huge expression), and a filter
again beyond Milvus' top-k limit of 16384.

Exactly `min(k, available)` results per row: HNSW and IVF may come back short (an IVF probe that
reached too few vectors, an HNSW walk cut off by a filter); such rows are searched again with the
widest setting (ef = 32768, nprobe = nlist).

Thread-safety: every method may be called from several threads at once. The pymilvus client (one
gRPC channel) is thread-safe and the server serialises writes; a search running during an `add`
sees the collection before or after that write's rows, per row (Milvus has no multi-row
transactions). Writes from other processes become visible within about one time tick.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from candgen.errors import ArtifactError, CandgenError
from candgen.index.base import Exclude, VectorIndex, pad_results, write_metadata
from candgen.types import BatchCandidates

try:
    import pymilvus
    from pymilvus import DataType, MilvusClient, MilvusException
except ImportError as e:  # the registry skips this backend when the extra is not installed
    raise ImportError("the Milvus backend needs pymilvus: pip install 'candgen[milvus]'") from e

TOPK_LIMIT = 16384  # Milvus rejects limit > 16384 (and HNSW ef > 32768)
EF_LIMIT = 32768
INDEX_TYPES = ("HNSW", "IVF_FLAT")
CONSISTENCY_LEVELS = ("Strong", "Session", "Bounded", "Eventually")
_ID_FIELD, _VECTOR_FIELD = "id", "vector"
_WRITE_BATCH = 5000  # rows per upsert request: 5000 x 128 floats is ~2.5 MB, well under gRPC's 64 MB
_QUERY_BATCH = 64  # queries per search request


class MilvusIndex(VectorIndex):
    """ANN search inside a Milvus server; see the module docstring for consistency and thread-safety.

    Build parameters: `index_type` ("HNSW" or "IVF_FLAT"), `m` and `ef_construction` (HNSW),
    `nlist` (IVF). Search parameters: `ef_search` (HNSW; raised to k when smaller, as Milvus
    requires), `nprobe` (IVF). `collection` defaults to `collection_prefix` + a random hex id;
    with `create=False` the collection must exist (used by `load`).
    """

    kind: ClassVar[str] = "milvus"
    is_exact: ClassVar[bool] = False
    search_param_names: ClassVar[tuple[str, ...]] = ("ef_search", "nprobe")

    def __init__(
        self,
        dim: int,
        *,
        uri: str = "http://127.0.0.1:19530",
        collection: str | None = None,
        collection_prefix: str = "candgen_",
        index_type: str = "HNSW",
        m: int = 32,
        ef_construction: int = 200,
        ef_search: int = 1000,
        nlist: int = 1024,
        nprobe: int = 64,
        consistency: str = "Session",
        max_filter_ids: int = 1024,
        token: str = "",
        timeout: float = 10.0,
        create: bool = True,
    ) -> None:
        super().__init__(dim)
        if index_type not in INDEX_TYPES:
            raise ValueError(f"index_type must be one of {INDEX_TYPES}, got {index_type!r}")
        if consistency not in CONSISTENCY_LEVELS:
            raise ValueError(f"consistency must be one of {CONSISTENCY_LEVELS}, got {consistency!r}")
        for name, value in (("m", m), ("ef_construction", ef_construction), ("nlist", nlist),
                            ("max_filter_ids", max_filter_ids)):
            _check_positive(name, value)
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.uri = uri
        self.collection = collection or f"{collection_prefix}{uuid.uuid4().hex}"
        self.index_type = index_type
        self.m, self.ef_construction, self.nlist = int(m), int(ef_construction), int(nlist)
        self.ef_search, self.nprobe = 1, 1
        self._apply_search_params({"ef_search": ef_search, "nprobe": nprobe})
        self.consistency = consistency
        self.max_filter_ids = int(max_filter_ids)
        self.timeout = float(timeout)
        self._client = _connect(uri, token=token, timeout=timeout)
        if self._call("has_collection", self.collection):
            if create and collection is None:  # a random name that exists: astronomically unlikely
                raise CandgenError(f"Milvus collection {self.collection} already exists")
            self._check_existing()
        elif not create:
            raise ArtifactError(f"Milvus at {uri} has no collection {self.collection!r}")
        else:
            self._create()

    # ---- server calls -------------------------------------------------------------------------
    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """One pymilvus call with our timeout; server errors become CandgenError naming the call."""
        try:
            return getattr(self._client, method)(*args, timeout=self.timeout, **kwargs)
        except MilvusException as e:
            raise CandgenError(f"Milvus at {self.uri}, collection {self.collection}: {method} failed: "
                               f"{e.message} (code {e.code})") from None

    def _create(self) -> None:
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(_ID_FIELD, DataType.INT64, is_primary=True)
        schema.add_field(_VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=self.dim)
        index_params = self._client.prepare_index_params()
        build = ({"M": self.m, "efConstruction": self.ef_construction} if self.index_type == "HNSW"
                 else {"nlist": self.nlist})
        index_params.add_index(field_name=_VECTOR_FIELD, index_type=self.index_type, metric_type="IP",
                               params=build)
        # creating with index params also loads the collection, so it is searchable at once
        self._call("create_collection", self.collection, schema=schema, index_params=index_params,
                   consistency_level=self.consistency)

    def _check_existing(self) -> None:
        desc = self._call("describe_collection", self.collection)
        fields = {f["name"]: f for f in desc["fields"]}
        vec = fields.get(_VECTOR_FIELD)
        if _ID_FIELD not in fields or vec is None:
            raise ArtifactError(f"Milvus collection {self.collection} was not made by candgen "
                                f"(fields {sorted(fields)})")
        dim = int(vec.get("params", {}).get("dim", -1))
        if dim != self.dim:
            raise ArtifactError(f"Milvus collection {self.collection} holds {dim}-d vectors, expected {self.dim}")
        # the build parameters are the collection's, whatever the constructor was given
        info = self._call("describe_index", self.collection, _VECTOR_FIELD)
        if info.get("index_type") not in INDEX_TYPES or info.get("metric_type") != "IP":
            raise ArtifactError(f"Milvus collection {self.collection} has a {info.get('index_type')} index with "
                                f"metric {info.get('metric_type')}; candgen needs {' or '.join(INDEX_TYPES)} with IP")
        self.index_type = str(info["index_type"])
        self.m = int(info.get("M", self.m))
        self.ef_construction = int(info.get("efConstruction", self.ef_construction))
        self.nlist = int(info.get("nlist", self.nlist))
        self._call("load_collection", self.collection)

    # ---- the interface ------------------------------------------------------------------------
    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Upsert: an id already present is replaced. Visible to this process's next search.
        Thread-safe (see the module docstring)."""
        v = self._check_vectors(vectors)
        a = self._check_ids(ids, v.shape[0])
        for lo in range(0, len(a), _WRITE_BATCH):
            rows = [{_ID_FIELD: int(i), _VECTOR_FIELD: row}
                    for i, row in zip(a[lo:lo + _WRITE_BATCH], v[lo:lo + _WRITE_BATCH], strict=True)]
            self._call("upsert", self.collection, rows)

    def remove(self, ids: np.ndarray) -> None:
        """Delete ids; unknown ids are ignored. Never returned by a later search. Thread-safe."""
        a = np.asarray(ids)
        if a.ndim != 1 or (a.size and not np.issubdtype(a.dtype, np.integer)):
            raise ValueError(f"ids to remove must be a 1-d integer array, got shape {a.shape} dtype {a.dtype}")
        a = np.unique(a.astype(np.int64, copy=False))
        a = a[a >= 0]
        for lo in range(0, len(a), _WRITE_BATCH):
            self._call("delete", self.collection, ids=[int(i) for i in a[lo:lo + _WRITE_BATCH]])
        if len(a):
            # the delete result carries no timestamp for Session reads to wait on (see the module
            # docstring): a Strong read returns only after the server has applied it
            self._count("Strong")

    def clear(self) -> None:
        """Remove every vector, keeping the collection, its index and its load state (much faster
        than dropping and re-creating a collection, which takes seconds). Thread-safe."""
        self._call("delete", self.collection, filter=f"{_ID_FIELD} >= 0")
        self._count("Strong")

    def flush(self, *, wait_s: float = 3600.0, reload: bool = False) -> None:
        """Seal the rows added so far into segments and wait until the server has indexed them.

        Not needed for correctness (new rows are searchable at once, brute force in growing
        segments), but bulk loads should call it once: sealed, indexed segments search faster.
        The query node picks up the indexed segments in the background; `reload=True` releases and
        loads the collection so that the very next search uses them (the collection cannot be
        searched for those few seconds: for bulk loads and benchmarks, not for a live service).
        CandgenError if indexing has not finished after `wait_s` seconds.
        """
        self._call("flush", self.collection)
        deadline = time.monotonic() + wait_s
        while True:
            info = self._call("describe_index", self.collection, _VECTOR_FIELD)
            # not pending_index_rows: Milvus 2.3.5 still reports every row pending once all are indexed
            if int(info.get("indexed_rows", 0)) >= int(info.get("total_rows", 0)):
                break
            if time.monotonic() > deadline:
                raise CandgenError(f"Milvus collection {self.collection}: index not built after {wait_s:.0f} s "
                                   f"({info.get('indexed_rows')} of {info.get('total_rows')} rows)")
            time.sleep(0.2)
        if reload:
            self._call("release_collection", self.collection)
            self._call("load_collection", self.collection)

    def __len__(self) -> int:
        """Live vectors (a count(*) query on the server, with this index's consistency)."""
        return self._count(self.consistency)

    def _count(self, consistency: str) -> int:
        res = self._call("query", self.collection, filter="", output_fields=["count(*)"],
                         consistency_level=consistency)
        return int(res[0]["count(*)"]) if res else 0

    @property
    def params(self) -> dict[str, Any]:
        return {"uri": self.uri, "collection": self.collection, "index_type": self.index_type,
                "m": self.m, "ef_construction": self.ef_construction, "nlist": self.nlist,
                "ef_search": self.ef_search, "nprobe": self.nprobe, "consistency": self.consistency,
                "max_filter_ids": self.max_filter_ids, "timeout": self.timeout}

    def set_search_params(self, **params: Any) -> None:
        """Change `ef_search` and/or `nprobe`; takes effect for searches that start afterwards."""
        unknown = set(params) - set(self.search_param_names)
        if unknown:
            raise ValueError(f"milvus has no search parameter(s) {sorted(unknown)}; "
                             f"known: {list(self.search_param_names)}")
        self._apply_search_params(params)

    def _apply_search_params(self, params: dict[str, Any]) -> None:
        for name, value in params.items():
            _check_positive(name, value)
        if "ef_search" in params and int(params["ef_search"]) > EF_LIMIT:
            raise ValueError(f"ef_search must be <= {EF_LIMIT} (Milvus' limit), got {params['ef_search']}")
        for name, value in params.items():
            setattr(self, name, int(value))

    def search(self, queries: np.ndarray, k: int, exclude: Exclude = None) -> BatchCandidates:
        """Top-k ids by inner product per query, min(k, available) per row, -1/-inf padded.
        k is at most 16384 (Milvus' limit). Thread-safe."""
        q = self._check_vectors(queries, "queries")
        k = self._check_k(k)
        if k > TOPK_LIMIT:
            raise ValueError(f"k must be <= {TOPK_LIMIT} for Milvus, got {k}")
        excl = self._check_exclude(exclude, q.shape[0])
        consistency = self.consistency
        ids: list[np.ndarray] = []
        scores: list[np.ndarray] = []
        if excl is None:
            for lo in range(0, len(q), _QUERY_BATCH):
                got = self._search(q[lo:lo + _QUERY_BATCH], k, consistency=consistency)
                ids.extend(g[0] for g in got)
                scores.extend(g[1] for g in got)
        else:
            for row, ex in zip(q, excl, strict=True):
                i, s = self._search_excluding(row[None, :], k, ex, consistency)
                ids.append(i)
                scores.append(s)
        return pad_results(ids, scores, k)

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors of `ids`, (n, dim) float32; ValueError on an id not in the index."""
        a = np.asarray(ids, dtype=np.int64).ravel()
        if len(a) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        rows = self._call("get", self.collection, ids=[int(i) for i in np.unique(a)],
                          output_fields=[_VECTOR_FIELD], consistency_level=self.consistency)
        found = {int(r[_ID_FIELD]): r[_VECTOR_FIELD] for r in rows}
        missing = [int(i) for i in a if int(i) not in found]
        if missing:
            raise ValueError(f"id {missing[0]} is not in the index")
        return np.asarray([found[int(i)] for i in a], dtype=np.float32)

    def save(self, path: str | Path) -> None:
        """Write `path/metadata.json` naming the server and collection; the vectors stay in Milvus.
        The token (if any) is not written: `load` reads it from $CANDGEN_MILVUS_TOKEN."""
        meta = self._metadata({"files": [], "versions_milvus": {"pymilvus": pymilvus.__version__,
                                                                "server": self._server_version()}})
        meta["build_params"].pop("timeout", None)
        write_metadata(path, meta)

    @classmethod
    def load(cls, path: Path, metadata: dict[str, Any], *, mmap: bool = False) -> VectorIndex:
        """Reconnect to the collection `save` recorded (`mmap` does not apply: data lives in the server)."""
        params = {**metadata.get("build_params", {}), **metadata.get("search_params", {})}
        if "collection" not in params or "uri" not in params:
            raise ArtifactError(f"{path}/metadata.json lacks the Milvus uri or collection")
        token = os.environ.get("CANDGEN_MILVUS_TOKEN", "")
        return cls(dim=int(metadata["dim"]), create=False, token=token, **params)

    def drop(self) -> None:
        """Delete the collection and its data from the server (this object is unusable afterwards)."""
        self._call("drop_collection", self.collection)

    def close(self) -> None:
        """Close the gRPC connection."""
        self._client.close()

    # ---- internals ----------------------------------------------------------------------------
    def _server_version(self) -> str:
        try:
            return str(self._client.get_server_version(timeout=self.timeout))
        except MilvusException:
            return "unknown"

    def _search_params(self, k: int, widest: bool) -> dict[str, Any]:
        if self.index_type == "HNSW":
            return {"metric_type": "IP", "params": {"ef": EF_LIMIT if widest else max(self.ef_search, k)}}
        return {"metric_type": "IP", "params": {"nprobe": self.nlist if widest else min(self.nprobe, self.nlist)}}

    def _search(self, q: np.ndarray, k: int, *, consistency: str, filter: str = "",
                widest: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
        """(ids, scores) per query row; rows that came back short are retried with the widest setting."""
        res = self._call("search", self.collection, data=q, limit=k, filter=filter,
                         search_params=self._search_params(k, widest), anns_field=_VECTOR_FIELD,
                         consistency_level=consistency)
        out = [(np.asarray(r.ids, dtype=np.int64), np.asarray(r.distances, dtype=np.float32)) for r in res]
        if not widest:
            short = [i for i, (ids, _) in enumerate(out) if len(ids) < k]
            if short:
                # we cannot tell "fewer than k live vectors" from "the ANN walk stopped early"
                # without a count, so retry short rows exhaustively; they are rare once n >> k
                again = self._search(q[short], k, consistency=consistency, filter=filter, widest=True)
                for i, r in zip(short, again, strict=True):
                    if len(r[0]) > len(out[i][0]):
                        out[i] = r
        return out

    def _search_excluding(self, q: np.ndarray, k: int, ex: np.ndarray,
                          consistency: str) -> tuple[np.ndarray, np.ndarray]:
        if len(ex) == 0:
            return self._search(q, k, consistency=consistency)[0]
        if len(ex) > self.max_filter_ids and k + len(ex) <= TOPK_LIMIT:
            ids, scores = self._search(q, k + len(ex), consistency=consistency)[0]
            keep = ~np.isin(ids, ex)
            return ids[keep][:k], scores[keep][:k]
        expr = f"{_ID_FIELD} not in [{','.join(map(str, ex.tolist()))}]"
        return self._search(q, k, consistency=consistency, filter=expr)[0]


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _connect(uri: str, *, token: str, timeout: float) -> MilvusClient:
    """A connected client, or CandgenError saying the server cannot be reached."""
    try:
        return MilvusClient(uri=uri, token=token, timeout=timeout)
    except MilvusException as e:
        raise CandgenError(f"cannot reach the Milvus server at {uri}: {e.message}. Is it running? "
                           "(for a local one: pip install 'candgen[milvus]' and start "
                           "milvus.default_server)") from None
    except Exception as e:  # noqa: BLE001 - grpc/url errors of every kind mean the same to a user
        raise CandgenError(f"cannot reach the Milvus server at {uri}: {e}") from None
