"""Budget targeting: the operating point that meets a mean-MAC or accuracy target.

Chosen on a split the network did not train on (the run's validation split), among:
thresholds of a threshold policy (every value its exits' answers take), the budgeted
policy's exit distributions (q on a log grid), the ensemble policy's thresholds (its
weights fitted on the same split first), the k_cpt input of a dynamic-k_cpt net (a fine
log-spaced grid, cheap because only the routers run again), or, for fixed-k_cpt nets,
the runs given. A MAC budget picks the most accurate point within it; an accuracy target
the cheapest point that reaches it.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dynroute import selection
from dynroute.errors import DynrouteError
from dynroute.infer.evaluate import evaluate
from dynroute.infer.fitted_policies import (
    budgeted_family,
    fit_ensemble,
    threshold_family,
)
from dynroute.infer.operating_points import dense_outputs, exit_table, exits_for_k, router_inputs
from dynroute.nn.macs import tree_costs
from dynroute.nn.policy import THRESHOLD_POLICIES, Policy
from dynroute.nn.prediction import as_tensor
from dynroute.nn.tree import RoutedTree
from dynroute.train.runs import Run, open_run

#: k_cpt inputs tried for a dynamic-k_cpt net: 0 and a log grid over this range.
K_CPT_GRID = (1e-11, 1e-6, 201)


@dataclass
class Candidate:
    """One operating point of one run, measured on the calibration split."""

    run: int
    policy: Policy
    k_cpt: float | None
    accuracy: float
    mean_macs: float
    extra: dict[str, Any] = field(default_factory=dict)


def candidates(
    run: int,
    tree: RoutedTree,
    images: torch.Tensor,
    labels: torch.Tensor,
    policy: Policy,
    k_cpt: float | None = None,
    fitted: bool = False,
) -> list[Candidate]:
    """Every operating point ``policy`` offers on this tree, measured on (images, labels).
    An ensemble's weights are fitted on (images, labels) first, unless ``fitted`` says
    ``policy`` carries weights to keep (an exported operating point's)."""
    if policy.uses_threshold:
        if tree.dynamic_k_cpt and k_cpt is None:
            raise DynrouteError("a dynamic-k_cpt net needs `k_cpt` for its routers' choices")
        if not tree.junctions:
            raise DynrouteError(
                "a network without junctions has one operating point: nothing to choose"
            )
        outputs = dense_outputs(tree, images, labels, k_cpt)
        table = exit_table(tree, outputs=outputs)
        if policy.name == "budgeted":
            family = budgeted_family(table)
        elif policy.name == "ensemble":  # fitted here, on the calibration split
            ensemble = policy if fitted else fit_ensemble(tree, outputs)
            table = exit_table(tree, outputs=outputs, policy=ensemble)
            # Two exit rules: one threshold, or the budgeted scheme on combined answers.
            family = threshold_family(table, ensemble)
            family += budgeted_family(table, like=ensemble)
        else:
            family = threshold_family(table, Policy(policy.name, 0.5))
        out = []
        for chosen, exits in family:
            point = table.point(exits, chosen.cost_model)
            rule = "per exit" if chosen.thresholds is not None else "one threshold"
            out.append(
                Candidate(run, chosen, k_cpt, point["accuracy"], point["mean_macs"], {"rule": rule})
            )
        return out
    if policy.name != "learned":
        raise DynrouteError(f"the {policy.name} policy cannot be calibrated: it is not deployable")
    if not tree.junctions:
        raise DynrouteError("a network without routers has one operating point: nothing to choose")
    if tree.dynamic_k_cpt:
        low, high, count = K_CPT_GRID
        k_values = [0.0, *np.logspace(np.log10(low), np.log10(high), count).tolist()]
    else:
        k_values = [None]
    inputs = router_inputs(tree, images)
    if inputs is None:
        raise DynrouteError("calibrating needs routers that say what they read (Router.reads)")
    correct = exit_table(tree, images, labels, k_values[0]).correct  # routing-independent
    position = {leaf: i for i, leaf in enumerate(tree.leaves)}
    path_macs = torch.tensor(tree_costs(tree).path_macs, dtype=torch.float64)
    out = []
    for k in k_values:
        exits = exits_for_k(tree, inputs, len(images), k)
        columns = torch.tensor([position[int(e)] for e in exits.tolist()])
        accuracy = float(correct[torch.arange(len(labels)), columns].float().mean())
        out.append(Candidate(run, policy, k, accuracy, float(path_macs[exits].mean())))
    return out


def choose(
    points: list[Candidate], target_macs: float | None, target_accuracy: float | None
) -> Candidate:
    """The operating point that meets the target (``dynroute.selection.choose``); a run's
    points of one exit rule form a near-continuous family."""
    return selection.choose(points, target_macs, target_accuracy, family=candidate_family)


def candidate_family(point: Candidate) -> tuple[int, Any]:
    return point.run, point.extra.get("rule")


def policy_template(name: str) -> Policy:
    """A policy of that name to calibrate (its parameters are chosen or fitted later)."""
    if name == "budgeted":
        return Policy("budgeted", thresholds=(0.5,))
    if name == "ensemble":
        return Policy("ensemble", 0.5, weights=((1.0,),), biases=((0.0,),))
    return Policy(name, 0.5 if name in THRESHOLD_POLICIES else None)


def _check_one_dataset(runs: list[Run]) -> None:
    """Refuse runs of different datasets: their operating points are not comparable."""
    first = runs[0]
    first_record = first.data_record()
    for run in runs[1:]:
        record = run.data_record()
        if first_record is None or record is None:
            continue
        differs = first_record.data_differences(record)
        unknown = first_record.fingerprint is None or record.fingerprint is None
        if not differs and unknown and first_record.dataset != record.dataset:
            differs = ["the dataset"]  # runs from before data records: by name
        if differs:
            raise DynrouteError(
                f"calibrate chooses among runs of one dataset, but {first.path} was trained on "
                f"{first_record.describe()} and {run.path} on {record.describe()} (they differ "
                f"in {' and '.join(differs)}); calibrate each dataset's runs separately"
            )


def calibrate(
    runs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    target_macs: float | None = None,
    target_accuracy: float | None = None,
    policy: str = "learned",
    split: str = "validation",
    k_cpt: float | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    allow_checksum_mismatch: bool = False,
) -> dict[str, Any]:
    """Choose the operating point that meets a budget and save it in the chosen run.

    ``target_macs`` (mean MACs per example) or ``target_accuracy`` (in (0, 1]); the point is
    chosen on ``split`` (the runs' validation split: the test split only reports it) among
    ``policy``'s operating points on every run given. Returns the record written to the
    run's ``calibration.json`` (which ``dynroute evaluate`` and ``EarlyExitEngine.from_run``
    then use): the policy, the k_cpt input, the target, and accuracy and mean MACs on the
    calibration split and on the test split.
    """
    paths = [runs] if isinstance(runs, (str, os.PathLike)) else list(runs)
    if not paths:
        raise DynrouteError("`runs` names no run directory")
    if target_macs is not None and not (0 < target_macs < float("inf")):
        raise DynrouteError(f"`target_macs` must be a positive number of MACs, got {target_macs}")
    if target_accuracy is not None and not 0 < target_accuracy <= 1:
        raise DynrouteError(f"`target_accuracy` must be in (0, 1], got {target_accuracy}")
    if (target_macs is None) == (target_accuracy is None):
        raise DynrouteError("give exactly one of `target_macs` and `target_accuracy`")
    if k_cpt is not None and not (isinstance(k_cpt, (int, float)) and math.isfinite(k_cpt)):
        raise DynrouteError(f"`k_cpt` must be a finite number >= 0, got {k_cpt}")
    if k_cpt is not None and k_cpt < 0:
        raise DynrouteError(f"`k_cpt` must be a finite number >= 0, got {k_cpt}")
    chosen_policy = policy_template(policy)
    if split != "validation":
        print(
            f"dynroute: warning: calibrating on the {split} split, as asked; its numbers "
            "then overstate how well the target is met on new data",
            file=sys.stderr,
        )
    opened = [open_run(path) for path in paths]
    if any(run.directory is None for run in opened):
        raise DynrouteError("calibrate works on run directories (it saves its choice there)")
    _check_one_dataset(opened)
    points, trees = [], []
    for index, run in enumerate(opened):
        tree = run.load_tree()
        run.check_routed(tree, "`dynroute calibrate`")
        images, labels, class_names = run.split(split, data_dir, None, allow_checksum_mismatch)
        run.check_classes(tree, class_names, run.dataset_name())
        trees.append(tree)
        images_t, labels_t = as_tensor(images, torch.float32), as_tensor(labels, torch.long)
        points += candidates(index, tree, images_t, labels_t, chosen_policy, k_cpt)
    chosen = choose(points, target_macs, target_accuracy)
    run, tree = opened[chosen.run], trees[chosen.run]
    images, labels, _ = run.split("test", data_dir, None, allow_checksum_mismatch)
    test = evaluate(tree, images, labels, k_cpt=chosen.k_cpt, method="engine", policy=chosen.policy)
    record = {
        "policy": chosen.policy.to_dict(),
        "k_cpt": chosen.k_cpt,
        "target": {"mean_macs": target_macs, "accuracy": target_accuracy},
        "split": split,
        split: {"accuracy": chosen.accuracy, "mean_macs": chosen.mean_macs},
        "test": {"accuracy": test.accuracy, "mean_macs": test.mean_macs},
        "candidates_from": [str(r.path) for r in opened],
    }
    path = run.save_calibration(record)
    return {**record, "run": str(run.path), "saved": str(path)}
