"""Synthetic result files for plot and report tests: curves with chosen shapes, no training."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import torch

from dynroute.engine.evaluate import evaluate
from dynroute.experiments.registry import expand
from dynroute.experiments.results import RESULT_FORMAT, result_path
from dynroute.io.atomic import write_json_atomic
from dynroute.nn.models import build_model


@functools.cache
def _nodes(model: str) -> tuple[dict[str, Any], ...]:
    torch.manual_seed(0)
    tree = build_model(model, 10, 1, False)
    stats = evaluate(tree, torch.rand(4, 3, 32, 32), torch.arange(4), method="engine")
    return tuple(stats.to_dict()["nodes"])


def point(model: str, k_cpt: float | None, accuracy: float, macs: float) -> dict[str, Any]:
    """An evaluation whose exits share the traffic unevenly, with plausible statistics."""
    nodes = [copy.deepcopy(n) for n in _nodes(model)]
    leaves = [n for n in nodes if n["is_leaf"]]
    weights = [1.0 / (i + 1) for i in range(len(leaves))]
    for leaf, w in zip(leaves, weights, strict=True):
        leaf["classified"] = w / sum(weights)
        leaf["accuracy"] = accuracy
        leaf["class_counts"] = [int(100 * leaf["classified"]) + c for c in range(10)]
    return {
        "num_examples": 1000,
        "accuracy": accuracy,
        "mean_macs": macs,
        "k_cpt": k_cpt,
        "nodes": nodes,
    }


def write_curve(
    results_dir: Path,
    scale: str,
    experiment: str,
    curve: list[tuple[float, float]],
    dataset: str | None = None,
) -> None:
    """One result file per network of ``experiment``; ``curve`` gives (accuracy, MACs) each;
    ``dataset`` replaces the experiment's own, as ``sweep --dataset`` does."""
    networks = expand(experiment, scale)
    for index, network in enumerate(networks):
        config = network.config.to_dict() | ({"dataset": dataset} if dataset else {})
        model = "tree" if config["model"] == "tree" else "chain"
        if config["dynamic_k_cpt"]:
            ks = config["k_cpt_set"] or [0.0, 1e-9, 2e-9, 4e-9, 8e-9, 1.6e-8, 3.2e-8, 6.4e-8]
            points = [point(model, k, a, m) for k, (a, m) in zip(ks, curve, strict=False)]
        else:
            k = None if config["strategy"] == "static" else config["k_cpt"]
            accuracy, macs = curve[index]
            points = [point(model, k, accuracy, macs)]
        leaves = [n for n in points[0]["nodes"] if n["is_leaf"]]
        metrics = [
            {
                "iteration": it,
                "train_seconds": float(it),
                "points": [
                    {
                        "k_cpt": p["k_cpt"],
                        "accuracy": p["accuracy"],
                        "mean_macs": p["mean_macs"],
                        "classified": [n["classified"] for n in p["nodes"] if n["is_leaf"]],
                    }
                    for p in points
                ],
            }
            for it in (1, 2, 3)
        ]
        result = {
            "format": RESULT_FORMAT,
            "experiment": experiment,
            "network": network.name,
            "config": config,
            "split": "test",
            "eval_subset": None,
            "iterations": 3,
            "train_seconds": 3.0,
            "device": "cpu",
            "exits": [n["name"] for n in leaves],
            "points": points,
            "metrics": metrics,
            "machine": {},
            "scale": scale,
            "git_revision": None,
        }
        write_json_atomic(result_path(results_dir, scale, experiment, network.name), result)


#: Static nets N = 1..8 on hybrid: (accuracy, MACs), accuracy peaking at 0.90.
STATIC = [
    (0.60, 1.4e6),
    (0.75, 5.3e6),
    (0.80, 7.6e6),
    (0.84, 11.4e6),
    (0.86, 13.5e6),
    (0.88, 17.1e6),
    (0.89, 18.3e6),
    (0.90, 20.6e6),
]


def shifted(curve: list[tuple[float, float]], gain: float, macs_factor: float):
    """A curve better (gain > 0) and cheaper (factor < 1) than ``curve``."""
    return [(min(0.99, a + gain), m * macs_factor) for a, m in curve]


def policy_analysis(correct: torch.Tensor, macs: float, curve: list[tuple[torch.Tensor, float]]):
    """A policy analysis (``operating_points.analyse``'s shape) with chosen correctness: the
    learned point ``correct`` at ``macs``; the confidence curve's points (correct, macs),
    each with its bits; the learned point compared with the nearest of them."""
    from dynroute.policies.statistics import mcnemar, pack_bits

    def as_point(bits: torch.Tensor, cost: float) -> dict[str, Any]:
        return {"accuracy": float(bits.float().mean()), "mean_macs": cost}

    thresholds = [
        {"threshold": i / len(curve), **as_point(bits, cost), "correct_bits": pack_bits(bits)}
        for i, (bits, cost) in enumerate(curve)
    ]
    nearest_bits, nearest_macs = min(curve, key=lambda c: abs(c[1] - macs))
    versus = {"threshold": 0.5, **as_point(nearest_bits, nearest_macs)}
    versus.update(mcnemar(correct, nearest_bits))
    learned = {
        "k_cpt": None,
        **as_point(correct, macs),
        "correct_bits": pack_bits(correct),
        "routing_quality": {
            "static_macs": 2 * macs,
            "threshold_macs": 1.5 * macs,
            "oracle_macs": 0.5 * macs,
            "gap_closed": 2 / 3,
        },
        "against_thresholds": {"confidence": versus, "entropy": versus},
    }
    return {
        "split": "test",
        "num_examples": len(correct),
        "exits": ["exit1", "exit2"],
        "learned": [learned],
        "confidence": thresholds,
        "entropy": thresholds,
        "oracle": [as_point(torch.ones_like(correct), 0.5 * macs)],
        "single_exit": [as_point(nearest_bits, macs / 2), as_point(correct, 3 * macs)],
    }


def add_policies(results_dir: Path, scale: str, experiment: str, make) -> None:
    """Give each result file of ``experiment`` the policy analysis ``make(result)`` returns."""
    import json

    for path in sorted((Path(results_dir) / scale / experiment).glob("*.json")):
        result = json.loads(path.read_text())
        result["policies"] = make(result)
        write_json_atomic(path, result)
