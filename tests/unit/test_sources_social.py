"""SocialGraph (tie strength, follows) and SocialSource (window, recency, tie strength)."""

from __future__ import annotations

import numpy as np
import pytest

from candgen.errors import ArtifactError
from candgen.sources.activity import RecentActivity
from candgen.sources.base import UserContext
from candgen.sources.social import SocialGraph, SocialSource

H = 3600.0
NOW = 1000 * H


def test_mutual_follows_are_stronger_ties():
    g = SocialGraph.from_edges(np.array([0, 1, 0, 0, 0]), np.array([1, 0, 2, 2, 0]), n_users=3)
    ids, st = g.friends(0)
    assert dict(zip(ids.tolist(), st.tolist(), strict=True)) == {1: 2.0, 2: 1.0}  # dup and self-follow dropped
    assert g.strength(0, np.array([2, 1, 5])).tolist() == [1.0, 2.0, 0.0]
    g.follow(2, 0)  # follow back: both ties become mutual
    assert g.strength(0, np.array([2]))[0] == 2.0 and g.strength(2, np.array([0]))[0] == 2.0
    g.unfollow(2, 0)
    assert g.strength(0, np.array([2]))[0] == 1.0 and len(g.friends(2)[0]) == 0
    g.follow(7, 8, strength=3.5)  # users beyond the base arrays
    assert g.friends(7)[1].tolist() == [3.5]
    g.follow(3, 3)
    assert len(g.friends(3)[0]) == 0


def _setup() -> tuple[SocialGraph, RecentActivity]:
    g = SocialGraph.empty()
    g.follow(0, 1)
    g.follow(0, 2)
    g.follow(2, 0)  # 0 <-> 2 mutual (strength 2), 0 -> 1 one-way (strength 1)
    ra = RecentActivity.empty()
    for f in (1, 2):
        for _ in range(10):  # past the early-engagement boost so both friends weigh alike
            ra.record_engagement(f, 99, 1.0, 0.0)
    ra.record_engagement(1, 10, 1.0, NOW - 1 * H)
    ra.record_engagement(2, 20, 1.0, NOW - 1 * H)
    ra.record_engagement(1, 30, 1.0, NOW - 100 * H)  # outside the 72 h window
    return g, ra


def test_tie_strength_and_window():
    g, ra = _setup()
    src = SocialSource(g, ra, window_hours=72.0)
    c = src.retrieve(UserContext(user_id="u0", user=0, now=NOW), 10)
    assert c.ids.tolist() == [20, 10]  # the mutual friend's item first; item 30 and 99 are too old
    assert c.scores[0] == pytest.approx(2 * c.scores[1])


def test_count_and_recency_add_up():
    g, ra = _setup()
    src = SocialSource(g, ra, window_hours=72.0, recency_half_life_hours=24.0)
    ctx = UserContext(user_id="u0", user=0, now=NOW)
    once = dict(zip(*[x.tolist() for x in (src.retrieve(ctx, 10).ids, src.retrieve(ctx, 10).scores)], strict=True))
    ra.record_engagement(1, 10, 1.0, NOW - 1 * H)  # a second engagement with item 10
    ra.record_engagement(2, 40, 1.0, NOW - 49 * H)  # two half-lives older than item 20's
    c = src.retrieve(ctx, 10)
    twice = dict(zip(c.ids.tolist(), c.scores.tolist(), strict=True))
    assert twice[10] == pytest.approx(2 * once[10])
    assert twice[40] == pytest.approx(twice[20] / 4, rel=1e-3)


def test_friends_from_the_request_override_the_graph():
    g, ra = _setup()
    ctx = UserContext(user_id="new", user=-1, now=NOW, friends=np.array([1]))
    assert SocialSource(g, ra).retrieve(ctx, 10).ids.tolist() == [10]


def test_graph_round_trip(tmp_path):
    g, _ = _setup()
    g.save(tmp_path)
    back = SocialGraph.load(tmp_path)
    for u in range(3):
        a, b = g.friends(u), back.friends(u)
        assert dict(zip(a[0].tolist(), a[1].tolist(), strict=True)) == dict(zip(b[0].tolist(), b[1].tolist(),
                                                                                  strict=True))
    with pytest.raises(ArtifactError):
        SocialGraph.load(tmp_path / "nowhere")
