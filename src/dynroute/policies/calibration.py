"""Budget targeting: the operating point that meets a mean-MAC or accuracy target.

Chosen on a split the network did not train on (the run's validation split), among the
operating points of the policies asked for (``families``): an exit rule's thresholds on
raw, recalibrated or combined answers (their weights fitted on the same split first), the
budgeted policy's exit distributions, the scheduler's prices (its models fitted on the
split, each point measured with models fitted without the examples it is measured on),
the learned routers (and the k_cpt input of a dynamic-k_cpt net, a fine log grid), on
every run given. ``dynroute.core.selection`` chooses: the most accurate point within a MAC
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

from dynroute.core import checks, selection
from dynroute.core.errors import DynrouteError
from dynroute.core.guarantee import TARGETS
from dynroute.core.operating import ANY, BEST
from dynroute.core.policy import ANSWERS, LEARNED, Policy, policy_names, resolve_name
from dynroute.core.rules import RULES, deployable_rules
from dynroute.nn.evaluation import routing_statistics
from dynroute.nn.prediction import as_tensor
from dynroute.nn.tree import RoutedTree
from dynroute.policies.analysis import exits_for_k, router_inputs
from dynroute.policies.exit_table import DenseOutputs, ExitTable, dense_outputs, exit_table
from dynroute.policies.fitting import fit_answers
from dynroute.policies.guarantees import (
    CEILING_ERRORS,
    DEFAULT_DELTA,
    Guarantee,
    PathPoint,
    certification,
    certify,
    check_request,
    lower_bound,
    order_path,
    split_for_guarantee,
    upper_bound_mean,
)
from dynroute.runs import Calibration, Run, check_one_dataset, checkpoint_fingerprint, open_run

#: k_cpt inputs tried for a dynamic-k_cpt net: 0 and a log grid over this range.
K_CPT_GRID = (1e-11, 1e-6, 201)


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


def dense_k_cpt(tree: RoutedTree, k_cpt: float | None) -> float | None:
    """The k_cpt input of a dense pass: the one given; for a dynamic-k_cpt net without one,
    0 (the exits' answers do not depend on it; the routers are run per k_cpt where they
    decide)."""
    return 0.0 if k_cpt is None and tree.dynamic_k_cpt else k_cpt


def families(name: str, answers: str | None = None) -> list[tuple[str, str]]:
    """The (rule, answers) families a policy name stands for. ``best``: every deployable
    rule on every kind of answer; an alias (``ensemble``) its rules and answers; a rule its
    answers (default: the rule's ``default_answers``); ``answers`` ``any``: every kind."""
    if name == BEST:
        return [(r, a) for r in deployable_rules() for a in ANSWERS]
    rule, implied = resolve_name(name)
    if not RULES[rule].deployable:
        raise DynrouteError(f"the {rule} policy needs labels: it cannot be calibrated")
    if implied is not None:  # ensemble: a threshold or one per exit, on combined answers
        if answers not in (None, implied):
            raise DynrouteError(f"the {name} policy reads {implied} answers")
        return [("confidence", implied), ("budgeted", implied)]
    if answers is None:
        answers = RULES[rule].default_answers
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
        if RULES[rule].reads_exits and tree.dynamic_k_cpt and k_cpt is None:
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
        if not RULES[rule].reads_exits:  # the routers: the network's own choices
            out += _learned(run, tree, table, images)
            continue
        for policy, positions in RULES[rule].family(table, fitted):
            point = table.point(positions, policy)
            out.append(
                Candidate(
                    run, policy, k_cpt, point["accuracy"], point["mean_macs"], key,
                    positions.astype(np.int16), table,
                )
            )  # fmt: skip
    return out


def _learned(
    run: int, tree: RoutedTree, table: ExitTable, images: torch.Tensor | None
) -> list[Candidate]:
    """The routers' operating points, the exit they choose answering with ``table``'s
    answers: one, or one per k_cpt of a grid (dynamic nets)."""
    outputs = table.outputs
    kind = table.answers.answers
    policy = LEARNED
    if kind != "raw":
        policy = Policy("learned", answers=kind, weights=table.answers.weights,
                        biases=table.answers.biases)  # fmt: skip
    macs = table.facts.leaf_macs(policy)
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
        from dynroute.core.decisions import Decider

        rule = Decider(LEARNED, tree.shape, tree.num_classes)
        k_values = [None]
        exits = [rule.reached_exits(rule.dense_choices({}, outputs.scores), len(outputs))]
    out = []
    for k, chosen in zip(k_values, exits, strict=True):
        positions = np.asarray([where[int(e)] for e in chosen], dtype=np.int16)
        accuracy = float(table.correctness(positions).mean())
        out.append(
            Candidate(run, policy, None if k is None else float(k), accuracy,
                      float(macs[positions].mean()), f"learned/{kind}", positions, table)
        )  # fmt: skip
    return out


@dataclass
class GuaranteePaths:
    """What Learn-then-Test fixes on the fitting half of a calibration sample: every
    family's operating points with their losses on the testing half (``paths``), the rows
    of each half, and the largest loss of a budget (``scale``)."""

    target: str
    paths: dict[str, list[PathPoint]]
    fit_rows: np.ndarray
    test_rows: np.ndarray
    scale: float

    def certify(
        self,
        level: float,
        delta: float,
        order: str = "fit",
        family: str | None = None,
        seed: int = 0,
    ) -> tuple[Candidate, Guarantee, dict[str, Any]]:
        """The guaranteed choice at ``level`` and ``delta`` (the family that meets it most
        cheaply on the fitting half, or ``family``), and how often the procedure certifies
        on resamples of the testing half (``guarantees.certification``); a refusal raises."""
        check_request(self.target, level, delta)
        fit_examples = len(self.fit_rows)
        if family is None:
            family = _family_for(self.paths, self.target, level, delta, self.scale, fit_examples)
        path = order_path(self.paths[family], self.target, order)
        chances = certification(path, self.target, level, delta, self.scale, fit_examples, seed)
        chosen, guarantee = certify(path, self.target, level, delta, self.scale, fit_examples)
        return chosen.item, guarantee, chances


def guarantee_paths(
    run: int,
    tree: RoutedTree,
    outputs: DenseOutputs,
    wanted: Sequence[tuple[str, str]],
    target: str,
    k_cpt: float | None = None,
    images: torch.Tensor | None = None,
    seed: int = 0,
) -> GuaranteePaths:
    """Half of ``outputs`` (drawn with ``seed``) fits every family of ``wanted`` and
    measures its points; the other half gives each point's losses for ``target``."""
    if target not in TARGETS:
        raise DynrouteError(f"a guarantee's target is one of {', '.join(TARGETS)}")
    fit_rows, test_rows = split_for_guarantee(len(outputs), seed)
    fit_images = None if images is None else images[torch.from_numpy(fit_rows)]
    test_images = None if images is None else images[torch.from_numpy(test_rows)]
    fitting = candidates(run, tree, outputs.subset(fit_rows), wanted, k_cpt, fit_images)
    tested = outputs.subset(test_rows)
    raw = exit_table(tree, tested)
    full = _deepest_answers(raw)
    scale = float(raw.facts.leaf_macs(Policy("confidence", 0.5)).max())
    tables: dict[str, ExitTable] = {}
    paths: dict[str, list[PathPoint]] = {}
    for candidate in fitting:
        positions = positions_on(tree, tested, candidate, test_images, tables)
        table = tables.get(candidate.family, raw)
        if target == "mean_macs":
            losses = table.facts.leaf_macs(candidate.policy)[positions]
        elif target == "accuracy":
            losses = (~table.correctness(positions)).astype(np.float64)
        else:
            answer = table.answer[np.arange(len(table)), positions].argmax(axis=1)
            losses = (answer != full).astype(np.float64)
        disagreement = 0.0
        if target == "disagreement" and candidate.table is not None:
            fit = candidate.table
            rows = np.arange(len(fit))
            answers = fit.answer[rows, candidate.positions.astype(np.int64)].argmax(axis=1)
            disagreement = float(
                (answers != _deepest_answers(exit_table(tree, fit.outputs))).mean()
            )
        point = PathPoint(candidate, candidate.mean_macs, candidate.accuracy, losses, disagreement)
        paths.setdefault(candidate.family, []).append(point)
    return GuaranteePaths(target, paths, fit_rows, test_rows, scale)


def guaranteed_choice(
    run: int,
    tree: RoutedTree,
    outputs: DenseOutputs,
    wanted: Sequence[tuple[str, str]],
    target: str,
    level: float,
    delta: float,
    k_cpt: float | None = None,
    images: torch.Tensor | None = None,
    seed: int = 0,
    order: str = "fit",
) -> tuple[Candidate, Guarantee, dict[str, Any]]:
    """The cheapest operating point that meets ``target`` (``accuracy`` at least ``level``,
    ``disagreement`` with the full network at most ``level``) or the most accurate within a
    budget (``mean_macs`` at most ``level``), with probability at least 1 - ``delta``
    (``dynroute.policies.guarantees``): half of ``outputs`` fits the families and orders
    the path (``order``: ``guarantees.PATH_ORDERS``), the other half tests it. Also returns
    how often the procedure certifies on resamples of that half, and whether the target
    sits near the ceiling (``guarantees.certification``); a refusal raises."""
    check_request(target, level, delta)
    paths = guarantee_paths(run, tree, outputs, wanted, target, k_cpt, images, seed)
    return paths.certify(level, delta, order, seed=seed)


def _deepest_answers(table: ExitTable) -> np.ndarray:
    """What the full network answers: the raw answer of the exit each example would end at
    if no exit stopped it."""
    return table.outputs.logits[np.arange(len(table)), table.terminal].argmax(axis=1)


def positions_on(
    tree: RoutedTree,
    outputs: DenseOutputs,
    candidate: Candidate,
    images: torch.Tensor | None,
    tables: dict[str, ExitTable],
) -> np.ndarray:
    """The candidate's exits on ``outputs`` (a table per fitted answers, built once)."""
    policy = candidate.policy
    key = table_key(candidate)
    if key not in tables and policy.answers != "raw":
        tables[key] = exit_table(tree, outputs, policy)
    if not policy.uses_threshold and not policy.rule.needs_labels:  # the routers choose
        where = tree.shape.leaf_position
        if tree.dynamic_k_cpt:
            assert images is not None
            inputs = router_inputs(tree, images)
            exits = exits_for_k(tree, inputs, len(images), candidate.k_cpt).numpy()
        else:
            from dynroute.core.decisions import Decider

            rule = Decider(LEARNED, tree.shape, tree.num_classes)
            exits = rule.reached_exits(rule.dense_choices({}, outputs.scores), len(outputs))
        return np.asarray([where[int(e)] for e in exits], dtype=np.int64)
    if key not in tables:
        tables[key] = exit_table(tree, outputs, policy)
    return tables[key].exits(policy)


def table_key(candidate: Candidate) -> str:
    """Which exit table a candidate replays on: its family and its fitted answers (the
    same family fitted on other data has other answers; a table holds them alive, so the
    identity is not reused while the table is kept)."""
    policy = candidate.policy
    if policy.answers == "raw":
        return candidate.family
    return f"{candidate.family}#{id(policy.weights)}"


def _family_for(
    paths: dict[str, list[PathPoint]],
    target: str,
    level: float,
    delta: float,
    scale: float,
    fit_examples: int,
) -> str:
    """The family to test: the one that meets the target most cheaply (most accurately,
    for a budget) on the fitting half, with its own (1 - delta) bound there."""

    def fit_bound(point: PathPoint) -> float:
        if target == "mean_macs":
            return upper_bound_mean(point.fit_macs / scale, fit_examples, delta) * scale
        if target == "accuracy":
            return lower_bound(round(point.fit_accuracy * fit_examples), fit_examples, delta)
        agree = round((1 - point.fit_disagreement) * fit_examples)
        return 1 - lower_bound(agree, fit_examples, delta)

    best, key = None, None
    for family, points in paths.items():
        if target == "mean_macs":
            within = [p for p in points if fit_bound(p) <= level]
            score = max((p.fit_accuracy for p in within), default=None)
            rank = None if score is None else (-score,)
        elif target == "accuracy":
            meeting = [p.fit_macs for p in points if fit_bound(p) >= level]
            rank = (min(meeting),) if meeting else None
        else:
            meeting = [p.fit_macs for p in points if fit_bound(p) <= level]
            rank = (min(meeting),) if meeting else None
        if rank is not None and (key is None or rank < key):
            best, key = family, rank
    if best is None:  # nothing meets it even there: test the family that comes closest
        if target == "mean_macs":
            best = min(paths, key=lambda f: min(p.fit_macs for p in paths[f]))
        elif target == "accuracy":
            best = max(paths, key=lambda f: max(p.fit_accuracy for p in paths[f]))
        else:
            best = min(paths, key=lambda f: min(p.fit_disagreement for p in paths[f]))
    return best


def choose(
    points: list[Candidate], target_macs: float | None, target_accuracy: float | None
) -> Candidate:
    """The operating point that meets the target (``dynroute.core.selection.choose``)."""
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
        outputs = dense_outputs(tree, images_t, labels_t, dense_k_cpt(tree, k_cpt))
        points += candidates(index, tree, outputs, wanted, k_cpt, images_t)
    return points, trees


def calibrate(
    runs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    target_macs: float | None = None,
    target_accuracy: float | None = None,
    max_disagreement: float | None = None,
    delta: float | None = None,
    policy: str = "learned",
    answers: str | None = None,
    split: str = "validation",
    k_cpt: float | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    allow_checksum_mismatch: bool = False,
) -> dict[str, Any]:
    """Choose the operating point that meets a target and save it in the chosen run.

    One target: ``target_macs`` (mean MACs per example), ``target_accuracy`` (in (0, 1]) or
    ``max_disagreement`` (the share of inputs on which it may answer otherwise than the
    full network). The point is chosen on ``split`` (the runs' validation split: the test
    split only reports it) among ``policy``'s operating points (``families``) on every run
    given: as a point estimate, or, with ``delta`` (always for ``max_disagreement``), with a
    guarantee that holds with probability at least 1 - ``delta``
    (``guaranteed_choice``). Returns the record written to the run's ``calibration.json``
    (which ``evaluate``, ``export``, ``predict``, ``serve`` and ``EarlyExitEngine.from_run``
    then use): the policy, the k_cpt input, the target, the guarantee, and accuracy and
    mean MACs on the calibration split and on the test split.
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
    if max_disagreement is not None:
        checks.unit_interval(max_disagreement, "max_disagreement")
    given = [v for v in (target_macs, target_accuracy, max_disagreement) if v is not None]
    if len(given) != 1:
        raise DynrouteError(
            "give exactly one of `target_macs`, `target_accuracy` and `max_disagreement`"
        )
    if max_disagreement is not None and delta is None:
        delta = DEFAULT_DELTA  # agreement is only ever promised with a guarantee
    if delta is not None:
        checks.unit_interval(delta, "delta")
    checks.k_cpt(k_cpt)
    if policy not in (*policy_names(), BEST):
        raise DynrouteError(f"`policy` must be one of {', '.join((*policy_names(), BEST))}")
    wanted = families(policy, answers)
    if split == "train" and delta is not None:
        raise DynrouteError(
            "a guarantee is certified on data training never saw: calibrate on the "
            "validation split (train the run with `validation_size` N to hold N examples out)"
        )
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
    guarantee = None
    if delta is None:
        points, trees = run_candidates(
            opened, wanted, split, k_cpt, data_dir, allow_checksum_mismatch
        )
        chosen = choose(points, target_macs, target_accuracy)
    else:
        target, level = (
            ("mean_macs", target_macs)
            if target_macs is not None
            else ("accuracy", target_accuracy)
            if target_accuracy is not None
            else ("disagreement", max_disagreement)
        )
        chosen, guarantee, chances, trees = _guaranteed(
            opened, wanted, split, k_cpt, target, level, delta, data_dir, allow_checksum_mismatch
        )
        if chances.get("near_ceiling"):
            print(
                f"dynroute: warning: the target {level:g} is within {CEILING_ERRORS:g} standard "
                f"errors of the best accuracy the calibration data show "
                f"({chances['best_fit_accuracy']:.4f} ± {chances['standard_error']:.4f}): the "
                f"procedure certifies on about {100 * chances['chance']:.0f} % of calibration "
                "samples, and a point certified this close to the network's ceiling misses the "
                "target far more often than delta",
                file=sys.stderr,
            )
    run, tree = opened[chosen.run], trees[chosen.run]
    test = measure_on(
        run, tree, chosen.policy, chosen.k_cpt, "test", data_dir, allow_checksum_mismatch
    )
    record = Calibration(
        policy=chosen.policy,
        k_cpt=chosen.k_cpt,
        target={
            "mean_macs": target_macs,
            "accuracy": target_accuracy,
            "disagreement": max_disagreement,
            "delta": delta,
        },
        split=split,
        measured={
            split: {"accuracy": chosen.accuracy, "mean_macs": chosen.mean_macs},
            "test": test,
        },
        candidates_from=[str(r.path) for r in opened],
        checkpoint=checkpoint_fingerprint(run.checkpoint_path),
        guarantee=None
        if guarantee is None
        else {
            **guarantee.to_dict(),
            "policy": chosen.policy.to_dict(),
            "k_cpt": chosen.k_cpt,
            "certification": chances,
        },
    )
    path = run.save_calibration(record)
    return {**record.to_dict(), "run": str(run.path), "saved": str(path)}


def _guaranteed(
    runs: Sequence[Run],
    wanted: Sequence[tuple[str, str]],
    split: str,
    k_cpt: float | None,
    target: str,
    level: float,
    delta: float,
    data_dir: str | os.PathLike[str] | None,
    allow_checksum_mismatch: bool,
) -> tuple[Candidate, Guarantee, dict[str, Any], list[RoutedTree]]:
    """``guaranteed_choice`` on one run (a guarantee holds for one calibration sample)."""
    if len(runs) != 1:
        raise DynrouteError("a guaranteed target is certified on one run at a time")
    (run,) = runs
    tree = run.load_tree().eval()
    run.check_routed(tree, "calibration")
    images, labels, class_names = run.split(split, data_dir, None, allow_checksum_mismatch)
    run.check_classes(tree, class_names, run.dataset_name())
    checks.in_range(len(labels), f"the {split} split's examples", checks.CALIBRATION_SIZE)
    images_t, labels_t = as_tensor(images, torch.float32), as_tensor(labels, torch.long)
    outputs = dense_outputs(tree, images_t, labels_t, dense_k_cpt(tree, k_cpt))
    chosen, guarantee, chances = guaranteed_choice(
        0, tree, outputs, wanted, target, level, delta, k_cpt, images_t
    )
    return chosen, guarantee, chances, [tree]


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
