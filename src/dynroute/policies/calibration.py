"""Budget targeting: the operating point that meets a mean-MAC or accuracy target.

Chosen on a split the network did not train on (the run's validation split), among the
operating points of the policies asked for (``families``): an exit rule's thresholds on
raw, recalibrated or combined answers (their weights fitted on the same split first), the
budgeted policy's exit distributions, the scheduler's prices (its models fitted on the
split, each point measured with models fitted without the examples it is measured on),
the learned routers (and the k_cpt input of a dynamic-k_cpt net, a fine log grid), on
every run given. ``dynroute.selection`` chooses: the most accurate point within a MAC
budget, the cheapest that reaches an accuracy. ``dynroute.policies.guarantees`` chooses
with a finite-sample guarantee instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dynroute import checks, selection
from dynroute.errors import DynrouteError
from dynroute.nn.prediction import as_tensor
from dynroute.nn.tree import RoutedTree
from dynroute.policies.analysis import exits_for_k, router_inputs
from dynroute.policies.exit_table import DenseOutputs, ExitTable, dense_outputs, exit_table
from dynroute.policies.fitting import budgeted_family, fit_answers, threshold_family
from dynroute.policies.scheduler import cross_fitted_measures, fit_scheduler
from dynroute.policy import ANSWERS, LEARNED, POLICY_NAMES, Policy, resolve_name
from dynroute.runs import Calibration, Run, check_one_dataset, open_run
from dynroute.train.evaluation import routing_statistics

#: k_cpt inputs tried for a dynamic-k_cpt net: 0 and a log grid over this range.
K_CPT_GRID = (1e-11, 1e-6, 201)
#: Every policy on every kind of answer: what ``--policy best`` chooses among.
BEST = "best"
#: Answers of an exit rule when none are named: every kind, chosen on validation.
ANY = "any"


@dataclass
class Candidate:
    """One operating point of one run, measured on the calibration split.

    ``positions``: each calibration example's exit (leaf order), ``leaf_macs``: what leaving
    at each exit costs, ``table``: the answers it was measured on (for guarantees)."""

    run: int
    policy: Policy
    k_cpt: float | None
    accuracy: float
    mean_macs: float
    family: str = ""
    positions: np.ndarray | None = field(default=None, repr=False)
    table: ExitTable | None = field(default=None, repr=False)


def families(name: str, answers: str | None = None) -> list[tuple[str, str]]:
    """The (rule, answers) families a policy name stands for. ``best``: every deployable
    rule on every kind of answer; an alias (``ensemble``) its rules and answers; a rule its
    answers (default raw, the scheduler every kind); ``answers`` ``any``: every kind."""
    if name == BEST:
        rules = ("confidence", "entropy", "budgeted", "scheduler")
        return [("learned", "raw"), *((r, a) for r in rules for a in ANSWERS)]
    rule, implied = resolve_name(name)
    if rule == "learned":
        if answers not in (None, "raw"):
            raise DynrouteError("the learned routers read no exit answers: give no `answers`")
        return [("learned", "raw")]
    if rule == "oracle":
        raise DynrouteError("the oracle policy needs labels: it cannot be calibrated")
    if implied is not None:  # ensemble: a threshold or one per exit, on combined answers
        if answers not in (None, implied):
            raise DynrouteError(f"the {name} policy reads {implied} answers")
        return [("confidence", implied), ("budgeted", implied)]
    if answers is None:
        answers = ANY if rule == "scheduler" else "raw"
    if answers == ANY:
        return [(rule, kind) for kind in ANSWERS]
    if answers not in ANSWERS:
        raise DynrouteError(f"`answers` must be one of {', '.join(ANSWERS)} or {ANY}")
    return [(rule, answers)]


def candidates(
    run: int,
    tree: RoutedTree,
    outputs: DenseOutputs,
    wanted: Sequence[tuple[str, str]],
    k_cpt: float | None = None,
    images: torch.Tensor | None = None,
    fitted: Policy | None = None,
) -> list[Candidate]:
    """Every operating point of the ``wanted`` families on ``outputs`` (a dense pass over
    the calibration split at ``k_cpt``). Answers and schedulers are fitted on ``outputs``,
    unless ``fitted`` carries them (an operating point being re-measured: an export's).
    ``images`` are needed by a dynamic-k_cpt net's learned routers (they run per k_cpt)."""
    if not tree.junctions:
        raise DynrouteError(
            "a network without junctions has one operating point: nothing to choose"
        )
    out: list[Candidate] = []
    answers: dict[str, Policy] = {}
    for rule, kind in wanted:
        if rule == "learned":
            out += _learned(run, tree, outputs, images)
            continue
        if tree.dynamic_k_cpt and k_cpt is None:
            raise DynrouteError("a dynamic-k_cpt net needs `k_cpt` for its routers' choices")
        if kind not in answers:
            if fitted is not None and fitted.answers == kind:
                answers[kind] = fitted
            else:
                answers[kind] = (
                    exit_table(tree, outputs).answers
                    if kind == "raw"
                    else fit_answers(exit_table(tree, outputs).facts, outputs, kind)
                )
        table = exit_table(tree, outputs, answers[kind])
        key = f"{rule}/{kind}"
        if rule == "budgeted":
            members = budgeted_family(table)
        elif rule == "scheduler":
            scheduler = fitted if fitted is not None and fitted.name == "scheduler" else None
            scheduler = scheduler or fit_scheduler([table])
            table = table.with_measures(scheduler, cross_fitted_measures(table))
            members = threshold_family(table, scheduler)
        else:
            members = threshold_family(table, rule)
        for policy, positions in members:
            point = table.point(positions, policy)
            out.append(
                Candidate(
                    run, policy, k_cpt, point["accuracy"], point["mean_macs"], key,
                    positions.astype(np.int16), table,
                )
            )  # fmt: skip
    return out


def _learned(
    run: int, tree: RoutedTree, outputs: DenseOutputs, images: torch.Tensor | None
) -> list[Candidate]:
    """The routers' operating points: one, or one per k_cpt of a grid (dynamic nets)."""
    table = exit_table(tree, outputs)
    macs = table.facts.leaf_macs(LEARNED)
    where = tree.shape.leaf_position
    if tree.dynamic_k_cpt:
        if images is None:
            raise DynrouteError("a dynamic-k_cpt net's routers need the calibration images")
        low, high, count = K_CPT_GRID
        k_values: list[float | None] = [0.0, *np.logspace(np.log10(low), np.log10(high), count)]
        inputs = router_inputs(tree, images)
        if inputs is None:
            raise DynrouteError("calibrating needs routers that say what they read (Router.reads)")
        exits = [exits_for_k(tree, inputs, len(images), k).numpy() for k in k_values]
    else:
        from dynroute.decisions import Decider

        rule = Decider(LEARNED, tree.shape, tree.num_classes)
        k_values = [None]
        exits = [rule.reached_exits(rule.dense_choices({}, outputs.scores), len(outputs))]
    out = []
    for k, chosen in zip(k_values, exits, strict=True):
        positions = np.asarray([where[int(e)] for e in chosen], dtype=np.int16)
        accuracy = float(table.correctness(positions).mean())
        out.append(
            Candidate(run, LEARNED, None if k is None else float(k), accuracy,
                      float(macs[positions].mean()), "learned/raw", positions, table)
        )  # fmt: skip
    return out


def choose(
    points: list[Candidate], target_macs: float | None, target_accuracy: float | None
) -> Candidate:
    """The operating point that meets the target (``dynroute.selection.choose``)."""
    return selection.choose(points, target_macs, target_accuracy)


def run_candidates(
    runs: Sequence[Run],
    wanted: Sequence[tuple[str, str]],
    split: str,
    k_cpt: float | None,
    data_dir: str | os.PathLike[str] | None = None,
    allow_checksum_mismatch: bool = False,
) -> tuple[list[Candidate], list[RoutedTree]]:
    """Every candidate of every run on its ``split``, and the runs' trees."""
    points: list[Candidate] = []
    trees = []
    for index, run in enumerate(runs):
        tree = run.load_tree().eval()
        run.check_routed(tree, "calibration")
        images, labels, class_names = run.split(split, data_dir, None, allow_checksum_mismatch)
        run.check_classes(tree, class_names, run.dataset_name())
        trees.append(tree)
        images_t, labels_t = as_tensor(images, torch.float32), as_tensor(labels, torch.long)
        outputs = dense_outputs(tree, images_t, labels_t, k_cpt)
        points += candidates(index, tree, outputs, wanted, k_cpt, images_t)
    return points, trees


def calibrate(
    runs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    target_macs: float | None = None,
    target_accuracy: float | None = None,
    policy: str = "learned",
    answers: str | None = None,
    split: str = "validation",
    k_cpt: float | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    allow_checksum_mismatch: bool = False,
) -> dict[str, Any]:
    """Choose the operating point that meets a budget and save it in the chosen run.

    ``target_macs`` (mean MACs per example) or ``target_accuracy`` (in (0, 1]); the point is
    chosen on ``split`` (the runs' validation split: the test split only reports it) among
    ``policy``'s operating points (``families``) on every run given. Returns the record
    written to the run's ``calibration.json`` (which ``dynroute evaluate`` and
    ``EarlyExitEngine.from_run`` then use): the policy, the k_cpt input, the target, and
    accuracy and mean MACs on the calibration split and on the test split.
    """
    paths = [runs] if isinstance(runs, (str, os.PathLike)) else list(runs)
    if not paths:
        raise DynrouteError("`runs` names no run directory")
    checks.target_macs(target_macs)
    if (
        target_accuracy is not None
        and checks.unit_interval(target_accuracy, "target_accuracy") == 0
    ):
        raise DynrouteError("`target_accuracy` must be above 0")
    if (target_macs is None) == (target_accuracy is None):
        raise DynrouteError("give exactly one of `target_macs` and `target_accuracy`")
    checks.k_cpt(k_cpt)
    if policy not in (*POLICY_NAMES, BEST):
        raise DynrouteError(f"`policy` must be one of {', '.join((*POLICY_NAMES, BEST))}")
    wanted = families(policy, answers)
    if split != "validation":
        print(
            f"dynroute: warning: calibrating on the {split} split, as asked; its numbers "
            "then overstate how well the target is met on new data",
            file=sys.stderr,
        )
    opened = [open_run(path) for path in paths]
    if any(run.directory is None for run in opened):
        raise DynrouteError("calibrate works on run directories (it saves its choice there)")
    check_one_dataset(opened)
    points, trees = run_candidates(opened, wanted, split, k_cpt, data_dir, allow_checksum_mismatch)
    chosen = choose(points, target_macs, target_accuracy)
    run, tree = opened[chosen.run], trees[chosen.run]
    test = measure_on(
        run, tree, chosen.policy, chosen.k_cpt, "test", data_dir, allow_checksum_mismatch
    )
    record = Calibration(
        policy=chosen.policy,
        k_cpt=chosen.k_cpt,
        target={"mean_macs": target_macs, "accuracy": target_accuracy},
        split=split,
        measured={
            split: {"accuracy": chosen.accuracy, "mean_macs": chosen.mean_macs},
            "test": test,
        },
        candidates_from=[str(r.path) for r in opened],
    )
    path = run.save_calibration(record)
    return {**record.to_dict(), "run": str(run.path), "saved": str(path)}


def measure_on(
    run: Run,
    tree: RoutedTree,
    policy: Policy,
    k_cpt: float | None,
    split: str,
    data_dir: str | os.PathLike[str] | None = None,
    allow_checksum_mismatch: bool = False,
) -> dict[str, float]:
    """Accuracy and mean MACs of ``policy`` on one of the run's splits (the dense reference,
    which the engine equals)."""
    images, labels, _ = run.split(split, data_dir, None, allow_checksum_mismatch)
    result = routing_statistics(tree, images, labels, k_cpt=k_cpt, policy=policy)
    return {"accuracy": result.accuracy, "mean_macs": result.mean_macs}
