"""``dynroute policies`` and ``dynroute calibrate``: operating points of trained networks.

``policies`` draws, per run, the accuracy/mean-MAC curve of every routing policy on the
same exits (learned routers, confidence and entropy thresholds, the oracle, each exit
alone) and says how much of the static-to-oracle gap the routers close. ``calibrate``
turns a budget into an operating point chosen on the validation split and stores it in
the run, where ``evaluate`` and ``EarlyExitEngine.from_run`` pick it up.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from dynroute.errors import DynrouteError
from dynroute.nn.routing import POLICIES

SPLIT_CHOICES = ("validation", "test", "train")


def cmd_policies(args: argparse.Namespace) -> int:
    from dynroute.atomic import write_json_atomic
    from dynroute.infer.operating_points import analyse, analysis_k_values
    from dynroute.plots.figures import plot_policy_curves
    from dynroute.runtime import configure_cpu
    from dynroute.train.runs import open_run

    configure_cpu(args.threads)
    runs = [open_run(path) for path in args.runs]  # every path checked before any work
    for run in runs:
        images, labels, _ = run.split(
            args.split, args.data_dir, args.dataset, args.allow_checksum_mismatch
        )
        tree = run.load_tree()
        analysis = {"run": str(run.path), "split": args.split, **analyse(
            tree, images, labels, analysis_k_values(tree, (run.config or {}).get("k_cpt_set"))
        )}  # fmt: skip
        out = Path(args.out) if args.out else (run.directory or run.path.parent)
        stem = f"policies-{args.split}" if not args.out else f"{run.name}-{args.split}"
        json_path = write_json_atomic(out / f"{stem}.json", analysis)
        figures = plot_policy_curves(analysis, out, stem)
        print(format_analysis(run.name, analysis))
        print(f"  written: {json_path}, {', '.join(str(f) for f in figures)}")
    return 0


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
    import torch

    from dynroute.infer.calibration import candidates, choose
    from dynroute.infer.evaluate import evaluate
    from dynroute.nn.prediction import as_tensor
    from dynroute.nn.routing import Policy
    from dynroute.runtime import configure_cpu
    from dynroute.train.runs import open_run

    policy = Policy(args.policy, 0.5 if args.policy in ("confidence", "entropy") else None)
    target_macs = None if args.target_macs is None else args.target_macs * 1e6
    if target_macs is not None and not target_macs > 0:
        raise DynrouteError("--target-macs must be positive (millions of MACs)")
    if args.target_accuracy is not None and not 0 < args.target_accuracy <= 1:
        raise DynrouteError("--target-accuracy must be in (0, 1]")
    if (target_macs is None) == (args.target_accuracy is None):
        raise DynrouteError("give exactly one of --target-macs and --target-accuracy")
    if args.split != "validation":
        print(
            f"dynroute: warning: calibrating on the {args.split} split, as asked; its numbers "
            "then overstate how well the target is met on new data",
            file=sys.stderr,
        )
    configure_cpu(args.threads)
    runs = [open_run(path) for path in args.runs]
    if any(run.directory is None for run in runs):
        raise DynrouteError("calibrate works on run directories (it saves its choice there)")
    points, trees = [], []
    for index, run in enumerate(runs):
        images, labels, _ = run.split(args.split, args.data_dir, None, args.allow_checksum_mismatch)
        tree = run.load_tree()
        trees.append(tree)
        points += candidates(
            index,
            tree,
            as_tensor(images, torch.float32),
            as_tensor(labels, torch.long),
            policy,
            args.k_cpt,
        )
    chosen = choose(points, target_macs, args.target_accuracy)
    run, tree = runs[chosen.run], trees[chosen.run]
    images, labels, _ = run.split("test", args.data_dir, None, args.allow_checksum_mismatch)
    test = evaluate(tree, images, labels, k_cpt=chosen.k_cpt, method="engine", policy=chosen.policy)
    record = {
        "policy": chosen.policy.to_dict(),
        "k_cpt": chosen.k_cpt,
        "target": {"mean_macs": target_macs, "accuracy": args.target_accuracy},
        "split": args.split,
        args.split: {"accuracy": chosen.accuracy, "mean_macs": chosen.mean_macs},
        "test": {"accuracy": test.accuracy, "mean_macs": test.mean_macs},
        "candidates_from": [str(r.path) for r in runs],
    }
    path = run.save_calibration(record)
    setting = chosen.policy.label() + (
        "" if chosen.k_cpt is None else f", k_cpt {chosen.k_cpt:.4g}"
    )
    print(f"chosen: {run.path} with {setting}")
    for split in dict.fromkeys((args.split, "test")):
        row = record[split]
        macs = row["mean_macs"] / 1e6
        print(f"  {split:<10} accuracy {row['accuracy']:.4f}, mean MACs {macs:.3f} M")
    if target_macs is not None:
        off = test.mean_macs / target_macs - 1
        print(f"  test mean MACs are {100 * off:+.1f} % off the target {target_macs / 1e6:.3f} M")
    print(f"saved: {path} (used by `dynroute evaluate {run.path}` and EarlyExitEngine.from_run)")
    if args.json:
        print(json.dumps(record, indent=2))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    from dynroute.commands.data import add_checksum_argument, add_data_dir_argument
    from dynroute.commands.train import add_threads_argument

    policies = sub.add_parser(
        "policies", help="accuracy/MAC curves of every routing policy on a run's exits"
    )
    policies.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    policies.add_argument("--split", default="test", choices=SPLIT_CHOICES)
    policies.add_argument("--dataset", default=None, help="for a bare checkpoint file")
    policies.add_argument("--out", default=None, help="folder for the files (default: each run)")
    add_threads_argument(policies)
    add_data_dir_argument(policies)
    add_checksum_argument(policies)
    policies.set_defaults(func=cmd_policies)

    calibrate = sub.add_parser(
        "calibrate", help="choose the operating point that meets a MAC budget or an accuracy"
    )
    calibrate.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    calibrate.add_argument(
        "--policy", default="learned", choices=[p for p in POLICIES if p != "oracle"]
    )
    calibrate.add_argument(
        "--target-macs", type=float, default=None, metavar="M", help="mean MACs, in millions"
    )
    calibrate.add_argument("--target-accuracy", type=float, default=None, metavar="A")
    calibrate.add_argument(
        "--k-cpt", type=float, default=None, help="threshold policies on a dynamic-k_cpt net"
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
