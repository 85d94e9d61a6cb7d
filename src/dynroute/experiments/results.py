"""Result files: one JSON per finished network, everything figures and the report need.

Layout: ``<results>/<scale>/<experiment>/<network>.json``. A file is written atomically
and only once its network has finished, so its presence means "done" and a sweep skips it.
Each file holds the config, the final per-node statistics at every evaluated k_cpt
(``points``), the compact training log (``metrics``, for figure 8), timings, the git
revision and the machine.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

from dynroute.core.errors import DynrouteError
from dynroute.experiments.registry import SCALES
from dynroute.io.atomic import read_json_object
from dynroute.platform.devices import machine_description
from dynroute.policies.curves import CurvePoint

RESULT_FORMAT = 1
#: experiment -> network -> result document, as ``load_results`` returns them.
Results = dict[str, dict[str, dict[str, Any]]]


def scale_dir(results_dir: str | os.PathLike[str], scale: str) -> Path:
    return Path(results_dir) / scale


def result_path(
    results_dir: str | os.PathLike[str], scale: str, experiment: str, network: str
) -> Path:
    return scale_dir(results_dir, scale) / experiment / f"{network}.json"


def git_revision() -> str | None:
    """The checkout's commit (with ``-dirty`` when it has local edits), if there is one."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        )
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def evaluations_by_k(record: dict[str, Any], split: str) -> list[tuple[float | None, dict]]:
    """(k_cpt, Evaluation dict) pairs of one metrics record's split, static or dynamic."""
    stats = record[split]
    if "nodes" in stats:
        return [(None, stats)]
    return [(float(k), evaluation) for k, evaluation in stats.items()]


def compact_metrics(records: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
    """The training log reduced to what figure 8 draws: per-exit shares over time."""
    out = []
    for record in records:
        points = []
        for k, ev in evaluations_by_k(record, split):
            leaves = [n for n in ev["nodes"] if n["is_leaf"]]
            points.append(
                {
                    "k_cpt": k if k is not None else ev.get("k_cpt"),
                    "accuracy": ev["accuracy"],
                    "mean_macs": ev["mean_macs"],
                    "classified": [n["classified"] for n in leaves],
                }
            )
        out.append(
            {
                "iteration": record["iteration"],
                "train_seconds": record["train_seconds"],
                "points": points,
            }
        )
    return out


def build_result(
    experiment: str,
    network: str,
    summary: dict[str, Any],
    records: list[dict[str, Any]],
    eval_subset: int | None,
) -> dict[str, Any]:
    """The result document of one finished training run (``Trainer.run``'s summary)."""
    config = summary["config"]
    split = "test" if "test" in config["eval_splits"] else config["eval_splits"][0]
    points = []
    for k, ev in evaluations_by_k(summary["final"], split):
        if config["strategy"] == "static":
            k = None
        elif k is None:
            k = config["k_cpt"]
        points.append({**ev, "k_cpt": k})
    leaves = [n["name"] for n in points[0]["nodes"] if n["is_leaf"]]
    result: dict[str, Any] = {
        "format": RESULT_FORMAT,
        "experiment": experiment,
        "network": network,
        "config": config,
        "split": split,
        "eval_subset": eval_subset,
        "iterations": summary["iterations"],
        "train_seconds": summary["train_seconds"],
        "device": summary["device"],
        "exits": leaves,
        "class_names": summary.get("class_names") or None,
        "points": points,
        "metrics": compact_metrics(records, split),
        "machine": machine_description(),
    }
    if len(points) == 1:
        result["accuracy"] = points[0]["accuracy"]
        result["mean_macs"] = points[0]["mean_macs"]
    return result


def result_class_names(result: dict[str, Any]) -> tuple[str, ...]:
    """The class names of a result's dataset (files written before they were stored: from
    the dataset's definition)."""
    if result.get("class_names"):
        return tuple(result["class_names"])
    from dynroute.data.datasets import get_spec

    return get_spec(result["config"]["dataset"]).class_names


#: Keys every result document has (``read_result`` checks them).
REQUIRED_KEYS = ("format", "experiment", "network", "config", "points", "metrics")


def read_result(path: str | os.PathLike[str]) -> dict[str, Any]:
    """One result file, checked: a truncated, corrupt or foreign file raises, naming it."""
    path = Path(path)
    data = read_json_object(path, "result file", "delete it to retrain the network")
    if data.get("format") != RESULT_FORMAT:
        raise DynrouteError(
            f"result file {path} has format {data.get('format')!r}; this version reads "
            f"format {RESULT_FORMAT}"
        )
    missing = [key for key in REQUIRED_KEYS if key not in data]
    if missing or not isinstance(data["points"], list) or not data["points"]:
        what = f"lacks {', '.join(missing)}" if missing else "has no evaluated points"
        raise DynrouteError(f"result file {path} {what}; delete it to retrain the network")
    return data


def load_results(
    results_dir: str | os.PathLike[str], scale: str
) -> dict[str, dict[str, dict[str, Any]]]:
    """Every result file of a scale: experiment -> network -> result document.

    Raises ``DynrouteError`` naming the folder if it does not exist, or the first file that
    is corrupt or of another format (figures and claims are never drawn from part of the
    results without saying so).
    """
    root = scale_dir(results_dir, scale)
    if not root.is_dir():
        raise DynrouteError(f"no results for scale {scale!r}: {root} does not exist")
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for path in sorted(root.glob("*/*.json")):
        if path.parent.name == STUDIES_DIR:
            continue
        found.setdefault(path.parent.name, {})[path.stem] = read_result(path)
    return found


#: The folder of a scale's studies (``dynroute study``), beside its experiments.
STUDIES_DIR = "studies"


def load_studies(results_dir: str | os.PathLike[str], scale: str) -> dict[str, dict[str, Any]]:
    """Every study file of a scale (``dynroute study``), by file name."""
    folder = scale_dir(results_dir, scale) / STUDIES_DIR
    return {
        path.stem: read_json_object(path, "study")
        for path in sorted(folder.glob("*.json"))
        if folder.is_dir()
    }


def study_label(name: str, study: dict[str, Any]) -> str:
    """What a study file is about, for tables and figures: its file name without the
    study's kind (``guarantees-hybrid-multi-exit`` -> ``hybrid-multi-exit``); a run's
    folder name alone (``multi-exit``) does not say which network."""
    return name.removeprefix(f"{study.get('study', '')}-")


def variant_name(
    scale: str, seed: int | None, validation_size: int | None, bf16: bool = False
) -> str:
    """The results folder of a scale trained with another seed, validation size or in
    bfloat16 (``cpu-seed1``, ``cpu-val10000``, ``cpu-bf16``, ``cpu-seed1-bf16``), so the
    registry's own results are never mixed in."""
    name = scale
    if seed is not None:
        if seed < 0:
            raise DynrouteError(f"`seed` must be >= 0, got {seed}")
        name += f"-seed{seed}"
    if validation_size is not None:
        if validation_size < 0:
            raise DynrouteError(f"`validation_size` must be >= 0, got {validation_size}")
        name += f"-val{validation_size}"
    return name + ("-bf16" if bf16 else "")


_VARIANT = re.compile(r"^(?P<scale>[a-z0-9_]+?)(-seed(?P<seed>\d+))?(-val\d+)?(?P<bf16>-bf16)?$")


def parse_variant(name: str) -> tuple[str, str, bool] | None:
    """A results folder's name taken apart: (scale, seed as text, bf16); None if the
    name is no scale or variant of one (``variant_name`` backwards)."""
    match = _VARIANT.match(name)
    if match is None or match["scale"] not in SCALES:
        return None
    return match["scale"], match["seed"] or "0", bool(match["bf16"])


def load_variants(
    results_dir: str | os.PathLike[str], scale: str, bf16: bool = False
) -> dict[str, Results]:
    """The results of ``scale`` trained again on other seeds (``sweep --seed N``: folders
    ``<scale>-seedN``), by seed; empty if there are none. ``bf16``: those trained in
    bfloat16 instead (``sweep --bf16``: ``<scale>-bf16`` is seed "0", ``<scale>-seedN-bf16``
    seed N)."""
    out = {}
    for folder in sorted(Path(results_dir).glob(f"{scale}-*")):
        variant = parse_variant(folder.name)
        if variant is None or not folder.is_dir() or "-val" in folder.name:
            continue
        base, seed, in_bf16 = variant
        if base == scale and in_bf16 == bf16 and (bf16 or seed != "0"):
            results = load_results(results_dir, folder.name)
            if results:  # a sweep that has only just begun has an empty folder
                out[seed] = results
    return out


def curve(results: dict[str, dict[str, Any]]) -> list[CurvePoint]:
    """The points of one experiment's networks, sorted by mean MACs."""
    points = [
        CurvePoint(
            r["experiment"],
            r["network"],
            p["k_cpt"],
            p["mean_macs"],
            p["accuracy"],
            int(p.get("num_examples", 0)),
        )
        for r in results.values()
        for p in r["points"]
    ]
    return sorted(points, key=lambda p: p.mean_macs)


def result_from_run(
    run_dir: str | os.PathLike[str],
    experiment: str,
    network: str,
    expected: Any = None,
    scale: str | None = None,
) -> dict[str, Any]:
    """The result document of a finished run directory trained outside a sweep (by hand, on
    another machine), so the report reads it like a sweep's; no policy analysis or train
    points are added (they need the weights and the data).

    ``expected``: the registry's ``Network`` it is filed under (at ``scale``); a run trained
    with other options, or recorded as another experiment, network or scale, is refused.
    """
    from dynroute.runs import METRICS_FILE, SUMMARY_FILE, read_data_record, read_metrics

    run_dir = Path(run_dir)
    summary_path = run_dir / SUMMARY_FILE
    if not summary_path.exists():
        raise DynrouteError(f"{run_dir} has no {SUMMARY_FILE}: the run has not finished")
    summary = read_json_object(summary_path, "run summary")
    missing = [k for k in ("config", "final", "iterations", "train_seconds") if k not in summary]
    if missing:
        raise DynrouteError(f"{summary_path} lacks {', '.join(missing)}")
    if not isinstance(summary["config"], dict):
        raise DynrouteError(f"{summary_path}: its config is not a JSON object")
    if expected is not None:
        record = read_data_record(run_dir)
        check_run_matches(run_dir, summary["config"], record, expected, scale)
    summary.setdefault("device", "unknown")
    records = read_metrics(run_dir / METRICS_FILE)
    result = build_result(experiment, network, summary, records, None)
    result["imported_from"] = str(run_dir)
    return result


def check_run_matches(
    run_dir: Path, config: dict[str, Any], record: Any, expected: Any, scale: str | None
) -> None:
    """Refuse a run that is not the registry's ``expected`` network: recorded as another
    experiment, network or scale, or trained with other options (execution options and
    schedule defaults left open by the registry aside). A sweep's run recorded as this very
    network may have another dataset (``sweep --dataset``)."""
    from dynroute.train.resume import stored_config_differences

    label = f"{expected.experiment}/{expected.name}" + (f" at scale {scale}" if scale else "")
    wanted = {"experiment": expected.experiment, "network": expected.name, "scale": scale}
    origin = record.origin if record is not None else {}
    other = [
        f"{key} {value} (filed under: {wanted[key]})"
        for key, value in origin.items()
        if wanted.get(key) is not None and value != wanted[key]
    ]
    if other:
        raise DynrouteError(
            f"{run_dir} was trained for {', '.join(other)}; file it under what it was "
            f"trained for (`experiment`, `network`, `scale`), not {label}"
        )
    try:
        differs = stored_config_differences(config, expected.config)
    except DynrouteError as exc:
        raise DynrouteError(f"{run_dir} holds an invalid run configuration ({exc})") from None
    if all(origin.get(key) == value for key, value in wanted.items() if value is not None):
        differs = [name for name in differs if name != "dataset"]
    if differs:
        registry = expected.config.to_dict()
        shown = [
            f"{name} {config.get(name)!r} (registry: {registry.get(name)!r})"
            for name in differs[:6]
        ]
        more = f" and {len(differs) - 6} more" if len(differs) > 6 else ""
        raise DynrouteError(
            f"{run_dir} is not the registry's {label}: it differs in {'; '.join(shown)}{more}. "
            "Import a run trained with that network's options, or file it under the "
            "`experiment`, `network` and `scale` it was trained as"
        )


def policy_analyses(results: Results) -> dict[str, dict[str, dict[str, Any]]]:
    """experiment -> network -> the policy analysis its result file carries (sweeps write
    one for every network with two or more exits)."""
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for experiment, networks in results.items():
        for network, result in networks.items():
            analysis = result.get("policies")
            if not analysis:
                continue
            # The analysis is of the result's evaluation split (sweeps analyse the test split).
            analysis = {"split": result.get("split", "test"), **analysis}
            if result["config"]["strategy"] == "multi-exit":  # untrained routers: no point
                analysis["learned"] = []
            found.setdefault(experiment, {})[network] = analysis
    return found


def learned_macs(analysis: dict[str, Any]) -> float:
    """A network's place in budget order: the mean MACs of its (first) learned point."""
    return analysis["learned"][0]["mean_macs"] if analysis["learned"] else 0.0
