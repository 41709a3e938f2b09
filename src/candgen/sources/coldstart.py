"""Cold start for new users: `SegmentPopularity` (popular within the user's segment, falling back segment by
segment to global) and `ColdStartSource` (the seed's explore-heavy mix: 50% popular in segment, 30% items
tagged with the onboarding interests, 20% random live items).

Segments are prefixes of an attribute order, by default (age_group, country, language): a user with all
three is served from `age_group|country|language`, then `age_group|country`, then `age_group`, then the
global list, until k items are found. Popularity is a `TrendingCounter` with a long half-life, so it is
updated per event like trending.

    pop = SegmentPopularity.from_dataset(ds, events=cfg.events, half_life_hours=720, now=t)
    pop.top(100, {"age_group": "18-24", "country": "BR"}, now=t)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from candgen.config import EventsConfig
from candgen.data.dataset import Dataset
from candgen.errors import ArtifactError
from candgen.idset import first_occurrence
from candgen.sources.activity import EARLY_BOOST
from candgen.sources.base import CandidateSource, UserContext, isin, sum_by_id, thread_rng, top_k, union
from candgen.sources.catalog import Catalog
from candgen.sources.content import TagIndex
from candgen.sources.trending import SegmentRows, TrendingCounter, segment_key
from candgen.types import Candidates

COLD_ATTRIBUTES = ("age_group", "country", "language")


class _ComboVocab(Sequence[str]):
    """Decodes a mixed-radix code of several categorical attributes into "v1|v2|..." lazily."""

    def __init__(self, vocabs: list[list[str]]) -> None:
        self.vocabs = vocabs

    def __len__(self) -> int:
        return int(np.prod([len(v) for v in self.vocabs]))

    def __getitem__(self, code):  # type: ignore[no-untyped-def, override]
        parts = []
        for vocab in reversed(self.vocabs):
            code, r = divmod(int(code), len(vocab))
            parts.append(vocab[r])
        return "|".join(reversed(parts))


class SegmentPopularity:
    """Popular items per attribute-prefix segment, updated per event. Thread-safe (the counter's lock)."""

    def __init__(self, counter: TrendingCounter, *, attributes: Sequence[str] = COLD_ATTRIBUTES,
                 early_boost: bool = False) -> None:
        self.counter, self.attributes = counter, tuple(attributes)
        # engagements count with their user's early boost (what users take up early is what new users will)
        self.early_boost = bool(early_boost)

    def keys_for(self, attributes: Mapping[str, str | None]) -> list[str]:
        """Segment keys of a user, most specific first (prefixes whose attributes are all known)."""
        values: list[str] = []
        for a in self.attributes:
            v = attributes.get(a)
            if not v:
                break
            values.append(v)
        return [segment_key("|".join(self.attributes[:n]), "|".join(values[:n])) for n in range(len(values), 0, -1)]

    def add(self, item: int, weight: float, t: float, attributes: Mapping[str, str | None], *,
            boosted_weight: float | None = None) -> None:
        """One positive engagement; `boosted_weight` (its weight times the user's early boost) counts instead of
        `weight` when this popularity is early-boosted."""
        w = boosted_weight if self.early_boost and boosted_weight is not None else weight
        self.counter.add(item, w, t, self.keys_for(attributes))

    def top(self, k: int, attributes: Mapping[str, str | None], *, now: float,
            exclude: np.ndarray | None = None) -> Candidates:
        """k popular items for this segment: the most specific segment first, then each fallback, then global.
        Scores keep that order (level bonus + the score normalised within its segment)."""
        keys: list[str | None] = [*self.keys_for(attributes), None]
        ids: list[np.ndarray] = []
        scores: list[np.ndarray] = []
        taken = np.zeros(0, np.int64) if exclude is None else exclude.astype(np.int64)
        need = k
        for level, key in enumerate(keys):
            if need <= 0:
                break
            c = self.counter.top(need + len(taken), key, now=now)
            keep = ~isin(c.ids, taken)
            got, sc = c.ids[keep][:need], c.scores[keep][:need].astype(np.float64)
            if not len(got):
                continue
            best = sc[0] if sc[0] > 0 else 1.0
            ids.append(got)
            scores.append(len(keys) - level + sc / best * 0.999)
            taken = np.concatenate([taken, got])
            need -= len(got)
        if not ids:
            return Candidates.empty("cold_start")
        return Candidates(np.concatenate(ids), np.concatenate(scores).astype(np.float32), "cold_start")

    @staticmethod
    def from_dataset(
        ds: Dataset, *, events: EventsConfig, half_life_hours: float, now: float,
        attributes: Sequence[str] = COLD_ATTRIBUTES, max_items_per_segment: int | None = 20_000,
        early_boost: bool = False,
    ) -> SegmentPopularity:
        rows = SegmentRows.from_dataset(ds, events=events, half_life_hours=half_life_hours, now=now,
                                        attributes=attributes, boost=EARLY_BOOST if early_boost else None)
        usable = 0  # prefixes stop at the first attribute the dataset does not have
        while usable < len(rows.attributes) and rows.attributes[usable][0] == attributes[usable]:
            usable += 1
        codes: dict[str, tuple[np.ndarray, Sequence[str]]] = {}
        for n in range(1, usable + 1):
            vocabs = [c.vocab.ids() for _, c in rows.attributes[:n]]
            if any(not v for v in vocabs):
                break
            codes["|".join(attributes[:n])] = (rows.prefix_code(n), _ComboVocab(vocabs))
        counter = rows.counter(codes, half_life_hours=half_life_hours, now=now,
                               max_items_per_segment=max_items_per_segment)
        return SegmentPopularity(counter, attributes=attributes, early_boost=early_boost)

    def save(self, directory: str | Path) -> None:
        self.counter.save(directory, "popularity")
        meta = {"attributes": list(self.attributes), "early_boost": self.early_boost}
        (Path(directory) / "popularity_attributes.json").write_text(json.dumps(meta))

    @staticmethod
    def load(directory: str | Path) -> SegmentPopularity:
        path = Path(directory) / "popularity_attributes.json"
        try:
            meta = json.loads(path.read_text())
            if isinstance(meta, list):  # artifacts written before the early boost: a plain attribute list
                meta = {"attributes": meta, "early_boost": False}
            attrs, boost = [str(a) for a in meta["attributes"]], bool(meta.get("early_boost", False))
        except (FileNotFoundError, ValueError, KeyError, TypeError) as e:
            raise ArtifactError(f"popularity state in {directory} is missing or unreadable: {e}") from None
        return SegmentPopularity(TrendingCounter.load(directory, "popularity"), attributes=attrs, early_boost=boost)


def _interleave(parts: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Merge lists so that every prefix holds them in proportion to their lengths; scores descend from 1."""
    ids, keys = [], []
    for p in parts:
        if len(p):
            ids.append(p)
            keys.append((np.arange(len(p)) + 0.5) / len(p))
    if not ids:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    all_ids, all_keys = np.concatenate(ids), np.concatenate(keys)
    order = np.argsort(all_keys, kind="stable")
    return all_ids[order], (1.0 - all_keys[order]).astype(np.float32)


class ColdStartSource(CandidateSource):
    """The explore-heavy mix for new users: popular in segment, interest-tagged items, random live items.

    Shares come from `SourcesConfig.cold_mix`; without usable interests their share goes to popular. Any
    prefix of the answer holds the three parts in proportion. `is_new(ctx)` says whether the engine should
    treat the user as new (fewer than `new_user_engagements` lifetime engagements)."""

    name = "cold_start"
    inline = True  # a few hundred µs of numpy that holds the GIL: run on the request thread

    def __init__(
        self, popularity: SegmentPopularity, tags: TagIndex, catalog: Catalog, *,
        mix: Mapping[str, float] | None = None, new_user_engagements: int = 10, seed: int | None = None,
    ) -> None:
        self.popularity, self.tags, self.catalog = popularity, tags, catalog
        mix = dict(mix or {"popular": 0.5, "interests": 0.3, "random": 0.2})
        total = sum(mix.values()) or 1.0
        self.mix = {k: mix.get(k, 0.0) / total for k in ("popular", "interests", "random")}
        self.new_user_engagements, self.seed = new_user_engagements, seed

    def is_new(self, ctx: UserContext) -> bool:
        return ctx.n_engagements < self.new_user_engagements

    def _interest_items(self, ctx: UserContext, n: int, exclude: np.ndarray) -> np.ndarray:
        tag_ids = self.catalog.tag_ids(ctx.interests) if ctx.interests else np.zeros(0, np.int64)
        if not len(tag_ids) or n <= 0:
            return np.zeros(0, np.int64)
        m = n + len(exclude)
        lists = [self.tags.items("tag", int(t), m) for t in tag_ids]
        ids, scores = sum_by_id(np.concatenate(lists), np.concatenate([1.0 / np.log2(np.arange(len(x)) + 2.0)
                                                                       for x in lists]))
        live = self.catalog.live(ids)
        ids, _ = top_k(ids[live], scores[live], n, exclude)
        return ids

    def _random_items(self, n: int, exclude: np.ndarray) -> np.ndarray:
        n_items = self.catalog.n_items
        if n <= 0 or not n_items:
            return np.zeros(0, np.int64)
        draw = thread_rng(self.seed).integers(0, n_items, size=min(2 * n + len(exclude), 4 * n_items))
        draw = draw[self.catalog.live(draw)]
        draw = draw[~isin(draw, exclude)]
        return draw[first_occurrence(draw)][:n].astype(np.int64)  # first occurrences keep the random order

    def retrieve(self, ctx: UserContext, k: int) -> Candidates:
        if k <= 0:
            return Candidates.empty(self.name)
        exclude = ctx.exclude.astype(np.int64)
        n_int = int(round(k * self.mix["interests"]))
        interests = self._interest_items(ctx, n_int, exclude)
        n_rand = int(round(k * self.mix["random"]))
        n_pop = k - len(interests) - n_rand  # unused interest slots go to popular
        attrs = {a: ctx.attribute(a) for a in self.popularity.attributes}
        pop = self.popularity.top(n_pop, attrs, now=ctx.now, exclude=union(exclude, interests))
        pop_ids = pop.ids[self.catalog.live(pop.ids)]
        random = self._random_items(k - len(pop_ids) - len(interests),
                                    np.concatenate([exclude, interests, pop_ids]))
        ids, scores = _interleave([pop_ids, interests, random])
        return self.result(ids[:k], scores[:k])
