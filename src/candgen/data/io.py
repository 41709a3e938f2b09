"""Read, validate and write datasets in the candgen format (DESIGN §2): a directory of CSV or Parquet tables.

`load_dataset(DIR)` gives the in-memory `Dataset`; `validate_dataset(DIR)` gives a `DatasetSummary` for
`candgen validate`; `write_dataset` writes Parquet for `generate` and the importers.

Bad input raises one `DataError` naming the file, the row, the column, the bad value and what was
expected. Row numbers count *data rows from 1*, the header excluded: row 1 is the first line after the
header of a CSV (line 2 of the file) and the first row of a Parquet file. When several rows share the
problem the message names the first and says how many there are. Nothing is ever dropped silently:
`DatasetSummary.skipped` exists for the contract but stays empty, because every bad row is an error.

Policies worth knowing: `event` defaults to `view` when the column is absent (a present but empty cell
is an error); `value` may be empty (absent) but never negative, NaN or infinite; interactions must name
items of the items table when one is given, while users absent from the users table are accepted (the
users table often covers only some users); social rows may name users seen nowhere else (they are real
users, kept as new users); interaction columns other than user_id, item_id, timestamp, event and value
are not used and not kept; timestamps above 10^11 are refused as milliseconds.
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from candgen.config import KNOWN_EVENTS
from candgen.data.dataset import Dataset
from candgen.errors import DataError
from candgen.types import NO_PROGRESS, Progress

TABLES = ("interactions", "items", "users", "social")
REQUIRED = {
    "interactions": ("user_id", "item_id", "timestamp"),
    "items": ("item_id",),
    "users": ("user_id",),
    "social": ("user_id", "friend_id"),
}
LIST_COLUMNS = {"items": "tags", "users": "interests"}
TIME_EXPECTED = "unix seconds (integer) or an ISO-8601 date-time"
MAX_UNIX_SECONDS = 10**11  # the year 5138: larger values are timestamps in finer units


@dataclass
class DatasetSummary:
    """What `candgen validate` reports about a dataset directory."""

    path: str
    files: dict[str, str]  # table -> file name
    interactions: int
    users: int  # distinct users anywhere (interactions, users table, social)
    items: int  # distinct items anywhere (interactions, items table)
    first_timestamp: int
    last_timestamp: int
    new_users: int  # in the users table or social graph, with no interactions
    new_items: int  # in the items table, with no interactions
    events: dict[str, int]  # event name -> rows
    social_edges: int = 0
    tags: int = 0  # distinct item tags
    skipped: dict[str, int] = field(default_factory=dict)  # table -> rows skipped (always empty: bad rows are errors)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def find_table(path: str | Path, name: str) -> Path | None:
    """The file holding table `name` in directory `path` (Parquet preferred over CSV), or None."""
    d = Path(path)
    for ext in ("parquet", "csv"):
        p = d / f"{name}.{ext}"
        if p.is_file():
            return p
    return None


def read_tables(path: str | Path, *, progress: Progress = NO_PROGRESS) -> dict[str, pl.DataFrame]:
    """Read and validate every table of a dataset directory into clean frames (see module doc).

    Returned frames: interactions (user_id, item_id: str; timestamp: int64; event: str; value: float64 or
    absent), items (item_id; tags: list[str]; created_at: int64; other columns str), users (user_id;
    interests: list[str]; other columns str), social (user_id, friend_id). Absent optional tables are absent.
    """
    d = Path(path)
    if not d.is_dir():
        raise DataError(str(d), None, "a dataset directory holding interactions.csv or interactions.parquet")
    files = {name: find_table(d, name) for name in TABLES}
    if files["interactions"] is None:
        raise DataError(str(d / "interactions.csv"), None, "an interactions table (interactions.csv or "
                        "interactions.parquet) with columns user_id, item_id, timestamp; the file does not exist")
    progress.task("validate", total=sum(1 for f in files.values() if f is not None))
    frames: dict[str, pl.DataFrame] = {}
    for name in ("items", "users", "social", "interactions"):  # items first: interactions are checked against it
        f = files[name]
        if f is None:
            continue
        frames[name] = _clean(name, f, _read_raw(f, name), frames)
        progress.advance("validate")
    progress.done("validate")
    return frames


def load_dataset(path: str | Path, *, progress: Progress = NO_PROGRESS) -> Dataset:
    """Read, validate and index a dataset directory (DESIGN §2) into a `Dataset` with dense ids."""
    frames = read_tables(path, progress=progress)
    progress.task("index ids", total=1)
    ds = Dataset.from_frames(
        frames["interactions"], items=frames.get("items"), users=frames.get("users"), social=frames.get("social")
    )
    progress.advance("index ids")
    progress.done("index ids")
    return ds


def validate_dataset(path: str | Path, *, progress: Progress = NO_PROGRESS) -> DatasetSummary:
    """Validate a dataset directory and summarise it; raises `DataError` on the first problem."""
    frames = read_tables(path, progress=progress)
    inter = frames["interactions"]
    items, users, social = frames.get("items"), frames.get("users"), frames.get("social")
    active_users = inter["user_id"].unique()
    active_items = inter["item_id"].unique()
    all_users = [active_users]
    if users is not None:
        all_users.append(users["user_id"])
    if social is not None:
        all_users += [social["user_id"], social["friend_id"]]
    n_users = pl.concat(all_users).n_unique()
    all_items = pl.concat([active_items, items["item_id"]]) if items is not None else active_items
    n_items = all_items.n_unique()
    ev = inter["event"].value_counts(sort=True)
    tags = 0
    if items is not None and "tags" in items.columns:
        tags = items["tags"].explode().drop_nulls().n_unique()
    return DatasetSummary(
        path=str(path),
        files={name: p.name for name in TABLES if (p := find_table(path, name)) is not None},
        interactions=len(inter),
        users=n_users,
        items=n_items,
        first_timestamp=int(inter["timestamp"].min()),  # type: ignore[arg-type]
        last_timestamp=int(inter["timestamp"].max()),  # type: ignore[arg-type]
        new_users=n_users - len(active_users),
        new_items=n_items - len(active_items),
        events={str(e): int(c) for e, c in zip(ev["event"].to_list(), ev["count"].to_list(), strict=True)},
        social_edges=0 if social is None else len(social),
        tags=tags,
    )


def write_dataset(
    out_dir: str | Path,
    *,
    interactions: pl.DataFrame,
    items: pl.DataFrame | None = None,
    users: pl.DataFrame | None = None,
    social: pl.DataFrame | None = None,
) -> dict[str, Path]:
    """Write tables as Parquet files in `out_dir` (created); list columns become `a|b|c` strings."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name, df in (("interactions", interactions), ("items", items), ("users", users), ("social", social)):
        if df is None:
            continue
        lists = [c for c, t in df.schema.items() if isinstance(t, pl.List)]
        if lists:
            df = df.with_columns([pl.col(c).list.join("|") for c in lists])
        p = out / f"{name}.parquet"
        df.write_parquet(p)
        written[name] = p
    return written


# ---------------------------------------------------------------------------------------------- reading


def _read_raw(path: Path, name: str) -> pl.DataFrame:
    if path.suffix == ".parquet":
        try:
            return pl.read_parquet(path)
        except Exception as e:  # polars raises several types for corrupt files
            raise DataError(str(path), None, f"a readable Parquet file ({str(e).splitlines()[0]})") from None
    try:
        df = pl.read_csv(path, infer_schema=False, encoding="utf8")
    except pl.exceptions.NoDataError:
        raise DataError(str(path), None, f"a CSV header line naming the columns of the {name} table; "
                        "the file is empty") from None
    except pl.exceptions.ComputeError as e:
        raise _csv_problem(path, str(e)) from None
    # a UTF-8 byte order mark (Excel) would otherwise become part of the first column's name
    return df.rename({c: c.lstrip("\ufeff").strip() for c in df.columns})


def _csv_problem(path: Path, polars_message: str) -> DataError:
    """Locate why polars could not parse a CSV: a non-UTF-8 byte or a row with the wrong number of fields."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start)  # header is line 0, so this is the 1-based data row
        start = max(0, e.start - 10)
        return DataError(str(path), None, "UTF-8 text (re-save the file as UTF-8)", row=line,
                         value=data[start : e.start + 10])
    rows = csv.reader(text.splitlines())
    header = next(rows, [])
    for i, r in enumerate(rows, start=1):
        if len(r) > len(header):
            return DataError(str(path), None, f"at most {len(header)} comma-separated fields as in the header",
                             row=i, value=",".join(r))
    return DataError(str(path), None, f"a well-formed CSV file ({polars_message.splitlines()[0]})")


# ---------------------------------------------------------------------------------------------- cleaning


def _clean(name: str, path: Path, df: pl.DataFrame, done: dict[str, pl.DataFrame]) -> pl.DataFrame:
    file = str(path)
    missing = [c for c in REQUIRED[name] if c not in df.columns]
    if missing:
        raise DataError(file, missing[0], f"a '{missing[0]}' column; the {name} table needs columns "
                        f"{', '.join(REQUIRED[name])} and this file has {', '.join(df.columns) or 'none'}")
    if name == "interactions" and len(df) == 0:
        raise DataError(file, None, "at least one interaction row; the table is empty")
    id_cols = [c for c in ("user_id", "item_id", "friend_id", "creator_id") if c in df.columns]
    df = df.with_columns([_as_str(df[c]) for c in id_cols])
    for c in REQUIRED[name]:
        if c in id_cols:
            _check_non_empty(file, df[c])
    if name == "interactions":
        return _clean_interactions(file, df, done.get("items"))
    if name in ("items", "users"):
        key = "item_id" if name == "items" else "user_id"
        _check_unique(file, df[key], name)
        others = [c for c in df.columns if c not in (key, LIST_COLUMNS[name], "created_at")]
        df = df.with_columns([_as_str(df[c]) for c in others if c not in id_cols])
        if LIST_COLUMNS[name] in df.columns:
            df = df.with_columns(_as_list(df[LIST_COLUMNS[name]]))
        if "created_at" in df.columns:
            df = df.with_columns(_parse_time(file, df["created_at"], allow_empty=True))
    return df


def _clean_interactions(file: str, df: pl.DataFrame, items: pl.DataFrame | None) -> pl.DataFrame:
    df = df.with_columns(_parse_time(file, df["timestamp"], allow_empty=False))
    if "event" in df.columns:
        ev = _as_str(df["event"]).str.to_lowercase()
        bad = ev.is_null() | ~ev.is_in(list(KNOWN_EVENTS))
        if bad.any():
            _raise_first(file, "event", f"one of {', '.join(KNOWN_EVENTS)}", bad, df["event"])
        df = df.with_columns(ev)
    else:
        df = df.with_columns(pl.lit("view").alias("event"))
    if "value" in df.columns:
        df = df.with_columns(_parse_value(file, df["value"]))
    if items is not None:
        unknown = ~df["item_id"].is_in(items["item_id"].implode())
        if unknown.any():
            _raise_first(file, "item_id", "an item_id listed in the items table", unknown, df["item_id"])
    extra = [c for c in df.columns if c not in ("user_id", "item_id", "timestamp", "event", "value")]
    return df.drop(extra)


def _as_str(s: pl.Series) -> pl.Series:
    """Ids and categorical values as stripped strings (Parquet may store them as integers)."""
    if s.dtype != pl.String:
        s = s.cast(pl.String)
    return s.str.strip_chars()


def _as_list(s: pl.Series) -> pl.Series:
    """`a|b|c` strings (or list columns) as lists of non-empty, stripped strings."""
    s = s.cast(pl.List(pl.String)) if isinstance(s.dtype, pl.List) else _as_str(s).str.split("|")
    return s.list.eval(pl.element().str.strip_chars().filter(pl.element() != "")).fill_null([])


def _check_non_empty(file: str, s: pl.Series) -> None:
    bad = s.is_null() | (s == "")
    if bad.any():
        _raise_first(file, s.name, f"a non-empty {s.name}", bad, s)


def _check_unique(file: str, s: pl.Series, table: str) -> None:
    dup = s.is_duplicated()
    if dup.any():
        first = int(dup.arg_true()[0])
        key = s[first]
        rows = (s == key).arg_true()
        raise DataError(file, s.name, f"each {s.name} once in the {table} table (also on row {int(rows[1]) + 1})",
                        row=first + 1, value=key, count=int(dup.sum()))


def _raise_first(file: str, column: str, expected: str, bad: pl.Series, original: pl.Series) -> None:
    idx = int(bad.arg_true()[0])
    value = original[idx]
    raise DataError(file, column, expected, row=idx + 1, value="" if value is None else value, count=int(bad.sum()))


def _parse_time(file: str, s: pl.Series, *, allow_empty: bool) -> pl.Series:
    """Unix seconds (int or float) or ISO-8601 (naive means UTC) -> int64 unix seconds; null stays null."""
    name = s.name
    if s.dtype.is_temporal():
        return s.cast(pl.Datetime("us")).dt.epoch("s").cast(pl.Int64).alias(name)
    if s.dtype.is_numeric():
        f = s.cast(pl.Float64)
        bad = f.is_nan() | f.is_infinite()
        if bad.any():
            _raise_first(file, name, TIME_EXPECTED, bad.fill_null(False), s)
        out = f.floor().cast(pl.Int64)
    else:
        txt = s.cast(pl.String).str.strip_chars()
        txt = pl.Series(name, txt).replace("", None)
        num = txt.cast(pl.Float64, strict=False)
        num = num.set(num.is_nan() | num.is_infinite(), None)  # "nan"/"inf" parse as floats but are no times
        out = num.floor().cast(pl.Int64)
        todo = out.is_null() & txt.is_not_null()
        if todo.any():
            out = _parse_iso(file, txt, out, todo)
    if not allow_empty and out.is_null().any():
        _raise_first(file, name, TIME_EXPECTED, out.is_null(), s)
    too_big = (out > MAX_UNIX_SECONDS).fill_null(False)
    if too_big.any():  # milliseconds or microseconds would silently become the year 50,000
        _raise_first(file, name, "unix *seconds* (this looks like milliseconds or microseconds)", too_big, s)
    return out.alias(name)


def _parse_iso(file: str, txt: pl.Series, out: pl.Series, todo: pl.Series) -> pl.Series:
    # polars infers one format from the first value; values in other ISO forms fall back to Python's parser
    parsed = txt.str.to_datetime(strict=False, time_zone="UTC").dt.epoch("s")
    out = pl.select(pl.when(todo).then(parsed).otherwise(out)).to_series()
    still = out.is_null() & txt.is_not_null()
    if still.any():
        leftover = txt.filter(still).unique().to_list()
        table = {v: _iso_seconds(v) for v in leftover}
        bad_values = {v for v, t in table.items() if t is None}
        if bad_values:
            bad = still & txt.is_in(list(bad_values))
            _raise_first(file, txt.name, TIME_EXPECTED, bad, txt)
        fixed = txt.replace_strict(table, default=None, return_dtype=pl.Int64)
        out = pl.select(pl.when(still).then(fixed).otherwise(out)).to_series()
    return out.cast(pl.Int64)


def _iso_seconds(v: str) -> int | None:
    try:
        t = datetime.fromisoformat(v)
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return math.floor(t.timestamp())


def _parse_value(file: str, s: pl.Series) -> pl.Series:
    if s.dtype.is_numeric():
        f = s.cast(pl.Float64)
    else:
        txt = pl.Series("value", _as_str(s)).replace("", None)
        f = txt.cast(pl.Float64, strict=False)
        unparsable = f.is_null() & txt.is_not_null()
        if unparsable.any():
            _raise_first(file, "value", "a non-negative number or an empty cell", unparsable, s)
    bad = (f.is_nan() | f.is_infinite() | (f < 0)).fill_null(False)
    if bad.any():
        _raise_first(file, "value", "a non-negative finite number or an empty cell", bad, s)
    return f.alias("value")

