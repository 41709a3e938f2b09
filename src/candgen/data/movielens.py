"""Import the MovieLens data sets (100K, 1M, latest, latest-small; a directory or a .zip) into the candgen format.

Every rating becomes an interaction with event `rating` and `value` = the rating (the evaluator and the
event weights decide what a low rating means). Items get `title`, `tags` (the genres, then the user
tags of tags.csv, lowercased and de-duplicated) and `category` (the first genre). 100K and 1M also
have a users table (`age_group`, `gender`, `occupation`). Source files that are missing or malformed
raise `DataError` naming the file.
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import polars as pl

from candgen.data.io import write_dataset
from candgen.errors import CandgenError, DataError

ML1M_AGE = {"1": "under 18", "18": "18-24", "25": "25-34", "35": "35-44", "45": "45-49", "50": "50-55", "56": "56+"}
ML1M_OCCUPATION = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student", "customer service",
    "doctor/health care", "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer", "programmer",
    "retired", "sales/marketing", "scientist", "self-employed", "technician/engineer", "tradesman/craftsman",
    "unemployed", "writer",
)
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
MARKERS = (("u.data", "ml-100k"), ("ratings.dat", "ml-1m"), ("ratings.csv", "ml-latest"))


@dataclass
class ImportSummary:
    """What an import wrote."""

    variant: str  # ml-100k | ml-1m | ml-latest
    out_dir: str
    interactions: int
    items: int
    users: int  # rows of the users table (0 when the data set has none)
    tags: int  # distinct item tags

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def import_movielens(src: str | Path, out_dir: str | Path) -> ImportSummary:
    """Convert a MovieLens directory or .zip at `src` into a dataset directory at `out_dir` (Parquet)."""
    s = Path(src)
    if not s.exists():
        raise CandgenError(f"{s} does not exist; expected a MovieLens directory or .zip")
    if s.is_file():
        if not zipfile.is_zipfile(s):
            raise DataError(str(s), None, "a MovieLens .zip archive or directory")
        with tempfile.TemporaryDirectory(prefix="candgen-ml-") as tmp:
            with zipfile.ZipFile(s) as z:
                _safe_extract(z, Path(tmp))
            return _import_dir(Path(tmp), Path(out_dir), label=str(s))
    return _import_dir(s, Path(out_dir), label=str(s))


def _safe_extract(z: zipfile.ZipFile, dest: Path) -> None:
    root = dest.resolve()
    for m in z.infolist():
        target = (dest / m.filename).resolve()
        if not target.is_relative_to(root):  # a member like ../../x would escape the folder
            raise DataError(m.filename, None, "zip members inside the archive's folder")
    z.extractall(dest)


def _import_dir(d: Path, out: Path, *, label: str) -> ImportSummary:
    found = [(sorted(d.rglob(marker)), v) for marker, v in MARKERS]
    hits, variant = next(((h, v) for h, v in found if h), ([], ""))
    if not hits:
        raise DataError(label, None, "a MovieLens data set: u.data (100K), ratings.dat (1M) or ratings.csv (latest)")
    root = hits[0].parent
    if variant == "ml-100k":
        inter, items, users = _ml100k(root)
    elif variant == "ml-1m":
        inter, items, users = _ml1m(root)
    else:
        inter, items, users = _ml_latest(root)
    inter = inter.with_columns(pl.lit("rating").alias("event")).select(
        "user_id", "item_id", "timestamp", "event", "value")
    write_dataset(out, interactions=inter, items=items, users=users)
    return ImportSummary(
        variant=variant, out_dir=str(out), interactions=len(inter), items=len(items),
        users=0 if users is None else len(users), tags=items["tags"].explode().drop_nulls().n_unique(),
    )


def _need(root: Path, name: str) -> Path:
    p = root / name
    if not p.is_file():
        raise DataError(str(p), None, f"the MovieLens file {name}; it does not exist")
    return p


def _read(path: Path, *, sep: str, names: list[str], encoding: str = "utf-8", header: bool = False) -> pl.DataFrame:
    """Read a delimited MovieLens file as strings; `sep` may be '::' (1M), handled by splitting lines."""
    try:
        if encoding == "utf-8" and len(sep) == 1:  # polars reads it directly (ml-latest: ~1 GB of ratings)
            df = pl.read_csv(path, separator=sep, has_header=header, infer_schema=False, quote_char='"')
            return _first_columns(df, path, names)
        text = path.read_bytes().decode(encoding)
        if len(sep) > 1:
            lines = [ln for ln in text.splitlines() if ln.strip()]
            if header:
                lines = lines[1:]
            rows = [ln.split(sep, len(names) - 1) for ln in lines]
            bad = next((i for i, r in enumerate(rows) if len(r) != len(names)), None)
            if bad is not None:
                raise DataError(str(path), None, f"{len(names)} '{sep}'-separated fields", row=bad + 1,
                                value=lines[bad])
            return pl.DataFrame(rows, schema=names, orient="row")
        df = pl.read_csv(io.BytesIO(text.encode()), separator=sep, has_header=header, infer_schema=False,
                         quote_char='"' if sep == "," else None)
    except UnicodeDecodeError as e:
        raise DataError(str(path), None, f"{encoding} text ({e.reason})") from None
    except pl.exceptions.PolarsError as e:
        raise DataError(str(path), None, f"a well-formed '{sep}'-separated file ({str(e).splitlines()[0]})") from None
    return _first_columns(df, path, names)


def _first_columns(df: pl.DataFrame, path: Path, names: list[str]) -> pl.DataFrame:
    if df.width < len(names):
        raise DataError(str(path), None, f"{len(names)} columns ({', '.join(names)}), found {df.width}")
    return df.select(df.columns[: len(names)]).rename(dict(zip(df.columns[: len(names)], names, strict=True)))


def _ratings(df: pl.DataFrame, path: Path) -> pl.DataFrame:
    out = df.select(
        pl.col("user_id").str.strip_chars(), pl.col("item_id").str.strip_chars(),
        pl.col("timestamp").str.strip_chars().cast(pl.Int64, strict=False),
        pl.col("value").str.strip_chars().cast(pl.Float64, strict=False),
    )
    for c in ("timestamp", "value"):
        bad = out[c].is_null()
        if bad.any():
            i = int(bad.arg_true()[0])
            raise DataError(str(path), c, "a number", row=i + 1, value=df[c][i])
    return out


def _items(ids: pl.Series, titles: pl.Series, genres: list[list[str]], user_tags: pl.DataFrame | None) -> pl.DataFrame:
    g = pl.Series("genres", [[x.strip().lower() for x in gs if x.strip() and x != "(no genres listed)"]
                             for gs in genres], dtype=pl.List(pl.String))
    items = pl.DataFrame({"item_id": ids, "title": titles, "genres": g})
    if user_tags is not None and len(user_tags):
        per_item = user_tags.group_by("item_id", maintain_order=True).agg(pl.col("tag").unique(maintain_order=True))
        items = items.join(per_item, on="item_id", how="left", maintain_order="left")
        tags = pl.concat_list([pl.col("genres"), pl.col("tag").fill_null([])])
    else:
        tags = pl.col("genres")
    return items.select(
        "item_id", "title", tags.list.unique(maintain_order=True).alias("tags"),
        pl.col("genres").list.first().alias("category"),
    )


def _ml100k(root: Path) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame | None]:
    p = _need(root, "u.data")
    inter = _ratings(_read(p, sep="\t", names=["user_id", "item_id", "value", "timestamp"]), p)
    pi = _need(root, "u.item")
    raw = _read(pi, sep="|", names=["item_id", "title", "released", "video", "url", *ML100K_GENRES],
                encoding="latin-1")
    flags = raw.select(ML100K_GENRES).rows()
    genres = [[ML100K_GENRES[j] for j, f in enumerate(r) if f == "1"] for r in flags]
    items = _items(raw["item_id"], raw["title"], genres, None)
    users = None
    pu = root / "u.user"
    if pu.is_file():
        u = _read(pu, sep="|", names=["user_id", "age", "gender", "occupation", "zip"], encoding="latin-1")
        users = u.select("user_id", _age_group(pl.col("age")).alias("age_group"), "gender", "occupation")
    return inter, items, users


def _age_group(age: pl.Expr) -> pl.Expr:
    a = age.cast(pl.Int64, strict=False)
    return (pl.when(a < 18).then(pl.lit("under 18")).when(a < 25).then(pl.lit("18-24")).when(a < 35)
            .then(pl.lit("25-34")).when(a < 45).then(pl.lit("35-44")).when(a < 50).then(pl.lit("45-49"))
            .when(a < 56).then(pl.lit("50-55")).when(a.is_not_null()).then(pl.lit("56+")).otherwise(None))


def _ml1m(root: Path) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame | None]:
    p = _need(root, "ratings.dat")
    inter = _ratings(_read(p, sep="::", names=["user_id", "item_id", "value", "timestamp"], encoding="latin-1"), p)
    raw = _read(_need(root, "movies.dat"), sep="::", names=["item_id", "title", "genres"], encoding="latin-1")
    items = _items(raw["item_id"], raw["title"], [g.split("|") for g in raw["genres"].to_list()], None)
    users = None
    pu = root / "users.dat"
    if pu.is_file():
        u = _read(pu, sep="::", names=["user_id", "gender", "age", "occupation", "zip"], encoding="latin-1")
        occ = {str(i): name for i, name in enumerate(ML1M_OCCUPATION)}
        users = u.select(
            "user_id", pl.col("age").replace_strict(ML1M_AGE, default=None).alias("age_group"), "gender",
            pl.col("occupation").replace_strict(occ, default=None).alias("occupation"),
        )
    return inter, items, users


def _ml_latest(root: Path) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame | None]:
    p = _need(root, "ratings.csv")
    inter = _ratings(_read(p, sep=",", names=["user_id", "item_id", "value", "timestamp"], header=True), p)
    raw = _read(_need(root, "movies.csv"), sep=",", names=["item_id", "title", "genres"], header=True)
    user_tags = None
    pt = root / "tags.csv"
    if pt.is_file():
        t = _read(pt, sep=",", names=["user_id", "item_id", "tag", "timestamp"], header=True)
        user_tags = t.select(
            "item_id",
            # '|' separates tags in dataset files, so it cannot be part of one
            pl.col("tag").str.strip_chars().str.to_lowercase().str.replace_all("|", "/", literal=True),
        ).filter(pl.col("tag").is_not_null() & (pl.col("tag") != ""))
    genres = [(g or "").split("|") for g in raw["genres"].to_list()]
    return inter, _items(raw["item_id"], raw["title"], genres, user_tags), None
