"""Tuning an ANN index: sweep its search parameters, measure recall against exact search and
single-query latency, and pick the cheapest setting that meets a recall target.

    >>> points = sweep(index, vectors, queries, k=1000, param_grid={"ef_search": [1000, 2000, 4000]})  # doctest: +SKIP
    >>> best = pick_cheapest(points, target_recall=0.95)
    >>> index.set_search_params(**best.params)

Latency is measured one query at a time with 1 OpenMP thread (how a request is served), so p50 /
p99 are per-request figures and `qps` is what one core sustains (1 / mean latency).
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from candgen.errors import ArtifactError, CandgenError
from candgen.index.base import METADATA_FILE, VectorIndex
from candgen.types import NO_PROGRESS, Progress

ITEM_EMBEDDINGS = "item_embeddings.npy"
USER_EMBEDDINGS_SAMPLE = "user_embeddings_sample.npy"


@dataclass(frozen=True, slots=True)
class OperatingPoint:
    """One search setting and what it achieves: recall@k against exact search, latency, throughput
    (wall-clock, one query at a time) and the median CPU time per query."""

    params: dict[str, Any]
    recall: float
    p50_ms: float
    p99_ms: float
    qps: float
    cpu_p50_ms: float = 0.0  # median CPU time of this thread per query: what a setting costs, without the waits

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def perturbed_queries(vectors: np.ndarray, n: int, *, noise: float = 0.3, seed: int = 0) -> np.ndarray:
    """`n` queries made from a random sample of item vectors plus Gaussian noise, re-normalised: a
    stand-in for user vectors that lands near items without being one of them."""
    if len(vectors) == 0:
        raise ValueError("need at least one vector to make queries from")
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(vectors), size=n, replace=n > len(vectors))
    q = vectors[rows] + noise / math.sqrt(vectors.shape[1]) * rng.standard_normal((n, vectors.shape[1]))
    q = q.astype(np.float32)
    return q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)


def exact_ground_truth(
    vectors: np.ndarray, queries: np.ndarray, *, k: int, ids: np.ndarray | None = None, block: int = 256,
) -> np.ndarray:
    """Exact top-k ids (n_queries, min(k, n)) by inner product, best first. FAISS's blocked exact search keeps
    one k-heap per query, so memory is O(block * k), not O(queries * n): a dense score matrix of 100 queries
    over 10M items (plus its sort) would take 16 GB."""
    import faiss

    v = np.ascontiguousarray(vectors, dtype=np.float32)
    labels = np.arange(len(v), dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    kk = min(k, len(v))
    out = np.empty((len(queries), kk), dtype=np.int64)
    if kk == 0:
        return out
    for start in range(0, len(queries), block):
        q = np.ascontiguousarray(queries[start : start + block], dtype=np.float32)
        _, top = faiss.knn(q, v, kk, metric=faiss.METRIC_INNER_PRODUCT)
        out[start : start + len(q)] = labels[top]
    return out


def _grid(param_grid: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(param_grid, Mapping):
        names = list(param_grid)
        return [dict(zip(names, values, strict=True)) for values in itertools.product(*param_grid.values())]
    return [dict(p) for p in param_grid]


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found ∩ truth| / |truth| (found rows may hold -1 padding)."""
    if truth.shape[1] == 0:
        return 1.0
    hits = [len(np.intersect1d(f[f >= 0], t)) for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits) / truth.shape[1])


def sweep(
    index: VectorIndex,
    vectors: np.ndarray,
    queries: np.ndarray,
    *,
    k: int,
    param_grid: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]],
    ground_truth: np.ndarray | None = None,
    ids: np.ndarray | None = None,
    stop_at_recall: float = 1.0,
    progress: Progress = NO_PROGRESS,
) -> list[OperatingPoint]:
    """Measure each setting of `param_grid` (a dict of lists, crossed, or a list of dicts) in order.

    `vectors` (with item `ids`, default 0..n-1) are what the index holds, for the exact ground
    truth unless `ground_truth` (n_queries, k) is given. Each query is timed alone. Settings are
    tried in the order given; once two in a row reach `stop_at_recall` the rest are skipped (they
    can only cost more; one is not enough because a setting too narrow to find k results is
    completed by a wider probe, which can look perfect and slow). The index's search parameters
    are restored afterwards. Not thread-safe with other `set_search_params` callers on the same
    index (it changes and restores them).
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if len(q) == 0:
        raise ValueError("need at least one query")
    truth = ground_truth if ground_truth is not None else exact_ground_truth(vectors, q, k=k, ids=ids)
    grid = _grid(param_grid)
    before = index.search_params
    points: list[OperatingPoint] = []
    progress.task("sweep", total=len(grid))
    try:
        for params in grid:
            index.set_search_params(**params)
            index.search(q[:1], k=k)  # warm caches and the setting
            times = np.empty(len(q))
            cpu = np.empty(len(q))
            found = np.empty((len(q), k), dtype=np.int64)
            for i in range(len(q)):
                t0, c0 = time.perf_counter(), time.thread_time()
                found[i] = index.search(q[i : i + 1], k=k).ids[0]
                times[i], cpu[i] = time.perf_counter() - t0, time.thread_time() - c0
            point = OperatingPoint(
                params=dict(params),
                recall=recall_at_k(found, truth),
                p50_ms=float(np.percentile(times, 50) * 1e3),
                p99_ms=float(np.percentile(times, 99) * 1e3),
                qps=float(1.0 / max(times.mean(), 1e-9)),
                cpu_p50_ms=float(np.percentile(cpu, 50) * 1e3),
            )
            points.append(point)
            progress.advance("sweep", 1, recall=point.recall, p50_ms=point.p50_ms)
            if len(points) >= 2 and min(points[-1].recall, points[-2].recall) >= stop_at_recall:
                break
    finally:
        if before:
            index.set_search_params(**before)
        progress.done("sweep")
    return points


def pick_cheapest(points: Sequence[OperatingPoint], target_recall: float) -> OperatingPoint | None:
    """The cheapest setting reaching `target_recall` (lowest median CPU time per query, then median
    latency), or None.

    CPU time and medians rather than wall-clock p99: on a shared machine the p99 of a few hundred
    queries is mostly time spent waiting for a core other processes hold, while the median CPU
    time tracks the work a setting does."""
    ok = [p for p in points if p.recall >= target_recall]
    return min(ok, key=lambda p: (p.cpu_p50_ms, p.p50_ms, p.p99_ms)) if ok else None


def _fmt_params(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


def markdown_table(
    points: Sequence[OperatingPoint], *, k: int, target_recall: float | None = None,
    chosen: OperatingPoint | None = None,
) -> str:
    """A markdown table of operating points; the chosen one is marked."""
    lines = [f"| setting | recall@{k} | p50 ms | p99 ms | QPS (1 thread) | CPU p50 ms | |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for p in points:
        mark = "**chosen**" if chosen is not None and p == chosen else (
            "meets target" if target_recall is not None and p.recall >= target_recall else "")
        lines.append(f"| {_fmt_params(p.params)} | {p.recall:.4f} | {p.p50_ms:.3f} | {p.p99_ms:.3f} | "
                     f"{p.qps:,.0f} | {p.cpu_p50_ms:.3f} | {mark} |")
    return "\n".join(lines) + "\n"


def plot_operating_points(
    points: Sequence[OperatingPoint], path: str | Path, *, k: int, target_recall: float | None = None,
    chosen: OperatingPoint | None = None, title: str = "",
) -> None:
    """Recall-vs-latency PNG (p50 and p99 against recall@k), target and chosen setting marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    try:
        recall = [p.recall for p in points]
        ax.plot(recall, [p.p50_ms for p in points], "o-", label="p50")
        ax.plot(recall, [p.p99_ms for p in points], "s--", alpha=0.7, label="p99")
        for p in points:
            ax.annotate(_fmt_params(p.params), (p.recall, p.p50_ms), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        if target_recall is not None:
            ax.axvline(target_recall, color="grey", linestyle=":", label=f"target {target_recall:g}")
        if chosen is not None:
            ax.plot([chosen.recall], [chosen.p50_ms], "r*", markersize=14, label="chosen")
        ax.set_xlabel(f"recall@{k} against exact search")
        ax.set_ylabel("latency per query, ms (1 thread)")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(title or "recall vs latency")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def default_grid(index: VectorIndex, k: int) -> list[dict[str, Any]]:
    """The settings `tune-index` sweeps, cheapest first: efSearch from k up (FAISS uses
    max(efSearch, k), so smaller values are all the same setting); nprobe in steps of 1.5-2x up to
    nlist, from the first whose lists hold about 2k vectors (narrower probes find fewer than k and
    are widened anyway)."""
    p = index.params
    if "ef_search" in index.search_param_names:
        return [{"ef_search": ef} for ef in sorted({max(16, int(k * f)) for f in (1, 1.25, 1.5, 2, 3, 4, 6, 8, 12)})]
    if "nprobe" in index.search_param_names:
        nlist = int(p.get("nlist") or 1)
        lowest = 2 * k * nlist / len(index) if len(index) else 0.0
        steps = range(int(math.log2(max(nlist, 1))) + 2)
        probes = sorted({min(v, nlist) for i in steps for v in (2**i, 3 * 2**i // 2) if v > lowest / 2})
        return [{"nprobe": n} for n in probes]
    return []


@dataclass(frozen=True, slots=True)
class TuneResult:
    """What `tune_artifacts` measured and did."""

    kind: str
    k: int
    target_recall: float
    points: list[OperatingPoint]
    chosen: OperatingPoint | None
    previous: dict[str, Any]
    files: list[Path]
    table: str


def _load_matrix(path: Path, what: str) -> np.ndarray:
    try:
        a = np.load(path, allow_pickle=False, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{path}: cannot read {what}: {e}") from None
    if a.ndim != 2 or not np.issubdtype(a.dtype, np.floating):
        raise ArtifactError(f"{path}: {what} must be a 2-d float array, got shape {a.shape} dtype {a.dtype}")
    return a


def tune_artifacts(
    art: str | Path, *, k: int = 1000, target_recall: float = 0.95, n_queries: int = 200, seed: int = 0,
    progress: Progress = NO_PROGRESS,
) -> TuneResult:
    """Sweep the search parameter of `ART/index/`, write tuning.md / .png / .json there and store
    the cheapest setting reaching `target_recall` in the index's metadata.json (index files are not
    rewritten). Queries are `ART/user_embeddings_sample.npy` when present, else perturbed item
    embeddings from `ART/item_embeddings.npy`; ground truth is exact search over the vectors the
    index holds. Raises `CandgenError` (keeping the old setting) when no setting reaches the target.
    """
    from candgen.index.registry import load_index, update_search_params

    if k < 1:
        raise CandgenError(f"--k: got {k}, expected a positive integer")
    if not 0.0 < target_recall <= 1.0:
        raise CandgenError(f"--target-recall: got {target_recall}, expected a number in (0, 1]")
    if n_queries < 1:
        raise CandgenError(f"--queries: got {n_queries}, expected a positive integer")
    art = Path(art)
    index_dir = art / "index"
    if not (index_dir / METADATA_FILE).is_file():
        raise ArtifactError(f"{art} has no index ({index_dir / METADATA_FILE} is missing); run `candgen train` first")
    index = load_index(index_dir)
    emb_path = art / ITEM_EMBEDDINGS
    if not emb_path.is_file():
        raise ArtifactError(f"{art} lacks {ITEM_EMBEDDINGS} (float32, n_items x dim)")
    emb = _load_matrix(emb_path, "item embeddings")
    if emb.shape[1] != index.dim:
        raise ArtifactError(f"{emb_path} has dimension {emb.shape[1]} but the index has {index.dim}")
    previous = index.search_params
    grid = default_grid(index, k)
    if not grid:
        raise CandgenError(f"index kind {index.kind!r} has no search parameter to tune"
                           + (" (it is exact: recall 1.0)" if index.is_exact else ""))
    if len(index) == 0:
        raise ArtifactError(f"{index_dir} holds no vectors; nothing to tune")
    user_path = art / USER_EMBEDDINGS_SAMPLE
    if user_path.is_file():
        users = _load_matrix(user_path, "user embeddings")
        if users.shape[1] != index.dim:
            raise ArtifactError(f"{user_path} has dimension {users.shape[1]} but the index has {index.dim}")
        queries = np.ascontiguousarray(users[:n_queries], dtype=np.float32)
    else:
        queries = perturbed_queries(np.asarray(emb, dtype=np.float32), n_queries, seed=seed)
    ids_of = getattr(index, "ids", None)
    if callable(ids_of):
        ids = ids_of()
        vectors = index.reconstruct(ids)  # exact over exactly what the index holds
    else:
        ids = np.arange(len(emb), dtype=np.int64)
        vectors = np.asarray(emb, dtype=np.float32)
    truth = exact_ground_truth(vectors, queries, k=k, ids=ids)
    points = sweep(index, vectors, queries, k=k, param_grid=grid, ground_truth=truth, stop_at_recall=0.999,
                   progress=progress)
    chosen = pick_cheapest(points, target_recall)
    table = markdown_table(points, k=k, target_recall=target_recall, chosen=chosen)
    files = [index_dir / "tuning.md", index_dir / "tuning.png", index_dir / "tuning.json"]
    verdict = (f"chosen: {_fmt_params(chosen.params)} (recall {chosen.recall:.4f}, p50 {chosen.p50_ms:.3f} ms)"
               if chosen else f"no setting reached recall {target_recall}; kept {_fmt_params(previous)}")
    files[0].write_text(
        f"# Index tuning: {index.kind}, {len(index)} vectors, dim {index.dim}\n\n"
        f"recall@{k} against exact search over {len(queries)} queries "
        f"({'user embeddings' if user_path.is_file() else 'perturbed item embeddings'}), "
        f"latency per single query on 1 thread; target recall {target_recall}.\n\n{table}\n{verdict}\n"
    )
    plot_operating_points(points, files[1], k=k, target_recall=target_recall, chosen=chosen,
                          title=f"{index.kind}: recall@{k} vs latency ({len(index)} items)")
    files[2].write_text(json.dumps({
        "kind": index.kind, "k": k, "target_recall": target_recall, "queries": len(queries),
        "points": [p.to_dict() for p in points], "chosen": chosen.to_dict() if chosen else None,
        "previous": previous,
    }, indent=2) + "\n")
    if chosen is None:
        best = max(points, key=lambda p: p.recall)
        raise CandgenError(f"no setting reaches recall@{k} >= {target_recall} (best {best.recall:.4f} at "
                           f"{_fmt_params(best.params)}); kept {_fmt_params(previous)}; see {files[0]}")
    update_search_params(index_dir, chosen.params)
    return TuneResult(kind=index.kind, k=k, target_recall=target_recall, points=points, chosen=chosen,
                      previous=previous, files=files, table=table)
