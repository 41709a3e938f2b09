"""Retrieval sources (collaborative, content, trending, social, cold start, new items) and their online state."""

from candgen.sources.base import CandidateSource, UserContext

__all__ = ["CandidateSource", "UserContext"]
