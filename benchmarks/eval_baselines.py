"""Baseline quality: recall@50/100/200 of every baseline on a dataset, for warm and cold test users, on the
time split (cutoff at the 80th percentile of timestamps) and, for more warm users, a random 80/20 split.

    .venv/bin/candgen import movielens /work/shared/data/ml-latest-small --out /tmp/ml-small
    .venv/bin/python benchmarks/eval_baselines.py /tmp/ml-small          # about 2 min on a busy 2-core box

Prints markdown tables (recall ± its standard error over users); the numbers go into notes/eval-baselines.md.
"""

from __future__ import annotations

import argparse

from candgen.data.io import load_dataset
from candgen.data.split import random_split, time_split
from candgen.eval.baselines import make_baselines
from candgen.eval.evaluate import EvalReport, evaluate

KS = (50, 100, 200)


def table(title: str, report: EvalReport) -> str:
    lines = [f"### {title}", "",
             "| recommender | cohort (users) | " + " | ".join(f"recall@{k}" for k in KS) + " | fit s |",
             "|---|---|" + "---|" * (len(KS) + 1)]
    for r in report.results:
        for cohort in ("warm", "cold"):
            n = report.cohort_users[cohort]
            if n == 0:
                continue
            vals = " | ".join(f"{r.metrics[cohort][f'recall@{k}']:.4f} ±{r.stderr[cohort][f'recall@{k}']:.3f}"
                              for k in KS)
            lines.append(f"| {r.name} | {cohort} ({n}) | {vals} | {r.fit_seconds:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="dataset directory (candgen format)")
    ap.add_argument("--no-random", action="store_true", help="only the time split")
    args = ap.parse_args()
    ds = load_dataset(args.data)
    print(table("time split, cutoff at the 80th percentile of timestamps",
                evaluate(time_split(ds, fraction=0.8), make_baselines(), ks=KS)))
    if not args.no_random:
        print(table("random split, 20% of interactions held out (seed 0)",
                    evaluate(random_split(ds, test_fraction=0.2, seed=0), make_baselines(), ks=KS)))


if __name__ == "__main__":
    main()
