"""MovieLens import (candgen.data.movielens) from tiny hand-made copies of the 100K, 1M and latest layouts."""

from __future__ import annotations

import zipfile
from pathlib import Path

import polars as pl
import pytest

from candgen.data.io import load_dataset
from candgen.data.movielens import ML100K_GENRES, import_movielens
from candgen.errors import CandgenError, DataError


def make_100k(d: Path) -> Path:
    root = d / "ml-100k"
    root.mkdir(parents=True)
    (root / "u.data").write_text("1\t10\t5\t881250949\n2\t10\t3\t891717742\n1\t20\t1\t878887116\n")
    flags = ["0"] * len(ML100K_GENRES)
    f10, f20 = list(flags), list(flags)
    f10[ML100K_GENRES.index("Animation")] = f10[ML100K_GENRES.index("Comedy")] = "1"
    f20[ML100K_GENRES.index("Sci-Fi")] = "1"
    (root / "u.item").write_bytes(
        ("10|Toy Story (1995)|01-Jan-1995||http://x|" + "|".join(f10) + "\n"
         "20|Caf\xe9 (1996)|01-Jan-1996||http://y|" + "|".join(f20) + "\n"
         "30|Unseen (1997)|01-Jan-1997||http://z|" + "|".join(flags) + "\n").encode("latin-1"))
    (root / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    return root


def make_1m(d: Path) -> Path:
    root = d / "ml-1m"
    root.mkdir(parents=True)
    (root / "ratings.dat").write_text("1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n")
    (root / "movies.dat").write_bytes("1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
                                      "661::James and the Giant Peach: Part 2 (1996)::Animation|Children's|Musical\n"
                                      .encode("latin-1"))
    (root / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    return root


def make_latest(d: Path) -> Path:
    root = d / "ml-latest-small"
    root.mkdir(parents=True)
    (root / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,2,0.5,964981247\n"
                                      "2,1,2.5,964982224\n")
    (root / "movies.csv").write_text('movieId,title,genres\n1,Toy Story (1995),Adventure|Animation|Children\n'
                                     '2,"American President, The (1995)",Comedy|Drama|Romance\n'
                                     "3,Nothing (2000),(no genres listed)\n")
    (root / "tags.csv").write_text("userId,movieId,tag,timestamp\n1,1,Pixar,1\n2,1,pixar,2\n2,2,a|b,3\n")
    return root


def test_ml_latest(tmp_path: Path) -> None:
    s = import_movielens(make_latest(tmp_path), tmp_path / "out")
    assert (s.variant, s.interactions, s.items, s.users) == ("ml-latest", 3, 3, 0)
    inter = pl.read_parquet(tmp_path / "out" / "interactions.parquet")
    assert inter["event"].to_list() == ["rating"] * 3 and inter["value"].to_list() == [4.0, 0.5, 2.5]
    items = pl.read_parquet(tmp_path / "out" / "items.parquet").sort("item_id")
    assert items["tags"].to_list() == ["adventure|animation|children|pixar", "comedy|drama|romance|a/b", ""]
    assert items["category"].to_list() == ["adventure", "comedy", None]
    assert items["title"][1] == "American President, The (1995)"
    assert not (tmp_path / "out" / "users.parquet").exists()
    ds = load_dataset(tmp_path / "out")
    assert ds.n_items == 3 and ds.n_users == 2


def test_ml_100k_with_users_and_latin1_titles(tmp_path: Path) -> None:
    s = import_movielens(make_100k(tmp_path), tmp_path / "out")
    assert (s.variant, s.interactions, s.items, s.users) == ("ml-100k", 3, 3, 2)
    items = pl.read_parquet(tmp_path / "out" / "items.parquet")
    assert items["title"][1] == "Café (1996)"
    assert items["tags"].to_list() == ["animation|comedy", "sci-fi", ""]
    users = pl.read_parquet(tmp_path / "out" / "users.parquet")
    assert users.rows() == [("1", "18-24", "M", "technician"), ("2", "50-55", "F", "other")]
    assert load_dataset(tmp_path / "out").user_attributes.keys() >= {"age_group", "gender", "occupation"}


def test_ml_1m_from_zip(tmp_path: Path) -> None:
    root = make_1m(tmp_path / "src")
    z = tmp_path / "ml-1m.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for f in root.iterdir():
            zf.write(f, f"ml-1m/{f.name}")
    s = import_movielens(z, tmp_path / "out")
    assert (s.variant, s.interactions, s.items, s.users) == ("ml-1m", 3, 2, 2)
    items = pl.read_parquet(tmp_path / "out" / "items.parquet")
    assert items["title"][1] == "James and the Giant Peach: Part 2 (1996)"  # '::' split keeps the ':' in titles
    assert items["tags"][1] == "animation|children's|musical"
    users = pl.read_parquet(tmp_path / "out" / "users.parquet")
    assert users["age_group"].to_list() == ["under 18", "56+"]
    assert users["occupation"].to_list() == ["K-12 student", "self-employed"]


def test_missing_source(tmp_path: Path) -> None:
    with pytest.raises(CandgenError, match="does not exist"):
        import_movielens(tmp_path / "nope", tmp_path / "out")


def test_not_movielens(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(DataError, match="u.data"):
        import_movielens(tmp_path, tmp_path / "out")
    with pytest.raises(DataError, match="zip"):
        import_movielens(tmp_path / "x.txt", tmp_path / "out")


def test_missing_movies_file(tmp_path: Path) -> None:
    root = make_latest(tmp_path)
    (root / "movies.csv").unlink()
    with pytest.raises(DataError, match="movies.csv"):
        import_movielens(root, tmp_path / "out")


def test_bad_rating_value(tmp_path: Path) -> None:
    root = make_latest(tmp_path)
    (root / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,four,964982703\n")
    with pytest.raises(DataError, match="ratings.csv, row 1, column 'value': got 'four'"):
        import_movielens(root, tmp_path / "out")


def test_malformed_1m_line(tmp_path: Path) -> None:
    root = make_1m(tmp_path)
    (root / "ratings.dat").write_text("1::1193::5::978300760\n1::661\n")
    with pytest.raises(DataError, match="ratings.dat, row 2"):
        import_movielens(root, tmp_path / "out")


def test_zip_slip_refused(tmp_path: Path) -> None:
    z = tmp_path / "evil.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("../evil.txt", "x")
    with pytest.raises(DataError, match="inside the archive"):
        import_movielens(z, tmp_path / "out")


ML_SMALL = Path("/work/shared/data/ml-latest-small")


@pytest.mark.skipif(not ML_SMALL.is_dir(), reason="the shared MovieLens copy is not on this machine")
def test_real_ml_latest_small_counts(tmp_path: Path) -> None:
    s = import_movielens(ML_SMALL, tmp_path)
    assert (s.interactions, s.items) == (100836, 9742)


def test_non_utf8_ratings_csv(tmp_path: Path) -> None:
    root = make_latest(tmp_path)
    (root / "movies.csv").write_bytes("movieId,title,genres\n1,Caf\xe9 (1995),Drama\n".encode("latin-1"))
    with pytest.raises(DataError, match="movies.csv.*well-formed"):
        import_movielens(root, tmp_path / "out")
