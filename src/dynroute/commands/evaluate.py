"""``dynroute evaluate``: accuracy, mean MACs and where examples leave, with hard routing.

The run's operating point comes from ``dynroute.policies.resolve`` (its calibration, or the
policy, answers, threshold or budget given), as for ``export``, ``predict`` and ``serve``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from dynroute.core.errors import DynrouteError


def format_exit_table(stats: dict[str, Any]) -> str:
    """One row per exit: share classified there, its accuracy, its path MACs."""
    lines = [f"{'exit':<14}{'classified':>11}{'accuracy':>10}{'path MACs':>13}"]
    for node in stats["nodes"]:
        if not node["is_leaf"]:
            continue
        acc = "-" if node["accuracy"] is None else f"{node['accuracy']:.4f}"
        lines.append(
            f"{node['name']:<14}{node['classified']:>11.4f}{acc:>10}"
            f"{node['path_macs'] / 1e6:>11.2f} M"
        )
    return "\n".join(lines)


def format_every_exit_table(every: dict[str, dict], class_names: tuple[str, ...]) -> str:
    """Exits as rows; overall and per-class accuracy as columns (class names shortened)."""
    lines = [f"{'exit':<14}{'all':>7}" + "".join(f"{c[:7]:>8}" for c in class_names)]
    for name, row in every.items():
        cells = "".join("       -" if a is None else f"{a:>8.3f}" for a in row["class_accuracy"])
        lines.append(f"{name:<14}{row['accuracy']:>7.3f}{cells}")
    return "\n".join(lines)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from dynroute.core.operating import OperatingRequest
    from dynroute.engine.evaluate import evaluate, every_exit_accuracy
    from dynroute.platform.devices import (
        bf16_on,
        configure_cpu,
        resolve_device,
        use_channels_last,
    )
    from dynroute.policies.resolve import resolve_operating_point
    from dynroute.runs import open_run

    run = open_run(args.run)
    configure_cpu(args.threads)
    point = resolve_operating_point(
        run,
        **OperatingRequest.from_options(args).options(),
        data_dir=args.data_dir,
        allow_checksum_mismatch=args.allow_checksum_mismatch,
    )
    policy, k_cpt = point.policy, point.k_cpt
    device = resolve_device(args.device)
    tree = run.load_tree(device)
    if use_channels_last(device, bf16_on(device, args.bf16, warn=False)):
        import torch

        tree.to(memory_format=torch.channels_last)
    if tree.dynamic_k_cpt and k_cpt is None:
        raise DynrouteError("this network routes on k_cpt: pass --k-cpt (or calibrate it)")
    if not tree.dynamic_k_cpt and k_cpt is not None:
        raise DynrouteError("this network was trained for one k_cpt; --k-cpt does not apply")
    images, labels, class_names = run.split(
        args.split, args.data_dir, args.dataset, args.allow_checksum_mismatch
    )
    dataset = run.dataset_name(args.dataset)
    run.check_classes(tree, class_names, dataset)
    if args.every_exit:
        every = every_exit_accuracy(tree, images, labels, k_cpt=k_cpt)
        if args.json:
            print(json.dumps(every, indent=2))
        else:
            print(f"{dataset} {args.split}: accuracy if every example left at one exit")
            print(format_every_exit_table(every, class_names))
        return 0
    stats = evaluate(
        tree,
        images,
        labels,
        k_cpt=k_cpt,
        method="engine",
        progress=True,
        policy=policy,
        bf16=args.bf16,
    ).to_dict()
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    source = f" (calibrated: {run.calibration_path})" if point.how == "calibrated" else ""
    setting = policy.label() + ("" if k_cpt is None else f", k_cpt {k_cpt:g}")
    print(f"{dataset} {args.split}: {stats['num_examples']} examples, routing: {setting}{source}")
    print(f"accuracy   {stats['accuracy']:.4f}")
    print(f"mean MACs  {stats['mean_macs'] / 1e6:.3f} M")
    print(format_exit_table(stats))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    from dynroute.commands.common import (
        add_checksum_argument,
        add_data_dir_argument,
        add_operating_point_arguments,
        add_threads_argument,
    )

    evaluate = sub.add_parser("evaluate", help="evaluate a run or checkpoint with hard routing")
    evaluate.add_argument("run", help="run directory or checkpoint file")
    add_operating_point_arguments(evaluate, "the run's calibration, else the learned routers")
    evaluate.add_argument("--split", default="test", choices=["train", "validation", "test"])
    evaluate.add_argument("--dataset", default=None, help="defaults to the run's dataset")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--json", action="store_true", help="print the statistics as JSON")
    evaluate.add_argument(
        "--bf16",
        action="store_true",
        help="run the nodes in bfloat16 (CUDA, or a CPU with native bf16 instructions; "
        "elsewhere a warning and float32)",
    )
    evaluate.add_argument(
        "--every-exit",
        action="store_true",
        help="ignore routing: accuracy (overall, per class) if every example left at each exit",
    )
    add_threads_argument(evaluate)
    add_data_dir_argument(evaluate)
    add_checksum_argument(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)
