"""Experiments: the baseline / Full / Block comparison, plots and reports."""
