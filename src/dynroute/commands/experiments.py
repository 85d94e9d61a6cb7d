"""``dynroute experiments``, ``sweep``, ``plot`` and ``report``: the paper, reproduced.

``sweep`` trains the networks of named experiments into ``results/<scale>/``; ``plot``
and ``report`` read only those result files, so figures and claims can be redrawn from
committed results on any machine.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dynroute.experiments.registry import EXPERIMENTS, SCALES
from dynroute.plots import FIGURE_KINDS
from dynroute.train.config import COMPILE_MODES


def cmd_experiments(args: argparse.Namespace) -> int:
    from dynroute.experiments.registry import expand

    print("scales:")
    for scale in SCALES.values():
        print(f"  {scale.name:<8}{scale.iterations:>7} iterations  {scale.description}")
    print("experiments:")
    for experiment in EXPERIMENTS.values():
        count = len(expand(experiment, "smoke"))
        print(f"  {experiment.name:<28}{count:>2} networks  {experiment.dataset}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from dynroute.experiments.results import variant_name
    from dynroute.experiments.sweep import run_sweep

    report = run_sweep(
        args.experiments,
        args.scale,
        results_dir=args.results,
        runs_dir=args.runs,
        data_dir=None if args.data_dir is None else str(args.data_dir),
        allow_checksum_mismatch=args.allow_checksum_mismatch,
        workers=args.workers,
        ray_address=args.ray_address,
        progress=not args.no_progress,
        only=args.only,
        execution={
            "device": args.device,
            "compile": args.compile,
            "compile_mode": args.compile_mode,
        },
        dataset=args.dataset,
        seed=args.seed,
        validation_size=args.validation_size,
        bf16=args.bf16,
    )
    print(
        f"sweep {args.scale}: {len(report.trained)} trained, {len(report.skipped)} already "
        f"done, {len(report.failed)} failed, {report.seconds:.0f} s; results in "
        f"{args.results}/{variant_name(args.scale, args.seed, args.validation_size, args.bf16)}/"
    )
    for label, message in report.failed.items():
        print(f"  failed {label}: {message}")
    return 1 if report.failed else 0


def cmd_plot(args: argparse.Namespace) -> int:
    from dynroute.plots.figures import render

    paths = render(args.results, args.scale, args.kind, args.out, tuple(args.formats or ("png",)))
    for path in paths:
        print(path)
    if not paths:
        print(f"no results to plot in {args.results}/{args.scale}/")
    return 0


def run_label(run: str) -> str:
    """What a study file of ``run`` is named after: a sweep's run folder with its
    experiment (``runs/cpu/hybrid-actor/k_cpt-4e-09`` -> ``hybrid-actor-k_cpt-4e-09``;
    ``hybrid-multi-exit/multi-exit`` -> ``hybrid-multi-exit``), so two networks' studies
    never share a file; a run folder of its own keeps its name."""
    from dynroute.experiments.results import parse_variant

    path = Path(run).resolve()
    name, parent = path.name or "run", path.parent.name
    if not (path.parent / "config.json").exists() and (path / "config.json").exists():
        grandparent = path.parent.parent.name
        inside_sweep = parent not in ("", "runs") and parse_variant(grandparent) is not None
        if inside_sweep:
            return parent if parent.endswith(name) else f"{parent}-{name}"
    return name


def cmd_study(args: argparse.Namespace) -> int:

    from dynroute.experiments import studies
    from dynroute.io.atomic import write_json_atomic
    from dynroute.platform.devices import configure_cpu

    configure_cpu(args.threads)

    def say(message: str) -> None:
        print(f"  {message}", flush=True)

    source = studies.StudyData(args.data_dir, args.dataset, args.allow_checksum_mismatch)
    if args.study == "held-out":
        result = studies.held_out(
            args.run, args.sisters or (), args.larger, source=source, progress=say
        )
    elif args.study == "lead":
        from dynroute.core.errors import DynrouteError
        from dynroute.experiments.results import load_results

        if not args.static:
            raise DynrouteError("the lead study needs --static EXPERIMENT (its static networks)")
        statics = load_results(args.results, args.scale).get(args.static, {})
        folder = Path(args.static_runs or Path("runs") / args.scale / args.static)
        static_runs = {n: folder / n for n in statics if (folder / n / "checkpoint.pt").exists()}
        if len(static_runs) < len(statics):
            say(
                f"{len(statics) - len(static_runs)} of {len(statics)} static networks have no "
                f"run in {folder}: their exits are used raw, not offered recalibrated"
            )
        result = studies.lead(
            [args.run, *(args.sisters or ())],
            statics,
            source=source,
            progress=say,
            static_runs=static_runs,
        )
    else:
        result = studies.guarantees(
            args.run,
            args.targets,
            partitions=args.partitions,
            calibration_size=args.calibration_size,
            source=source,
            progress=say,
        )
    default = f"{args.results}/{args.scale}/studies/{args.study}-{run_label(args.run)}.json"
    out = Path(args.out or default)
    write_json_atomic(out, {"study": args.study, "scale": args.scale, **result})
    print(f"written: {out} (`dynroute report --scale {args.scale}` shows it)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from dynroute.plots import docs
    from dynroute.plots.report import write_report

    markdown, html = write_report(args.results, args.scale)
    print(markdown)
    print(html)
    documents = docs.default_documents() if args.docs is None else args.docs
    for path in docs.rewrite(documents, args.results, args.scale):
        print(f"{path} (its generated {args.scale}/... blocks)")
    return 0


def cmd_import_run(args: argparse.Namespace) -> int:
    from dynroute.core.errors import DynrouteError
    from dynroute.experiments.registry import expand, get_experiment
    from dynroute.experiments.results import result_from_run, result_path
    from dynroute.io.atomic import write_json_atomic

    experiment = get_experiment(args.experiment)
    networks = {n.name: n for n in expand(experiment, args.scale)}
    if args.network not in networks:
        raise DynrouteError(
            f"{args.experiment} has no network {args.network!r} at scale {args.scale}; "
            f"its networks: {', '.join(networks)}"
        )
    result = result_from_run(
        args.run, experiment.name, args.network, networks[args.network], args.scale
    )
    result["scale"] = args.scale
    path = result_path(args.results, args.scale, experiment.name, args.network)
    if path.exists() and not args.overwrite:
        raise DynrouteError(f"{path} exists; pass --overwrite to replace it")
    write_json_atomic(path, result)
    print(f"{args.run} -> {path}")
    return 0


def _results_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scale", default="quick", choices=list(SCALES), help="scale preset")
    parser.add_argument("--results", default="results", help="results folder (default: results)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    from dynroute.commands.common import (
        add_checksum_argument,
        add_data_dir_argument,
        add_threads_argument,
        config_range,
        ranged,
        ranged_list,
    )
    from dynroute.core import checks

    listing = sub.add_parser("experiments", help="list the named experiments and scales")
    listing.set_defaults(func=cmd_experiments)

    sweep = sub.add_parser("sweep", help="train every network of some experiments")
    sweep.add_argument("experiments", nargs="+", metavar="EXPERIMENT", choices=list(EXPERIMENTS))
    _results_arguments(sweep)
    sweep.add_argument("--runs", default="runs", help="training state folder (default: runs)")
    sweep.add_argument(
        "--workers",
        type=ranged(checks.WORKERS),
        default=1,
        help="local worker processes (default: 1; at most the machine's cores help)",
    )
    sweep.add_argument("--ray-address", help="run one Ray task per network on this cluster")
    sweep.add_argument("--no-progress", action="store_true", help="no progress bar")
    sweep.add_argument(
        "--only",
        action="append",
        metavar="NETWORK",
        help="train only these networks of the experiments (repeatable; e.g. k_cpt-4e-09)",
    )
    sweep.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")
    sweep.add_argument("--compile", action="store_true", help="torch.compile every network")
    sweep.add_argument(
        "--compile-mode",
        default="default",
        choices=COMPILE_MODES,
        help="with --compile: default, or reduce-overhead (adds CUDA graphs on a GPU)",
    )
    sweep.add_argument(
        "--dataset",
        help="train every experiment on this dataset instead of its own: a built-in name, "
        "folder:PATH or npz:PATH (give it its own --results folder)",
    )
    sweep.add_argument(
        "--seed",
        type=ranged(config_range("seed")),
        default=None,
        help="train every network with this seed instead of 0: a fresh validation split, "
        "initialisation and batch order; results go to RESULTS/SCALE-seedN",
    )
    sweep.add_argument(
        "--validation-size",
        type=ranged(config_range("validation_size")),
        default=None,
        help="hold this many training images out instead of the scale's own; results go "
        "to RESULTS/SCALE-valN",
    )
    sweep.add_argument(
        "--bf16",
        action="store_true",
        help="train every network in bfloat16 autocast (CUDA, or a CPU with native bf16 "
        "instructions; refused elsewhere); results go to RESULTS/SCALE-bf16, after any "
        "-seedN: float32 and bf16 curves never mix",
    )
    add_data_dir_argument(sweep)
    add_checksum_argument(sweep)
    sweep.set_defaults(func=cmd_sweep)

    plot = sub.add_parser("plot", help="draw figures from result files")
    plot.add_argument("kind", choices=FIGURE_KINDS)
    _results_arguments(plot)
    plot.add_argument("--out", help="figure folder (default: <results>/<scale>/figures)")
    plot.add_argument(
        "--format",
        dest="formats",
        action="append",
        choices=("png", "pdf", "svg"),
        help="file format; repeat for several (default: png)",
    )
    plot.set_defaults(func=cmd_plot)

    study = sub.add_parser(
        "study",
        help="the studies behind the policy evidence: held-out data for the scheduler, "
        "guaranteed targets over random partitions, the lead over the best static network",
    )
    study.add_argument("study", choices=("held-out", "guarantees", "lead"))
    study.add_argument("run", metavar="RUN", help="run directory (with a validation split)")
    _results_arguments(study)
    study.add_argument(
        "--sisters", nargs="*", metavar="RUN", help="held-out: runs of the same network trained "
        "on other validation splits (sweep --seed); lead: more routed runs to choose from"
    )  # fmt: skip
    study.add_argument(
        "--static", metavar="EXPERIMENT", help="lead: the static experiment whose networks "
        "(in RESULTS/SCALE) the routed runs are held against"
    )  # fmt: skip
    study.add_argument(
        "--static-runs", metavar="DIR", help="lead: the folder of the static networks' runs "
        "(default: runs/SCALE/EXPERIMENT); a network with its run there may answer through "
        "its exit recalibrated on validation, as the routed side may"
    )  # fmt: skip
    study.add_argument("--dataset", default=None, help="defaults to the run's dataset")
    add_checksum_argument(study)
    study.add_argument(
        "--larger", metavar="RUN", help="held-out: the same network with a larger validation "
        "split (sweep --validation-size)"
    )  # fmt: skip
    study.add_argument(
        "--targets",
        type=ranged_list(checks.GUARANTEED_ACCURACY),
        default=[0.9],
        metavar="A,A,...",
        help="guarantees: accuracy targets (default 0.9)",
    )
    study.add_argument(
        "--partitions",
        type=ranged(checks.PARTITIONS),
        default=500,
        help="guarantees: random draws",
    )
    study.add_argument(
        "--calibration-size",
        type=ranged(checks.CALIBRATION_SIZE),
        default=5000,
        help="guarantees: calibration examples",
    )
    study.add_argument("--out", default=None, help="file (default RESULTS/SCALE/studies/...)")
    add_threads_argument(study)
    add_data_dir_argument(study)
    study.set_defaults(func=cmd_study)

    imported = sub.add_parser(
        "import-run",
        help="turn a finished run directory (trained by hand or elsewhere) into a result file",
    )
    imported.add_argument("run", help="run directory with summary.json and metrics.jsonl")
    imported.add_argument("--experiment", required=True, choices=list(EXPERIMENTS))
    imported.add_argument("--network", required=True, help="e.g. k_cpt-4e-09 or static-3")
    imported.add_argument("--overwrite", action="store_true", help="replace an existing result")
    _results_arguments(imported)
    imported.set_defaults(func=cmd_import_run)

    report = sub.add_parser(
        "report",
        help="write report.md and report.html with every figure, and the documents' "
        "generated blocks of the scale",
    )
    _results_arguments(report)
    report.add_argument(
        "--docs",
        nargs="*",
        metavar="FILE",
        default=None,
        help="documents whose generated blocks to rewrite (default: README.md and docs/*.md "
        "here that hold one)",
    )
    report.set_defaults(func=cmd_report)
