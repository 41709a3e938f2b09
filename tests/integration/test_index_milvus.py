"""`MilvusIndex` against a real Milvus 2.3.5 server (the embedded one from the `milvus` package).

A session fixture starts the server on free ports in a temporary directory and stops it (no process
is left behind). Without the `milvus` extra, or when the server cannot start, these tests skip with
the reason, except under CI=true, where that is a failure: CI installs the extra and must run them.
The backend passes the shared `VectorIndexContract`; the tests below it cover what is Milvus' own.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "contract"))
from index_contract import VectorIndexContract, clustered  # noqa: E402

from candgen.errors import ArtifactError, CandgenError  # noqa: E402
from candgen.index.base import VectorIndex  # noqa: E402
from candgen.index.registry import load_index, open_index  # noqa: E402

pytestmark = pytest.mark.milvus

milvus_index = pytest.importorskip("candgen.index.milvus", reason="pymilvus is not installed (candgen[milvus])")
MilvusIndex = milvus_index.MilvusIndex


def _unavailable(reason: str) -> None:
    """Fail under CI (which installs the extra and must run these tests), skip elsewhere."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"Milvus tests cannot run on CI: {reason}")
    pytest.skip(reason)


def _stop(server: Any) -> None:
    """Stop the server process: SIGTERM, then SIGKILL if it has not exited after 1 s (a graceful
    Milvus shutdown takes over 30 s, and the data directory is thrown away anyway)."""
    proc = server.server_proc
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    server.stop()  # closes the log files


@pytest.fixture(scope="session")
def milvus_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    try:
        from milvus import MilvusServer
    except ImportError:
        _unavailable("the embedded Milvus server is not installed (pip install 'candgen[milvus]')")
    with socket.socket() as sock:  # the embedded etcd's peer port is fixed: one server per machine
        if sock.connect_ex(("127.0.0.1", 2380)) == 0:
            _unavailable("port 2380 is taken (another embedded Milvus server is running on this machine)")
    base = tmp_path_factory.mktemp("milvus")
    # the package unpacks ~500 MB of server binaries into <data_dir>/bin (10-30 s) unless their
    # checksums match what is there: keep them in a user cache shared by every test run
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "candgen" / "milvus-2.3.5-bin"
    cache.mkdir(parents=True, exist_ok=True)
    (base / "bin").symlink_to(cache, target_is_directory=True)
    # the package binds each port it needs (proxy from 19530 up, metrics from 9091 up) and takes
    # the first free one; only etcd's peer port 2380 is fixed (checked above)
    server = MilvusServer(data_dir=str(base))
    # shorter server-side polling: the default 1 s load checks and 200 ms time ticks make every
    # new collection take seconds and every Strong read wait up to 200 ms
    for key, value in {"queryCoord.checkInterval": 100, "queryCoord.distPullInterval": 100,
                       "proxy.timeTickInterval": 50}.items():
        server.config.set(key, value)
    try:
        server.start()
    except Exception as e:  # noqa: BLE001 - any start failure means the same here
        _stop(server)
        _unavailable(f"the embedded Milvus server did not start: {e} (logs in {base}/logs)")
    try:
        yield f"http://127.0.0.1:{server.listen_port}"
    finally:
        _stop(server)
        shutil.rmtree(base, ignore_errors=True)  # data and logs (rmtree does not follow the bin link)


class TestMilvusContract(VectorIndexContract):
    """The shared contract. `supports_mmap` is off: the vectors live in the server, not in a file."""

    supports_mmap: ClassVar[bool] = False
    tuned_params: ClassVar[dict[str, Any]] = {"ef_search": 77}
    uri: ClassVar[str] = ""

    @pytest.fixture(autouse=True)
    def _server(self, milvus_uri: str) -> None:
        type(self).uri = milvus_uri

    def make(self, dim: int) -> VectorIndex:
        # one collection per dim, emptied by `clear` for each test: creating and loading a new
        # collection takes ~2.5 s of server-side scheduling, which would triple this file's time
        index = MilvusIndex(dim=dim, uri=self.uri, collection=f"candgen_contract_{dim}", m=16,
                            ef_construction=64, ef_search=64)
        index.clear()
        assert len(index) == 0
        return index


def _shared(uri: str, **params: Any) -> Any:
    """An empty index on a collection the tests below share (see `TestMilvusContract.make`)."""
    index = MilvusIndex(dim=8, uri=uri, collection="candgen_shared_8", **params)
    index.clear()
    return index


@pytest.fixture
def idx(milvus_uri: str) -> Iterator[Any]:
    index = _shared(milvus_uri)
    yield index
    index.close()


def _data(n: int = 300, dim: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    return clustered(n, dim, clusters=6, seed=seed), np.arange(n, dtype=np.int64) * 2 + 1


def test_ivf_flat_collection(milvus_uri: str) -> None:
    index = MilvusIndex(dim=8, uri=milvus_uri, index_type="IVF_FLAT", nlist=16, nprobe=4)
    x, ids = _data()
    index.add(x, ids)
    res = index.search(x[:10], k=5)
    assert (res.ids[:, 0] == ids[:10]).all()
    index.set_search_params(nprobe=16)
    assert index.search_params == {"ef_search": 1000, "nprobe": 16}
    index.drop()


def test_flushed_and_indexed_segment_still_exact_per_row(milvus_uri: str) -> None:
    """After `flush` the rows sit in a sealed segment searched through the HNSW index."""
    index = MilvusIndex(dim=16, uri=milvus_uri, m=8, ef_construction=40, ef_search=16)
    x = clustered(3000, 16, clusters=20, seed=3)
    ids = np.arange(3000, dtype=np.int64)
    index.add(x, ids)
    index.flush(reload=True)
    res = index.search(x[:20], k=50)  # ef below k is raised to k (Milvus requires ef >= k)
    assert (res.ids[:, 0] == ids[:20]).mean() >= 0.95
    assert (res.ids >= 0).all()
    index.drop()


def test_exclude_paths_filter_overfetch_and_beyond_topk(milvus_uri: str) -> None:
    x, ids = _data()
    index = _shared(milvus_uri, max_filter_ids=3)
    index.add(x, ids)
    top = index.search(x[:1], k=20).ids[0]
    small, large = set(top[:2].tolist()), set(top[:10].tolist())
    for ex in (small, large):  # a filter expression, then over-fetch + drop
        row = index.search(x[:1], k=10, exclude=[ex]).ids[0]
        assert not set(row.tolist()) & ex and (row >= 0).sum() == 10
    # k + |exclude| beyond Milvus' top-k limit: back to a filter expression
    row = index.search(x[:1], k=milvus_index.TOPK_LIMIT, exclude=[large]).ids[0]
    assert (row >= 0).sum() == len(ids) - len(large) and not set(row.tolist()) & large


def test_limits_and_bad_parameters(idx: Any, milvus_uri: str) -> None:
    x, ids = _data(20)
    idx.add(x, ids)
    with pytest.raises(ValueError, match="16384"):
        idx.search(x[:1], k=milvus_index.TOPK_LIMIT + 1)
    with pytest.raises(ValueError, match="no search parameter"):
        idx.set_search_params(M=3)
    with pytest.raises(ValueError, match="positive integer"):
        idx.set_search_params(nprobe=0)
    with pytest.raises(ValueError, match="32768"):
        idx.set_search_params(ef_search=40_000)
    with pytest.raises(ValueError, match="index_type"):
        MilvusIndex(dim=8, uri=milvus_uri, index_type="DISKANN")
    with pytest.raises(ValueError, match="consistency"):
        MilvusIndex(dim=8, uri=milvus_uri, consistency="Sometimes")
    with pytest.raises(ValueError, match="timeout"):
        MilvusIndex(dim=8, uri=milvus_uri, timeout=0)
    with pytest.raises(ValueError, match="positive integer"):
        MilvusIndex(dim=8, uri=milvus_uri, m=0)
    with pytest.raises(ValueError, match="1-d integer"):
        idx.remove(np.array([1.5]))


def test_open_index_and_registry(milvus_uri: str, tmp_path: Path) -> None:
    index = open_index("milvus", 8, uri=milvus_uri, collection="candgen_named")
    x, ids = _data(50)
    index.add(x, ids)
    index.save(tmp_path / "m")
    meta = (tmp_path / "m" / "metadata.json").read_text()
    assert "candgen_named" in meta and milvus_uri in meta
    again = load_index(tmp_path / "m")
    assert isinstance(again, MilvusIndex) and len(again) == 50
    # the same name opens the existing collection (and adopts its build parameters)
    same = MilvusIndex(dim=8, uri=milvus_uri, collection="candgen_named", index_type="IVF_FLAT", m=5)
    assert len(same) == 50 and same.index_type == "HNSW" and same.m == index.m
    with pytest.raises(ArtifactError, match="8-d"):
        MilvusIndex(dim=4, uri=milvus_uri, collection="candgen_named")
    index.drop()
    with pytest.raises(ArtifactError, match="no collection"):
        load_index(tmp_path / "m")


def test_collection_not_made_by_candgen_is_refused(milvus_uri: str) -> None:
    from pymilvus import MilvusClient

    client = MilvusClient(uri=milvus_uri)
    client.create_collection("foreign", dimension=8, vector_field_name="embedding")
    with pytest.raises(ArtifactError, match="not made by candgen"):
        MilvusIndex(dim=8, uri=milvus_uri, collection="foreign")
    client.drop_collection("foreign")
    client.create_collection("foreign_l2", dimension=8, metric_type="L2")  # fields "id" and "vector"
    with pytest.raises(ArtifactError, match="metric L2"):
        MilvusIndex(dim=8, uri=milvus_uri, collection="foreign_l2")
    client.drop_collection("foreign_l2")
    client.close()


def test_server_side_error_is_a_candgen_error(milvus_uri: str) -> None:
    index = MilvusIndex(dim=8, uri=milvus_uri)
    index.drop()
    with pytest.raises(CandgenError, match="search failed"):
        index.search(np.ones((1, 8), np.float32), k=3)


def test_reconstruct_empty_and_metadata_has_no_token(idx: Any, tmp_path: Path) -> None:
    assert idx.reconstruct(np.array([], dtype=np.int64)).shape == (0, 8)
    idx.save(tmp_path / "m")
    meta = (tmp_path / "m" / "metadata.json").read_text()
    assert "token" not in meta and '"kind": "milvus"' in meta


def test_load_rejects_metadata_without_collection(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="uri or collection"):
        MilvusIndex.load(tmp_path, {"kind": "milvus", "dim": 8, "build_params": {}})


def test_searches_from_many_threads_share_one_client(idx: Any) -> None:
    x, ids = _data()
    idx.add(x, ids)
    errors: list[BaseException] = []

    def worker(lo: int) -> None:
        try:
            for i in range(lo, lo + 10):
                assert idx.search(x[i : i + 1], k=3).ids[0, 0] == ids[i]
        except BaseException as e:  # noqa: BLE001 - reported to the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(lo,)) for lo in (0, 50, 100, 150)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.filterwarnings("ignore")
def test_unreachable_server_is_a_clear_error() -> None:
    """No server needed: nothing listens on a fresh free port."""
    with pytest.raises(CandgenError, match="cannot reach the Milvus server"):
        MilvusIndex(dim=8, uri=f"http://127.0.0.1:{_free_port()}", timeout=1.0)
