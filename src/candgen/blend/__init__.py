"""Blending: sources' candidate lists → one ranked list with provenance (merge, filters, diversity, exploration).

Pure functions over numpy arrays; `candgen.blend.pipeline.blend` chains them for the engine.
"""

from candgen.blend.experiments import Experiment, ExperimentError, assign
from candgen.blend.merge import Blended, quota_merge, weighted_merge
from candgen.blend.pipeline import blend

__all__ = ["Blended", "Experiment", "ExperimentError", "assign", "blend", "quota_merge", "weighted_merge"]
