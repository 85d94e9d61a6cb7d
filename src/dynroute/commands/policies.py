"""``dynroute policies`` and ``dynroute calibrate``: operating points of trained networks.

``policies`` draws, per run, the accuracy/mean-MAC curve of every routing policy on the
same exits (learned routers, confidence and entropy thresholds, the oracle, each exit
alone), says how much of the static-to-oracle gap the routers close, and, for a run with a
validation split, prints the policy table (every deployable policy fitted to each budget
on validation, scored on test: ``dynroute.policies.table``). ``calibrate`` turns a budget
into an operating point chosen (and, for the budgeted and ensemble policies, fitted) on
the validation split and stores it in the run, where ``evaluate`` and
``EarlyExitEngine.from_run`` pick it up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
from pathlib import Path
from typing import Any

from dynroute.core.errors import DynrouteError

SPLIT_CHOICES = ("validation", "test", "train")


def cmd_policies(args: argparse.Namespace) -> int:
    from dynroute.io.atomic import write_json_atomic
    from dynroute.platform.devices import configure_cpu
    from dynroute.plots.figures import plot_policy_curves
    from dynroute.policies.analysis import analyse, analysis_k_values
    from dynroute.runs import open_run, run_lock

    configure_cpu(args.threads)
    runs = [open_run(path) for path in args.runs]  # every path checked before any work
    if args.into_result and len(runs) != 1:
        raise DynrouteError("`into_result` takes one run")
    for run in runs:
        tree = run.load_tree()
        run.check_routed(tree, "`dynroute policies`")
        images, labels, class_names = run.split(
            args.split, args.data_dir, args.dataset, args.allow_checksum_mismatch
        )
        run.check_classes(tree, class_names, run.dataset_name(args.dataset))
        analysis = {"run": str(run.path), "split": args.split, **analyse(
            tree, images, labels, analysis_k_values(tree, (run.config or {}).get("k_cpt_set"))
        )}  # fmt: skip
        table = _budget_table(run, tree, images, labels, args)
        if table is not None:
            analysis["budgets"] = table
        out = Path(args.out) if args.out else (run.directory or run.path.parent)
        stem = f"{run.name}-{args.split}" if args.out else f"policies-{args.split}"
        if args.dataset is not None and not args.out:
            # Never over the run's own analysis: this one is of the data named.
            stem += f"-on-{_slug(args.dataset)}"
        with contextlib.ExitStack() as stack:
            if out == run.directory:  # not while a trainer writes the run
                stack.enter_context(run_lock(out, "writing policies"))
            json_path = write_json_atomic(out / f"{stem}.json", analysis)
            figures = plot_policy_curves(analysis, out, stem)
        print(format_analysis(run.name, analysis))
        if table is not None:
            from dynroute.plots.tables import policy_table_text

            print(policy_table_text(table))
        print(f"  written: {json_path}, {', '.join(str(f) for f in figures)}")
        if args.into_result:
            _into_result(Path(args.into_result), run, table)
    return 0


def _budget_table(run, tree, images, labels, args: argparse.Namespace) -> dict[str, Any] | None:
    """The policy table on the test split, fitted on the run's validation split (None where
    the run holds none out, analyses another split, or has no junctions)."""
    from dynroute.policies.exit_table import dense_outputs
    from dynroute.policies.table import budget_table
    from dynroute.train.strategies import trains_routers

    config = run.config or {}
    if args.split != "test" or not config.get("validation_size") or not tree.junctions:
        return None
    if tree.dynamic_k_cpt:
        return None
    held_images, held_labels, _ = run.split(
        "validation", args.data_dir, args.dataset, args.allow_checksum_mismatch
    )
    budgets = None if args.budgets is None else [b * 1e6 for b in args.budgets]
    return budget_table(
        tree,
        dense_outputs(tree, held_images, held_labels),
        dense_outputs(tree, images, labels),
        budgets,
        progress=lambda message: print(f"  policy table: {message}", flush=True),
        routers=trains_routers(config.get("strategy", "actor")),
    )


def _into_result(path: Path, run, table: dict | None) -> None:
    """Put a run's policy table into the sweep result file of the same network."""
    from dynroute.experiments.results import read_result
    from dynroute.io.atomic import write_json_atomic

    result = read_result(path)
    from dynroute.train.config import EXECUTION_ONLY

    stored = {k: v for k, v in result["config"].items() if k not in EXECUTION_ONLY}
    trained = {k: v for k, v in (run.config or {}).items() if k not in EXECUTION_ONLY}
    differing = sorted(k for k in set(stored) | set(trained) if stored.get(k) != trained.get(k))
    if differing:
        raise DynrouteError(
            f"{run.path} was not trained as {path} records ({', '.join(differing)} differ)"
        )
    if table is None:
        raise DynrouteError(f"{run.path} has no policy table to record (no validation split)")
    result["budgets"] = table  # the sweep's own analyses (with paired bits) stay as they are
    write_json_atomic(path, result)
    print(f"  recorded in {path}")


def _slug(dataset: str) -> str:
    """A file-name part for a dataset name (``npz:/data/x.npz`` -> ``npz-data-x.npz``)."""
    return re.sub(r"[^A-Za-z0-9._]+", "-", dataset).strip("-")[:60]


def format_analysis(name: str, analysis: dict[str, Any]) -> str:
    """The learned points, what thresholds do at the same MACs, and the routing quality."""
    lines = [f"{name} ({analysis['split']}, {analysis['num_examples']} examples):"]
    for point in analysis["learned"]:
        k = "" if point["k_cpt"] is None else f" k_cpt {point['k_cpt']:g}"
        quality = point["routing_quality"]
        gap = quality["gap_closed"]
        lines.append(
            f"  learned{k}: accuracy {point['accuracy']:.4f} at {point['mean_macs'] / 1e6:.2f} M"
            f" MACs; at this accuracy static {_m(quality['static_macs'])}, best threshold "
            f"{_m(quality['threshold_macs'])}, oracle {_m(quality['oracle_macs'])}; routers "
            f"close {'-' if gap is None else f'{100 * gap:.0f} %'} of the static-oracle gap"
        )
        for policy, row in point["against_thresholds"].items():
            lines.append(
                f"    vs {policy} {row['threshold']:.4f} at {row['mean_macs'] / 1e6:.2f} M: "
                f"accuracy {row['accuracy']:.4f}, learned {100 * row['accuracy_difference']:+.2f}"
                f" points (McNemar p = {row['p_value']:.3g})"
            )
    return "\n".join(lines)


def _m(value: float | None) -> str:
    return "unreached" if value is None else f"{value / 1e6:.2f} M"


def cmd_calibrate(args: argparse.Namespace) -> int:
    from dynroute.platform.devices import configure_cpu
    from dynroute.policies.calibration import calibrate

    configure_cpu(args.threads)
    record = calibrate(
        args.runs,
        target_macs=args.target_macs,
        target_accuracy=args.target_accuracy,
        max_disagreement=args.max_disagreement,
        delta=args.delta,
        policy=args.policy,
        answers=args.answers,
        split=args.split,
        k_cpt=args.k_cpt,
        data_dir=args.data_dir,
        allow_checksum_mismatch=args.allow_checksum_mismatch,
    )
    from dynroute.core.policy import Policy

    policy = Policy.from_dict(record["policy"])
    setting = policy.label()
    if policy.thresholds is not None:
        setting += " (a threshold per exit)"
    if record["k_cpt"] is not None:
        setting += f", k_cpt {record['k_cpt']:.4g}"
    print(f"chosen: {record['run']} with {setting}")
    for split in dict.fromkeys((record["split"], "test")):
        row = record[split]
        macs = row["mean_macs"] / 1e6
        print(f"  {split:<10} accuracy {row['accuracy']:.4f}, mean MACs {macs:.3f} M")
    target_macs = record["target"]["mean_macs"]
    if target_macs is not None:
        off = record["test"]["mean_macs"] / target_macs - 1
        print(f"  test mean MACs are {100 * off:+.1f} % off the target {target_macs / 1e6:.3f} M")
    guarantee = record.get("guarantee")
    if guarantee is not None:
        print(f"  guarantee: {guarantee['promise']}")
        print(
            f"    method: {guarantee['method']}; n = {guarantee['n']} testing examples "
            f"({guarantee['fit_examples']} fitting), bound at this point {guarantee['bound']:.6g}"
        )
        chances = guarantee.get("certification") or {}
        if "chance" in chances:
            print(
                f"    this procedure certified on {100 * chances['chance']:.0f} % of "
                f"{chances['draws']} resamples of the testing half: the lower that is, the "
                "more a certificate here is a lucky draw"
            )
    print(
        f"saved: {record['saved']} (used by `dynroute evaluate {record['run']}`, export, "
        "predict, serve and EarlyExitEngine.from_run)"
    )
    if args.json:
        shown = {k: v for k, v in record.items() if k not in ("run", "saved")}
        print(json.dumps(shown, indent=2))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    from dynroute.commands.common import (
        add_checksum_argument,
        add_data_dir_argument,
        add_operating_point_arguments,
        add_threads_argument,
        ranged,
        ranged_list,
    )
    from dynroute.core import checks

    # A budget of the policy table, in millions of MACs.
    budget_millions = checks.Range(
        checks.Bounds(0, checks.MAX_MACS / 1e6, low_open=True), False, "a mean-MAC budget"
    )

    policies = sub.add_parser(
        "policies", help="accuracy/MAC curves of every routing policy on a run's exits"
    )
    policies.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    policies.add_argument("--split", default="test", choices=SPLIT_CHOICES)
    policies.add_argument("--dataset", default=None, help="for a bare checkpoint file")
    policies.add_argument("--out", default=None, help="folder for the files (default: each run)")
    policies.add_argument(
        "--budgets",
        type=ranged_list(budget_millions),
        default=None,
        metavar="M,M,...",
        help="budgets of the policy table, in millions of MACs (default: 10-73 %% of the "
        "deepest exit's MACs)",
    )
    policies.add_argument(
        "--into-result",
        default=None,
        metavar="FILE",
        help="also record the policy table in this sweep result file (same network, checked)",
    )
    add_threads_argument(policies)
    add_data_dir_argument(policies)
    add_checksum_argument(policies)
    policies.set_defaults(func=cmd_policies)

    calibrate = sub.add_parser(
        "calibrate", help="choose the operating point that meets a MAC budget or an accuracy"
    )
    calibrate.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    add_operating_point_arguments(calibrate, "learned, the routers", calibrating=True)
    calibrate.add_argument(
        "--target-accuracy", type=ranged(checks.TARGET_ACCURACY), default=None, metavar="A"
    )
    calibrate.add_argument(
        "--max-disagreement",
        type=ranged(checks.MAX_DISAGREEMENT),
        default=None,
        metavar="E",
        help="answer as the full network does on all but this share of inputs (guaranteed)",
    )
    calibrate.add_argument(
        "--delta",
        type=ranged(checks.DELTA),
        default=None,
        metavar="D",
        help="guarantee the target with probability at least 1 - D over the calibration "
        "split (Learn-then-Test; default for --max-disagreement: 0.1); without it the target "
        "is met as a point estimate",
    )
    calibrate.add_argument(
        "--split",
        default="validation",
        choices=SPLIT_CHOICES,
        help="where to choose (default: the run's validation split)",
    )
    calibrate.add_argument("--json", action="store_true", help="also print the record as JSON")
    add_threads_argument(calibrate)
    add_data_dir_argument(calibrate)
    add_checksum_argument(calibrate)
    calibrate.set_defaults(func=cmd_calibrate)
