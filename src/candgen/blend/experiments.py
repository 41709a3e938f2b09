"""A/B experiments on the blend: stable variant assignment by hashing, traffic splits, per-variant source mixes.

A user's variant is a pure function of (experiment name, user id): blake2b of the two gives a uniform
number in [0, 1) that falls into one variant's slice of the traffic split. The same user always gets the
same variant, on every worker and after restarts, with no state; a new experiment name reshuffles users
independently of earlier experiments.

Config shape (`[blend.experiment]` in the TOML config):

    [blend.experiment]
    name = "social-boost"
    [blend.experiment.variants]          # traffic split, sums to 1
    control = 0.5
    more_social = 0.5
    [blend.experiment.mixes.more_social] # optional; a variant without a mix uses the default mix
    collaborative = 0.3
    content = 0.3
    trending = 0.2
    social = 0.2
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from candgen.errors import CandgenError

DEFAULT_SOURCES = ("collaborative", "content", "trending", "social")
_SPLIT_TOLERANCE = 1e-6


class ExperimentError(CandgenError, ValueError):
    """An experiment config that cannot be run (bad split, unknown source, missing field)."""


def bucket(user_id: str, experiment_name: str) -> float:
    """A uniform number in [0, 1) fixed by (experiment name, user id)."""
    digest = hashlib.blake2b(f"{experiment_name}\x1f{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


@dataclass(frozen=True)
class Experiment:
    """An experiment: `variants` maps variant name to its share of traffic; `mixes` the source mix per variant.

    >>> e = Experiment("t", {"a": 0.5, "b": 0.5}, {"b": {"social": 1.0}})
    >>> assign("user-1", e) in ("a", "b")
    True
    """

    name: str
    variants: dict[str, float]
    mixes: dict[str, dict[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _validate(self.name, self.variants, self.mixes, known_sources=None)

    def mix_for(self, variant: str, default: Mapping[str, float]) -> dict[str, float]:
        """The source mix of `variant`, or `default` when the experiment gives it none."""
        if variant not in self.variants:
            raise ExperimentError(f"experiment '{self.name}' has no variant '{variant}'")
        return dict(self.mixes.get(variant, default))

    @classmethod
    def from_config(cls, d: Mapping[str, Any], *, known_sources: Iterable[str] = DEFAULT_SOURCES) -> Experiment:
        """Build and validate from a config table (`{name, variants, mixes}`); errors name the bad field."""
        if not isinstance(d, Mapping):
            raise ExperimentError(f"experiment: expected a table with name, variants and mixes, got {d!r}")
        unknown = set(d) - {"name", "variants", "mixes"}
        if unknown:
            raise ExperimentError(f"experiment: unknown key(s) {sorted(unknown)}; known: mixes, name, variants")
        name = d.get("name")
        variants = d.get("variants")
        mixes = d.get("mixes", {})
        if not isinstance(variants, Mapping) or not variants:
            raise ExperimentError(f"experiment.variants: expected a table of variant = traffic share, got {variants!r}")
        if not isinstance(mixes, Mapping) or not all(isinstance(m, Mapping) for m in mixes.values()):
            raise ExperimentError(f"experiment.mixes: expected a table of variant = {{source = weight}}, got {mixes!r}")
        split = {str(v): _number(s, f"experiment.variants.{v}") for v, s in variants.items()}
        mix_tables = {
            str(v): {str(src): _number(w, f"experiment.mixes.{v}.{src}") for src, w in m.items()}
            for v, m in mixes.items()
        }
        _validate(name, split, mix_tables, known_sources=tuple(known_sources))
        return cls(str(name), split, mix_tables)


def _number(x: Any, where: str) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise ExperimentError(f"{where}: expected a number, got {x!r}")
    return float(x)


def _validate(
    name: Any, variants: Mapping[str, float], mixes: Mapping[str, Mapping[str, float]],
    *, known_sources: tuple[str, ...] | None,
) -> None:
    if not isinstance(name, str) or not name.strip():
        raise ExperimentError(f"experiment.name: expected a non-empty string, got {name!r}")
    if not variants:
        raise ExperimentError(f"experiment '{name}': needs at least one variant")
    for v, share in variants.items():
        share = _number(share, f"experiment.variants.{v}")
        if not (math.isfinite(share) and 0.0 <= share <= 1.0):
            raise ExperimentError(f"experiment.variants.{v}: traffic share must be in [0, 1], got {share}")
    total = sum(variants.values())
    if abs(total - 1.0) > _SPLIT_TOLERANCE:
        raise ExperimentError(f"experiment '{name}': traffic shares must sum to 1, they sum to {total:g}")
    for v, mix in mixes.items():
        if v not in variants:
            raise ExperimentError(f"experiment.mixes.{v}: no such variant; variants: {', '.join(variants)}")
        if known_sources is not None:
            unknown = [s for s in mix if s not in known_sources]
            if unknown:
                raise ExperimentError(
                    f"experiment.mixes.{v}: unknown source(s) {', '.join(unknown)}; known: {', '.join(known_sources)}"
                )
        for s, w in mix.items():
            _number(w, f"experiment.mixes.{v}.{s}")
        bad = [f"{s}={w}" for s, w in mix.items() if not (math.isfinite(w) and w >= 0)]
        if bad:
            raise ExperimentError(f"experiment.mixes.{v}: weights must be >= 0, got {', '.join(bad)}")
        if not mix or sum(mix.values()) <= 0:
            raise ExperimentError(f"experiment.mixes.{v}: needs at least one source with a positive weight")


def assign(user_id: str, experiment: Experiment) -> str:
    """The variant of `user_id` in `experiment`: stable, and split by the traffic shares."""
    u = bucket(user_id, experiment.name)
    acc = 0.0
    last = ""
    for variant, share in experiment.variants.items():
        if share <= 0:
            continue
        acc += share
        last = variant
        if u < acc:
            return variant
    return last  # float rounding left u just above the summed shares


def experiment_from_config(d: Mapping[str, Any] | None, *, known_sources: Iterable[str] = DEFAULT_SOURCES
                           ) -> Experiment | None:
    """The experiment of `BlendConfig.experiment`, or None when the table is empty (no experiment running)."""
    if not d:
        return None
    return Experiment.from_config(d, known_sources=known_sources)


def choose_mix(
    user_id: str, experiment: Experiment | None, default: Mapping[str, float]
) -> tuple[str, dict[str, float]]:
    """`(variant, mix)` for this user: the assigned variant's mix, or `("", default)` with no experiment."""
    if experiment is None:
        return "", dict(default)
    variant = assign(user_id, experiment)
    return variant, experiment.mix_for(variant, default)
