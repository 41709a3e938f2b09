"""candgen: candidate generation for recommender systems.

Per request, narrow a catalog of millions of items to ~1000 personalised candidates from several
retrieval sources (collaborative two-tower ANN, content, trending, social, cold start), blended
with provenance, in a few milliseconds.
"""

__version__ = "0.1.0"
