"""Depth analyses (spec attnres.md §14)."""
