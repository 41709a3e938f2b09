"""The evaluation report's figures (matplotlib, files only): recall@k per recommender, score distributions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from candgen.eval.baselines import BASELINES

if TYPE_CHECKING:
    from candgen.eval.evaluate import EvalReport

COHORTS = ("warm", "cold")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    return plt


def plot_recall(report: EvalReport, path: Any) -> None:
    """Recall@k against k, one line per recommender, one panel per cohort (error bars: standard error).
    The blend is bold black, its ablations dotted, the baselines dashed, candgen's sources solid."""
    plt = _pyplot()
    ks = report.ks
    fig, axes = plt.subplots(1, len(COHORTS), figsize=(12, 4.6), sharey=True, squeeze=False)
    cmap = plt.get_cmap("tab20")
    try:
        for ax, cohort in zip(axes[0], COHORTS, strict=True):
            n = report.cohort_users.get(cohort, 0)
            for i, r in enumerate(report.results):
                ys = [r.metrics[cohort].get(f"recall@{k}", float("nan")) for k in ks]
                err = [r.stderr.get(cohort, {}).get(f"recall@{k}", float("nan")) for k in ks]
                if n and not all(np.isnan(ys)):
                    blend = r.name == "candgen"
                    style = "-" if blend else ":" if r.name.startswith("candgen - ") else (
                        "--" if r.name in BASELINES else "-")
                    ax.errorbar(ks, ys, yerr=np.nan_to_num(err), marker="o", markersize=4, capsize=3,
                                linestyle=style, linewidth=2.8 if blend else 1.2, zorder=3 if blend else 2,
                                color="black" if blend else cmap(i % 20), label=r.name)
            ax.set_title(f"{cohort} users ({n:,})")
            ax.set_xlabel("k")
            if len(ks) > 1 and min(ks) > 0 and max(ks) / min(ks) >= 10:
                ax.set_xscale("log")
            ax.grid(alpha=0.3)
        handles, labels = axes[0][0].get_legend_handles_labels()
        for ax in axes[0][1:]:  # a recommender with no line in the first panel still gets a legend entry
            for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
        if handles:
            fig.legend(handles, labels, loc="center right", fontsize=8)
        axes[0][0].set_ylabel("recall@k")
        fig.tight_layout(rect=(0, 0, 0.82, 1))
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def plot_scores(report: EvalReport, path: Any) -> None:
    """One histogram per recommender that reported scores (candgen's sources): the raw scores of the
    candidates it returned, on its own axis (sources score on different scales: that is the point)."""
    plt = _pyplot()
    scored = [r for r in report.results if r.scores is not None and len(r.scores)]
    if not scored:
        raise ValueError("no recommender reported scores")
    cols = min(3, len(scored))
    rows = -(-len(scored) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    try:
        for ax, r in zip(axes.flat, scored, strict=False):
            assert r.scores is not None
            ax.hist(r.scores, bins=50, color="C0", alpha=0.8)
            ax.set_title(f"{r.name} (n={len(r.scores):,})", fontsize=9)
            ax.set_yscale("log")
            ax.tick_params(labelsize=7)
        for ax in list(axes.flat)[len(scored):]:
            ax.axis("off")
        fig.supxlabel("score (the source's own scale)", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
