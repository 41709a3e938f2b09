"""Temporary artifacts directories left by trains that were killed outright are removed by the next train."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from candgen.pipeline import OWNER_FILE, remove_abandoned_tmp


def tmp_dir(parent: Path, name: str, owner: str | None) -> Path:
    d = parent / name
    (d / "model").mkdir(parents=True)
    (d / "model" / "weights.npz").write_bytes(b"partial")
    if owner is not None:
        (d / OWNER_FILE).write_text(owner)
    return d


def test_only_the_directories_of_dead_trains_on_this_host_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    host = os.uname().nodename
    killed = tmp_dir(tmp_path, ".art.k1ll3d", f"{host} {dead.stdout.strip()}")
    running = tmp_dir(tmp_path, ".art.runn1n", f"{host} {os.getpid()}")
    elsewhere = tmp_dir(tmp_path, ".art.0th3r", f"another-host {dead.stdout.strip()}")
    unmarked = tmp_dir(tmp_path, ".art.n0mark", None)  # written before owner marks, or not by a train
    garbled = tmp_dir(tmp_path, ".art.garbl3", "not an owner line")
    other_out = tmp_dir(tmp_path, ".art2.k1ll3d", f"{host} {dead.stdout.strip()}")  # another --out's
    assert remove_abandoned_tmp(tmp_path / "art") == [killed]
    assert not killed.exists()
    assert all(d.exists() for d in (running, elsewhere, unmarked, garbled, other_out))


def test_nothing_to_remove_beside_a_new_output(tmp_path: Path) -> None:
    assert remove_abandoned_tmp(tmp_path / "art") == []
