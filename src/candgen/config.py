"""The typed config tree: defaults in code, an optional TOML file, explicit environment overrides.

`load_config(path)` reads a TOML file whose tables mirror the dataclasses below ([events], [model],
[index], [sources], ...) and validates it; `CANDGEN_<SECTION>__<FIELD>` environment variables override
single values (e.g. `CANDGEN_MODEL__EPOCHS=3`). `Config.digest(section)` gives a stable hash of one
section so that anything cached from it goes stale when it changes. Imports nothing else of candgen's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

POSITIVE_EVENTS = ("view", "click", "like", "share", "purchase", "rating", "play")
NEGATIVE_EVENTS = ("hide", "dislike", "block")
EXPOSURE_EVENTS = ("impression",)
KNOWN_EVENTS = POSITIVE_EVENTS + NEGATIVE_EVENTS + EXPOSURE_EVENTS


@dataclass
class EventsConfig:
    """Weight of each positive event (the seed's: view 1, click 2, like 3, share 5)."""

    weights: dict[str, float] = field(
        default_factory=lambda: {
            "view": 1.0, "click": 2.0, "like": 3.0, "share": 5.0, "purchase": 5.0, "rating": 1.0, "play": 1.0,
        }
    )
    # ratings (MovieLens) below this value count as negative feedback (hard negatives), not engagement
    rating_negative_below: float = 2.5


@dataclass
class ModelConfig:
    dim: int = 64
    epochs: int = 20
    batch_size: int = 256  # measured: 256 beat 1024 on MovieLens recall@100 (more steps per epoch)
    learning_rate: float = 0.005
    weight_decay: float = 0.0
    temperature: float = 0.1  # measured with batch 256: 0.1 beat 0.05 on MovieLens recall@100
    loss: str = "softmax"  # softmax | contrastive | triplet
    margin: float = 0.2  # cosine margin of the contrastive and triplet losses
    logq_correction: bool = True
    random_negatives: int = 256
    hard_negatives: bool = True
    history_len: int = 50
    id_buckets: int = 1_000_000
    id_dropout: float = 0.1
    patience: int = 3
    eval_k: int = 100
    # early stopping's validation recall is estimated on at most this many users (0: all of them): each one is
    # scored against the whole catalog, which at 1M items made one validation pass take minutes
    valid_users: int = 5000
    seed: int = 0
    threads: int = 0  # 0: torch's default
    # assemble batches in a forked process (Linux) rather than a thread: numpy batch code and the torch step hold
    # the GIL in turns, so a thread barely overlaps them (benchmarks/README.md, "training")
    batch_process: bool = True


@dataclass
class IndexConfig:
    backend: str = "auto"  # auto | flat | hnsw | ivfpq | ivf | milvus
    exact_below: int = 50_000  # auto: exact flat search for catalogs smaller than this
    hnsw_m: int = 32
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int = 1000
    ivf_nlist: int = 0  # 0: ~4*sqrt(n)
    ivf_nprobe: int = 64
    pq_m: int = 32
    rerank_factor: int = 4
    threads: int = 1  # OpenMP threads per search; 1 is fastest for single queries
    milvus_uri: str = "http://127.0.0.1:19530"
    # train: sweep efSearch / nprobe and keep the cheapest setting whose recall@k against exact search
    # reaches target_recall (approximate backends only; what `candgen tune-index` does)
    tune_at_train: bool = True
    target_recall: float = 0.95


@dataclass
class SourcesConfig:
    """Share of the final list each source is given, and per-source deadlines."""

    mix: dict[str, float] = field(
        default_factory=lambda: {"collaborative": 0.4, "content": 0.3, "trending": 0.2, "social": 0.1}
    )
    deadline_ms: dict[str, float] = field(
        default_factory=lambda: {"collaborative": 30.0, "content": 30.0, "trending": 30.0, "social": 30.0,
                                 "cold_start": 30.0, "new_items": 30.0}
    )
    trending_half_life_hours: float = 6.0
    popular_half_life_hours: float = 720.0  # segment popularity (cold start): engagement decayed over ~a month
    # segment popularity counts each engagement with its user's early boost (5x for a user's first 10, 2x for
    # the next 40): new users are served what users take up early in their lives, not what veterans binge
    popular_early_boost: bool = True
    social_window_hours: float = 72.0
    recent_history: int = 50
    cold_mix: dict[str, float] = field(default_factory=lambda: {"popular": 0.5, "interests": 0.3, "random": 0.2})
    # the blend's mix for new users (fewer than `new_user_engagements`): cold start leads
    cold_user_mix: dict[str, float] = field(
        default_factory=lambda: {"cold_start": 0.6, "trending": 0.2, "collaborative": 0.1, "content": 0.1}
    )
    new_user_engagements: int = 10
    # each source is asked for its share of k times this (capped at k): slack for filters and for the quota
    # that short sources leave to the others
    overfetch: float = 2.0
    # at train time, choose the trending/popularity half-life and the mixes on a held-out slice of the
    # training log (candgen.calibrate); off: use the values above as they are
    calibrate: bool = True
    new_item_budget: int = 1000
    new_item_max_age_hours: float = 48.0


@dataclass
class BlendConfig:
    # quota | weighted | calibrated (rank fusion by the rank curves) | ordered (quota membership, ordered by the
    # rank curves); the train-time calibration picks per cohort (`cohort_strategy`)
    strategy: str = "quota"
    # the strategy for one cohort ("warm", "cold": users the engine treats as new), overriding `strategy`
    cohort_strategy: dict[str, str] = field(default_factory=dict)
    max_per_creator: int = 0  # 0: no cap
    max_per_category: int = 0
    mmr_lambda: float = 0.0  # 0: MMR off
    exploration_fraction: float = 0.02  # share of k reserved for new items chosen by the bandit
    normalization: str = "rank"  # rank | percentile | minmax | zscore | none (candgen.blend.normalize)
    diversity_pool: float = 2.0  # with caps or MMR, merge this many times k and pick k from them
    # A/B experiment (candgen.blend.experiments): {name, variants: {variant: share}, mixes: {variant: {source: w}}}
    experiment: dict[str, Any] = field(default_factory=dict)
    # rank curves of the calibrated fusion (candgen.blend.fusion), per cohort ("warm", "cold") and source:
    # the measured hit rate at each rank bin; written by the train-time calibration
    rank_curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)


@dataclass
class CacheConfig:
    l1_ttl_s: float = 300.0
    l2_ttl_s: float = 3600.0
    l3_refresh_s: float = 600.0
    l3_top_fraction: float = 0.10
    l1_max_entries: int = 100_000
    l2_max_entries: int = 1_000_000
    l3_max_entries: int = 1_000_000  # embedded caches only (Redis bounds memory with its own maxmemory policy)


@dataclass
class ServeConfig:
    request_deadline_ms: float = 100.0
    max_k: int = 10_000
    max_batch: int = 10_000
    max_body_bytes: int = 10 * 1024 * 1024
    ann_recall_sample_every: int = 100
    ann_recall_max_share: float = 0.02  # the sampled exact searches use at most this share of one core
    engine_in_threadpool: bool = True  # call the engine in a worker thread, never blocking the event loop
    max_in_flight: int = 256  # engine calls at once per worker before shedding with 503
    # uncached list computations at once per worker (candgen.admission); later requests queue, and one whose
    # expected wait would exceed request_deadline_ms is refused with 503 + Retry-After; 0: no limit. Not 1: one
    # slot gains ~10% throughput when the load is spread evenly over the workers, but a worker that holds more
    # than its share of the keep-alive connections then refuses most of them (benchmarks/README "two workers")
    compute_slots: int = 2
    # online engagement attribution (serve/attribution.py): 1 user in N, their last list, for ttl seconds
    attribution_sample_every: int = 10
    attribution_users: int = 1000  # 0: off
    attribution_ttl_s: float = 3600.0
    # BLAS threads per worker process (numpy's and FAISS's OpenBLAS; 0: the libraries' default, one per core).
    # The request path brings its own parallelism (the source pool, several workers): BLAS threads that fan
    # out a sampled exact search over every core only take cores from the requests running meanwhile (1M items,
    # one client, 6 alternated pairs: p99 median 11.6 ms with 1 thread against 13.2 ms with the default 2,
    # lower in 5 of 6; two workers under 8 clients: within noise; benchmarks/README "BLAS threads")
    blas_threads: int = 1


@dataclass
class StateConfig:
    """Snapshots of the shared write log (candgen.snapshot): a background job, one worker at a time, folds
    the log into a snapshot once `snapshot_every_records` records arrived since the last one, or once
    `snapshot_every_s` seconds passed with at least one new record (0 turns a trigger off; both 0: no job),
    checking every `snapshot_check_s` seconds; then it trims the log up to the snapshot before it. A
    restart loads the newest snapshot and replays only the records after it."""

    snapshot_every_records: int = 100_000
    snapshot_every_s: float = 3600.0
    snapshot_check_s: float = 30.0
    # snapshots of other artifacts (older models) hold trimming back until they are this old, then are deleted
    snapshot_retire_s: float = 7 * 86400.0
    # events accepted while the shared log is unreachable wait in a local SQLite spool (candgen.state.spool)
    # and are appended once it answers again; off: such writes answer 503. "" = <artifacts>/spool
    spool: bool = True
    spool_dir: str = ""
    spool_max_records: int = 1_000_000


@dataclass
class Config:
    events: EventsConfig = field(default_factory=EventsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    sources: SourcesConfig = field(default_factory=SourcesConfig)
    blend: BlendConfig = field(default_factory=BlendConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    state: StateConfig = field(default_factory=StateConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self, section: str | None = None) -> str:
        """A short stable hash of the whole config or of one section."""
        d = self.to_dict() if section is None else self.to_dict()[section]
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        return _build(cls, d, "config")


class ConfigError(ValueError):
    """A config file or override that does not fit the config tree."""


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return _build(tp, value, where)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        _, vt = typing.get_args(tp)
        return {str(k): _coerce(vt, v, f"{where}.{k}") for k, v in value.items()}
    if origin in (types.UnionType, typing.Union):
        return value
    if tp is bool:
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp in (int, float, str):
        try:
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}") from None
    return value


def _build(cls: Any, d: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(names)}")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in d.items()}
    return cls(**kwargs)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


CONFIG_ENV = "CANDGEN_CONFIG"  # the serve-time config file of `candgen serve --config`, for every worker
SERVE_TIME_SECTIONS = ("serve",)  # what a serving process may set over its artifacts' config (`serve_time_config`)


def _layers(path: str | Path | None, env: dict[str, str] | None) -> tuple[dict[str, Any], dict[str, dict[str, str]]]:
    """The TOML file at `path` (empty without one) and the `CANDGEN_<SECTION>__<FIELD>` variables of `env`
    (default `os.environ`), by section; ConfigError for a missing or malformed file or an unknown section."""
    toml: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            toml = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {p} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {p} is not valid TOML: {e}") from None
    sections = Config().to_dict()
    by_section: dict[str, dict[str, str]] = {}
    for key, value in (dict(os.environ) if env is None else env).items():
        if not key.startswith("CANDGEN_") or "__" not in key:
            continue
        section, _, name = key[len("CANDGEN_"):].lower().partition("__")
        if not isinstance(sections.get(section), dict):
            raise ConfigError(f"environment {key}: no config section '{section}'")
        by_section.setdefault(section, {})[name] = value
    return toml, by_section


def _from_layers(toml: dict[str, Any], variables: dict[str, dict[str, str]]) -> Config:
    d = _merge(Config().to_dict(), toml)
    for section, values in variables.items():
        d[section].update(values)
    return Config.from_dict(d)


def load_config(path: str | Path | None = None, env: dict[str, str] | None = None) -> Config:
    """Defaults, then the TOML file at `path` (if any), then `CANDGEN_<SECTION>__<FIELD>` overrides."""
    return _from_layers(*_layers(path, env))


def serve_time_config(artifacts_config: dict[str, Any], path: str | Path | None = None,
                      env: dict[str, str] | None = None) -> Config:
    """The config a serving process runs with: its artifacts' config (`Manifest.config`), with the settings of
    `SERVE_TIME_SECTIONS` that the TOML file at `path` or `CANDGEN_SERVE__<FIELD>` variables set explicitly
    on top (validated like `load_config`). Settings the file and environment do not name keep the artifacts'
    values, so limits chosen at training time are not reset to the defaults."""
    toml, variables = _layers(path, env)
    full = _from_layers(toml, variables)  # validates the file and the environment as a whole
    over: dict[str, Any] = {}
    for section in SERVE_TIME_SECTIONS:
        named = set(toml.get(section) or {}) | set(variables.get(section, {}))
        if named:
            values = dataclasses.asdict(getattr(full, section))
            over[section] = {name: values[name] for name in named}
    return Config.from_dict(_merge(artifacts_config, over))
