"""Depth analyses (docs/THEORY.md#depth-analyses)."""
