"""Experiment grids: a YAML file of axes that multiply into cells (prune + evaluate), run here or on Ray, resumable,
and rendered into the papers' tables with a verdict on their headline finding."""

from .execute import EXECUTORS, cell_state, run_cell, run_grid, status_counts
from .grid import Cell, Grid, load_grid
from .render import FORMATS, render
from .tables import build_table
from .verdicts import verdict

__all__ = [
    "EXECUTORS",
    "FORMATS",
    "Cell",
    "Grid",
    "build_table",
    "cell_state",
    "load_grid",
    "render",
    "run_cell",
    "run_grid",
    "status_counts",
    "verdict",
]
