"""The policy table: every policy at a set of budgets, on equal footing.

The protocol (docs/policies.md), the same for every policy:

- **fitting**: every parameter (recalibration, combination weights, thresholds, the
  budgeted scheme's q, the scheduler's models) is fitted on the run's validation split,
  which training never saw; the test split only scores;
- **answers**: every exit rule (confidence, entropy, budgeted thresholds) runs on three
  kinds of answer: raw exits, recalibrated exits (a temperature and a bias per class per
  exit) and combined exits (a running combination of the answers already computed, Zero
  Time Waste); each budget also lists the best single exit (a truncation of the net);
- **selection**: at every budget each policy takes, among its members spending at most
  the budget on validation, the cheapest one within one standard error of the most
  accurate (``dynroute.core.selection.sufficient_within_budget``): more spend that buys nothing
  distinguishable from noise is not spent. The best baseline is the baseline most
  accurate on validation. A budget **binds** a policy where its choice there differs from
  its choice without a budget; a comparison binds where it binds either side, and only
  such comparisons count in the report's claims;
- **decomposition**: the steps raw rule -> + recalibration -> + combination -> + learned
  decisions each take the best (on validation) of what is available so far; each step's
  gain is its test accuracy minus the previous step's, with an exact McNemar p-value;
- **learned decisions** (the paper's routers and the scheduler, each on raw, recalibrated
  or combined answers: ``dynroute.core.policy``) are compared with the best baseline (McNemar),
  and their **MAC saving** is measured on the test envelopes of both families: at the
  accuracy the baseline's envelope reaches at the budget, one minus the policy's MACs
  there over the baseline's; only where both envelopes still rise (the accuracy at least
  one standard error below both peaks: a flat top turns a few test images into millions
  of MACs), with bootstrap draws over the test examples (the members' test MACs held).

Statistics across cells (Holm's correction over a claim's family of distinct cells) are
the report's (``dynroute.experiments.claims``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dynroute.core import selection
from dynroute.core.errors import DynrouteError
from dynroute.core.policy import LEARNED, Policy
from dynroute.core.rules import RULES, ExitRule
from dynroute.nn.tree import RoutedTree
from dynroute.policies.curves import CurvePoint, accuracy_at, as_points, macs_for_accuracy
from dynroute.policies.exit_table import DenseOutputs, ExitTable, TreeFacts, exit_table
from dynroute.policies.fitting import fit_answers
from dynroute.policies.statistics import mcnemar, pack_bits, unpack_bits

#: The table format: 2 puts every baseline on equal footing; 3 adds the one-standard-error
#: selection, binding budgets, the routers on every kind of answers and MAC savings.
TABLE_VERSION = 3
#: Bootstrap draws (over test examples) behind every MAC saving, and their seed.
SAVING_DRAWS = 200
SAVING_SEED = 0
#: Default budgets as shares of the deepest exit's path MACs: on the paper's chain
#: (20.6 M MACs) 2.1, 3.1, 4.1, 5.2, 6.2, 8.2, 10.3, 12.4 and 15.0 M, its 2-15 M band.
BUDGET_SHARES = (0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.73)
#: The lowest default budget is at least this multiple of the cheapest exit's MACs.
CHEAPEST_MARGIN = 1.05
ANSWER_KINDS = ("raw", "calibrated", "combined")
#: The decomposition: each step adds the answers or rules named.
STEPS = (
    ("raw rule", ("raw",), False),
    ("+ recalibration", ("raw", "calibrated"), False),
    ("+ combination", ANSWER_KINDS, False),
    ("+ learned decisions", ANSWER_KINDS, True),
)
PROTOCOL = (
    "every policy fitted on the validation split; at each budget each policy takes, among "
    "its members spending at most the budget on validation, the cheapest within one "
    "standard error of the most accurate there; the best baseline is the one most accurate "
    "on validation; a budget binds a policy where it changes its choice; the test split "
    "only scores"
)


def default_budgets(tree: RoutedTree) -> list[float]:
    """``BUDGET_SHARES`` of the deepest exit's path MACs under exit rules; where the
    cheapest exit costs more than the lowest share (a backbone whose first stage is heavy),
    the same spacing moved up to start just above that exit, so that every budget leaves
    the policies a choice."""
    macs = TreeFacts.of(tree).leaf_macs(Policy("confidence", 0.5))
    deepest, cheapest = float(macs.max()), float(macs.min())
    low, high = BUDGET_SHARES[0], BUDGET_SHARES[-1]
    start = max(low * deepest, CHEAPEST_MARGIN * cheapest)
    if start >= high * deepest:
        return [high * deepest]
    scale = (high * deepest - start) / ((high - low) * deepest)
    return [start + (share - low) * deepest * scale for share in BUDGET_SHARES]


@dataclass
class Member:
    """One operating point of a family: its parameters, where it stands on each split."""

    parameters: dict[str, Any]
    validation: dict[str, float]
    test: dict[str, float]
    correct: np.ndarray = field(repr=False)

    @property
    def mean_macs(self) -> float:  # what ``selection`` chooses on: the validation split
        return self.validation["mean_macs"]

    @property
    def accuracy(self) -> float:
        return self.validation["accuracy"]


@dataclass
class Family:
    """A policy's operating points (``key``: rule/answers, or ``learned``)."""

    key: str
    rule: str
    answers: str
    learned: bool
    members: list[Member]

    def test_curve(self) -> list[CurvePoint]:
        return as_points([m.test for m in self.members])


def _parameters(policy: Policy) -> dict[str, Any]:
    """What a table cell says of a policy (fitted answers and models are stored once)."""
    return {
        k: v for k, v in policy.to_dict().items() if k not in ("weights", "biases", "scheduler")
    }


def _replay(table: ExitTable, policies: Sequence[Policy]) -> list[np.ndarray]:
    """Each policy's exits on ``table`` (a single-threshold family at once where it can)."""
    single = bool(policies) and all(
        p.threshold is not None and p.name == policies[0].name for p in policies
    )
    if single:
        thresholds = np.asarray([p.threshold for p in policies])
        at_once = table.exits_for_thresholds(policies[0], thresholds)
        if at_once is not None:
            return [at_once[:, k] for k in range(len(policies))]
    return [table.exits(p) for p in policies]


def _members(
    pairs: Sequence[tuple[Policy, np.ndarray]], validation: ExitTable, test: ExitTable
) -> list[Member]:
    """Members from a family's (policy, exits on validation) pairs, replayed on test."""
    policies = [policy for policy, _ in pairs]
    out = []
    for (policy, on_validation), on_test in zip(pairs, _replay(test, policies), strict=True):
        out.append(
            Member(
                _parameters(policy),
                validation.point(on_validation, policy),
                test.point(on_test, policy),
                test.correctness(on_test),
            )
        )
    return out


def _rule_family(
    rule: ExitRule,
    kind: str,
    validation: ExitTable,
    test: ExitTable,
    fitted: dict[str, Policy],
) -> list[Family]:
    """The rule's family on ``kind`` answers (none if it has no member); a rule with fitted
    models (the scheduler) has them stored once, under its key."""
    pairs = rule.family(validation)
    if not pairs:
        return []
    key = f"{rule.name}/{kind}"
    if rule.parameter == "scheduler":
        fitted[key] = pairs[0][0]
    return [Family(key, rule.name, kind, rule.learned, _members(pairs, validation, test))]


def _truncations(validation: ExitTable, test: ExitTable, names: list[str]) -> list[Member]:
    """Every example leaves at one exit (the net cut there): its path, its head and, for
    recalibrated answers, their scale and bias; no other exit is evaluated."""
    classes = validation.facts.classes
    extra = classes if validation.answers.answers == "calibrated" else 0
    macs = validation.oracle_macs() + extra
    out = []
    for k, name in enumerate(names):
        out.append(
            Member(
                {"name": "truncation", "exit": name, "answers": validation.answers.answers},
                {"accuracy": float(validation.correct[:, k].mean()), "mean_macs": float(macs[k])},
                {"accuracy": float(test.correct[:, k].mean()), "mean_macs": float(macs[k])},
                test.correct[:, k].copy(),
            )
        )
    return out


def _routers(kind: str, on_validation: ExitTable, on_test: ExitTable, fitted: Policy) -> Family:
    """The paper's learned routers (one operating point: a fixed-k_cpt net), the exit they
    choose answering with ``kind`` answers."""
    policy = LEARNED
    if kind != "raw":
        policy = Policy("learned", answers=kind, weights=fitted.weights, biases=fitted.biases)
    (member,) = _members([(policy, on_validation.exits(policy))], on_validation, on_test)
    return Family(f"learned/{kind}", "learned", kind, True, [member])


def policy_families(
    tree: RoutedTree,
    validation: DenseOutputs,
    test: DenseOutputs,
    progress: Callable[[str], None] | None = None,
    routers: bool = True,
) -> tuple[list[Family], dict[str, ExitTable], dict[str, Policy]]:
    """Every policy's members fitted on ``validation`` and scored on ``test``; the test
    tables by kind of answers (for the oracle) and the fitted answers and scheduler.
    ``routers``: whether the tree's routers were trained (not a multi-exit net's)."""
    facts = TreeFacts.of(tree)
    names = [tree.nodes[leaf].name for leaf in tree.leaves]
    fitted: dict[str, Policy] = {"raw": exit_table(facts, validation).answers}
    for kind in ANSWER_KINDS[1:]:
        fitted[kind] = fit_answers(facts, validation, kind)
    families: list[Family] = []
    test_tables: dict[str, ExitTable] = {}
    for kind in ANSWER_KINDS:
        on_validation = exit_table(facts, validation, fitted[kind])
        on_test = exit_table(facts, test, fitted[kind])
        test_tables[kind] = on_test
        fixed = [r for r in RULES.values() if r.deployable and r.reads_exits and not r.learned]
        learned = [r for r in RULES.values() if r.deployable and r.reads_exits and r.learned]
        for rule in fixed:
            families += _rule_family(rule, kind, on_validation, on_test, fitted)
        if kind != "combined":  # a truncation reads no earlier exit
            families.append(
                Family(
                    f"truncation/{kind}",
                    "truncation",
                    kind,
                    False,
                    _truncations(on_validation, on_test, names),
                )
            )
        for rule in learned:
            families += _rule_family(rule, kind, on_validation, on_test, fitted)
        if routers:
            families.append(_routers(kind, on_validation, on_test, fitted[kind]))
        if progress is not None:
            progress(f"{kind} answers fitted")
    return families, test_tables, fitted


def _chosen(family: Family, budget: float, examples: int) -> Member | None:
    return selection.sufficient_within_budget(family.members, budget, examples)


def _pair_key(first: np.ndarray, second: np.ndarray) -> str:
    """A fingerprint of a paired comparison: identical operating points give one key."""
    digest = hashlib.sha1(np.packbits(first).tobytes() + b"|" + np.packbits(second).tobytes())
    return digest.hexdigest()[:12]


def _compare(first: Member, second: Member, binding: bool) -> dict[str, Any]:
    return {
        **mcnemar(first.correct, second.correct),
        "pair": _pair_key(first.correct, second.correct),
        "binding": binding,
        "test_macs": [first.test["mean_macs"], second.test["mean_macs"]],
    }


class _Draws:
    """Bootstrap draws over the test examples: every member's test accuracy in each draw
    (its test MACs held), the same draws for every family of a table."""

    def __init__(self, examples: int) -> None:
        rng = np.random.default_rng(SAVING_SEED)
        self.counts = rng.multinomial(examples, np.full(examples, 1.0 / examples), SAVING_DRAWS)
        self.counts = self.counts.astype(np.float32).T / np.float32(examples)  # (n, draws)
        self._curves: dict[str, list[list[CurvePoint]]] = {}

    def curves(self, family: Family) -> list[list[CurvePoint]]:
        """The family's test curve in each draw."""
        if family.key not in self._curves:
            correct = np.stack([m.correct for m in family.members]).astype(np.float32)
            accuracies = np.clip(correct @ self.counts, 0, 1)  # (members, draws); float32 sums
            macs = [m.test["mean_macs"] for m in family.members]
            self._curves[family.key] = [
                as_points(
                    [
                        {"mean_macs": m, "accuracy": float(a)}
                        for m, a in zip(macs, column, strict=True)
                    ]
                )
                for column in accuracies.T
            ]
        return self._curves[family.key]


def _saving(budget: float, baseline: list[CurvePoint], policy: list[CurvePoint], examples: int):
    """(accuracy, baseline MACs, policy MACs, saving) at the baseline envelope's accuracy at
    the budget, or None where an envelope no longer rises there (module docstring)."""
    accuracy = accuracy_at(baseline, budget)
    if accuracy is None or not baseline or not policy:
        return None
    error = (accuracy * (1 - accuracy) / examples) ** 0.5
    tops = (max(p.accuracy for p in baseline), max(p.accuracy for p in policy))
    if accuracy > min(tops) - error:
        return None
    base = macs_for_accuracy(baseline, accuracy)
    mine = macs_for_accuracy(policy, accuracy)
    if base is None or mine is None or base <= 0:
        return None
    return accuracy, base, mine, 1.0 - mine / base


def _mac_saving(
    budget: float, baseline: Family, policy: Family, examples: int, draws: _Draws
) -> dict[str, Any]:
    """The policy family's MAC saving over the baseline family's at the budget (module
    docstring), with its value in every bootstrap draw (None where it is not measured)."""
    found = _saving(budget, baseline.test_curve(), policy.test_curve(), examples)
    if found is None:
        return {"rising": False, "saving": None}
    accuracy, base, mine, saving = found
    values = []
    for first, second in zip(draws.curves(baseline), draws.curves(policy), strict=True):
        drawn = _saving(budget, first, second, examples)
        values.append(None if drawn is None else round(drawn[3], 5))
    return {
        "rising": True,
        "accuracy": accuracy,
        "baseline_macs": base,
        "policy_macs": mine,
        "saving": saving,
        "draws": values,
    }


def budget_table(
    tree: RoutedTree,
    validation: DenseOutputs,
    test: DenseOutputs,
    budgets: Sequence[float] | None = None,
    progress: Callable[[str], None] | None = None,
    routers: bool = True,
) -> dict[str, Any]:
    """The policy table (JSON-ready; see the module's docstring). ``routers``: whether the
    tree's routers were trained (a multi-exit net's were not: they are left out)."""
    if len(validation) == 0:
        raise DynrouteError("the policy table needs a validation split to fit the policies on")
    if not tree.junctions:
        raise DynrouteError("a network without junctions has one operating point: no table")
    budgets = list(budgets or default_budgets(tree))
    families, _, fitted = policy_families(tree, validation, test, progress, routers)
    by_key = {f.key: f for f in families}
    n_val, n_test = len(validation), len(test)
    unconstrained = {f.key: _chosen(f, float("inf"), n_val) for f in families}
    draws = _Draws(n_test)
    rows = []
    shared_bits: dict[str, str] = {}
    for budget in budgets:
        chosen = {f.key: m for f in families if (m := _chosen(f, budget, n_val)) is not None}
        binds = {key: m is not unconstrained[key] for key, m in chosen.items()}
        row: dict[str, Any] = {
            "budget": budget,
            "policies": {
                key: {
                    "parameters": m.parameters,
                    "validation": m.validation,
                    "test": m.test,
                    "binding": binds[key],
                }
                for key, m in chosen.items()
            },
        }
        bits: set[str] = set()
        baselines = [f.key for f in families if not f.learned and f.key in chosen]
        if baselines:
            best = max(baselines, key=lambda k: (chosen[k].accuracy, chosen[k].mean_macs))
            row["best_baseline"] = best
            bits.add(best)
            steps, previous = [], None
            for title, kinds, learned in STEPS:
                keys = [
                    f.key
                    for f in families
                    if f.key in chosen and f.answers in kinds and (learned or not f.learned)
                ]
                key = max(keys, key=lambda k: (chosen[k].accuracy, chosen[k].mean_macs))
                step: dict[str, Any] = {"step": title, "policy": key, "test": chosen[key].test}
                if previous is not None:
                    binding = binds[key] or binds[previous]
                    step["versus_previous"] = _compare(chosen[key], chosen[previous], binding)
                steps.append(step)
                bits.add(key)
                previous = key
            row["steps"] = steps
            row["learned"] = {}
            for family in families:
                if not family.learned or family.key not in chosen:
                    continue
                bits.add(family.key)
                binding = binds[family.key] or binds[best]
                row["learned"][family.key] = {
                    "versus_best_baseline": _compare(chosen[family.key], chosen[best], binding),
                    "mac_saving": _mac_saving(budget, by_key[best], family, n_test, draws),
                }
        for key in bits:  # stored once per distinct vector (saturated budgets repeat them)
            packed = pack_bits(chosen[key].correct)
            reference = hashlib.sha1(packed.encode()).hexdigest()[:12]
            shared_bits.setdefault(reference, packed)
            row["policies"][key]["correct"] = reference
        rows.append(row)
        if progress is not None:
            progress(f"budget {budget / 1e6:.2f} M done")
    return {
        "version": TABLE_VERSION,
        "protocol": PROTOCOL,
        "num_validation": len(validation),
        "num_test": len(test),
        "families": [
            {"key": f.key, "rule": f.rule, "answers": f.answers, "learned": f.learned}
            for f in families
        ],
        "fitted": {key: _fitted_record(policy) for key, policy in fitted.items() if key != "raw"},
        "budgets": rows,
        "correct_bits": shared_bits,
    }


def correct_bits(table: dict[str, Any], cell: dict[str, Any]) -> np.ndarray:
    """A cell's per-example test correctness (for the cells the table keeps it of)."""
    return unpack_bits(table["correct_bits"][cell["correct"]], table["num_test"])


def cell_policy(table: dict[str, Any], row: dict[str, Any], key: str) -> Policy | None:
    """The deployable policy of a table cell (its parameters with the fitted answers and
    models the table stores once), or None for a truncation or an absent cell."""
    cell = row["policies"].get(key)
    if cell is None or cell["parameters"].get("name") == "truncation":
        return None
    fitted = table.get("fitted", {}).get(key) or table.get("fitted", {}).get(key.split("/")[-1])
    data = dict(cell["parameters"])
    if fitted:
        data.update({k: v for k, v in fitted.items() if k in ("weights", "biases", "scheduler")})
    return Policy.from_dict(data)


def _fitted_record(policy: Policy) -> dict[str, Any]:
    data = policy.to_dict()
    return {k: data[k] for k in ("answers", "weights", "biases", "scheduler") if k in data}
