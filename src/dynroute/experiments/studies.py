"""Studies behind the evidence: how much held-out data the scheduler needs, and whether
guaranteed targets hold (``dynroute study``; ``results/<scale>/studies/``).

- ``held_out``: the scheduler fitted on more held-out data than the run's own validation
  split, each way measured at the same budgets against the same best baseline (chosen on
  validation, scored on test): the run's split alone; pooled with the validation outputs
  of sister runs trained on other splits (``sweep --seed``; each held its own split out:
  cross-fitting on folds of the training set); the run's own training-set outputs with
  each model's intercept refitted on validation (a correction for their overconfidence);
  and a sister run that held out more images (``sweep --validation-size``), with what that
  costs its exits.
- ``guarantees``: guaranteed calibration (``dynroute.policies.guarantees``) over many
  random partitions of a run's held-out examples into calibration and evaluation data,
  against the naive point estimate and one threshold shared by every exit.
- ``lead``: the MACs routed runs need to be as accurate as the best static network, each
  chosen on validation (the static net's exit raw or recalibrated, as the routed side's
  may be), scored on test, with a bootstrap interval over test examples.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dynroute.core import selection
from dynroute.core.errors import DynrouteError
from dynroute.core.rules.scheduler import cross_fitted_measures, fit_scheduler, scheduler_family
from dynroute.nn.prediction import as_tensor
from dynroute.policies.exit_table import (
    DenseOutputs,
    ExitTable,
    TreeFacts,
    dense_outputs,
    exit_table,
)
from dynroute.policies.fitting import fit_answers
from dynroute.policies.statistics import mcnemar
from dynroute.policies.table import default_budgets, policy_families
from dynroute.runs import Run, open_run
from dynroute.train.strategies import trains_routers

Progress = Callable[[str], None] | None
#: Training images a run's training-set outputs are measured on (seeded).
TRAIN_SAMPLE = 10_000


@dataclass(frozen=True)
class StudyData:
    """Where a study reads the runs' data: the data folder, another dataset than the run's
    own, and whether a copy whose checksums differ from the official files is accepted
    (the options every other verb takes)."""

    data_dir: Any = None
    dataset: str | None = None
    allow_checksum_mismatch: bool = False


def _outputs(run: Run, split: str, source: StudyData, limit: int | None = None) -> DenseOutputs:
    tree = run.load_tree().eval()
    images, labels, _ = run.split(
        split, source.data_dir, source.dataset, source.allow_checksum_mismatch
    )
    if limit is not None and len(labels) > limit:
        rows = np.sort(np.random.default_rng(0).choice(len(labels), limit, replace=False))
        images, labels = images[rows], labels[rows]
    return dense_outputs(tree, as_tensor(images, torch.float32), as_tensor(labels, torch.long))


def _chosen_on_test(
    validation: ExitTable, test: ExitTable, scheduler: Any, measures: np.ndarray, budget: float
) -> tuple[dict[str, float], np.ndarray] | None:
    """The scheduler's member most accurate on validation (its cross-fitted ``measures``)
    within ``budget``, deployed at the price that spends as much
    (``dynroute.core.rules.scheduler.scheduler_family``); its test point and correctness."""
    pairs = scheduler_family(validation, scheduler, measures=measures)
    points = [(policy, validation.point(e, policy)) for policy, e in pairs]
    members = [_Member(p["mean_macs"], p["accuracy"], policy) for policy, p in points]
    chosen = selection.within_budget(members, budget)
    if chosen is None:
        return None
    exits = test.exits(chosen.policy)
    return test.point(exits, chosen.policy), test.correctness(exits)


class _Member:
    def __init__(self, mean_macs: float, accuracy: float, policy: Any) -> None:
        self.mean_macs, self.accuracy, self.policy = mean_macs, accuracy, policy


class _Setting:
    """One run's held-out outputs, its baselines and its combined-answer exit tables."""

    def __init__(self, run: Run, source: StudyData) -> None:
        self.run = run
        self.tree = run.load_tree().eval()
        self.facts = TreeFacts.of(self.tree)
        self.validation = _outputs(run, "validation", source)
        self.test = _outputs(run, "test", source)
        strategy = (run.config or {}).get("strategy", "actor")
        families, _, _ = policy_families(
            self.tree, self.validation, self.test, routers=trains_routers(strategy)
        )
        self.baselines = [f for f in families if not f.learned]
        self.answers = fit_answers(self.facts, self.validation, "combined")
        self.val_table = exit_table(self.facts, self.validation, self.answers)
        self.test_table = exit_table(self.facts, self.test, self.answers)

    def own_scheduler(self) -> tuple[Any, np.ndarray]:
        """The scheduler fitted on the run's own validation split, and its cross-fitted
        measures there."""
        return fit_scheduler([self.val_table]), cross_fitted_measures(self.val_table)

    def rows(
        self, variants: dict[str, tuple[Any, np.ndarray]], budgets: Sequence[float]
    ) -> list[dict[str, Any]]:
        """Per budget: the best baseline (chosen on validation) and each scheduler variant
        against it on test (exact McNemar)."""
        rows = []
        for budget in budgets:
            chosen = [
                (f, m)
                for f in self.baselines
                if (m := selection.within_budget(f.members, budget)) is not None
            ]
            if not chosen:
                continue
            family, best = max(chosen, key=lambda fm: (fm[1].accuracy, fm[1].mean_macs))
            row: dict[str, Any] = {
                "budget": budget,
                "best_baseline": {"policy": family.key, "test": best.test},
                "scheduler": {},
            }
            for name, (policy, measures) in variants.items():
                result = _chosen_on_test(self.val_table, self.test_table, policy, measures, budget)
                if result is None:
                    continue
                point, correct = result
                row["scheduler"][name] = {"test": point, **mcnemar(correct, best.correct)}
            rows.append(row)
        return rows


def held_out(
    run_path: str | os.PathLike[str],
    sisters: Sequence[str | os.PathLike[str]] = (),
    larger: str | os.PathLike[str] | None = None,
    budgets: Sequence[float] | None = None,
    source: StudyData = StudyData(),
    progress: Progress = None,
) -> dict[str, Any]:
    """The held-out study of one run (see the module's docstring): JSON-ready."""
    say = progress or (lambda message: None)
    run = open_run(run_path)
    setting = _Setting(run, source)
    facts, answers, val_table = setting.facts, setting.answers, setting.val_table
    budgets = list(budgets or default_budgets(setting.tree))
    say("dense passes of the run done")
    variants: dict[str, tuple[Any, np.ndarray]] = {"own validation split": setting.own_scheduler()}
    sister_tables = []
    for path in sisters:
        sister = open_run(path)
        outputs = _outputs(sister, "validation", source)
        sister_facts = TreeFacts.of(sister.load_tree().eval())
        sister_answers = fit_answers(sister_facts, outputs, "combined")
        sister_tables.append(exit_table(facts, outputs, _reanswer(sister_answers, answers)))
    if sister_tables:
        pooled = fit_scheduler([val_table, *sister_tables])
        variants[f"pooled with {len(sister_tables)} sister runs' splits"] = (
            pooled,
            cross_fitted_measures(val_table, extra=sister_tables),
        )
        say("pooled scheduler fitted")
    train_outputs = _outputs(run, "train", source, TRAIN_SAMPLE)
    train_table = exit_table(facts, train_outputs, answers)
    corrected = fit_scheduler([train_table], recalibrate_on=val_table)
    halves = np.random.default_rng(1).permutation(len(val_table)) % 2 == 0
    crossed = np.zeros_like(val_table.measures(corrected))
    for fold in (halves, ~halves):
        refit = fit_scheduler([train_table], recalibrate_on=_rows(val_table, ~fold))
        crossed[fold] = _rows(val_table, fold).measures(refit)
    variants["training-set outputs, intercepts refitted on validation"] = (corrected, crossed)
    say("training-set scheduler fitted")
    study: dict[str, Any] = {
        "run": str(run.path),
        "num_validation": len(setting.validation),
        "num_test": len(setting.test),
        "num_train_sample": len(train_outputs),
        "sisters": [str(p) for p in sisters],
        "exits": _exit_accuracy(exit_table(facts, setting.test)),
        "budgets": setting.rows(variants, budgets),
    }
    if larger is not None:
        # Another network (trained on fewer images), so its own baselines: what the larger
        # split buys the scheduler there, beside what it costs the exits.
        bigger = _Setting(open_run(larger), source)
        study["larger_validation"] = {
            "run": str(bigger.run.path),
            "num_validation": len(bigger.validation),
            "exits": _exit_accuracy(exit_table(bigger.facts, bigger.test)),
            "budgets": bigger.rows({"own validation split": bigger.own_scheduler()}, budgets),
        }
        say("larger-split run measured")
    return study


def _reanswer(fitted: Any, like: Any) -> Any:
    """A sister's own fitted answers, as the policy the run's table template expects."""
    return fitted if fitted.answers == like.answers else like


def _rows(table: ExitTable, rows: np.ndarray) -> ExitTable:
    return table.subset(rows)


def _exit_accuracy(table: ExitTable) -> list[float]:
    """Each exit's test accuracy (raw answers), in leaf order."""
    return [float(v) for v in table.correct.mean(axis=0)]


# --------------------------------------------------------------------------- guarantees


#: The ways of choosing a guaranteed point the guarantee study compares: calibrate's own
#: (every family of ``--policy best``; the path ordered by fitted accuracy, or by cost as
#: before), and calibrate restricted to one family: per-exit thresholds, or one threshold
#: shared by every exit (the "Fast yet Safe" baseline).
GUARANTEE_METHODS: dict[str, tuple[str, str | None]] = {
    "calibrate --policy best": ("fit", None),
    "calibrate --policy best, cost-ordered path": ("cost", None),
    "per-exit thresholds": ("fit", "budgeted/raw"),
    "one shared threshold": ("fit", "confidence/raw"),
}
NAIVE = "naive point estimate"


def guarantees(
    run_path: str | os.PathLike[str],
    targets: Sequence[float],
    deltas: Sequence[float] = (0.05, 0.1, 0.2),
    partitions: int = 200,
    calibration_size: int = 5000,
    source: StudyData = StudyData(),
    progress: Progress = None,
) -> dict[str, Any]:
    """Guaranteed accuracy targets over random partitions of the run's held-out examples
    (validation and test together) into ``calibration_size`` calibration examples and the
    rest for evaluation, each draw running exactly ``calibrate --policy best
    --target-accuracy A --delta D``'s pipeline (``policies.calibration.guarantee_paths``:
    every family, the scheduler and the routers included, fitted afresh on the draw). Per
    method, target and delta: how often a point is certified, how often a certified point
    misses the target on the evaluation examples (over all draws: the rate the guarantee
    bounds by delta; and given certification), the certification chance ``calibrate``
    estimated, and the MACs saved against the deepest exit; beside the naive point
    estimate (``calibrate`` without ``--delta``)."""
    from dynroute.core.operating import BEST
    from dynroute.policies.calibration import (
        candidates,
        families,
        guarantee_paths,
    )

    say = progress or (lambda message: None)
    run = open_run(run_path)
    tree = run.load_tree().eval()
    if tree.dynamic_k_cpt:
        raise DynrouteError("the guarantee study takes fixed-k_cpt networks")
    facts = TreeFacts.of(tree)
    held = _concat(_outputs(run, "validation", source), _outputs(run, "test", source))
    deepest = float(facts.leaf_macs(exit_table(facts, held).answers).max())
    wanted = families(BEST)
    rng = np.random.default_rng(0)
    methods = (*GUARANTEE_METHODS, NAIVE)
    records = {
        (method, target, delta): {
            "violations": 0,
            "saved": [],
            "refused": 0,
            "accuracy": [],
            "chance": [],
        }  # fmt: skip
        for method in methods
        for target in targets
        for delta in deltas
    }
    for draw in range(partitions):
        order = rng.permutation(len(held))
        calibration = held.subset(np.sort(order[:calibration_size]))
        unseen = held.subset(np.sort(order[calibration_size:]))
        unseen_scorer = _Scorer(tree, facts, unseen, deepest)
        paths = guarantee_paths(0, tree, calibration, wanted, "accuracy", seed=draw)
        naive_points = candidates(0, tree, calibration, wanted)
        for target in targets:
            naive = selection.reaching(naive_points, target)
            for delta in deltas:
                for method, (path_order, family) in GUARANTEE_METHODS.items():
                    record = records[(method, target, delta)]
                    if family is not None and family not in paths.paths:
                        record["refused"] += 1
                        continue
                    try:
                        chosen, _, chances = paths.certify(target, delta, path_order, family, draw)
                    except DynrouteError:  # nothing certified on this draw
                        record["refused"] += 1
                        continue
                    record["chance"].append(chances["chance"])
                    unseen_scorer.score(record, chosen, target)
                record = records[(NAIVE, target, delta)]
                if naive is None:
                    record["refused"] += 1
                else:
                    unseen_scorer.score(record, naive, target)
        if progress is not None and (draw + 1) % 10 == 0:
            say(f"{draw + 1} of {partitions} partitions")
    rows = []
    for (method, target, delta), record in records.items():
        # The promise is P(a point is certified and misses the target) <= delta, over
        # calibration draws: a refused draw promises nothing, so it cannot break it. Given
        # certification the rate can exceed delta (lucky draws certify near the limit).
        done = partitions - record["refused"]
        rows.append(
            {
                "method": method,
                "target": target,
                "delta": delta,
                "partitions": partitions,
                "certified": done,
                "violations": record["violations"],
                "violation_rate": record["violations"] / partitions,
                "violation_rate_when_certified": record["violations"] / done if done else None,
                "standard_error": math.sqrt(delta * (1 - delta) / partitions),
                "estimated_certification": (
                    float(np.mean(record["chance"])) if record["chance"] else None
                ),
                "macs_saved": float(np.mean(record["saved"])) if record["saved"] else None,
                "mean_accuracy": float(np.mean(record["accuracy"])) if record["accuracy"] else None,
            }
        )
    return {
        "run": str(run.path),
        "pipeline": "calibrate --policy best (Learn-then-Test), fitted afresh on every draw",
        "held_out": len(held),
        "calibration_size": calibration_size,
        "deepest_macs": deepest,
        "rows": rows,
    }


class _Scorer:
    """Scores chosen operating points on one draw's evaluation examples."""

    def __init__(self, tree: Any, facts: TreeFacts, unseen: DenseOutputs, deepest: float) -> None:
        self.tree, self.facts, self.unseen, self.deepest = tree, facts, unseen, deepest
        self.tables: dict[str, ExitTable] = {}

    def score(self, record: dict, chosen: Any, target: float) -> None:
        from dynroute.policies.calibration import positions_on, table_key

        positions = positions_on(self.tree, self.unseen, chosen, None, self.tables)
        table = self.tables.get(table_key(chosen)) or exit_table(self.facts, self.unseen)
        accuracy = float(table.correctness(positions).mean())
        macs = float(table.facts.leaf_macs(chosen.policy)[positions].mean())
        record["violations"] += accuracy < target
        record["saved"].append(1 - macs / self.deepest)
        record["accuracy"].append(accuracy)


def _concat(first: DenseOutputs, second: DenseOutputs) -> DenseOutputs:
    return DenseOutputs(
        np.concatenate([first.logits, second.logits]),
        {j: np.concatenate([s, second.scores[j]]) for j, s in first.scores.items()},
        np.concatenate([first.labels, second.labels]),
    )


#: Bootstrap draws behind the lead's intervals, and their seed.
LEAD_DRAWS = 2000


@dataclass
class _StaticChoice:
    """One way to answer with one static network: its raw exit, or the exit recalibrated
    on validation (as the routed side may recalibrate its exits)."""

    network: str
    answers: str
    validation_accuracy: float
    mean_macs: float
    test_correct: np.ndarray


def _static_choices(
    name: str, result: dict[str, Any], run_path: Any, source: StudyData
) -> list[_StaticChoice]:
    """The static network's answers to choose among: raw from its result file; with its
    run (checkpoint) also the recalibrated exit, fitted on the validation split alone."""
    from dynroute.policies.statistics import unpack_bits

    macs = float(result["mean_macs"])
    if run_path is None:
        correct = unpack_bits(result["correct_bits"], result["points"][0]["num_examples"])
        return [_StaticChoice(name, "raw", result["validation"]["accuracy"], macs, correct)]
    run = open_run(run_path)
    tree = run.load_tree().eval()
    validation, test = _outputs(run, "validation", source), _outputs(run, "test", source)
    raw = exit_table(tree, validation)
    calibrated = fit_answers(raw.facts, validation, "calibrated")
    first_v, first_t = np.zeros(len(validation), np.int64), np.zeros(len(test), np.int64)
    return [
        _StaticChoice(
            name,
            answers,
            float(exit_table(tree, validation, policy).correctness(first_v).mean()),
            macs,
            exit_table(tree, test, policy).correctness(first_t),
        )
        for answers, policy in (("raw", raw.answers), ("calibrated", calibrated))
    ]


def lead(
    run_paths: Sequence[str | os.PathLike[str]],
    static_results: dict[str, dict[str, Any]],
    source: StudyData = StudyData(),
    progress: Progress = None,
    static_runs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """How many fewer MACs the routed runs need than the best static network for its
    accuracy. The static network is the most accurate on validation among
    ``static_results`` (result documents by name, trained as long), its exit raw or, where
    ``static_runs`` holds its run folder, recalibrated on validation if that is more
    accurate there (the routed side may recalibrate too); the routed operating point is the
    cheapest on validation, over every family of ``calibrate --policy best`` of every run,
    whose validation accuracy reaches the static network's. Both are scored on test:
    accuracies (exact McNemar, paired), mean MACs and their ratio, with 95 % bootstrap
    intervals over the test examples."""
    from dynroute.core.operating import BEST
    from dynroute.policies.calibration import candidates, families, positions_on, table_key

    say = progress or (lambda message: None)
    static_runs = static_runs or {}
    usable = {n: r for n, r in static_results.items() if "validation" in r and "correct_bits" in r}
    if not usable:
        raise DynrouteError(
            "the lead needs static results with a validation point and test correctness "
            "(trained by this version's sweep with a validation split)"
        )
    options: list[_StaticChoice] = []
    for name, result in sorted(usable.items()):
        options += _static_choices(name, result, static_runs.get(name), source)
        say(f"static {name}: {len(options)} ways to answer so far")
    # The most accurate on validation; on a tie the cheaper, then the raw exit.
    static = max(options, key=lambda o: (o.validation_accuracy, -o.mean_macs, o.answers == "raw"))
    target = static.validation_accuracy
    recalibrated = sorted({o.network for o in options if o.answers != "raw"})
    runs, pool, tests = [], [], []
    for index, path in enumerate(run_paths):
        run = open_run(path)
        tree = run.load_tree().eval()
        validation = _outputs(run, "validation", source)
        runs.append((run, tree))
        tests.append(_outputs(run, "test", source))
        pool += candidates(index, tree, validation, families(BEST))
        say(f"{run.path}: {len(pool)} operating points so far")
    chosen = selection.reaching(pool, target)
    out: dict[str, Any] = {
        "dataset": runs[0][0].dataset_name(),
        "runs": [str(run.path) for run, _ in runs],
        "static": {
            "network": static.network,
            "answers": static.answers,
            "recalibrated_on_validation": recalibrated,
            "validation": {"accuracy": target, "mean_macs": static.mean_macs},
            "test": {"accuracy": float(static.test_correct.mean()), "mean_macs": static.mean_macs},
        },
        "target_accuracy": target,
        "best_validation_accuracy": max(c.accuracy for c in pool),
        "routed": None,
    }
    if chosen is None:
        return out
    run, tree = runs[chosen.run]
    test = tests[chosen.run]
    positions = positions_on(tree, test, chosen, None, tables := {})
    table = tables.get(table_key(chosen)) or exit_table(tree, test)
    correct = table.correctness(positions)
    macs = table.facts.leaf_macs(chosen.policy)[positions]
    static_correct, static_macs = static.test_correct, static.mean_macs
    if len(static_correct) != len(correct):
        raise DynrouteError(
            f"the static network was scored on {len(static_correct)} test examples and the "
            f"routed run on {len(correct)}: they must share the test split"
        )
    rng = np.random.default_rng(0)
    draws = rng.integers(0, len(correct), (LEAD_DRAWS, len(correct)))
    ratios = static_macs / macs[draws].mean(axis=1)
    differences = correct[draws].mean(axis=1) - static_correct[draws].mean(axis=1)
    out["routed"] = {
        "run": str(run.path),
        "policy": chosen.policy.to_dict(),
        "family": chosen.family,
        "k_cpt": chosen.k_cpt,
        "validation": {"accuracy": chosen.accuracy, "mean_macs": chosen.mean_macs},
        "test": {"accuracy": float(correct.mean()), "mean_macs": float(macs.mean())},
    }
    out["mac_ratio"] = static_macs / float(macs.mean())
    out["mac_ratio_interval"] = [float(v) for v in np.percentile(ratios, [2.5, 97.5])]
    out["accuracy_difference_interval"] = [
        float(v) for v in np.percentile(differences, [2.5, 97.5])
    ]
    out["versus_static"] = mcnemar(correct, static_correct)
    return out
