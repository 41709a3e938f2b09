"""Loading, validating and writing datasets (candgen.data.io): the happy path and every error path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from candgen.data.dataset import EVENT_CODE, MISSING_TIME
from candgen.data.io import find_table, load_dataset, read_tables, validate_dataset, write_dataset
from candgen.errors import DataError

GOOD_INTERACTIONS = (
    "user_id,item_id,timestamp,event,value\n"
    "u1,i1,1700000000,view,\n"
    "u2,i2,2024-01-01T10:00:00Z,Click,1.5\n"
    "u2,i1,2024-01-02,like,\n"
    "u3,i3,2024-01-01 10:00:00+02:00,share,0\n"
)


def write(d: Path, name: str, text: str | bytes) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    p = d / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text)
    return p


@pytest.fixture
def good(tmp_path: Path) -> Path:
    d = tmp_path / "good"
    write(d, "interactions.csv", GOOD_INTERACTIONS)
    write(d, "items.csv", "item_id,tags,category,created_at,title\ni1,a|b,x,1600000000,One\ni2,,y,,Two\n"
                          "i3,c,,2023-01-01,Three\ni4,d|a,x,1,Four\n")
    write(d, "users.csv", "user_id,interests,age_group\nu1,a,18-24\nu9,b|c,25-34\n")
    write(d, "social.csv", "user_id,friend_id\nu1,u2\nu7,u1\n")
    return d


def test_load_dataset_maps_ids_times_events_and_tables(good: Path) -> None:
    ds = load_dataset(good)
    assert ds.n_items == 4 and ds.n_users == 5  # u9 (users table) and u7 (social) are new users
    inter = ds.interactions
    assert np.all(np.diff(inter.timestamp) >= 0)
    assert inter.timestamp[0] == 1700000000
    assert 1704096000 in inter.timestamp  # 10:00+02:00 is 08:00 UTC
    assert set(inter.event.tolist()) == {EVENT_CODE[e] for e in ("view", "click", "like", "share")}
    assert np.isnan(inter.value).sum() == 2
    assert ds.tags.ids(ds.item_tags.row(ds.items.get("i1"))) == ["a", "b"]
    assert len(ds.item_tags.row(ds.items.get("i2"))) == 0
    assert ds.item_created_at is not None and ds.item_created_at[ds.items.get("i2")] == MISSING_TIME
    assert ds.item_created_at[ds.items.get("i3")] == 1672531200
    assert ds.item_title is not None and ds.item_title[ds.items.get("i4")] == "Four"
    assert ds.tags.ids(ds.user_interests.row(ds.users.get("u9"))) == ["b", "c"]
    assert "age_group" in ds.user_attributes
    assert len(ds.social_src) == 2


def test_validate_dataset_summary(good: Path) -> None:
    s = validate_dataset(good)
    assert (s.interactions, s.users, s.items, s.new_users, s.new_items) == (4, 5, 4, 2, 1)
    assert s.events == {"view": 1, "click": 1, "like": 1, "share": 1}
    assert s.first_timestamp == 1700000000 and s.last_timestamp == 1704153600
    assert s.social_edges == 2 and s.tags == 4 and s.skipped == {}
    assert s.to_dict()["files"]["items"] == "items.csv"


def test_event_defaults_to_view_and_parquet_preferred(tmp_path: Path) -> None:
    write(tmp_path, "interactions.csv", "user_id,item_id,timestamp\nu1,i1,1\n")
    pl.DataFrame({"user_id": [1, 2], "item_id": ["a", "b"], "timestamp": [5, 6]}).write_parquet(
        tmp_path / "interactions.parquet")
    assert find_table(tmp_path, "interactions") == tmp_path / "interactions.parquet"
    inter = read_tables(tmp_path)["interactions"]
    assert inter["user_id"].to_list() == ["1", "2"] and inter["event"].to_list() == ["view", "view"]


def test_write_dataset_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "w"
    write_dataset(
        out,
        interactions=pl.DataFrame({"user_id": ["u1"], "item_id": ["i1"], "timestamp": [10], "event": ["like"]}),
        items=pl.DataFrame({"item_id": ["i1", "i2"], "tags": [["x", "y"], []]}),
        users=pl.DataFrame({"user_id": ["u1"], "interests": [["x"]]}),
        social=pl.DataFrame({"user_id": ["u1"], "friend_id": ["u2"]}),
    )
    assert pl.read_parquet(out / "items.parquet")["tags"].to_list() == ["x|y", ""]
    ds = load_dataset(out)
    assert ds.n_items == 2 and ds.n_users == 2
    assert ds.tags.ids(ds.item_tags.row(0)) == ["x", "y"]


def test_parquet_datetime_and_list_columns(tmp_path: Path) -> None:
    from datetime import datetime

    pl.DataFrame({"user_id": ["u"], "item_id": ["i"], "timestamp": [datetime(2024, 1, 1)]}).write_parquet(
        tmp_path / "interactions.parquet")
    pl.DataFrame({"item_id": ["i"], "tags": [["a", " b "]]}).write_parquet(tmp_path / "items.parquet")
    fr = read_tables(tmp_path)
    assert fr["interactions"]["timestamp"].to_list() == [1704067200]
    assert fr["items"]["tags"].to_list() == [["a", "b"]]


# ------------------------------------------------------------------------------------------- error paths

BAD_CASES = {  # name: (file, text, words the message must contain)
    "missing_timestamp_column": ("interactions.csv", "user_id,item_id\nu1,i1\n", ["interactions", "timestamp"]),
    "bad_timestamp": ("interactions.csv", "user_id,item_id,timestamp\nu1,i1,1700000000\nu2,i2,yesterday-ish\n",
                      ["interactions", "row 2", "timestamp", "yesterday-ish", "ISO-8601"]),
    "nan_timestamp": ("interactions.csv", "user_id,item_id,timestamp\nu1,i1,nan\n", ["row 1", "timestamp", "nan"]),
    "millisecond_timestamp": ("interactions.csv", "user_id,item_id,timestamp\nu1,i1,1700000000000\n",
                              ["row 1", "timestamp", "1700000000000", "milliseconds"]),
    "empty_timestamp": ("interactions.csv", "user_id,item_id,timestamp\nu1,i1,\n", ["row 1", "timestamp"]),
    "empty_user": ("interactions.csv", "user_id,item_id,timestamp\n,i1,1700000000\n",
                   ["interactions", "row 1", "user_id", "non-empty"]),
    "blank_item": ("interactions.csv", "user_id,item_id,timestamp\nu1,i1,1\nu1,  ,2\nu2,,3\n",
                   ["row 2", "item_id", "2 rows like this"]),
    "unknown_event": ("interactions.csv", "user_id,item_id,timestamp,event\nu1,i1,1,view\nu1,i2,2,poke\n",
                      ["row 2", "event", "poke", "click"]),
    "empty_event": ("interactions.csv", "user_id,item_id,timestamp,event\nu1,i1,1,\n", ["row 1", "event"]),
    "negative_value": ("interactions.csv", "user_id,item_id,timestamp,value\nu1,i1,1,4\nu1,i2,2,-1\n",
                       ["row 2", "value", "-1", "non-negative"]),
    "nan_value": ("interactions.csv", "user_id,item_id,timestamp,value\nu1,i1,1,NaN\n", ["row 1", "value", "NaN"]),
    "text_value": ("interactions.csv", "user_id,item_id,timestamp,value\nu1,i1,1,five\n", ["value", "five"]),
    "empty_interactions": ("interactions.csv", "user_id,item_id,timestamp\n", ["interactions", "empty"]),
    "zero_byte_file": ("interactions.csv", "", ["interactions", "empty", "header"]),
    "malformed_csv": ("interactions.csv", "user_id,item_id,timestamp\nu1,i1,1\nu2,i2,2,extra,fields\n",
                      ["interactions", "row 2", "extra"]),
    "wrong_encoding": ("interactions.csv", "user_id,item_id,timestamp\nu1,i1,1\nu2,caf\xe9,2\n".encode("latin-1"),
                       ["interactions", "row 2", "UTF-8"]),
    "broken_parquet": ("interactions.parquet", b"PAR1 not really parquet", ["interactions.parquet", "Parquet"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_interactions_name_file_row_column_value(tmp_path: Path, case: str) -> None:
    name, text, words = BAD_CASES[case]
    write(tmp_path, name, text)
    with pytest.raises(DataError) as e:
        load_dataset(tmp_path)
    msg = str(e.value)
    for w in words:
        assert w in msg, f"{case}: {w!r} not in {msg!r}"
    with pytest.raises(DataError):
        validate_dataset(tmp_path)


def test_missing_interactions_file(tmp_path: Path) -> None:
    write(tmp_path, "items.csv", "item_id\ni1\n")
    with pytest.raises(DataError, match="interactions.*does not exist"):
        load_dataset(tmp_path)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dataset directory"):
        load_dataset(tmp_path / "nope")


def test_duplicate_item_rows(tmp_path: Path) -> None:
    write(tmp_path, "interactions.csv", "user_id,item_id,timestamp\nu1,i1,1\n")
    write(tmp_path, "items.csv", "item_id,category\ni1,a\ni2,b\ni1,c\n")
    with pytest.raises(DataError) as e:
        load_dataset(tmp_path)
    assert "items.csv, row 1, column 'item_id': got 'i1'" in str(e.value) and "row 3" in str(e.value)


def test_duplicate_user_rows(tmp_path: Path) -> None:
    write(tmp_path, "interactions.csv", "user_id,item_id,timestamp\nu1,i1,1\n")
    write(tmp_path, "users.csv", "user_id\nu1\nu1\n")
    with pytest.raises(DataError, match="users.csv.*user_id"):
        load_dataset(tmp_path)


def test_interactions_naming_items_absent_from_items_table(tmp_path: Path) -> None:
    write(tmp_path, "interactions.csv", "user_id,item_id,timestamp\nu1,i1,1\nu1,ghost,2\n")
    write(tmp_path, "items.csv", "item_id\ni1\n")
    with pytest.raises(DataError) as e:
        load_dataset(tmp_path)
    assert "interactions.csv, row 2, column 'item_id': got 'ghost'" in str(e.value)
    assert "items table" in str(e.value)


def test_items_table_missing_item_id_column(tmp_path: Path) -> None:
    write(tmp_path, "interactions.csv", "user_id,item_id,timestamp\nu1,i1,1\n")
    write(tmp_path, "items.csv", "id,title\ni1,x\n")
    with pytest.raises(DataError, match="items.csv.*item_id"):
        load_dataset(tmp_path)


def test_bad_item_created_at(tmp_path: Path) -> None:
    write(tmp_path, "interactions.csv", "user_id,item_id,timestamp\nu1,i1,1\n")
    write(tmp_path, "items.csv", "item_id,created_at\ni1,soon\n")
    with pytest.raises(DataError, match="items.csv, row 1, column 'created_at': got 'soon'"):
        load_dataset(tmp_path)


def test_social_rows_need_both_ids_but_may_name_unseen_users(tmp_path: Path) -> None:
    write(tmp_path, "interactions.csv", "user_id,item_id,timestamp\nu1,i1,1\n")
    write(tmp_path, "social.csv", "user_id,friend_id\nu1,stranger\n")
    assert load_dataset(tmp_path).n_users == 2
    write(tmp_path, "social.csv", "user_id,friend_id\nu1,\n")
    with pytest.raises(DataError, match="social.csv, row 1, column 'friend_id'"):
        load_dataset(tmp_path)


def test_header_only_items_table_still_checks_interactions(tmp_path: Path) -> None:
    write(tmp_path, "interactions.csv", "user_id,item_id,timestamp\nu1,i1,1\n")
    write(tmp_path, "items.csv", "item_id\n")
    with pytest.raises(DataError, match="items table"):  # i1 is not in the (empty) items table
        load_dataset(tmp_path)
