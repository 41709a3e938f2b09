"""build_state / make_sources / record_event / save_state / load_state on a small dataset."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from candgen.config import Config
from candgen.data.dataset import Dataset
from candgen.errors import ArtifactError
from candgen.sources.build import build_sources, build_state, load_state, save_state

H = 3600


def _dataset() -> Dataset:
    inter = pl.DataFrame({
        "user_id": ["u1", "u1", "u2", "u2", "u3", "u3"],
        "item_id": ["a", "b", "a", "c", "b", "d"],
        "timestamp": [0, H, 2 * H, 3 * H, 4 * H, 5 * H],
        "event": ["view", "like", "share", "click", "view", "hide"],
    })
    items = pl.DataFrame({"item_id": ["a", "b", "c", "d", "e"], "tags": [["x"], ["y"], ["x"], ["z"], ["x"]],
                          "category": ["m", "m", "n", "n", "m"], "creator_id": ["c1", "c2", "c1", "c3", "c2"],
                          "created_at": [0, 0, 0, 0, 5 * H]})
    users = pl.DataFrame({"user_id": ["u1", "u2", "u3"], "country": ["US", "US", "BR"],
                          "language": ["en", "en", "pt"], "age_group": ["a", "b", "a"]})
    social = pl.DataFrame({"user_id": ["u1", "u2"], "friend_id": ["u2", "u1"]})
    return Dataset.from_frames(inter, items, users, social)


def test_build_sources_without_a_model_has_no_collaborative():
    sources = build_sources(_dataset(), config=Config())
    assert set(sources) == {"content", "trending", "social", "cold_start", "new_items"}
    assert all(s.name == n for n, s in sources.items())
    assert sources.state.catalog.n_items == 5


def test_events_reach_every_structure():
    ds = _dataset()
    st = build_state(ds, config=Config())
    u1, e = ds.users.get("u1"), ds.items.get("e")
    st.record_event(user=u1, item=e, event="share", t=6 * H, attributes={"country": "US", "language": "en"})
    assert st.activity.history(u1)[0][0] == e
    assert st.trending.top(1, "country=US", now=6 * H).ids[0] == e
    assert st.trending.top(1, "category=m", now=6 * H).ids[0] == e
    assert st.bandit.posterior(e)[0] == 2.0
    st.record_event(user=u1, item=e, event="impression", t=6 * H)
    assert st.bandit.posterior(e)[1] == 1.0
    st.record_event(user=u1, item=ds.items.get("c"), event="block", t=6 * H)
    assert st.activity.blocked_creators(u1).tolist() == [st.catalog.creators.get("c1")]
    st.record_event(user=u1, item=ds.items.get("d"), event="rating", value=1.0, t=6 * H)
    assert ds.items.get("d") in st.activity.hidden(u1)
    with pytest.raises(ValueError, match="unknown event 'poke'"):
        st.record_event(user=u1, item=e, event="poke", t=6 * H)


def test_new_and_deleted_items():
    st = build_state(_dataset(), config=Config())
    new = st.add_item("f", tags=["x"], category="m", creator="c9", created_at=5 * H)
    assert new in st.bandit and st.tags.items("tag", st.catalog.tags.get("x"), 1)[0] == new
    st.delete_item(new)
    assert new not in st.bandit and st.catalog.is_deleted[new]


def test_save_load_round_trip(tmp_path):
    ds = _dataset()
    st = build_state(ds, config=Config())
    st.record_event(user=0, item=4, event="like", t=6 * H, attributes={"country": "BR"})
    st.add_item("f", tags=["q"], created_at=6 * H)
    save_state(st, tmp_path)
    back = load_state(tmp_path)
    assert back.catalog.items.ids() == st.catalog.items.ids()
    for seg in (None, "country=BR"):
        assert back.trending.top(5, seg, now=6 * H).ids.tolist() == st.trending.top(5, seg, now=6 * H).ids.tolist()
    assert back.activity.history(0)[0].tolist() == st.activity.history(0)[0].tolist()
    assert np.array_equal(back.social.friends(0)[0], st.social.friends(0)[0])
    assert back.events.weights == st.events.weights and len(back.bandit) == len(st.bandit)


def test_save_state_accepts_the_sources_dict(tmp_path):
    sources = build_sources(_dataset(), config=Config())
    save_state(sources, tmp_path)
    assert load_state(tmp_path).catalog.items.ids() == sources.state.catalog.items.ids()


def test_load_state_errors(tmp_path):
    with pytest.raises(ArtifactError, match="no source state"):
        load_state(tmp_path)
    save_state(build_state(_dataset(), config=Config()), tmp_path)
    meta = json.loads((tmp_path / "sources.json").read_text())
    (tmp_path / "sources.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(ArtifactError, match="format 99"):
        load_state(tmp_path)


def test_sort_based_set_helpers_match_numpy():
    from candgen.sources.base import argsort_ints, isin, sum_by_id, union, unique, unique_inverse

    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 300_000):
        x = rng.integers(0, 50_000, n)
        assert np.array_equal(argsort_ints(x), np.argsort(x, kind="stable"))
        assert np.array_equal(unique(x), np.unique(x))
        u, inv = unique_inverse(x)
        assert np.array_equal(u[inv], x)
        b = rng.integers(0, 50_000, 1000)
        assert np.array_equal(isin(x, b), np.isin(x, b))
        assert np.array_equal(union(x, b), np.union1d(x, b))
        ids, sums = sum_by_id(x, np.ones(n))
        assert sums.sum() == n and np.array_equal(np.sort(ids), np.unique(x))
    big = np.array([2**62, 1, 2**62])  # too large to pack: falls back to argsort
    assert argsort_ints(big).tolist() == [1, 0, 2]


def test_isin_on_ids_the_scratch_array_cannot_take():
    from candgen.sources.base import SCRATCH_ISIN_MAX, isin

    cases = [
        (np.array([-1, 3, 5, -1]), np.array([3, -1])),  # padding ids: searched in sorted order
        (np.array([SCRATCH_ISIN_MAX + 5, 2, 7]), np.array([2, SCRATCH_ISIN_MAX + 5])),  # composite keys
        (np.array([0.5, 2.0, 3.0]), np.array([2.0])),  # floats
        (np.array([1, 2, 3], np.uint32), np.array([3, 9], np.int64)),
    ]
    for a, b in cases:
        assert isin(a, b).tolist() == np.isin(a, b).tolist()


def test_splice_rows_replaces_and_extends_rows():
    from candgen.sources.base import splice_rows

    ptr, vals = np.array([0, 2, 2, 5]), np.array([1, 2, 3, 4, 5])
    p, v = splice_rows(ptr, vals, 5, {1: np.array([9]), 4: np.array([7, 8])})
    rows = [v[p[i] : p[i + 1]].tolist() for i in range(5)]
    assert rows == [[1, 2], [9], [3, 4, 5], [], [7, 8]]
    p, v = splice_rows(ptr, vals, 3, {})
    assert p.tolist() == ptr.tolist() and v.tolist() == vals.tolist()


def test_build_reports_progress_and_single_thread_matches():
    from candgen.types import Progress

    class Count(Progress):
        def __init__(self) -> None:
            self.steps = 0

        def advance(self, name: str, n: float = 1, **fields: object) -> None:
            self.steps += int(n)

    p = Count()
    ds = _dataset()
    a = build_state(ds, config=Config(), progress=p)
    b = build_state(ds, config=Config(), threads=1)
    assert p.steps == 6
    assert a.trending.top(5, now=6 * H).ids.tolist() == b.trending.top(5, now=6 * H).ids.tolist()
