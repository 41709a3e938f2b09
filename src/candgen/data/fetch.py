"""Download a public data set, verify its checksum and import it (`candgen fetch NAME --out DIR`).

Files come from GroupLens (`https://files.grouplens.org/datasets/movielens/`) unless the base URL is
overridden by the `base_url` argument or the `CANDGEN_DATASETS_URL` environment variable (mirrors,
tests). Checksums: GroupLens publishes an MD5 beside each zip (`<file>.md5`); the values for 100K and
1M below are those published sums. ml-latest-small is re-released from time to time, so no fixed sum is
kept for it: its published `.md5` is fetched from the same place and checked instead. If no checksum
can be found at all the download is refused unless `verify=False`. The SHA-256 of every download is
reported, so that a mirror can pin it. Tests pass their own `checksums` table.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx

from candgen.data.movielens import ImportSummary, import_movielens
from candgen.errors import CandgenError
from candgen.types import NO_PROGRESS, Progress

DEFAULT_BASE_URL = "https://files.grouplens.org/datasets/movielens/"
FILES = {
    "movielens-100k": "ml-100k.zip",
    "movielens-1m": "ml-1m.zip",
    "movielens-latest-small": "ml-latest-small.zip",
}
# name -> (algorithm, hex digest); None: use the `.md5` file published beside the zip
CHECKSUMS: dict[str, tuple[str, str] | None] = {
    "movielens-100k": ("md5", "0e33842e24a9c977be4e0107933c0723"),
    "movielens-1m": ("md5", "c4d9eecfca2ab87c1945afe126590906"),
    "movielens-latest-small": None,
}


@dataclass
class FetchSummary:
    """What `fetch` downloaded and imported."""

    name: str
    url: str
    bytes: int
    sha256: str
    checked: str  # how the download was verified, e.g. "md5 (published .md5)" or "not verified"
    imported: ImportSummary


def fetch_dataset(
    name: str,
    out_dir: str | Path,
    *,
    base_url: str | None = None,
    checksums: dict[str, tuple[str, str] | None] | None = None,
    verify: bool = True,
    timeout: float = 30.0,
    progress: Progress = NO_PROGRESS,
) -> FetchSummary:
    """Download data set `name` (one of FILES), verify it, import it into `out_dir`."""
    if name not in FILES:
        raise CandgenError(f"unknown data set {name!r}; known: {', '.join(FILES)}")
    base = base_url or os.environ.get("CANDGEN_DATASETS_URL") or DEFAULT_BASE_URL
    url = base.rstrip("/") + "/" + FILES[name]
    table = CHECKSUMS if checksums is None else checksums
    with tempfile.TemporaryDirectory(prefix="candgen-fetch-") as tmp, httpx.Client(
        timeout=timeout, follow_redirects=True
    ) as client:
        path = Path(tmp) / FILES[name]
        digests = _download(client, url, path, progress)
        expected, how = table.get(name), ""
        if expected is not None:
            how = f"{expected[0]} (known checksum)"
        elif verify:
            expected = ("md5", _published_md5(client, url + ".md5"))
            how = "md5 (published .md5)"
        if expected is not None:
            algo, want = expected
            got = digests.get(algo)
            if got is None:
                raise CandgenError(f"checksum algorithm {algo!r} is not supported (md5, sha256)")
            if got.lower() != want.lower():
                raise CandgenError(f"checksum mismatch for {url}: {algo} is {got}, expected {want}; "
                                   "the download is corrupt or not the published file (nothing was imported)")
        else:
            how = "not verified"
        imported = import_movielens(path, out_dir)
        size = path.stat().st_size
    return FetchSummary(name=name, url=url, bytes=size, sha256=digests["sha256"], checked=how, imported=imported)


def _get(client: httpx.Client, url: str) -> httpx.Response:
    try:
        return client.send(client.build_request("GET", url), stream=True)
    except httpx.TimeoutException:
        raise CandgenError(f"timed out downloading {url} (offline, or the server is slow?)") from None
    except httpx.HTTPError as e:
        raise CandgenError(f"cannot download {url}: {e or type(e).__name__} (offline? set CANDGEN_DATASETS_URL "
                           "to a mirror, or use `candgen import movielens` on a local copy)") from None


def _download(client: httpx.Client, url: str, path: Path, progress: Progress) -> dict[str, str]:
    hashes = {"md5": hashlib.md5(usedforsecurity=False), "sha256": hashlib.sha256()}
    r = _get(client, url)
    try:
        if r.status_code != 200:
            raise CandgenError(f"cannot download {url}: HTTP {r.status_code} {r.reason_phrase}")
        total = int(r.headers.get("content-length", 0)) or None
        progress.task("download", total=total)
        with open(path, "wb") as f:
            for chunk in r.iter_bytes(1 << 16):
                f.write(chunk)
                for h in hashes.values():
                    h.update(chunk)
                progress.advance("download", len(chunk))
    except httpx.HTTPError as e:
        raise CandgenError(f"download of {url} broke off: {e or type(e).__name__}") from None
    finally:
        r.close()
    progress.done("download")
    return {k: h.hexdigest() for k, h in hashes.items()}


def _published_md5(client: httpx.Client, url: str) -> str:
    r = _get(client, url)
    try:
        r.read()
    finally:
        r.close()
    words = r.text.split() if r.status_code == 200 else []
    # GroupLens' .md5 files read either "<hex>  <file>" or "MD5 (<file>) = <hex>"
    hexes = [w for w in words if len(w) == 32 and all(c in "0123456789abcdefABCDEF" for c in w)]
    if not hexes:
        raise CandgenError(f"no checksum known for {url.removesuffix('.md5')} and none published at {url} "
                           f"(HTTP {r.status_code}); pass --no-verify to import it unchecked")
    return hexes[0]

