"""Blending: sources' candidate lists → one ranked list with provenance (merge, filters, diversity, exploration).

Pure functions over numpy arrays; `candgen.blend.pipeline.blend` chains them for the engine:
filters (`filters.apply_filters`) → normalise + merge (`merge.quota_merge` / `merge.weighted_merge`) →
diversity (`diversity.mmr`, `diversity.apply_caps`) → exploration (`exploration.insert_exploration`) →
fallback (`pipeline.fill_from_fallback`). A/B variants pick the mix (`experiments.choose_mix`).
Tests: tests/unit/test_blend_*.py; speed: benchmarks/blend.py; quality: benchmarks/blend_quality.py.
"""

from candgen.blend.experiments import Experiment, ExperimentError, assign, choose_mix, experiment_from_config
from candgen.blend.merge import Blended, quota_merge, weighted_merge
from candgen.blend.pipeline import blend

__all__ = [
    "Blended", "Experiment", "ExperimentError", "assign", "blend", "choose_mix", "experiment_from_config",
    "quota_merge", "weighted_merge",
]
