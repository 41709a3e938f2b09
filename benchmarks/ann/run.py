"""ANN benchmark: candgen's indexes vs raw FAISS, hnswlib, usearch and a Milvus server, side by side.

    .venv/bin/python benchmarks/ann/run.py --data model --n 1000000 --dim 128 --queries 500   # the full run
    .venv/bin/python benchmarks/ann/run.py --data mixture --n 100000 --dim 128 --queries 300  # quick

Data (--data): `model` (the default: what candgen really indexes) trains candgen's two-tower model
on a synthetic world of --n items and --users users (`model_data.model_dataset`; ~35 min at 1M on a
loaded 2-core machine, cached) and uses its item embeddings as the base and user-tower embeddings
of randomly drawn warm users as queries; `mixture` (`data.dataset`) is a hard Gaussian mixture
with held-out perturbed queries, a stress case with no model behind it. Exact truth from FAISS
flat, cached in --cache-dir keyed by the data parameters. Per contestant: build time, memory (index
bytes where the library reports them, else this process's RSS growth; the Milvus server's RSS
growth), p50/p99 of single-query latency (1 thread, every query), batch QPS on 2 threads, and
recall@k against exact search, at k=1000 and k=100 and each search setting. Progress goes to
stderr, the table (markdown) to stdout and, with --out, JSON to a file.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from contestants import (  # noqa: E402
    CandgenIndex,
    Contestant,
    Hnswlib,
    Milvus,
    RawFaiss,
    RawFaissRefine,
    Usearch,
    _rss,
)
from data import dataset, ground_truth, recall_at_k  # noqa: E402
from model_data import model_dataset  # noqa: E402

# cheapest builds first: a run cut short still has the IVF, Milvus and FAISS HNSW rows
ALL = ("ivf", "ivfpq", "milvus", "hnsw", "hnswlib", "usearch")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def measure(group: list[Contestant], q: np.ndarray, truth: np.ndarray, ks: list[int],
            build: list[tuple[float | None, int | None]]) -> list[dict[str, Any]]:
    """Rows for each contestant of `group` (one, or candgen's index and raw FAISS on the same
    object) at each k and setting. Within a group, single queries alternate between members call
    by call, so load from other processes on this shared machine hits both alike; member j starts
    at query j * n / len(group), because the same query twice in a row would find the memory it
    reads (IVF lists: megabytes at 1M items) already in the CPU cache for the second caller."""
    rows = []
    n = len(q)
    for k in ks:
        for setting in group[0].settings(k):
            lat = np.empty((len(group), n))
            got = np.empty((len(group), n, k), dtype=np.int64)
            for c in group:
                c.apply(setting)
                for i in range(min(10, n)):  # warm caches and connections
                    c.search_one(q[i], k)
            for step in range(n):
                for j, c in enumerate(group):
                    i = (step + j * n // len(group)) % n
                    t = time.perf_counter()
                    got[j, i] = c.search_one(q[i], k)
                    lat[j, i] = time.perf_counter() - t
            for j, c in enumerate(group):
                t = time.perf_counter()
                c.search_batch(q, k)
                batch_s = time.perf_counter() - t
                build_s, mem = build[j]
                row = {"contestant": c.name, "shared_with": c.shared_with, "k": k,
                       "setting": ",".join(f"{a}={b}" for a, b in setting.items()),
                       "build_s": build_s, "memory_mb": None if mem is None else mem / 2**20,
                       "p50_ms": 1e3 * float(np.percentile(lat[j], 50)),
                       "p99_ms": 1e3 * float(np.percentile(lat[j], 99)),
                       "qps_2threads": n / batch_s, "recall": recall_at_k(got[j], truth, k)}
                log(f"  {c.name} k={k} {row['setting']}: p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms, "
                    f"{row['qps_2threads']:.0f} QPS, recall {row['recall']:.3f}")
                rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    head = ("| contestant | k | setting | build s | memory MB | p50 ms | p99 ms | QPS (2 thr) | recall@k |\n"
            "|---|---:|---|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        build = f"{r['build_s']:.0f}" if r["build_s"] is not None else f"(= {r['shared_with']})"
        mem = f"{r['memory_mb']:.0f}" if r["memory_mb"] is not None else "(shared)"
        lines.append(f"| {r['contestant']} | {r['k']} | {r['setting']} | {build} | {mem} | {r['p50_ms']:.2f} | "
                     f"{r['p99_ms']:.2f} | {r['qps_2threads']:,.0f} | {r['recall']:.3f} |")
    return "\n".join(lines)


def overheads(rows: list[dict[str, Any]]) -> list[str]:
    """candgen p50 / raw FAISS p50 for each shared index and setting."""
    out = []
    for raw in (r for r in rows if r["shared_with"]):
        mine = [r for r in rows if r["contestant"] == raw["shared_with"] and r["k"] == raw["k"]
                and r["setting"] == raw["setting"]]
        if mine:
            out.append(f"{mine[0]['contestant']} / {raw['contestant']} p50 at k={raw['k']} {raw['setting']}: "
                       f"{mine[0]['p50_ms'] / raw['p50_ms']:.2f}x")
    return out


def start_milvus(base: Path) -> Any:
    from milvus import MilvusServer

    # the embedded etcd always listens on peer port 2380: only one embedded server per machine
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", 2380)) == 0:
            raise RuntimeError("port 2380 is taken (another embedded Milvus server?); pass --milvus-uri")
    server = MilvusServer(data_dir=str(base))
    try:
        server.start()
    except BaseException:
        stop_milvus(server)
        raise
    return server


def stop_milvus(server: Any) -> None:
    proc = server.server_proc
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="items in the index")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=1000, help="held-out queries (single-query latency and QPS)")
    ap.add_argument("--k", default="1000,100", help="comma-separated k values")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default="model", choices=("model", "mixture"),
                    help="model: two-tower item/user embeddings (default); mixture: a hard Gaussian mixture")
    ap.add_argument("--users", type=int, default=200_000, help="--data model: users of the synthetic world")
    ap.add_argument("--epochs", type=int, default=1, help="--data model: training epochs")
    ap.add_argument("--batch-size", type=int, default=1024, help="--data model: training batch size")
    ap.add_argument("--world", type=Path, help="--data model: an existing world generated with --n, --users, --seed")
    ap.add_argument("--only", default=",".join(ALL),
                    help=f"comma-separated subset of {','.join(ALL)}, run in this order")
    ap.add_argument("--nprobe", default="", help="comma-separated IVF nprobe values to sweep (default 32,64)")
    ap.add_argument("--nlist", type=int, default=0,
                    help="IVF lists (candgen IVF, IVF-PQ and Milvus IVF); 0: 4096 at 1M, scaled by sqrt(n)")
    ap.add_argument("--milvus-index", default="IVF_FLAT", choices=("IVF_FLAT", "HNSW"),
                    help="index inside Milvus (HNSW builds ~7 min at 1M on 2 cores)")
    ap.add_argument("--milvus-uri", default="", help="use a running server instead of the embedded one")
    ap.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "candgen-ann-bench")
    ap.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = ap.parse_args()
    if args.nprobe:  # the IVF search settings every IVF contestant sweeps (candgen, raw FAISS, Milvus)
        import contestants

        contestants.IVF_NPROBE = tuple(int(x) for x in args.nprobe.split(","))
    ks = [int(k) for k in args.k.split(",")]
    only = list(dict.fromkeys(args.only.split(",")))  # run in the order given (a run cut short keeps the first)
    if unknown := set(only) - set(ALL):
        ap.error(f"unknown contestants {sorted(unknown)}; choose from {ALL}")

    t = time.perf_counter()
    if args.data == "model":
        x, q, info = model_dataset(args.n, args.dim, args.queries, seed=args.seed, users=args.users,
                                   epochs=args.epochs, batch_size=args.batch_size, cache_dir=args.cache_dir,
                                   world=args.world)
        key = f"{info['key']}|nq={args.queries}"
        log(f"model data: {info['interactions']:,} interactions, {info['epochs']} epochs trained in "
            f"{float(info['train_s']):.0f} s (cached)")  # type: ignore[arg-type]
    else:
        x, q = dataset(args.n, args.dim, args.queries, seed=args.seed)
        key = f"mixture-v1|n={args.n}|dim={args.dim}|nq={args.queries}|seed={args.seed}"
    log(f"data {x.shape} + {len(q)} queries in {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    truth = ground_truth(x, q, max(ks), cache_dir=args.cache_dir, key=key)
    log(f"exact truth (k={max(ks)}) in {time.perf_counter() - t:.1f} s (cache {args.cache_dir})")

    # the reference setting is IVF4096 at 1M items; lists of the same average size at other n
    # would be too many, so scale with sqrt(n) (FAISS's rule of thumb), at least 39 points per list
    nlist = min(args.nlist or round(4096 * math.sqrt(args.n / 1e6)), args.n // 39)
    plans: dict[str, Any] = {
        "hnsw": lambda: CandgenIndex("hnsw", "HNSW M32", args.dim, m=32, ef_construction=200, ef_search=1000),
        "hnswlib": lambda: Hnswlib(args.dim),
        "usearch": lambda: Usearch(args.dim),
        "ivf": lambda: CandgenIndex("ivf", f"IVF{nlist},Flat", args.dim, nlist=nlist, nprobe=64),
        "ivfpq": lambda: CandgenIndex("ivfpq", f"IVF{nlist},PQ32+rerank", args.dim, nlist=nlist, nprobe=64,
                                      pq_m=32, rerank_factor=4),
    }
    rows: list[dict[str, Any]] = []
    for key in only:
        report(args, rows, final=False)  # what is done so far survives a run cut short
        if key == "milvus":
            try:
                rows += run_milvus(args, x, q, truth, ks, nlist)
            except Exception as e:  # noqa: BLE001 - one failed contestant must not lose the others
                log(f"milvus failed, skipped: {type(e).__name__}: {e}")
            continue
        make = plans[key]
        c = make()
        log(f"building {c.name} ...")
        gc.collect()
        rss0, t = _rss(), time.perf_counter()
        c.build(x)
        build_s = time.perf_counter() - t
        mem = c.memory_bytes() or (_rss() - rss0)
        log(f"built {c.name} in {build_s:.1f} s, {mem / 2**20:.0f} MB")
        group: list[Contestant] = [c]
        if isinstance(c, CandgenIndex):
            label = c.name.removeprefix("candgen ").replace("+rerank", " (codes only, no rerank)")
            raws: list[Contestant] = [RawFaiss(c, label)]
            if c.kind == "ivfpq":
                raws.append(RawFaissRefine(c, c.name.removeprefix("candgen ").replace("+rerank", "+IndexRefineFlat")))
            for raw in raws:
                raw.build(x)
                group.append(raw)
        rows += measure(group, q, truth, ks, [(build_s, mem)] + [(None, None)] * (len(group) - 1))
        del group
        c.close()
        del c
        gc.collect()

    report(args, rows, final=True)


def report(args: Any, rows: list[dict[str, Any]], *, final: bool) -> None:
    """The table on stdout (final) and, with --out, JSON plus a markdown copy (also after each contestant)."""
    text = "\n".join([f"ANN benchmark: data={args.data} n={args.n:,} dim={args.dim} queries={args.queries} "
                      f"seed={args.seed}", "",
                      markdown(rows), "", *(f"- {line}" for line in overheads(rows))])
    if final:
        print("\n" + text)
    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
                                        "complete": final}, indent=2))
        args.out.with_suffix(".md").write_text(text + "\n")


def run_milvus(args: Any, x: np.ndarray, q: np.ndarray, truth: np.ndarray, ks: list[int],
               nlist: int) -> list[dict[str, Any]]:
    server, base = None, None
    uri = args.milvus_uri
    try:
        if not uri:
            base = Path(tempfile.mkdtemp(prefix="candgen-milvus-bench-"))
            log(f"starting the embedded Milvus server in {base} ...")
            server = start_milvus(base)
            uri = f"http://127.0.0.1:{server.listen_port}"
        pid = server.server_proc.pid if server else None
        c = Milvus(args.dim, uri=uri, index_type=args.milvus_index, nlist=nlist, server_pid=pid)
        log(f"building {c.name} (upsert + flush + index) ...")
        t = time.perf_counter()
        c.build(x)
        build_s = time.perf_counter() - t
        mem = c.memory_bytes()
        log(f"built {c.name} in {build_s:.1f} s")
        rows = measure([c], q, truth, ks, [(build_s, mem)])
        c.close()
        return rows
    finally:
        if server is not None:
            stop_milvus(server)
        if base is not None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
