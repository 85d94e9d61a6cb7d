"""Figures of the paper, drawn from result files alone (matplotlib, Agg backend)."""

from __future__ import annotations

from dynroute.plots.figures import FIGURE_KINDS, render

__all__ = ["FIGURE_KINDS", "render"]
