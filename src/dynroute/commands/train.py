"""``dynroute train`` and ``dynroute evaluate``.

Every ``TrainConfig`` field is an option of ``train`` (``k_cpt`` is
``--k-cpt``; a field that defaults to true is switched off with ``--no-...``),
so the command line and the library never disagree about what can be set.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import torch

from dynroute.errors import DynrouteError
from dynroute.train.config import TrainConfig

HELP = {
    "dataset": "mnist, cifar10, cifar5, cifar2 or hybrid",
    "model": "chain, tree or static-N (N = 1..8)",
    "width": "channel multiplier of every convolution",
    "strategy": "static, actor or critic",
    "k_cpt": "cost of one multiply-accumulate, in units of cross-entropy",
    "dynamic_k_cpt": "feed k_cpt to every router and draw it per example from the k_cpt set",
    "k_cpt_set": "comma-separated k_cpt values for dynamic k_cpt (default: the paper's 8)",
    "iterations": "training iterations (batches)",
    "lr": "initial learning rate (default 0.1 for >= 20,000 iterations, else 0.04)",
    "lr_half_life": "iterations per halving of the lr (default iterations / 8 for >= 20,000 "
    "iterations, else iterations / 4)",
    "lr_warmup": "iterations over which the lr ramps up linearly from ~0 "
    "(default 0 for >= 20,000 iterations, else iterations / 10)",
    "tau": "initial routing temperature (default 1.0 actor, 0.1 critic)",
    "tau_half_life": "iterations per halving of tau (default iterations / 4)",
    "critic_target": "pragmatic or optimistic",
    "error_measure": "cross-entropy or classification (critic targets)",
    "talr": "throughput-adjusted learning rates",
    "regularise_policy": "let the L2 and k_dec terms' gradient flow through p_train",
    "augment": "shift/flip augmentation",
    "sampling": "replacement (the paper) or epoch",
    "validation_size": "training examples held out for validation",
    "eval_every": "iterations between evaluations (default iterations / 16)",
    "eval_splits": "comma-separated splits evaluated during training (train,validation,test)",
    "checkpoint_every": "iterations between checkpoints (default iterations / 10)",
    "device": "cpu, cuda or auto",
    "bf16": "bfloat16 autocast on CUDA",
    "compile": "torch.compile the forward pass and the loss",
    "compile_mode": "with --compile: default, or reduce-overhead (adds CUDA graphs on a GPU)",
    "channels_last": "channels-last memory layout (faster convolutions on CPU and GPU)",
}
OPTIONAL_TYPES = {
    "lr": float,
    "lr_half_life": float,
    "lr_warmup": int,
    "tau": float,
    "tau_half_life": float,
    "eval_every": int,
    "checkpoint_every": int,
}
LIST_TYPES = {"k_cpt_set": float, "eval_splits": str}


def _list_of(kind: type):
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(v) for v in text.split(",") if v.strip())
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per ``TrainConfig`` field."""
    for field in fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        default = field.default
        help_text = HELP.get(field.name)
        if isinstance(default, bool):
            if default:
                parser.add_argument(
                    "--no-" + flag[2:],
                    dest=field.name,
                    action="store_false",
                    help=f"turn off: {help_text}" if help_text else None,
                )
            else:
                parser.add_argument(flag, dest=field.name, action="store_true", help=help_text)
            continue
        if field.name in LIST_TYPES:
            kind = _list_of(LIST_TYPES[field.name])
        elif field.name in OPTIONAL_TYPES:
            kind = OPTIONAL_TYPES[field.name]
        else:
            kind = type(default)
        parser.add_argument(
            flag,
            dest=field.name,
            type=kind,
            default=None if default is MISSING else default,
            help=_with_default(help_text, None if default is MISSING else default),
        )


def _with_default(help_text: str | None, default: object) -> str | None:
    """The help line; defaults of ``None`` are explained by the text itself."""
    if default is None:
        return help_text
    return (help_text + " " if help_text else "") + f"(default: {default})"


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})


def cmd_train(args: argparse.Namespace) -> int:
    from dynroute.runtime import configure_cpu, resolve_device
    from dynroute.train.trainer import Trainer, load_training_data

    config = config_from_args(args).validate()
    configure_cpu(args.threads)
    out_dir = Path(args.out)
    device = resolve_device(config.device)
    data = load_training_data(config, args.data_dir, device)
    trainer = Trainer(config, data, out_dir, progress=not args.no_progress)
    summary = trainer.run(resume=args.resume, overwrite=args.overwrite)
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


def _find_checkpoint(path: Path) -> tuple[Path, dict[str, Any] | None]:
    """A run directory or a checkpoint file; returns the file and the run's config."""
    from dynroute.train.trainer import CHECKPOINT_FILE, CONFIG_FILE

    if path.is_dir():
        config_path = path / CONFIG_FILE
        config = json.loads(config_path.read_text()) if config_path.exists() else None
        path = path / CHECKPOINT_FILE
        if not path.exists():
            raise DynrouteError(f"no checkpoint in run directory {path.parent}")
        return path, config
    if not path.exists():
        raise DynrouteError(f"no such run directory or checkpoint: {path}")
    return path, None


def format_exit_table(stats: dict[str, Any]) -> str:
    """One row per exit: share classified there, its accuracy, its path MACs."""
    lines = [f"{'exit':<14}{'classified':>11}{'accuracy':>10}{'path MACs':>13}"]
    nodes = stats["nodes"]
    for node in nodes:
        if not node["is_leaf"]:
            continue
        path_macs, i = 0, node["index"]
        while i >= 0:
            path_macs += nodes[i]["macs"]
            i = nodes[i]["parent"]
        acc = "-" if node["accuracy"] is None else f"{node['accuracy']:.4f}"
        lines.append(
            f"{node['name']:<14}{node['classified']:>11.4f}{acc:>10}{path_macs / 1e6:>11.2f} M"
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
    from dynroute import checkpoint
    from dynroute.data.datasets import load_dataset
    from dynroute.infer.evaluate import evaluate, every_exit_accuracy
    from dynroute.runtime import configure_cpu, resolve_device, use_channels_last

    configure_cpu(args.threads)
    path, run_config = _find_checkpoint(Path(args.run))
    device = resolve_device(args.device)
    tree = checkpoint.load_model(path, map_location=device)
    if use_channels_last(device):
        tree.to(memory_format=torch.channels_last)
    dataset = args.dataset or (run_config or {}).get("dataset")
    if dataset is None:
        raise DynrouteError("this checkpoint has no run directory: pass --dataset")
    if tree.dynamic_k_cpt and args.k_cpt is None:
        raise DynrouteError("this network routes on k_cpt: pass --k-cpt")
    if not tree.dynamic_k_cpt and args.k_cpt is not None:
        raise DynrouteError("this network was trained for one k_cpt; --k-cpt does not apply")
    seed = (run_config or {}).get("seed", 0)
    validation_size = (run_config or {}).get("validation_size", 0)
    splits = load_dataset(dataset, args.data_dir, validation_size=validation_size, seed=seed)
    part = getattr(splits, args.split)
    if part is None:
        raise DynrouteError(f"this run has no {args.split} split")
    if args.every_exit:
        every = every_exit_accuracy(tree, part.images, part.labels, k_cpt=args.k_cpt)
        if args.json:
            print(json.dumps(every, indent=2))
        else:
            print(f"{dataset} {args.split}: accuracy if every example left at one exit")
            print(format_every_exit_table(every, splits.train.class_names))
        return 0
    stats = evaluate(
        tree, part.images, part.labels, k_cpt=args.k_cpt, method="engine", progress=True
    ).to_dict()
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    print(f"{dataset} {args.split}: {stats['num_examples']} examples")
    print(f"accuracy   {stats['accuracy']:.4f}")
    print(f"mean MACs  {stats['mean_macs'] / 1e6:.3f} M")
    print(format_exit_table(stats))
    return 0


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: every available core; use 1 per process "
        "when several jobs share the machine)",
    )


def add_parser(sub: argparse._SubParsersAction) -> None:
    from dynroute.commands.data import add_data_dir_argument

    train = sub.add_parser("train", help="train one network")
    add_config_arguments(train)
    train.add_argument("--out", required=True, help="run directory (config, metrics, checkpoint)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_threads_argument(train)
    add_data_dir_argument(train)
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("evaluate", help="evaluate a run or checkpoint with hard routing")
    evaluate.add_argument("run", help="run directory or checkpoint file")
    evaluate.add_argument("--k-cpt", type=float, default=None, help="for dynamic-k_cpt networks")
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
    evaluate.set_defaults(func=cmd_evaluate)
