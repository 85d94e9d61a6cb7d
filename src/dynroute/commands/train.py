"""``dynroute train`` and ``dynroute evaluate``.

Every ``TrainConfig`` field is an option of ``train`` (``k_cpt`` is
``--k-cpt``; a field that defaults to true is switched off with ``--no-...``),
so the command line and the library never disagree about what can be set.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
from dataclasses import Field, fields, replace
from pathlib import Path
from typing import Any

from dynroute.errors import DynrouteError
from dynroute.nn.policy import POLICIES
from dynroute.train.config import TrainConfig

#: More threads than this is a typo, not a machine.
MAX_THREADS = 4096


def _parse_list(kind: type):
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(v) for v in text.split(",") if v.strip())
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _help(field: Field) -> str:
    """The field's help text, its valid values and its default (the config is the source)."""
    meta = field.metadata
    text = meta["help"]
    choices = meta["choices"]  # a callable (the model catalogue) would load the networks
    if choices is not None and not callable(choices) and len(choices) <= 8:
        text += f" [{', '.join(choices)}]"
    elif meta["bounds"] is not None:
        text += f" [{meta['bounds'].describe_range()}]"
    if field.default is not None and not isinstance(field.default, bool):
        shown = ",".join(map(str, field.default)) if meta["many"] else field.default
        text += f" (default: {shown})"
    return text


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per ``TrainConfig`` field, typed and described by the field's metadata."""
    for field in fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        default = field.default
        if isinstance(default, bool):
            if default:
                parser.add_argument(
                    "--no-" + flag[2:],
                    dest=field.name,
                    action="store_false",
                    help=f"turn off: {field.metadata['help']}",
                )
            else:
                parser.add_argument(
                    flag, dest=field.name, action="store_true", help=field.metadata["help"]
                )
            continue
        kind = field.metadata["kind"] or type(default)
        parser.add_argument(
            flag,
            dest=field.name,
            type=_parse_list(kind) if field.metadata["many"] else kind,
            default=default,
            metavar=field.name.upper(),
            help=_help(field),
        )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The config the options ask for; dataset and weight paths are made absolute (workers
    and resumed runs may start in other folders)."""
    from dynroute.data import absolute_dataset_name

    config = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    weights = config.pretrained_weights
    if weights is not None:
        weights = str(Path(weights).expanduser().absolute())
    return replace(
        config, dataset=absolute_dataset_name(config.dataset), pretrained_weights=weights
    )


def cmd_train(args: argparse.Namespace) -> int:
    from dynroute.runtime import configure_cpu, resolve_device
    from dynroute.train.runs import CONFIG_FILE, run_lock
    from dynroute.train.trainer import Trainer, inspect_run_dir, load_training_data

    config = config_from_args(args).validate()
    out_dir = Path(args.out)
    # Everything that can refuse the run is checked before the dataset is loaded.
    inspect_run_dir(out_dir, config, args.resume, args.overwrite)
    created, locked = not out_dir.exists(), False
    try:
        with run_lock(out_dir):  # one writer: a second `train` into --out is refused
            locked = True
            inspect_run_dir(out_dir, config, args.resume, args.overwrite)  # locked: again
            configure_cpu(args.threads)
            device = resolve_device(config.device)
            data = load_training_data(
                config, args.data_dir, device, allow_checksum_mismatch=args.allow_checksum_mismatch
            )
            trainer = Trainer(config, data, out_dir, progress=not args.no_progress)
            summary = trainer.run(resume=args.resume, overwrite=args.overwrite)
    except BaseException as exc:
        if created and locked:  # leave no empty run directory behind a run that never began
            _remove_if_empty(out_dir)
        if isinstance(exc, KeyboardInterrupt) and (out_dir / CONFIG_FILE).exists():
            from dynroute.errors import Interrupted

            signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
            raise Interrupted(
                signum,
                f"training stopped by {Interrupted(signum).signal_name}; {out_dir} keeps its "
                "last checkpoint: continue the run with `resume`",
            ) from None
        raise
    final = summary["final"]
    compiled = summary["compile_seconds"]
    print(
        f"finished {summary['iterations']} iterations in {summary['train_seconds']:.0f} s"
        + (f" (compiling: {compiled:.0f} s of it)" if compiled is not None else "")
    )
    for split in config.eval_splits:
        stats = final[split]
        if config.dynamic_k_cpt:
            for k, s in stats.items():
                print(
                    f"{split} k_cpt={k}: accuracy {s['accuracy']:.4f}, "
                    f"mean MACs {s['mean_macs'] / 1e6:.2f} M"
                )
        else:
            print(
                f"{split}: accuracy {stats['accuracy']:.4f}, "
                f"mean MACs {stats['mean_macs'] / 1e6:.2f} M"
            )
    print(f"run directory: {out_dir}")
    return 0


def _remove_if_empty(folder: Path) -> None:
    from dynroute.atomic import LOCK_FILE

    try:
        (folder / LOCK_FILE).unlink(missing_ok=True)
        folder.rmdir()
    except OSError:
        pass  # not empty (the run began) or not ours to remove


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
    from dynroute.infer.evaluate import evaluate, every_exit_accuracy
    from dynroute.nn.policy import Policy
    from dynroute.runtime import configure_cpu, resolve_device, use_channels_last
    from dynroute.train.runs import open_run

    run = open_run(args.run)
    explicit = args.policy is not None
    policy, k_cpt = run.operating_point()  # calibrated, or the routers' own
    if explicit:
        policy, k_cpt = Policy(args.policy, args.threshold), None
    elif args.threshold is not None:
        raise DynrouteError("--threshold goes with --policy confidence or --policy entropy")
    if args.k_cpt is not None:
        k_cpt = args.k_cpt
    configure_cpu(args.threads)
    device = resolve_device(args.device)
    tree = run.load_tree(device)
    if use_channels_last(device):
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
        tree, images, labels, k_cpt=k_cpt, method="engine", progress=True, policy=policy
    ).to_dict()
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    source = (
        "" if explicit or run.calibration() is None else f" (calibrated: {run.calibration_path})"
    )
    setting = policy.label() + ("" if k_cpt is None else f", k_cpt {k_cpt:g}")
    print(f"{dataset} {args.split}: {stats['num_examples']} examples, routing: {setting}{source}")
    print(f"accuracy   {stats['accuracy']:.4f}")
    print(f"mean MACs  {stats['mean_macs'] / 1e6:.3f} M")
    print(format_exit_table(stats))
    return 0


def k_cpt_value(text: str) -> float:
    """A ``--k-cpt`` value: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _threads(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= value <= MAX_THREADS:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_THREADS}, got {value}")
    return value


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=_threads,
        default=None,
        help="CPU threads for torch (default: every available core; use 1 per process "
        "when several jobs share the machine)",
    )


def add_parser(sub: argparse._SubParsersAction) -> None:
    from dynroute.commands.data import add_checksum_argument, add_data_dir_argument

    train = sub.add_parser("train", help="train one network")
    add_config_arguments(train)
    train.add_argument("--out", required=True, help="run directory (config, metrics, checkpoint)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_threads_argument(train)
    add_data_dir_argument(train)
    add_checksum_argument(train)
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("evaluate", help="evaluate a run or checkpoint with hard routing")
    evaluate.add_argument("run", help="run directory or checkpoint file")
    evaluate.add_argument(
        "--k-cpt", type=k_cpt_value, default=None, help="for dynamic-k_cpt networks"
    )
    evaluate.add_argument(
        "--policy",
        default=None,
        choices=POLICIES,
        help="routing policy (default: the run's calibration, else the learned routers)",
    )
    evaluate.add_argument(
        "--threshold", type=float, default=None, help="for --policy confidence or entropy"
    )
    evaluate.add_argument("--split", default="test", choices=["train", "validation", "test"])
    evaluate.add_argument("--dataset", default=None, help="defaults to the run's dataset")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--json", action="store_true", help="print the statistics as JSON")
    evaluate.add_argument(
        "--every-exit",
        action="store_true",
        help="ignore routing: accuracy (overall, per class) if every example left at each exit",
    )
    add_threads_argument(evaluate)
    add_data_dir_argument(evaluate)
    add_checksum_argument(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)
