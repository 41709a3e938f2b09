"""Benchmark `candgen generate` (and optionally loading the result): wall time and peak memory per size.

    .venv/bin/python benchmarks/generate.py --sizes 100000x100000,1000000x1000000 [--load] [--out /tmp/gen]

Each size runs in a fresh subprocess so that its peak RSS (ru_maxrss of the child) is its own.
Prints a markdown table for benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import platform
import resource
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

GEN = """
import json, sys
from candgen.data.synthetic import generate_world
s = generate_world(sys.argv[1], users=int(sys.argv[2]), items=int(sys.argv[3]), seed=0)
print(json.dumps(s.to_dict()))
"""
LOAD = """
import json, sys, time
from candgen.data.io import load_dataset
t = time.perf_counter()
ds = load_dataset(sys.argv[1])
print(json.dumps({"seconds": time.perf_counter() - t, "interactions": len(ds.interactions)}))
"""


def child(code: str, *args: str) -> tuple[float, float, str]:
    """Run python code in a fresh process: (wall seconds, peak RSS GiB, stdout)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux; max over children so far
    return wall, max(peak, before) / 2**20, p.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="100000x100000", help="USERSxITEMS,... (about 20 interactions per user)")
    ap.add_argument("--out", default="/tmp/candgen-bench-generate")
    ap.add_argument("--load", action="store_true", help="also time load_dataset on the result")
    a = ap.parse_args()
    print(f"machine: {platform.node()} {platform.machine()}, python {platform.python_version()}; "
          f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print("| users | items | interactions | generate s | generate peak GiB | load s | load peak GiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for size in a.sizes.split(","):
        users, items = (int(x) for x in size.lower().split("x"))
        out = Path(a.out) / size
        shutil.rmtree(out, ignore_errors=True)
        # ru_maxrss of children is a running max, so sizes should be listed smallest first
        wall, rss, stdout = child(GEN, str(out), str(users), str(items))
        n = stdout.strip().split('"interactions": ')[1].split(",")[0]
        load = ("", "")
        if a.load:
            lw, lr, _ = child(LOAD, str(out))
            load = (f"{lw:.1f}", f"{lr:.2f}")
        print(f"| {users:,} | {items:,} | {int(n):,} | {wall:.1f} | {rss:.2f} | {load[0]} | {load[1]} |", flush=True)


if __name__ == "__main__":
    main()
