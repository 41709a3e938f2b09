"""The dataset commands as a user runs them: generate, validate (table, --json, errors), import movielens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from candgen.cli.main import main


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(argv)
    c = capsys.readouterr()
    return int(e.value.code or 0), c.out, c.err


def test_generate_then_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "w"
    rc, out, _ = run(["generate", "--out", str(d), "--users", "300", "--items", "400", "--seed", "2", "--quiet"],
                     capsys)
    assert rc == 0 and "300 users" in out and "400 items" in out
    rc, out, _ = run(["validate", str(d), "--json"], capsys)
    s = json.loads(out)
    assert rc == 0 and s["users"] == 300 and s["items"] == 400 and s["new_users"] > 0
    rc, out, _ = run(["validate", str(d)], capsys)
    assert rc == 0 and "interactions" in out and "valid" in out


def test_generate_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(["generate", "--out", str(tmp_path), "--users", "20", "--items", "30", "--quiet", "--json"],
                     capsys)
    assert rc == 0 and json.loads(out)["items"] == 30


def test_generate_bad_size_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(["generate", "--out", str(tmp_path), "--users", "0", "--quiet"], capsys)
    assert rc == 2 and "at least 1 user" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "text, words",
    [("user_id,item_id\nu1,i1\n", ["interactions", "timestamp"]),
     ("user_id,item_id,timestamp\nu1,i1,1700000000\nu2,i2,yesterday-ish\n", ["interactions", "timestamp",
                                                                              "yesterday-ish"]),
     ("user_id,item_id,timestamp\n,i1,1700000000\n", ["interactions", "user_id"])],
)
def test_validate_bad_input_exits_2_with_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, words: list[str]
) -> None:
    (tmp_path / "interactions.csv").write_text(text)
    rc, out, err = run(["validate", str(tmp_path)], capsys)
    assert rc == 2 and "Traceback" not in out + err
    assert all(w in err for w in words), err
    assert err.strip().startswith("error:")


def test_validate_missing_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(["validate", str(tmp_path / "nope")], capsys)
    assert rc == 2 and "dataset directory" in err


def test_import_movielens_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "ml"
    src.mkdir()
    (src / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n")
    (src / "movies.csv").write_text("movieId,title,genres\n1,Toy Story (1995),Animation\n")
    rc, out, _ = run(["import", "movielens", str(src), "--out", str(tmp_path / "out")], capsys)
    assert rc == 0 and "1 interactions" in out
    rc, _, err = run(["import", "movielens", str(tmp_path / "nothing"), "--out", str(tmp_path / "o2")], capsys)
    assert rc == 2 and "does not exist" in err
