"""Figures 5–10 of the paper and routing histograms, from ``results/<scale>/`` files.

Every function takes the loaded results (experiment -> network -> result document, see
``dynroute.experiments.results``) and writes PNG and PDF; none touches a checkpoint or
a dataset, so figures redraw from committed results anywhere.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Wedge  # noqa: E402

from dynroute.core.errors import DynrouteError  # noqa: E402
from dynroute.experiments.results import (  # noqa: E402
    curve,
    learned_macs,
    load_results,
    load_studies,
    policy_analyses,
    result_class_names,
    study_label,
)
from dynroute.io.atomic import make_folder, write_atomic  # noqa: E402
from dynroute.policies.curves import frontier_errors  # noqa: E402

Results = dict[str, dict[str, dict[str, Any]]]

#: Figure 5's panels: the static baseline and the dynamic experiments compared with it.
ACC_EFF_FIGURES: dict[str, list[tuple[str, str, list[str]]]] = {
    "figure5": [
        (
            "strategies",
            "hybrid-static",
            ["hybrid-actor", "hybrid-critic", "hybrid-critic-optimistic"],
        ),
        (
            "critic variants",
            "hybrid-static",
            ["hybrid-critic", "hybrid-critic-clserr", "hybrid-critic-notalr"],
        ),
        (
            "actor ablations",
            "hybrid-static",
            [
                "hybrid-actor",
                "hybrid-actor-notalr",
                "hybrid-actor-nokdec",
                "hybrid-actor-regpolicy",
            ],
        ),
        (
            "tree and dynamic k_cpt",
            "hybrid-static",
            ["hybrid-actor", "hybrid-actor-tree", "hybrid-actor-dynkcpt", "hybrid-critic-dynkcpt"],
        ),
    ],
    "figure9": [(f"CIFAR-{n}", f"cifar{n}-static", [f"cifar{n}-actor"]) for n in (2, 5, 10)],
    "figure10": [
        ("width x1", "cifar10-static", ["cifar10-actor"]),
        ("width x2", "cifar10-static-width2", ["cifar10-actor-width2"]),
        ("width x3", "cifar10-static-width3", ["cifar10-actor-width3"]),
    ],
    # Not in the paper: a backbone it never used, split at its stages.
    "resnet18": [
        ("ResNet-18 exits, CIFAR-10", "cifar10-resnet18-static", ["cifar10-resnet18-actor"])
    ],
}
#: Dataflow diagrams: figure 6 (actor chains) and figure 7 (actor tree).
DATAFLOW_FIGURES = {"figure6": "hybrid-actor", "figure7": "hybrid-actor-tree"}
#: Figure 8 draws training dataflow for these experiments (first one present wins).
TRAINING_DATAFLOW_EXPERIMENTS = ("hybrid-actor", "cifar10-actor")
#: Dataflow diagrams with more exits than this are drawn taller and for every other k_cpt.
CHAIN_DIAGRAM_EXITS = 12


#: File formats figures are written in: PNG by default (what the report and docs link);
#: ``render(..., formats=("png", "pdf"))`` adds vector copies on demand.
FORMATS = ("png", "pdf", "svg")
_formats: tuple[str, ...] = ("png",)


def save(fig: plt.Figure, out_dir: Path, name: str) -> list[Path]:
    """Write ``fig`` in every format asked for, each file whole or not at all."""
    try:
        make_folder(out_dir, "figure folder")
        paths = [out_dir / f"{name}.{suffix}" for suffix in _formats]
        for path in paths:
            # No creation date in the PDF: the same results give byte-identical files.
            metadata = {"CreationDate": None} if path.suffix == ".pdf" else None
            write_atomic(
                path,
                lambda f, path=path, metadata=metadata: fig.savefig(
                    f, format=path.suffix[1:], dpi=120, bbox_inches="tight", metadata=metadata
                ),
            )
    finally:
        plt.close(fig)
    return paths


def _panels(count: int, width: float = 4.5, height: float = 3.6) -> tuple[plt.Figure, list]:
    fig, axes = plt.subplots(1, count, figsize=(width * count, height), squeeze=False)
    return fig, list(axes[0])


# ---------------------------------------------------------------- accuracy / efficiency
def plot_acc_eff(results: Results, out_dir: Path) -> list[Path]:
    """Error rate vs mean MACs: static curve (and its frontier, where a deeper net is worse than
    a cheaper one) and one curve per dynamic experiment."""
    paths: list[Path] = []
    for figure, panels in ACC_EFF_FIGURES.items():
        present = [p for p in panels if p[1] in results or any(e in results for e in p[2])]
        if not present:
            continue
        fig, axes = _panels(len(present))
        for ax, (title, static, dynamic) in zip(axes, present, strict=True):
            for name, style in [(static, "k--o"), *((name, "-o") for name in dynamic)]:
                if name in results:
                    pts = curve(results[name])
                    x, y = [p.mean_macs / 1e6 for p in pts], [p.error for p in pts]
                    ax.plot(x, y, style, ms=3, label=name)
                    if name == static and frontier_errors(pts) != y:
                        # The claims compare against this, not the dip of worse deeper nets.
                        ax.plot(x, frontier_errors(pts), color="0.6", lw=1, label="its frontier")
            ax.set(title=title, xlabel="mean MACs (millions)", ylabel="error rate")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        paths += save(fig, out_dir, f"{figure}-acc-eff")
    return paths


# ---------------------------------------------------------------- dataflow diagrams
def _layout(nodes: list[dict[str, Any]]) -> dict[int, tuple[float, float]]:
    """x = depth in columns, y = leaf order, so a chain is a row and a tree fans out."""
    children: dict[int, list[int]] = {}
    for node in nodes:
        children.setdefault(node["parent"], []).append(node["index"])
    position: dict[int, tuple[float, float]] = {}
    next_row = [0.0]

    def place(index: int, depth: int) -> float:
        kids = children.get(index, [])
        columns = [k for k in kids if not nodes[k]["is_leaf"]]
        exits = [k for k in kids if nodes[k]["is_leaf"]]
        if columns:
            ys = [place(k, depth + 1) for k in columns]
            y = float(np.mean(ys))
        else:
            y = next_row[0]
            next_row[0] += 1
        position[index] = (depth, y)
        for k in exits:
            position[k] = (depth + 0.5, y - 0.4 if columns else y)
        return y

    for root in children.get(-1, []):
        place(root, 0)
    return position


def _class_colours(count: int) -> list:
    return [plt.get_cmap("tab10")(i % 10) for i in range(count)]


def draw_dataflow(ax: plt.Axes, point: dict[str, Any], colour_by: str, scale: float) -> None:
    """Node-link diagram of one evaluation; circle area = fraction classified at that exit."""
    nodes = point["nodes"]
    pos = _layout(nodes)
    for node in nodes:
        if node["parent"] >= 0:
            (x0, y0), (x1, y1) = pos[node["parent"]], pos[node["index"]]
            ax.plot([x0, x1], [y0, y1], color="0.6", lw=0.5 + 3 * node["reached"], zorder=1)
    cmap = plt.get_cmap("viridis")
    for node in nodes:
        x, y = pos[node["index"]]
        if not node["is_leaf"]:
            ax.plot(x, y, "s", color="0.3", ms=3, zorder=2)
            continue
        radius = scale * math.sqrt(node["classified"])
        if radius <= 0:
            continue
        if colour_by == "accuracy":
            acc = node["accuracy"] if node["accuracy"] is not None else 0.0
            ax.add_patch(plt.Circle((x, y), radius, color=cmap(acc), zorder=3))
        else:
            counts = np.asarray(node["class_counts"], dtype=float)
            start = 90.0
            for share, colour in zip(
                counts / max(counts.sum(), 1), _class_colours(len(counts)), strict=True
            ):
                ax.add_patch(
                    Wedge((x, y), radius, start, start + 360 * share, color=colour, zorder=3)
                )
                start += 360 * share
    ax.set_aspect("equal")
    ax.autoscale_view()
    ax.axis("off")


def plot_dataflow(results: Results, out_dir: Path) -> list[Path]:
    """Figures 6 and 7: one row per k_cpt, coloured by accuracy (left) and class (right)."""
    paths: list[Path] = []
    for figure, experiment in DATAFLOW_FIGURES.items():
        if experiment not in results:
            continue
        rows = [(r["network"], p) for r in results[experiment].values() for p in r["points"]]
        rows.sort(key=lambda row: row[1]["k_cpt"] or 0.0)
        nodes = rows[0][1]["nodes"]
        tree = sum(n["is_leaf"] for n in nodes) > CHAIN_DIAGRAM_EXITS
        if tree and len(rows) > 4:  # a tree diagram is large: every other k_cpt, as in
            rows = rows[::2]  # the paper's figure 7
        height = 2.5 if tree else 0.9
        fig, axes = plt.subplots(
            len(rows), 2, figsize=(12, height * len(rows) + 0.6), squeeze=False
        )
        for (_network, point), (left, right) in zip(rows, axes, strict=True):
            for ax, colour_by in ((left, "accuracy"), (right, "class")):
                draw_dataflow(ax, point, colour_by, scale=0.45)
            left.set_title(
                f"k_cpt = {point['k_cpt']:g}  (acc {point['accuracy']:.3f}, "
                f"{point['mean_macs'] / 1e6:.1f} M MACs)",
                fontsize=8,
                loc="left",
            )
        sm = plt.cm.ScalarMappable(cmap="viridis", norm=plt.Normalize(0, 1))
        # beside the class panels, clear of the row titles of the accuracy panels
        fig.colorbar(sm, ax=axes.ravel().tolist(), fraction=0.015, pad=0.02, label="exit accuracy")
        classes = len(rows[0][1]["nodes"][-1]["class_counts"])
        names = result_class_names(next(iter(results[experiment].values())))
        handles = [
            plt.Line2D([], [], marker="o", ls="", color=c, label=str(n))
            for n, c in zip(names, _class_colours(classes), strict=False)
        ]
        axes[0, 1].legend(
            handles=handles, fontsize=6, ncol=5, loc="lower left", bbox_to_anchor=(0, 1.05)
        )
        fig.suptitle(f"{figure}: dataflow of {experiment}")
        paths += save(fig, out_dir, f"{figure}-dataflow")
    return paths


# ---------------------------------------------------------------- training dataflow
def plot_training_dataflow(results: Results, out_dir: Path, panels: int = 4) -> list[Path]:
    """Figure 8: fraction classified at each exit (columns) over training (rows)."""
    experiment = next((e for e in TRAINING_DATAFLOW_EXPERIMENTS if e in results), None)
    if experiment is None:
        return []
    chosen = sorted(results[experiment].values(), key=lambda r: r["points"][0]["k_cpt"] or 0)
    step = max(1, len(chosen) // panels)
    chosen = chosen[::step][:panels]
    fig, axes = _panels(len(chosen), width=3.2, height=3.4)
    image = None
    for ax, result in zip(axes, chosen, strict=True):
        grid = np.array([rec["points"][0]["classified"] for rec in result["metrics"]])
        iterations = [rec["iteration"] for rec in result["metrics"]]
        image = ax.imshow(
            grid,
            aspect="auto",
            cmap="magma",
            vmin=0,
            vmax=1,
            origin="lower",
            extent=(0.5, grid.shape[1] + 0.5, 0, len(iterations)),
        )
        ax.set_yticks(np.arange(len(iterations)) + 0.5, [str(i) for i in iterations], fontsize=6)
        ax.set(title=f"k_cpt = {result['points'][0]['k_cpt']:g}", xlabel="exit", ylabel="iteration")
    if image is not None:
        fig.colorbar(image, ax=axes, label="fraction classified")
    fig.suptitle(f"figure8: dataflow over training, {experiment}")
    return save(fig, out_dir, "figure8-training-dataflow")


# ---------------------------------------------------------------- routing histograms
def plot_histograms(results: Results, out_dir: Path) -> list[Path]:
    """Per dynamic experiment: fraction classified at each exit, one bar group per network."""
    paths: list[Path] = []
    for experiment, networks in results.items():
        rows = [(p["k_cpt"], p) for r in networks.values() for p in r["points"]]
        rows = [row for row in rows if row[0] is not None]
        if not rows:
            continue
        rows.sort(key=lambda row: row[0])
        exits = [n["name"] for n in rows[0][1]["nodes"] if n["is_leaf"]]
        fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(exits) * len(rows) / 4), 3.5))
        width = 0.8 / len(rows)
        for i, (k, point) in enumerate(rows):
            shares = [n["classified"] for n in point["nodes"] if n["is_leaf"]]
            ax.bar(np.arange(len(exits)) + i * width, shares, width, label=f"k_cpt {k:g}")
        ax.set_xticks(np.arange(len(exits)) + 0.4, exits, rotation=90, fontsize=6)
        ax.set(ylabel="fraction classified", title=f"routing histogram: {experiment}")
        ax.legend(fontsize=6, ncol=2)
        paths += save(fig, out_dir, f"histogram-{experiment}")
    return paths


# ---------------------------------------------------------------- routing policies
POLICY_STYLES = {
    "confidence": ("-", "tab:blue"),
    "entropy": ("-", "tab:green"),
    "oracle": (":", "tab:gray"),
}


def draw_policy_curves(
    ax: plt.Axes, analysis: dict[str, Any], title: str = "", legend: bool = True
) -> None:
    """Accuracy vs mean MACs of every policy on one network's exits."""
    for name, (style, colour) in POLICY_STYLES.items():
        points = sorted(analysis[name], key=lambda p: p["mean_macs"])
        ax.plot(
            [p["mean_macs"] / 1e6 for p in points],
            [p["accuracy"] for p in points],
            style,
            color=colour,
            lw=1.2,
            label=name if name != "oracle" else "oracle (bound)",
        )
    single, learned = analysis["single_exit"], analysis["learned"]
    for points, style, extra in (
        (single, "k--s", {"ms": 3, "lw": 0.8, "label": "single exit (static)"}),
        (learned, "r*", {"ms": 9, "label": "learned routers"}),
    ):
        if not points:  # a multi-exit net has no learned point
            continue
        ax.plot(
            [p["mean_macs"] / 1e6 for p in points], [p["accuracy"] for p in points], style, **extra
        )
    accuracies = [p["accuracy"] for p in (*single, *learned)]
    ax.set_ylim(max(0.0, min(accuracies) - 0.05), min(1.0, max(accuracies) + 0.02))
    ax.set(xlabel="mean MACs (millions)", ylabel="accuracy", title=title)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=7, loc="lower right")


def plot_policy_curves(analysis: dict[str, Any], out_dir: Path, name: str) -> list[Path]:
    fig, (ax,) = _panels(1, width=5.5, height=4.2)
    draw_policy_curves(ax, analysis, f"{name} ({analysis['split']})")
    return save(fig, out_dir, name)


def plot_policies(results: Results, out_dir: Path, columns: int = 4) -> list[Path]:
    """Per experiment, every policy's curve on each network's exits; and the routing quality
    (share of the static-to-oracle MAC gap the learned routers close) of every network."""
    analyses = policy_analyses(results)
    paths: list[Path] = []
    for experiment, networks in analyses.items():
        ordered = sorted(networks.items(), key=lambda item: learned_macs(item[1]))
        rows = math.ceil(len(ordered) / columns)
        cols = min(columns, len(ordered))
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
        for k, (ax, (network, analysis)) in enumerate(zip(axes.flat, ordered, strict=False)):
            draw_policy_curves(ax, analysis, network, legend=k == 0)
        for ax in list(axes.flat)[len(ordered) :]:
            ax.axis("off")
        fig.suptitle(f"routing policies on the same exits: {experiment} ({ordered[0][1]['split']})")
        fig.tight_layout()
        paths += save(fig, out_dir, f"policies-{experiment}")
    rows = [
        (experiment, point)
        for experiment, networks in analyses.items()
        for analysis in networks.values()
        for point in analysis["learned"]
        if point["routing_quality"]["gap_closed"] is not None
    ]
    if rows:
        fig, (ax,) = _panels(1, width=6, height=4)
        for experiment in dict.fromkeys(e for e, _ in rows):
            points = sorted((p for e, p in rows if e == experiment), key=lambda p: p["mean_macs"])
            ax.plot(
                [p["mean_macs"] / 1e6 for p in points],
                [100 * p["routing_quality"]["gap_closed"] for p in points],
                "-o",
                ms=3,
                label=experiment,
            )
        ax.axhline(0, color="k", lw=0.6)
        ax.axhline(100, color="tab:gray", lw=0.6, ls=":")
        ax.set(
            xlabel="mean MACs of the learned routing (millions)",
            ylabel="static-to-oracle MAC gap closed (%)",
            title="routing quality at the learned accuracy",
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        paths += save(fig, out_dir, "routing-quality")
    return paths


PLOTTERS = {
    "acc-eff": plot_acc_eff,
    "dataflow": plot_dataflow,
    "training-dataflow": plot_training_dataflow,
    "histograms": plot_histograms,
    "policies": plot_policies,
}


def plot_guarantees(studies: dict[str, dict[str, Any]], out_dir: Path) -> list[Path]:
    """Guaranteed calibration over random partitions (``dynroute study guarantees``): the
    violation rate against delta (it must stay under the diagonal) and the MACs saved
    against the target, per method, one column per network."""
    found = {name: study for name, study in studies.items() if study.get("study") == "guarantees"}
    if not found:
        return []
    fig, axes = plt.subplots(2, len(found), figsize=(4.6 * len(found), 7.2), squeeze=False)
    styles = {
        "per-exit thresholds": ("C0", "o"),
        "one shared threshold": ("C1", "s"),
        "naive point estimate": ("C3", "x"),
    }
    for column, (name, study) in enumerate(found.items()):
        top, bottom = axes[0][column], axes[1][column]
        rows = study["rows"]
        targets = sorted({r["target"] for r in rows})
        deltas = sorted({r["delta"] for r in rows})
        for method, (colour, marker) in styles.items():
            for target in targets[:1]:
                points = [
                    (r["delta"], r["violation_rate"])
                    for r in rows
                    if r["method"] == method
                    and r["target"] == target
                    and r["violation_rate"] is not None
                ]
                if points:
                    x, y = zip(*points, strict=True)
                    top.plot(x, y, marker=marker, color=colour, label=method)
            middle = deltas[len(deltas) // 2]
            saved = [
                (r["target"], 100 * r["macs_saved"])
                for r in rows
                if r["method"] == method and r["delta"] == middle and r["macs_saved"] is not None
            ]
            if saved:
                x, y = zip(*sorted(saved), strict=True)
                bottom.plot(x, y, marker=marker, color=colour, label=method)
        top.plot(deltas, deltas, color="grey", linestyle="--", label="delta (the promise)")
        top.set_xlabel("delta")
        top.set_ylabel(f"violation rate (target {targets[0]:g})")
        top.set_title(study_label(name, study), fontsize=9)
        bottom.set_xlabel("accuracy target")
        bottom.set_ylabel(f"MACs saved vs the deepest exit, % (delta {deltas[len(deltas) // 2]:g})")
        if column == 0:
            top.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, out_dir, "guarantees")


def render(
    results_dir: str | os.PathLike[str],
    scale: str,
    kind: str = "all",
    out_dir: str | os.PathLike[str] | None = None,
    formats: tuple[str, ...] = ("png",),
) -> list[Path]:
    """Draw ``kind`` (or every figure) for a scale's results in ``formats`` (png, pdf, svg);
    returns the files written."""
    global _formats
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise DynrouteError(f"`formats` must be some of {', '.join(FORMATS)}, got {formats!r}")
    results = load_results(results_dir, scale)
    out = Path(out_dir) if out_dir else Path(results_dir) / scale / "figures"
    kinds = list(PLOTTERS) if kind == "all" else [kind] if kind in PLOTTERS else []
    previous, _formats = _formats, tuple(dict.fromkeys(formats))
    try:
        paths = [path for k in kinds for path in PLOTTERS[k](results, out)]
        if kind in ("all", "guarantees"):
            paths += plot_guarantees(load_studies(results_dir, scale), out)
        return paths
    finally:
        _formats = previous
