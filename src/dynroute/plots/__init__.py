"""Figures of the paper, drawn from result files alone (matplotlib, Agg backend).

``FIGURE_KINDS`` is plain data, so the command line lists the kinds without loading
matplotlib; ``dynroute.plots.figures.render`` draws them.
"""

FIGURE_KINDS = (
    "acc-eff",
    "dataflow",
    "training-dataflow",
    "histograms",
    "policies",
    "guarantees",
    "all",
)
