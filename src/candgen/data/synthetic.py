"""A synthetic world with planted structure (DESIGN §6), streamed to Parquet so that it scales to 10M items.

Users and items have mixtures over latent topics; an item's tags and category come from its topics and
its creator has the item's main topic as home topic; item popularity is Zipf-distributed; friends
mostly share their main topic (homophily); engagement follows the seed's mix (view 60% / click 25% /
like 10% / share 5%, plus impressions and a few hides); ~8% of engagements copy something a friend
engaged with in the previous 72 hours (the social source's signal); items keep arriving over the days and are only
engaged with after their `created_at`; some items go viral for a few hours; ~5% of users are new
(attributes, interests and friends, no interactions) and ~3% of items are new (no interactions yet).
Every retrieval source therefore has a real signal and a held-out future can measure recall.

Everything is vectorised numpy. Items and social edges are generated per chunk and written with a pyarrow
ParquetWriter; interactions are held as int arrays (17 bytes a row: ~350 MB for 20M) until the social
path is resolved, and turned into strings per chunk when written.
The same seed gives the same world.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from candgen.errors import CandgenError
from candgen.types import NO_PROGRESS, Progress

CATEGORIES = (
    "news", "sports", "music", "gaming", "comedy", "food", "travel", "tech", "fashion", "science",
    "film", "pets", "education", "fitness", "art", "diy", "beauty", "finance", "auto", "family",
)
AGE_GROUPS = ("13-17", "18-24", "25-34", "35-44", "45-54", "55+")
AGE_WEIGHTS = (0.08, 0.24, 0.28, 0.18, 0.12, 0.10)
COUNTRIES = ("US", "GB", "DE", "FR", "BR", "IN", "JP", "ES", "MX", "CA", "IT", "NL", "PL", "SE", "KR")
COUNTRY_WEIGHTS = (0.25, 0.08, 0.08, 0.07, 0.08, 0.12, 0.06, 0.05, 0.05, 0.04, 0.04, 0.02, 0.02, 0.02, 0.02)
COUNTRY_LANGUAGE = ("en", "en", "de", "fr", "pt", "hi", "ja", "es", "es", "en", "it", "nl", "pl", "sv", "ko")
# event mix: the seed's positive mix (60/25/10/5) scaled to 91.5%, then impressions and hides
EVENTS = ("view", "click", "like", "share", "impression", "hide")
EVENT_P = (0.549, 0.22875, 0.0915, 0.04575, 0.075, 0.01)
# share of interactions by how the item was found: user's topic (by popularity), fresh items of the
# topic, global popularity, a viral burst, something a friend engaged with in the last SOCIAL_WINDOW
PATH_P = (0.57, 0.16, 0.12, 0.07, 0.08)
SOCIAL_PATH = 4
SOCIAL_WINDOW = 72 * 3600  # the social source's default window (SourcesConfig.social_window_hours)
ENGAGED = np.array([e not in ("impression", "hide") for e in EVENTS])
HOUR_WEIGHTS = np.array([2, 1, 1, 1, 1, 2, 3, 5, 6, 6, 6, 7, 8, 7, 6, 6, 7, 8, 10, 12, 12, 10, 7, 4], float)
DAY = 86_400
START = 1_735_689_600  # 2025-01-01T00:00:00Z: a fixed epoch keeps worlds reproducible
CHUNK_USERS = 50_000
NEW_USER_FRACTION = 0.05
NEW_ITEM_FRACTION = 0.03


@dataclass
class WorldSummary:
    """What `generate` wrote."""

    out_dir: str
    users: int
    items: int
    interactions: int
    social_edges: int
    new_users: int
    new_items: int
    topics: int
    creators: int
    viral_items: int
    start: int  # first possible interaction time (unix s)
    end: int  # end of the last day (unix s)
    seconds: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class _Catalog:
    topic: np.ndarray  # int32 main topic per item
    created_at: np.ndarray  # int64
    weight: np.ndarray  # float64 popularity, 0 for new items (never sampled)
    # items sorted by (topic, created_at) with popularity prefix sums, for per-topic sampling
    by_topic: np.ndarray
    by_topic_key: np.ndarray
    by_topic_cum: np.ndarray
    topic_start: np.ndarray
    # items sorted by created_at with prefix sums, for global-popularity sampling
    by_time: np.ndarray
    by_time_created: np.ndarray
    by_time_cum: np.ndarray
    viral: np.ndarray  # item indices
    viral_start: np.ndarray  # burst window start (unix s)
    viral_len: np.ndarray  # burst length (s)


def generate_world(
    out_dir: str | Path,
    *,
    users: int,
    items: int,
    days: int = 30,
    seed: int = 0,
    interactions_per_user: float = 20.0,
    progress: Progress = NO_PROGRESS,
) -> WorldSummary:
    """Write interactions, items, users and social tables (Parquet) of a synthetic world to `out_dir`."""
    if users < 1 or items < 1 or days < 1:
        raise CandgenError(f"generate needs at least 1 user, 1 item and 1 day (got {users}, {items}, {days})")
    if interactions_per_user <= 0:
        raise CandgenError(f"interactions per user must be positive, got {interactions_per_user}")
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seeds = np.random.SeedSequence(seed).spawn(4)
    rng = np.random.default_rng(seeds[0])
    n_topics = int(np.clip(round(np.sqrt(items) / 2), 4, 200))
    n_tags_per_topic = 12
    end = START + days * DAY
    topic_prior = 1.0 / (np.arange(n_topics) + 3.0) ** 0.7
    topic_prior /= topic_prior.sum()
    topic_category = rng.permutation(n_topics) % len(CATEGORIES)
    tag_names = np.array([f"{CATEGORIES[topic_category[k]]}-{k}-{j}" for k in range(n_topics)
                          for j in range(n_tags_per_topic)])

    progress.task("items", total=items)
    cat, n_creators = _write_items(out / "items.parquet", rng=rng, n=items, n_topics=n_topics, prior=topic_prior,
                                   topic_category=topic_category, tag_names=tag_names, per_topic=n_tags_per_topic,
                                   end=end, days=days, progress=progress)
    progress.done("items")

    urng = np.random.default_rng(seeds[1])
    age = urng.choice(len(AGE_GROUPS), size=users, p=AGE_WEIGHTS).astype(np.int8)
    # each age group leans towards its own few topics, so "popular in my segment" carries signal
    age_topics = urng.integers(0, n_topics, size=(len(AGE_GROUPS), 3))
    leaning = urng.random(users) < 0.35
    t1 = urng.choice(n_topics, size=users, p=topic_prior).astype(np.int32)
    t1[leaning] = age_topics[age[leaning], urng.integers(0, 3, int(leaning.sum()))]
    t2 = urng.choice(n_topics, size=users, p=topic_prior).astype(np.int32)
    t3 = urng.integers(0, n_topics, size=users).astype(np.int32)
    mix = urng.dirichlet((6.0, 2.5, 1.0), size=users).astype(np.float32)
    is_new = urng.random(users) < NEW_USER_FRACTION
    if users >= 2 and not is_new.any():
        is_new[urng.integers(0, users)] = True
    if is_new.all():  # someone must interact, or there is no interactions table
        is_new[0] = False
    mu = np.log(interactions_per_user / (1 - NEW_USER_FRACTION)) - 0.5  # lognormal(mu, 1) has mean e^(mu+1/2)
    counts = np.clip(np.rint(urng.lognormal(mu, 1.0, size=users)), 1, 5000).astype(np.int64)
    counts[is_new] = 0

    progress.task("users", total=users)
    _write_users(out / "users.parquet", rng=urng, age=age, t1=t1, t2=t2, per_topic=n_tags_per_topic,
                 tag_names=tag_names)
    progress.done("users")

    irng, srng = np.random.default_rng(seeds[2]), np.random.default_rng(seeds[3])
    users_by_topic = np.argsort(t1, kind="stable").astype(np.int64)
    topic_user_start = np.searchsorted(t1[users_by_topic], np.arange(n_topics + 1))
    progress.task("social", total=users)
    src_parts, dst_parts = [], []
    with _Writer(out / "social.parquet") as sw:
        for lo in range(0, users, CHUNK_USERS):
            hi = min(users, lo + CHUNK_USERS)
            src, dst = _social(srng, lo=lo, hi=hi, n_users=users, t1=t1, users_by_topic=users_by_topic,
                               topic_user_start=topic_user_start)
            sw.write(pl.DataFrame({"user_id": _ids("u", src), "friend_id": _ids("u", dst)}))
            src_parts.append(src.astype(np.int32))
            dst_parts.append(dst.astype(np.int32))
            progress.advance("social", hi - lo)
    progress.done("social")
    n_edges = sum(len(x) for x in src_parts)

    # interactions are held as int arrays (17 bytes a row) so that the social path can look at what
    # friends engaged with; strings are only made per chunk when writing
    progress.task("interactions", total=users)
    parts = []
    for lo in range(0, users, CHUNK_USERS):
        hi = min(users, lo + CHUNK_USERS)
        parts.append(_interactions(irng, cat, lo=lo, counts=counts[lo:hi], t1=t1[lo:hi], t2=t2[lo:hi],
                                   t3=t3[lo:hi], mix=mix[lo:hi], days=days))
        progress.advance("interactions", hi - lo)
    rows = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    del parts
    _follow_friends(irng, rows, src=np.concatenate(src_parts), dst=np.concatenate(dst_parts), n_users=users)
    progress.done("interactions")
    n_inter = len(rows["user"])
    progress.task("write interactions", total=n_inter)
    with _Writer(out / "interactions.parquet") as iw:
        for lo in range(0, n_inter, 2_000_000):
            sl = slice(lo, lo + 2_000_000)
            progress.advance("write interactions", len(rows["user"][sl]))
            iw.write(pl.DataFrame({
                "user_id": _ids("u", rows["user"][sl]),
                "item_id": _ids("i", rows["item"][sl]),
                "timestamp": rows["ts"][sl],
                "event": np.array(EVENTS)[rows["event"][sl]],
            }))
    progress.done("write interactions")
    return WorldSummary(
        out_dir=str(out), users=users, items=items, interactions=n_inter, social_edges=n_edges,
        new_users=int(is_new.sum()), new_items=int((cat.weight == 0).sum()), topics=n_topics, creators=n_creators,
        viral_items=len(cat.viral), start=START, end=end, seconds=time.perf_counter() - t0,
    )


class _Writer:
    """Appends polars frames to one Parquet file (schema from the first frame)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._w: pq.ParquetWriter | None = None

    def write(self, df: pl.DataFrame) -> int:
        table = df.to_arrow()
        if self._w is None:
            self._w = pq.ParquetWriter(self.path, table.schema, compression="zstd")
        self._w.write_table(table)
        return len(df)

    def __enter__(self) -> _Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._w is not None:
            self._w.close()


def _ids(prefix: str, idx: np.ndarray) -> pl.Series:
    return pl.select(pl.concat_str([pl.lit(prefix), pl.Series(idx).cast(pl.String)])).to_series()


def _write_items(
    path: Path, *, rng: np.random.Generator, n: int, n_topics: int, prior: np.ndarray, topic_category: np.ndarray,
    tag_names: np.ndarray, per_topic: int, end: int, days: int, progress: Progress,
) -> tuple[_Catalog, int]:
    topic = rng.choice(n_topics, size=n, p=prior).astype(np.int32)
    second = rng.integers(0, n_topics, size=n).astype(np.int32)
    # Zipf popularity over a random ranking of the catalog
    weight = 1.0 / (rng.permutation(n) + 1.0) ** 0.9
    # 40% of the catalog exists before the first day, the rest arrives over the days, the last 3% are new
    created = np.empty(n, np.int64)
    phase = rng.random(n)
    old, new = phase < 0.40, phase >= 1 - NEW_ITEM_FRACTION
    arriving = ~old & ~new
    created[old] = START - rng.integers(1, 180 * DAY, int(old.sum()))
    created[arriving] = START + rng.integers(0, days * DAY, int(arriving.sum()))
    created[new] = end - rng.integers(1, 6 * 3600, int(new.sum()))
    created[0] = START - DAY  # at least one item exists from the start, so every draw has a candidate
    new[0] = False
    weight[new] = 0.0
    n_creators = max(1, n // 40)
    creator_topic = rng.choice(n_topics, size=n_creators, p=prior)
    order = np.argsort(creator_topic, kind="stable")
    creator_start = np.searchsorted(creator_topic[order], np.arange(n_topics + 1))
    cnt = creator_start[topic + 1] - creator_start[topic]
    pick = creator_start[topic] + (rng.random(n) * np.maximum(cnt, 1)).astype(np.int64)
    creator = np.where(cnt > 0, order[np.minimum(pick, n_creators - 1)], rng.integers(0, n_creators, n))

    n_viral = max(3, n // 2000)
    eligible = np.flatnonzero(~new & (created < end - DAY))
    viral = rng.choice(eligible, size=min(n_viral, len(eligible)), replace=False)
    vlen = rng.integers(3 * 3600, 12 * 3600, len(viral))
    vstart = np.maximum(created[viral], START) + rng.integers(0, 2 * DAY, len(viral))
    vstart = np.minimum(vstart, end - vlen)

    for lo in range(0, n, 1_000_000):
        hi = min(n, lo + 1_000_000)
        m = hi - lo
        k = topic[lo:hi]
        # 2-4 tags from the main topic, one from the second topic half of the time
        tags = [tag_names[k * per_topic + rng.integers(0, per_topic, m)] for _ in range(4)]
        n_main = rng.integers(2, 5, m)
        cols = [pl.Series(f"t{j}", tags[j]).set(pl.Series(n_main <= j), None) for j in range(1, 4)]
        extra = pl.Series("x", tag_names[second[lo:hi] * per_topic + rng.integers(0, per_topic, m)])
        extra = extra.set(pl.Series(rng.random(m) < 0.5), None)
        tag_str = pl.select(pl.concat_str([pl.Series("t0", tags[0]), *cols, extra], separator="|",
                                          ignore_nulls=True)).to_series()
        tag_str = tag_str.str.split("|").list.unique(maintain_order=True).list.join("|")  # tags drawn twice
        df = pl.DataFrame({
            "item_id": _ids("i", np.arange(lo, hi)),
            "tags": tag_str,
            "category": np.array(CATEGORIES)[topic_category[k]],
            "creator_id": _ids("c", creator[lo:hi]),
            "created_at": created[lo:hi],
            "title": _ids("Item ", np.arange(lo, hi)),
        })
        if lo == 0:
            writer = pq.ParquetWriter(path, df.to_arrow().schema, compression="zstd")
        writer.write_table(df.to_arrow())
        progress.advance("items", m)
    writer.close()

    key = topic.astype(np.int64) * (1 << 40) + (created - START + (1 << 39))
    by_topic = np.argsort(key, kind="stable")
    by_time = np.argsort(created, kind="stable")
    cat = _Catalog(
        topic=topic, created_at=created, weight=weight,
        by_topic=by_topic, by_topic_key=key[by_topic], by_topic_cum=_prefix(weight[by_topic]),
        topic_start=np.searchsorted(topic[by_topic], np.arange(n_topics + 1)),
        by_time=by_time, by_time_created=created[by_time], by_time_cum=_prefix(weight[by_time]),
        viral=viral, viral_start=vstart, viral_len=vlen,
    )
    return cat, n_creators


def _prefix(w: np.ndarray) -> np.ndarray:
    out = np.zeros(len(w) + 1)
    np.cumsum(w, out=out[1:])
    return out


def _write_users(
    path: Path, *, rng: np.random.Generator, age: np.ndarray, t1: np.ndarray, t2: np.ndarray, per_topic: int,
    tag_names: np.ndarray,
) -> None:
    n = len(age)
    country = rng.choice(len(COUNTRIES), size=n, p=COUNTRY_WEIGHTS)
    language = np.array(COUNTRY_LANGUAGE)[country]
    language[rng.random(n) < 0.1] = "en"
    # onboarding interests: one or two tags of the main topic, sometimes one of the second
    a = pl.Series("a", tag_names[t1 * per_topic + rng.integers(0, per_topic, n)])
    b = pl.Series("b", tag_names[t1 * per_topic + rng.integers(0, per_topic, n)]).set(pl.Series(rng.random(n) < 0.5),
                                                                                     None)
    c = pl.Series("c", tag_names[t2 * per_topic + rng.integers(0, per_topic, n)]).set(pl.Series(rng.random(n) < 0.6),
                                                                                     None)
    interests = pl.select(pl.concat_str([a, b, c], separator="|", ignore_nulls=True)).to_series()
    pl.DataFrame({
        "user_id": _ids("u", np.arange(n)),
        "age_group": np.array(AGE_GROUPS)[age],
        "country": np.array(COUNTRIES)[country],
        "language": language,
        "interests": interests,
    }).write_parquet(path, compression="zstd")


def _interactions(
    rng: np.random.Generator, cat: _Catalog, *, lo: int, counts: np.ndarray, t1: np.ndarray, t2: np.ndarray,
    t3: np.ndarray, mix: np.ndarray, days: int,
) -> dict[str, np.ndarray]:
    local = np.repeat(np.arange(len(counts)), counts)
    n = len(local)
    day = rng.integers(0, days, n)
    hour = rng.choice(24, size=n, p=HOUR_WEIGHTS / HOUR_WEIGHTS.sum())
    ts = START + day * DAY + hour * 3600 + rng.integers(0, 3600, n)
    r = rng.random(n)
    w = mix[local]
    topic = np.where(r < w[:, 0], t1[local], np.where(r < w[:, 0] + w[:, 1], t2[local], t3[local])).astype(np.int64)
    path = rng.choice(len(PATH_P), size=n, p=PATH_P)
    item = np.full(n, -1, np.int64)

    # 0 (and 4, the social path, until _follow_friends finds what a friend engaged with): the user's
    # topic by popularity among items already created
    tkey = topic * (1 << 40) + (ts - START + (1 << 39))
    t_hi = np.searchsorted(cat.by_topic_key, tkey, side="right")
    t_lo = cat.topic_start[topic]
    sel = (path == 0) | (path == SOCIAL_PATH)
    item[sel] = _draw(rng, cat.by_topic, cat.by_topic_cum, t_lo[sel], t_hi[sel])
    # 1: fresh items of the topic (created in the last 3 days)
    sel = path == 1
    f_lo = np.maximum(np.searchsorted(cat.by_topic_key, tkey[sel] - 3 * DAY, side="left"), t_lo[sel])
    item[sel] = _draw(rng, cat.by_topic, cat.by_topic_cum, f_lo, t_hi[sel])
    # 3: a viral burst: its time moves into the burst window
    sel = path == 3
    if sel.any():
        v = rng.integers(0, len(cat.viral), int(sel.sum()))
        item[sel] = cat.viral[v]
        ts[sel] = cat.viral_start[v] + (rng.random(int(sel.sum())) * cat.viral_len[v]).astype(np.int64)
    # 2, and every draw above that found no candidate: global popularity among items already created
    sel = item < 0
    g_hi = np.searchsorted(cat.by_time_created, ts[sel], side="right")
    item[sel] = _draw(rng, cat.by_time, cat.by_time_cum, np.zeros_like(g_hi), g_hi)
    item[item < 0] = cat.by_time[0]  # an item created before the first day (see _write_items)
    return {
        "user": (lo + local).astype(np.int32),
        "item": item.astype(np.int32),
        "ts": ts.astype(np.int64),
        "event": rng.choice(len(EVENTS), size=n, p=EVENT_P).astype(np.int8),
        "social": path == SOCIAL_PATH,
    }


def _draw(rng: np.random.Generator, order: np.ndarray, cum: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """One item per row from order[lo:hi], weighted by popularity; -1 where the range has no weight."""
    base = cum[lo]
    total = cum[hi] - base
    u = base + rng.random(len(lo)) * total
    pos = np.clip(np.searchsorted(cum, u, side="right") - 1, lo, np.maximum(hi - 1, lo))
    out = order[np.minimum(pos, len(order) - 1)].astype(np.int64)
    out[total <= 0] = -1
    return out


def _social(
    rng: np.random.Generator, *, lo: int, hi: int, n_users: int, t1: np.ndarray, users_by_topic: np.ndarray,
    topic_user_start: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Directed friendship edges (src follows dst) of users lo..hi."""
    if n_users < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    m = hi - lo
    deg = np.clip(np.rint(rng.lognormal(np.log(6.0), 0.8, m)), 1, 200).astype(np.int64)
    src = np.repeat(np.arange(lo, hi), deg)
    k = len(src)
    # homophily: 75% of friends share the user's main topic, the rest are anyone
    topic = t1[src]
    start, stop = topic_user_start[topic], topic_user_start[topic + 1]
    same = users_by_topic[np.minimum(start + (rng.random(k) * (stop - start)).astype(np.int64), n_users - 1)]
    dst = np.where(rng.random(k) < 0.75, same, rng.integers(0, n_users, k))
    keep = dst != src
    src, dst = src[keep], dst[keep]
    # half of the friendships are mutual (two rows)
    mutual = rng.random(len(src)) < 0.5
    src, dst = np.concatenate([src, dst[mutual]]), np.concatenate([dst, src[mutual]])
    # a pair drawn twice in this chunk is written once (pairs across chunks may still repeat, harmlessly)
    pairs = np.unique(src.astype(np.int64) * n_users + dst)
    return pairs // n_users, pairs % n_users


def _follow_friends(
    rng: np.random.Generator, rows: dict[str, np.ndarray], *, src: np.ndarray, dst: np.ndarray, n_users: int
) -> None:
    """Social-path rows take an item that a random friend engaged with in the SOCIAL_WINDOW before them.

    Rows whose friends did nothing in that window keep the topic draw they were given. Done on int
    arrays for all users at once: friends live in any chunk.
    """
    social = np.flatnonzero(rows["social"])
    if len(social) == 0 or len(src) == 0:
        return
    order = np.argsort(src, kind="stable")
    friends = dst[order]
    fptr = np.zeros(n_users + 1, np.int64)
    np.cumsum(np.bincount(src, minlength=n_users), out=fptr[1:])
    user = rows["user"][social]
    deg = fptr[user + 1] - fptr[user]
    has = deg > 0
    social, user, deg = social[has], user[has], deg[has]
    friend = friends[fptr[user] + (rng.random(len(user)) * deg).astype(np.int64)].astype(np.int64)
    # every engagement (not impressions or hides, not social-path rows) keyed by (user, time)
    src_rows = np.flatnonzero(ENGAGED[rows["event"]] & ~rows["social"])
    key = rows["user"][src_rows].astype(np.int64) * (1 << 32) + (rows["ts"][src_rows] - START)
    korder = np.argsort(key, kind="stable")
    skey = key[korder]
    t = rows["ts"][social] - START
    lo = np.searchsorted(skey, friend * (1 << 32) + np.maximum(t - SOCIAL_WINDOW, 0), side="left")
    hi = np.searchsorted(skey, friend * (1 << 32) + t, side="left")
    found = hi > lo
    pick = lo[found] + (rng.random(int(found.sum())) * (hi - lo)[found]).astype(np.int64)
    rows["item"][social[found]] = rows["item"][src_rows[korder[pick]]]
