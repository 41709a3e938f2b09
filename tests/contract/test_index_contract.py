"""Every FAISS backend passes the `VectorIndexContract` mixin; each class only says how to build itself."""

from __future__ import annotations

from index_contract import VectorIndexContract

from candgen.index.base import VectorIndex
from candgen.index.flat import FlatIndex
from candgen.index.hnsw import HNSWIndex
from candgen.index.ivf import IVFIndex, IVFPQIndex


class TestFlatIndex(VectorIndexContract):
    def make(self, dim: int) -> VectorIndex:
        return FlatIndex(dim=dim, threads=2)


class TestHNSWIndex(VectorIndexContract):
    tuned_params = {"ef_search": 77}

    def make(self, dim: int) -> VectorIndex:
        return HNSWIndex(dim=dim, m=12, ef_construction=40, ef_search=128)


class TestIVFIndex(VectorIndexContract):
    tuned_params = {"nprobe": 9}

    def make(self, dim: int) -> VectorIndex:
        return IVFIndex(dim=dim, nlist=0, nprobe=32)


class TestIVFPQIndex(VectorIndexContract):
    tuned_params = {"nprobe": 9, "rerank_factor": 3}

    def make(self, dim: int) -> VectorIndex:
        return IVFPQIndex(dim=dim, nlist=0, nprobe=32, pq_m=4, pq_nbits=6, rerank_factor=8)
