"""Offline evaluation: ranking metrics as plain array functions, baseline recommenders, and the
time-split evaluation that puts candgen's sources and blend in one table with the baselines."""
