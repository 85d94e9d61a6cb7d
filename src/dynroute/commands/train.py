"""``dynroute train``.

Every ``TrainConfig`` field is an option of ``train`` (``k_cpt`` is
``--k-cpt``; a field that defaults to true is switched off with ``--no-...``),
so the command line and the library never disagree about what can be set.
"""

from __future__ import annotations

import argparse
import signal
from dataclasses import Field, fields, replace
from pathlib import Path

from dynroute.train.config import TrainConfig


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
    from dynroute.data.readers.common import expand_user

    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig)}
    if values["strategy"] is None:  # not given: a static model trains as one
        from dynroute.nn.models import is_static_model

        values["strategy"] = "static" if is_static_model(values["model"]) else "actor"
    config = TrainConfig(**values)
    weights = config.pretrained_weights
    if weights is not None:
        weights = str(expand_user(weights, "`pretrained_weights`"))
    return replace(
        config, dataset=absolute_dataset_name(config.dataset), pretrained_weights=weights
    )


def cmd_train(args: argparse.Namespace) -> int:
    from dynroute.platform.devices import configure_cpu, resolve_device
    from dynroute.runs import CONFIG_FILE, run_lock
    from dynroute.train.data import load_training_data
    from dynroute.train.resume import inspect_run_dir
    from dynroute.train.trainer import Trainer

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
            from dynroute.core.errors import Interrupted

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
    from dynroute.io.atomic import LOCK_FILE

    try:
        (folder / LOCK_FILE).unlink(missing_ok=True)
        folder.rmdir()
    except OSError:
        pass  # not empty (the run began) or not ours to remove


def add_parser(sub: argparse._SubParsersAction) -> None:
    from dynroute.commands.common import (
        add_checksum_argument,
        add_data_dir_argument,
        add_threads_argument,
    )

    train = sub.add_parser("train", help="train one network")
    add_config_arguments(train)
    # A static model (static-3, resnet18-static-2, ...) trains with the static strategy
    # unless told otherwise: --model static-8 alone is enough.
    train.set_defaults(strategy=None)
    train.add_argument("--out", required=True, help="run directory (config, metrics, checkpoint)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_threads_argument(train)
    add_data_dir_argument(train)
    add_checksum_argument(train)
    train.set_defaults(func=cmd_train)
