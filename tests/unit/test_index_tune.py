"""The tuning sweep (`candgen.index.tune`) and `candgen tune-index` on a tiny artifacts dir."""

from __future__ import annotations

import json

import numpy as np
import pytest

from candgen.cli.main import main
from candgen.index import load_index
from candgen.index.flat import FlatIndex
from candgen.index.hnsw import HNSWIndex
from candgen.index.ivf import IVFIndex, IVFPQIndex
from candgen.index.tune import (
    OperatingPoint,
    default_grid,
    exact_ground_truth,
    markdown_table,
    perturbed_queries,
    pick_cheapest,
    plot_operating_points,
    recall_at_k,
    sweep,
)


def clustered(n: int, dim: int, *, clusters: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.4 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def point(recall: float, p50: float, **params: int) -> OperatingPoint:
    return OperatingPoint(params=params, recall=recall, p50_ms=p50, p99_ms=2 * p50, qps=1000 / p50, cpu_p50_ms=p50)


def test_ground_truth_recall_and_queries():
    x = clustered(300, 8)
    q = perturbed_queries(x, 7, seed=1)
    assert q.shape == (7, 8) and np.allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)
    ids = np.arange(300) * 2
    truth = exact_ground_truth(x, q, k=10, ids=ids, block=3)
    brute = ids[np.argsort(-(q @ x.T), axis=1)[:, :10]]
    assert all(set(a) == set(b) for a, b in zip(truth.tolist(), brute.tolist(), strict=True))
    assert exact_ground_truth(x[:4], q, k=10).shape == (7, 4)  # k above n
    assert recall_at_k(truth, truth) == 1.0
    half = np.where(np.arange(10) < 5, truth, -1)
    assert recall_at_k(half, truth) == 0.5
    with pytest.raises(ValueError, match="at least one vector"):
        perturbed_queries(np.zeros((0, 8), np.float32), 3)


def test_sweep_measures_each_setting_and_restores_params():
    x = clustered(2000, 16)
    idx = IVFIndex(dim=16, nlist=40, nprobe=3)
    idx.add(x, np.arange(2000))
    q = perturbed_queries(x, 20, seed=2)
    points = sweep(idx, x, q, k=50, param_grid={"nprobe": [1, 4, 40]}, stop_at_recall=2.0)
    assert [p.params for p in points] == [{"nprobe": 1}, {"nprobe": 4}, {"nprobe": 40}]
    assert points[0].recall < points[2].recall and points[2].recall == 1.0
    assert all(p.p50_ms > 0 and p.p99_ms >= p.p50_ms and p.qps > 0 for p in points)
    assert idx.search_params == {"nprobe": 3}
    early = sweep(idx, x, q, k=50, param_grid=[{"nprobe": 40}, {"nprobe": 39}, {"nprobe": 1}], stop_at_recall=0.99)
    assert len(early) == 2
    with pytest.raises(ValueError, match="at least one query"):
        sweep(idx, x, q[:0], k=5, param_grid={"nprobe": [1]})


def test_pick_cheapest_table_and_plot(tmp_path):
    pts = [point(0.80, 0.2, nprobe=8), point(0.96, 0.5, nprobe=32), point(0.99, 0.9, nprobe=64)]
    best = pick_cheapest(pts, 0.95)
    assert best is not None and best.params == {"nprobe": 32}
    assert pick_cheapest(pts, 0.995) is None
    table = markdown_table(pts, k=100, target_recall=0.95, chosen=best)
    assert "recall@100" in table and "| nprobe=32 | 0.9600 |" in table and "**chosen**" in table
    cheaper_cpu = [point(0.97, 0.9, nprobe=64), OperatingPoint({"nprobe": 96}, 0.98, 0.5, 1.0, 2000, cpu_p50_ms=0.1)]
    assert pick_cheapest([*cheaper_cpu, point(0.99, 0.4, nprobe=128)], 0.95).params == {"nprobe": 96}
    assert table.count("meets target") == 1
    png = tmp_path / "t.png"
    plot_operating_points(pts, png, k=100, target_recall=0.95, chosen=best)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_default_grid_per_kind():
    assert default_grid(FlatIndex(dim=4), 100) == []
    ef = [p["ef_search"] for p in default_grid(HNSWIndex(dim=4), 1000)]
    assert ef[0] == 1000 and ef == sorted(ef)
    ivf = IVFIndex(dim=4, nlist=64)
    # empty: no lower bound
    assert [p["nprobe"] for p in default_grid(ivf, 10)] == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64]
    ivf.add(clustered(6400, 4), np.arange(6400))  # 100 per list: k=100 needs ~2 lists
    assert [p["nprobe"] for p in default_grid(ivf, 100)] == [2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64]


def make_art(tmp_path, index, n=1500, dim=16, users=False):
    art = tmp_path / "art"
    x = clustered(n, dim, seed=3)
    index.add(x, np.arange(n))
    index.save(art / "index")
    np.save(art / "item_embeddings.npy", x)
    if users:
        np.save(art / "user_embeddings_sample.npy", perturbed_queries(x, 40, seed=9))
    return art


def run(*args: str) -> int:
    with pytest.raises(SystemExit) as e:
        main(list(args))
    return int(e.value.code or 0)


def test_cli_tune_index_stores_the_cheapest_setting(tmp_path, capsys):
    art = make_art(tmp_path, IVFIndex(dim=16, nlist=32, nprobe=1), users=True)
    assert run("tune-index", str(art), "--k", "50", "--target-recall", "0.9", "--queries", "25", "--quiet") == 0
    report = json.loads((art / "index" / "tuning.json").read_text())
    chosen = report["chosen"]
    assert chosen["recall"] >= 0.9 and report["previous"] == {"nprobe": 1} and report["queries"] == 25
    assert load_index(art / "index").search_params == chosen["params"]
    assert (art / "index" / "tuning.png").stat().st_size > 0
    assert "**chosen**" in (art / "index" / "tuning.md").read_text()
    printed = capsys.readouterr().out
    assert "recall@50" in printed and "stored nprobe=" in printed


def test_cli_tune_index_keeps_the_old_setting_when_the_target_is_out_of_reach(tmp_path, capsys):
    idx = IVFPQIndex(dim=16, nlist=8, nprobe=2, pq_m=2, pq_nbits=4, rerank_factor=1)
    art = make_art(tmp_path, idx)
    assert run("tune-index", str(art), "--k", "50", "--target-recall", "1.0", "--queries", "20", "--quiet") == 2
    assert "no setting reaches recall@50 >= 1.0" in capsys.readouterr().err
    assert load_index(art / "index").search_params == {"nprobe": 2, "rerank_factor": 1}
    assert (art / "index" / "tuning.md").exists()


@pytest.mark.parametrize("case, message", [
    ("no-index", "has no index"),
    ("no-embeddings", "lacks item_embeddings.npy"),
    ("wrong-dim", "dimension 8 but the index has 16"),
    ("flat", "no search parameter to tune"),
    ("bad-k", "--k"),
    ("bad-target", "--target-recall"),
])
def test_cli_tune_index_errors(tmp_path, capsys, case, message):
    art = make_art(tmp_path, FlatIndex(dim=16) if case == "flat" else IVFIndex(dim=16, nlist=8), n=400)
    args = ["tune-index", str(art), "--k", "20", "--quiet"]
    if case == "no-index":
        args[1] = str(tmp_path)
    elif case == "no-embeddings":
        (art / "item_embeddings.npy").unlink()
    elif case == "wrong-dim":
        np.save(art / "item_embeddings.npy", np.zeros((5, 8), np.float32))
    elif case == "bad-k":
        args[3] = "0"
    elif case == "bad-target":
        args += ["--target-recall", "1.5"]
    assert run(*args) == 2
    assert message in capsys.readouterr().err
