"""Figures of the paper, drawn from result files alone (matplotlib, Agg backend)."""

from __future__ import annotations

import os
from pathlib import Path

from dynroute.plots.figures import FIGURE_KINDS, render

__all__ = ["FIGURE_KINDS", "render", "figures_dir"]


def figures_dir(results_dir: str | os.PathLike[str], scale: str) -> Path:
    return Path(results_dir) / scale / "figures"
