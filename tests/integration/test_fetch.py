"""`fetch` against a loopback HTTP server serving a MovieLens zip the test builds: success, checksum
mismatch, published .md5, 404 and offline, through the library and the CLI (exit code 2, no traceback)."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from candgen.cli.main import main
from candgen.data.fetch import fetch_dataset
from candgen.errors import CandgenError
from candgen.types import Progress


class Recorder(Progress):
    def __init__(self) -> None:
        self.total: float | None = None
        self.seen = 0.0

    def task(self, name: str, total: float | None = None) -> None:
        self.total = total

    def advance(self, name: str, n: float = 1, **fields: object) -> None:
        self.seen += n


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, bytes]]:
    root = tmp_path_factory.mktemp("www")
    z = root / "ml-latest-small.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("ml-latest-small/ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n"
                                                   "2,1,3.0,964982704\n")
        zf.writestr("ml-latest-small/movies.csv", "movieId,title,genres\n1,Toy Story (1995),Animation|Comedy\n")
    data = z.read_bytes()
    (root / "ml-latest-small.zip.md5").write_text(f"MD5 (ml-latest-small.zip) = {hashlib.md5(data).hexdigest()}\n")
    (root / "ml-100k.zip").write_bytes(data)  # served without a .md5, checked against the table

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a: object, **k: object) -> None:
            super().__init__(*a, directory=str(root), **k)  # type: ignore[arg-type]

        def log_message(self, *a: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", data
    server.shutdown()
    server.server_close()


def test_fetch_verifies_and_imports(served: tuple[str, bytes], tmp_path: Path) -> None:
    url, data = served
    sha = hashlib.sha256(data).hexdigest()
    p = Recorder()
    s = fetch_dataset("movielens-latest-small", tmp_path, base_url=url,
                      checksums={"movielens-latest-small": ("sha256", sha)}, progress=p)
    assert s.sha256 == sha and s.bytes == len(data) and s.checked.startswith("sha256")
    assert (s.imported.interactions, s.imported.items) == (2, 1)
    assert (tmp_path / "interactions.parquet").is_file()
    assert p.total == len(data) and p.seen == len(data)


def test_fetch_uses_published_md5_when_no_checksum_is_known(served: tuple[str, bytes], tmp_path: Path) -> None:
    s = fetch_dataset("movielens-latest-small", tmp_path, base_url=served[0])
    assert s.checked == "md5 (published .md5)"


def test_no_checksum_anywhere_refused_unless_no_verify(served: tuple[str, bytes], tmp_path: Path) -> None:
    with pytest.raises(CandgenError, match="no checksum known.*--no-verify"):
        fetch_dataset("movielens-100k", tmp_path, base_url=served[0], checksums={})
    s = fetch_dataset("movielens-100k", tmp_path, base_url=served[0], checksums={}, verify=False)
    assert s.checked == "not verified"


def test_checksum_mismatch(served: tuple[str, bytes], tmp_path: Path) -> None:
    with pytest.raises(CandgenError, match="checksum mismatch.*nothing was imported"):
        fetch_dataset("movielens-100k", tmp_path, base_url=served[0])  # the real 100K md5 from the table
    assert not (tmp_path / "interactions.parquet").exists()


def test_env_base_url_and_404(served: tuple[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CANDGEN_DATASETS_URL", served[0] + "missing/")
    with pytest.raises(CandgenError, match="HTTP 404"):
        fetch_dataset("movielens-1m", tmp_path)


def test_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(CandgenError, match="unknown data set"):
        fetch_dataset("netflix-prize", tmp_path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_offline(tmp_path: Path) -> None:
    with pytest.raises(CandgenError, match="cannot download.*offline"):
        fetch_dataset("movielens-1m", tmp_path, base_url=f"http://127.0.0.1:{free_port()}/", timeout=5)


def test_cli_fetch_ok_and_offline(served: tuple[str, bytes], tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["fetch", "movielens-latest-small", "--out", str(tmp_path / "ok"), "--base-url", served[0], "--quiet"])
    assert e.value.code == 0
    assert "imported into" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["fetch", "movielens-1m", "--out", str(tmp_path / "off"), "--base-url",
              f"http://127.0.0.1:{free_port()}/", "--quiet"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "cannot download" in err and "Traceback" not in err
