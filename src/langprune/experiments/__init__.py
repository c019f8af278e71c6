"""Experiment grids: declarative sets of run cells (``runs.cell``), run locally or on a cluster."""
