"""`candgen tune-index`: sweep efSearch / nprobe of a saved index, store the cheapest setting meeting a recall
target."""

from __future__ import annotations

from pathlib import Path

import typer

from candgen.cli.app import app, out, progress


@app.command("tune-index")
def tune_index(
    art: Path = typer.Argument(..., help="artifacts directory holding index/ and item_embeddings.npy"),
    k: int = typer.Option(1000, "--k", help="number of neighbours recall is measured at"),
    target_recall: float = typer.Option(0.95, "--target-recall", help="recall@k the chosen setting must reach"),
    queries: int = typer.Option(200, "--queries", help="number of queries to measure with"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
) -> None:
    """Measure recall against exact search and latency per setting; store the cheapest that meets the target."""
    from candgen.index.tune import tune_artifacts

    with progress(quiet) as p:
        result = tune_artifacts(art, k=k, target_recall=target_recall, n_queries=queries, progress=p)
    out.print(result.table, highlight=False, markup=False)
    chosen = result.chosen
    if chosen is None:  # tune_artifacts raises instead; kept for type narrowing
        return
    settings = ", ".join(f"{name}={value}" for name, value in chosen.params.items())
    out.print(f"stored {settings} (recall@{result.k} {chosen.recall:.4f}, p50 {chosen.p50_ms:.3f} ms, "
              f"p99 {chosen.p99_ms:.3f} ms); wrote {', '.join(str(f) for f in result.files)}",
              highlight=False, markup=False)
