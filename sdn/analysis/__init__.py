"""Analyses over cached per-exit outputs (``outputs.npz``): pure functions of numpy arrays."""
