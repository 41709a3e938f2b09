"""Datasets: the canonical tables (DESIGN §2), validation, loaders, ID maps, synthetic world, importers, splits.

- `dataset`: the in-memory `Dataset` (dense ids, `Interactions`, `IdMap`, `Csr`, `Categorical`).
- `io`: `load_dataset`, `validate_dataset` (-> `DatasetSummary`), `write_dataset`, `read_tables`.
- `split`: `time_split`, `random_split` (-> `Split` with warm and cold test users).
- `synthetic`: `generate_world` (-> `WorldSummary`), the planted-structure world of `candgen generate`.
- `movielens`: `import_movielens` (100K, 1M, latest, latest-small; directory or zip).
- `fetch`: `fetch_dataset` (download, checksum, import).
"""
