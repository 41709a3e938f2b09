"""The two-tower retrieval model: feature encoding, towers, retrieval losses, training and numpy export.

Only the training modules (`towers`, `losses`, `train`) import torch; `features` and `export` are numpy
only, so serving loads a `TwoTowerModel` without torch.
"""
