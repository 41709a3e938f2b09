"""ANN indexes over item embeddings behind one `VectorIndex` interface. Never imports torch."""
