"""ANN indexes over item embeddings behind one `VectorIndex` interface. Never imports torch.

`open_index(kind, dim, **params)`, `load_index(path, mmap=...)` and `choose_index(n, dim, config)`
are the entry points; backends: `FlatIndex` (exact), `HNSWIndex`, `IVFIndex`, `IVFPQIndex`, Milvus.
"""

from candgen.index.base import VectorIndex
from candgen.index.registry import choose_index, load_index, open_index, update_search_params

__all__ = ["VectorIndex", "choose_index", "load_index", "open_index", "update_search_params"]
