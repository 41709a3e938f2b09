"""Datasets: the canonical tables (DESIGN §2), validation, loaders, ID maps, synthetic world, importers, splits."""
