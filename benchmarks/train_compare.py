"""Training-step throughput of two source trees side by side (before/after a change), interleaved.

    git worktree add /tmp/before <commit>          # or any checkout of the older code
    .venv/bin/python benchmarks/train_compare.py --before /tmp/before/src --after src [--data DIR] [--rounds 7]

Each round runs one process per tree (alternating which goes first) on the same data and the default
`ModelConfig`; a process trains `--steps` steps of plain `_Trainer.step` calls (assemble, then train) and, when
the tree has it, the same steps with batches prefetched in a background thread (`train_two_tower`'s loop).
Printed per mode, as medians over the rounds: examples/s wall, examples per CPU-second of the process, and
examples/s over the wall time minus the time the training thread spent waiting for a CPU in the run queue
(from /proc/thread-self/schedstat, Linux only). On a machine shared with other jobs the last column is what
an otherwise idle machine would give; it is conservative for the prefetch mode, whose batch thread's own
waits are not subtracted. The fourth column divides by the CPU time of the busier of the two threads (the
training thread, which in the "steps" mode also assembles its batches, and the batch thread): what two idle cores
would give with one thread on each and no waiting between them, an upper bound for the prefetch mode.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _run_queue_wait() -> float:
    """Seconds the calling thread has spent runnable but waiting for a CPU."""
    with open("/proc/thread-self/schedstat") as f:
        return int(f.read().split()[1]) / 1e9


def measure(data: str | None, movielens: Path, threads: int, steps: int) -> dict[str, list[float]]:
    """Runs in the child process, with the tree under test first on sys.path."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP, as candgen.model.train does
    import numpy as np
    import torch

    import candgen.model.train as train_mod
    from candgen.config import EventsConfig, ModelConfig
    from candgen.data.split import time_split
    from candgen.model.features import FeatureSpace, PositiveLog, negatives_by_user

    sys.path.insert(0, str(HERE))
    from train import load_movielens

    torch.set_num_threads(threads)
    if data is None:
        ds = load_movielens(movielens)
    else:
        from candgen.data.io import load_dataset
        ds = load_dataset(data)
    events, cfg = EventsConfig(), ModelConfig()
    train = time_split(ds, fraction=0.8).train
    space = FeatureSpace.from_dataset(train, id_buckets=cfg.id_buckets, history_len=cfg.history_len)
    log = PositiveLog.build(train.interactions, events, train.n_users)
    neg = negatives_by_user(train.interactions, events, train.n_users)
    bs = cfg.batch_size
    perm = np.random.default_rng(0).permutation(len(log.item))
    batches = [perm[(i * bs) % (len(perm) - bs):][:bs] for i in range(steps + 5)]
    tr = train_mod._Trainer(train, space, cfg, events)
    log_q = train_mod._log_q_table(log, train.n_items, bs, cfg.random_negatives)
    tr.refresh_bank()
    for b in batches[:5]:
        tr.step(log, b, log_q_table=log_q, neg=neg, weight_scale=1.0)
    out = {}
    modes = ["steps"] + (["steps, prefetched batches"] if hasattr(tr, "train_batch") else [])
    batch_cpu = [0.0]

    def made(ix: list[np.ndarray], inv_q: np.ndarray | None) -> Iterator[object]:
        """The batches, assembled in the calling (prefetch) thread, adding up that thread's CPU time."""
        for b in ix:
            c = time.thread_time()
            batch = tr.batches.make(log, b, neg, inv_q)
            if hasattr(tr, "pool_history"):  # as train_two_tower's batch thread does
                batch = tr.pool_history(batch)
            batch_cpu[0] += time.thread_time() - c
            yield batch

    for mode in modes:
        wall0, wait0, proc0 = time.perf_counter(), _run_queue_wait(), time.process_time()
        thread0, batch_cpu[0] = time.thread_time(), 0.0
        if mode == "steps":
            for b in batches[5:]:
                tr.step(log, b, log_q_table=log_q, neg=neg, weight_scale=1.0)
        else:
            from candgen.model.prefetch import Prefetch
            with Prefetch(made(batches[5:], tr.inv_q(log_q))) as stream:
                for batch in stream:
                    tr.train_batch(batch, log_q_table=log_q, weight_scale=1.0)
        wall, wait1, proc = time.perf_counter() - wall0, _run_queue_wait(), time.process_time() - proc0
        busiest = max(time.thread_time() - thread0, batch_cpu[0])
        n = steps * bs
        out[mode] = [n / wall, n / proc, n / (wall - (wait1 - wait0)), n / busiest]
    out["load"] = [os.getloadavg()[0]]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, required=True, help="the older tree's src/ dir")
    ap.add_argument("--after", type=Path, default=HERE.parent / "src")
    ap.add_argument("--data", default=None, help="a candgen dataset dir instead of MovieLens")
    ap.add_argument("--movielens", type=Path, default=Path("/work/shared/data/ml-latest-small"))
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.data, args.movielens, args.threads, args.steps)))
        return
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    results: dict[str, list[list[float]]] = {}
    loads: list[float] = []
    for r in range(args.rounds):
        for name in (list(trees) if r % 2 == 0 else list(trees)[::-1]):
            cmd = [sys.executable, __file__, "--child", name, "--before", str(args.before), "--threads",
                   str(args.threads), "--steps", str(args.steps), "--movielens", str(args.movielens)]
            cmd += ["--data", args.data] if args.data else []
            env = {**os.environ, "PYTHONPATH": str(trees[name])}
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            for mode, values in json.loads(done.stdout.strip().splitlines()[-1]).items():
                if mode == "load":
                    loads += values
                else:
                    results.setdefault(f"{name}: {mode}", []).append(values)
    print(f"{args.data or args.movielens.name}, {args.threads} torch thread(s), {args.rounds} interleaved rounds of "
          f"{args.steps} steps (default ModelConfig), load average {min(loads):.1f}-{max(loads):.1f}")
    base = None
    for name, rows in results.items():
        med = [statistics.median(col) for col in zip(*rows, strict=True)]
        base = base or med
        print(f"  {name:34s} {med[0]:8,.0f} ex/s wall ({med[0] / base[0]:.2f}x)  {med[1]:8,.0f} per CPU-s "
              f"({med[1] / base[1]:.2f}x)  {med[2]:8,.0f} ex/s wall minus run-queue wait ({med[2] / base[2]:.2f}x)  "
              f"{med[3]:8,.0f} per CPU-s of the busiest thread ({med[3] / base[3]:.2f}x)")
    # each round ran both trees back to back: the ratio within a round cancels load that drifts between rounds
    for mode in [m.split(": ", 1)[1] for m in results if m.startswith("after: ")]:
        before, after = results.get(f"before: {mode}"), results[f"after: {mode}"]
        if before is not None:
            ratios = [statistics.median(a[c] / b[c] for a, b in zip(after, before, strict=True)) for c in range(4)]
            print(f"  after / before, {mode}, median of the per-round ratios: "
                  + ", ".join(f"{r:.2f}x" for r in ratios))


if __name__ == "__main__":
    main()
