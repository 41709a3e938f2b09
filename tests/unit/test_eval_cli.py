"""`candgen evaluate`: output formats, split options, and one clear line with exit 2 for every bad argument."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from candgen.cli.main import main


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two taste groups over 40 days; a few users only appear in the last days (cold)."""
    d = tmp_path_factory.mktemp("evaldata")
    rows = []
    day = 86_400
    for u in range(30):
        group = u % 2
        start = 0 if u < 24 else 36  # users 24..29 arrive late: cold in the test period
        for j in range(6):
            item = group * 10 + (u + 3 * j) % 10
            rows.append(f"u{u},i{item},{(start + 4 * j) * day + u},{'view' if j % 2 else 'like'}")
    lines = ["user_id,item_id,timestamp,event", *rows]
    (d / "interactions.csv").write_text("\n".join(lines) + "\n")
    items = ["item_id,tags", *(f"i{i},{'g0' if i < 10 else 'g1'}|t{i % 3}" for i in range(20))]
    (d / "items.csv").write_text("\n".join(items) + "\n")
    return d


def run(args: list[str]) -> int:
    with pytest.raises(SystemExit) as e:
        main(args)
    return int(e.value.code or 0)


def fast(args: list[str]) -> int:
    """Baselines only: training candgen's model is for the slow tests."""
    return run([*args, "--no-candgen"])


def test_json_and_report(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = fast(["evaluate", str(data_dir), "--test-fraction", "0.3", "--k", "3,5", "--baselines", "popular,item_knn",
              "--report", str(tmp_path / "rep"), "--json", "--quiet"])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in d["results"]] == ["popular", "item_knn"]
    assert d["ks"] == [3, 5] and d["cohort_users"]["cold"] > 0 and d["cohort_users"]["warm"] > 0
    assert "recall@5" in d["results"][0]["metrics"]["warm"]
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == ["recall_at_k.png", "report.json", "report.md"]
    assert len(d["report_files"]) == 3


def test_table_with_until_iso_time(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = fast(["evaluate", str(data_dir), "--until", "1970-01-30T00:00:00Z", "--k", "4", "--baselines", "popular",
              "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "warm users" in text and "cold users" in text and "popular" in text and "note:" in text


def test_default_test_fraction(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert fast(["evaluate", str(data_dir), "--baselines", "recent_popular", "--json", "--quiet"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["ks"] == [50, 100, 200]
    total = d["split"]["train_interactions"] + d["split"]["test_interactions"]
    assert 0.1 <= d["split"]["test_interactions"] / total <= 0.35  # about the last 20%, ties go to test


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--until", "1970-01-30", "--test-fraction", "0.2"], "not both"),
        (["--test-fraction", "1.5"], "between 0 and 1"),
        (["--k", "ten"], "--k"),
        (["--k", "0"], "--k"),
        (["--baselines", "svd"], "unknown baseline"),
        (["--baselines", ","], "expected names"),
        (["--baselines", "none", "--no-candgen"], "nothing to evaluate"),
        (["--train"], "--train needs --artifacts"),
        (["--no-candgen", "--artifacts", "art"], "cannot be combined"),
        (["--until", "yesterday"], "--until"),
        (["--until", "99999999999"], "empty test part"),
    ],
)
def test_bad_arguments_exit_2(data_dir: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                              message: str) -> None:
    # every one of these fails before any training starts
    assert run(["evaluate", str(data_dir), "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_missing_data_dir_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert fast(["evaluate", str(tmp_path / "nope"), "--quiet"]) == 2
    assert "error" in capsys.readouterr().err


def test_artifacts_must_exist(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["evaluate", str(data_dir), "--quiet", "--artifacts", str(tmp_path / "none")]) == 2
    assert "not a candgen artifacts directory" in capsys.readouterr().err


def test_artifacts_that_saw_the_test_period_are_refused(data_dir: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from candgen.artifacts import Manifest

    Manifest(model_version="m", dataset_fingerprint="f", data_end_time=10**10, config={}).write(tmp_path)
    assert run(["evaluate", str(data_dir), "--quiet", "--baselines", "none", "--artifacts", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "has seen the test period" in err and "--until" in err


@pytest.mark.slow
def test_train_then_evaluate_the_blend(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "tiny.toml"
    cfg.write_text("[model]\nepochs = 1\ndim = 16\nbatch_size = 64\n")
    rc = run(["evaluate", str(data_dir), "--quiet", "--json", "--k", "5", "--baselines", "popular",
              "--artifacts", str(tmp_path / "art"), "--train", "--config", str(cfg), "--report", str(tmp_path / "rep")])
    assert rc == 0
    results = json.loads(capsys.readouterr().out)["results"]
    names = [r["name"] for r in results]
    assert names[0] == "candgen" and names[-1] == "popular" and len(names) > 2  # blend, sources, ablations
    # every source alone (whatever the mixes name), each with its score distribution; not the exploration source
    sources = {"collaborative", "content", "trending", "social", "cold_start"}
    assert sources <= set(names) and "new_items" not in names
    assert all("scores" in r for r in results if r["name"] in sources)
    assert "scores" not in results[0] and "scores" not in results[-1]
    assert (tmp_path / "rep" / "score_distributions.png").exists()
    assert (tmp_path / "art" / "manifest.json").exists()


@pytest.mark.slow
def test_default_trains_candgen_on_the_past(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "tiny.toml"
    cfg.write_text("[model]\nepochs = 1\ndim = 16\nbatch_size = 64\n")
    rc = run(["evaluate", str(data_dir), "--quiet", "--json", "--k", "5", "--baselines", "none", "--config", str(cfg)])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    names = [r["name"] for r in d["results"]]
    assert names[0] == "candgen" and "trending" in names
    assert any("trained on the train part" in n for n in d["notes"])
