"""A run directory's layout, and a finished run read back: checkpoint, config, data,
calibration.

The trainer writes a run here (``config.json``, ``data.json``, ``metrics.jsonl``,
``checkpoint.pt``, ``summary.json``); ``evaluate``, ``policies``, ``calibrate`` and
``EarlyExitEngine.from_run`` read it back. This is the one place that knows the file names
and how to find what they need in a run directory (or a bare checkpoint file).

A run is bound to its data: ``data.json`` (a ``DataRecord``) says what it was trained on
(dataset, fingerprints of the data, class names and, for a sweep's run, its experiment,
network and scale). Resuming it on other data is refused, and so is evaluating,
analysing or calibrating it on other data; a run written before runs recorded their data
is still read, with a warning that its data cannot be checked. One process at a time
writes a run directory (``run_lock``).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dynroute.core import checks
from dynroute.core.errors import DynrouteError
from dynroute.core.guarantee import MALFORMED, Guarantee, certified, read_policy
from dynroute.core.policy import LEARNED, Policy
from dynroute.deploy.manifest import sha256_file
from dynroute.io.atomic import FolderLock, read_json_object, write_json_atomic
from dynroute.nn import checkpoint
from dynroute.nn.tree import RoutedTree

if TYPE_CHECKING:
    from dynroute.data.datasets import DatasetSplits

CONFIG_FILE = "config.json"
DATA_FILE = "data.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
SUMMARY_FILE = "summary.json"
CALIBRATION_FILE = "calibration.json"
CALIBRATION_FORMAT = 1
DATA_FORMAT = 1
#: Files a run directory holds that describe one run (removed when it is overwritten).
RUN_FILES = (CONFIG_FILE, DATA_FILE, METRICS_FILE, CHECKPOINT_FILE, SUMMARY_FILE, CALIBRATION_FILE)
#: Class names shown in a message before "...".
SHOWN_CLASSES = 5
#: The splits a run's data has (a calibration names the one it was chosen on).
SPLITS = ("train", "validation", "test")


def _read_object(path: Path, what: str) -> dict[str, Any]:
    """A JSON object file of a run (``read_json_object``), one nested too deeply to parse
    refused in one line like any other corrupt file."""
    try:
        return read_json_object(path, what)
    except RecursionError:
        raise DynrouteError(f"{what} {path} is nested too deeply to read") from None


def _file_state(*paths: Path) -> tuple[tuple[int, int, int], ...]:
    """What changes when a file is rewritten or replaced: its inode, size and mtime."""
    out = []
    for path in paths:
        status = path.stat()
        out.append((status.st_ino, status.st_size, status.st_mtime_ns))
    return tuple(out)


def checkpoint_fingerprint(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a checkpoint file: what a calibration records of the network it was
    fitted on (``Calibration.checkpoint``), so that a checkpoint replaced or copied in from
    another run is never used with this run's calibrated operating point."""
    return sha256_file(path)


def run_lock(run_dir: str | os.PathLike[str], doing: str = "training") -> FolderLock:
    """The lock that keeps a run directory to one writing process (``with run_lock(d):``)."""
    return FolderLock(run_dir, "run directory", doing)


@dataclass(frozen=True)
class DataRecord:
    """What a run was trained on.

    ``fingerprint``: the data's sources (``DatasetSplits.fingerprint``); ``content``: the
    arrays built from them (``DatasetSplits.content_fingerprint``); either being equal means
    the same data. None where unknown (a run on the caller's arrays has a fingerprint of
    those arrays and no content). ``experiment``, ``network``, ``scale``: a sweep's run.
    """

    dataset: str
    class_names: tuple[str, ...] = ()
    fingerprint: str | None = None
    content: str | None = None
    experiment: str | None = None
    network: str | None = None
    scale: str | None = None

    @classmethod
    def of(cls, splits: DatasetSplits, **origin: Any) -> DataRecord:
        """The record of a loaded dataset."""
        return cls(
            splits.name,
            tuple(splits.class_names),
            splits.fingerprint,
            splits.content_fingerprint,
            **origin,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> DataRecord:
        try:
            if data.get("format") != DATA_FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {DATA_FORMAT}")
            known = {f.name for f in fields(cls)}
            values = {k: v for k, v in data.items() if k in known}
            values["class_names"] = tuple(values.get("class_names") or ())
            record = cls(**values)
            if not isinstance(record.dataset, str) or not all(
                isinstance(name, str) for name in record.class_names
            ):
                raise ValueError("dataset and class names must be strings")
        except (TypeError, ValueError) as exc:
            raise DynrouteError(f"{where} is corrupt ({exc})") from None
        return record

    def to_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["class_names"] = list(self.class_names)
        return {"format": DATA_FORMAT, **values}

    @property
    def origin(self) -> dict[str, str]:
        """The sweep entry this run was trained for (empty for a run trained by hand)."""
        names = ("experiment", "network", "scale")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def describe(self) -> str:
        """Like ``npz:/data/x.npz (3 classes: a, b, c; data 1a2b3c4d5e6f7a8b)``."""
        parts = []
        if self.class_names:
            shown = ", ".join(self.class_names[:SHOWN_CLASSES])
            more = ", ..." if len(self.class_names) > SHOWN_CLASSES else ""
            parts.append(f"{len(self.class_names)} classes: {shown}{more}")
        if self.fingerprint is not None:
            parts.append(f"data {self.fingerprint}")
        return self.dataset + (f" ({'; '.join(parts)})" if parts else "")

    def data_differences(self, other: DataRecord) -> list[str]:
        """How the data of ``other`` differs from this record's (empty: the same, as far as
        both records know)."""
        differs = []
        if self.class_names and other.class_names and self.class_names != other.class_names:
            if len(self.class_names) != len(other.class_names):
                differs.append("the number of classes")
            else:
                differs.append("the class names")
        same_kind = self.in_memory == other.in_memory  # arrays given to fit vs. a dataset
        fingerprints = (self.fingerprint, other.fingerprint)
        contents = (self.content, other.content)
        other_sources = None not in fingerprints and fingerprints[0] != fingerprints[1]
        same_content = None not in contents and contents[0] == contents[1]
        if same_kind and other_sources and not same_content:
            differs.append("the data (another fingerprint)")
        return differs

    @property
    def in_memory(self) -> bool:
        return (self.fingerprint or "").startswith(ARRAYS_PREFIX)


#: Fingerprint prefix of data given as arrays (``dynroute.fit``), not loaded from a dataset.
ARRAYS_PREFIX = "arrays:"


def arrays_fingerprint(arrays: list[np.ndarray]) -> str:
    """A fingerprint of in-memory arrays (their dtypes, shapes and bytes)."""
    import hashlib

    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape};".encode())
        digest.update(memoryview(array).cast("B"))
    return ARRAYS_PREFIX + digest.hexdigest()[:16]


def read_data_record(run_dir: Path) -> DataRecord | None:
    """The record in ``run_dir``, None if it has none (a run from before records)."""
    path = run_dir / DATA_FILE
    if not path.exists():
        return None
    where = f"the data record {path}"
    return DataRecord.from_dict(_read_object(path, "data record"), where)


def write_data_record(run_dir: Path, record: DataRecord) -> None:
    write_json_atomic(run_dir / DATA_FILE, record.to_dict(), indent=2)


def data_mismatch(
    where: str, recorded: DataRecord, given: DataRecord, action: str
) -> DynrouteError | None:
    """The refusal when ``given`` is other data than ``recorded`` (None when it is not)."""
    differs = recorded.data_differences(given)
    if not differs:
        return None
    return DynrouteError(
        f"{where} was trained on {recorded.describe()}, but the data given is "
        f"{given.describe()}: they differ in {' and '.join(differs)}; {action}"
    )


_warned: set[str] = set()


def warn_unrecorded(where: Path | str, classes_known: bool = False) -> None:
    """Say once per run that its data cannot be checked (it predates data records)."""
    if str(where) in _warned:
        return
    _warned.add(str(where))
    checked = (
        "only the data's classes can be checked against it"
        if classes_known
        else "the data given cannot be checked against it"
    )
    print(
        f"dynroute: warning: {where} has no record of the data it was trained on (trained "
        f"before runs recorded it); {checked}",
        file=sys.stderr,
    )


@dataclass
class Run:
    """A run directory or checkpoint file; ``config`` is None for a bare checkpoint."""

    path: Path
    checkpoint_path: Path
    config: dict[str, Any] | None
    #: The checked calibration and the file state it was read from: checking costs a
    #: checkpoint load, so a command that asks twice checks once.
    _calibration: tuple[Any, Calibration] | None = field(default=None, repr=False, compare=False)

    @property
    def directory(self) -> Path | None:
        return self.path if self.path.is_dir() else None

    @property
    def name(self) -> str:
        return self.path.name if self.directory else self.path.stem

    def load_tree(self, device: torch.device | str = "cpu") -> RoutedTree:
        return checkpoint.load_model(self.checkpoint_path, map_location=device)

    def dataset_name(self, override: str | None = None) -> str:
        name = override or (self.config or {}).get("dataset")
        if name is None:
            raise DynrouteError(
                f"{self.path} is a checkpoint without a run directory: pass `dataset`"
            )
        return name

    def split(
        self,
        name: str,
        data_dir: str | os.PathLike[str] | None = None,
        dataset: str | None = None,
        allow_checksum_mismatch: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
        """Images, labels and class names of one split of the run's dataset, built with the
        run's seed and validation size (so its validation split is the one it held out)."""
        from dynroute.data.datasets import load_dataset

        config = self.config or {}
        splits = load_dataset(
            self.dataset_name(dataset),
            data_dir,
            validation_size=config.get("validation_size", 0),
            seed=config.get("seed", 0),
            allow_checksum_mismatch=allow_checksum_mismatch,
            image_size=config.get("image_size", 32),
            test_fraction=config.get("test_fraction", 0.2),
        )
        self.check_data(DataRecord.of(splits))
        part = getattr(splits, name)
        if part is None:
            raise DynrouteError(
                f"{self.path} was trained without a {name} split; retrain it with "
                "`validation_size` N to hold N training examples out for choosing operating "
                "points (the test split is for reporting them)"
            )
        return part.images, part.labels, splits.class_names

    # ------------------------------------------------------------ data
    def data_record(self) -> DataRecord | None:
        """What the run was trained on; for a run from before data records, what its summary
        and config say (dataset and class names, no fingerprint), else None."""
        if self.directory is None:
            return None
        record = read_data_record(self.directory)
        if record is not None:
            return record
        summary_path = self.directory / SUMMARY_FILE
        summary = {}
        if summary_path.exists():
            summary = _read_object(summary_path, "run summary")
        dataset = (self.config or {}).get("dataset")
        if not isinstance(dataset, str):
            return None
        names = summary.get("class_names") or ()
        return DataRecord(dataset, tuple(str(n) for n in names) if isinstance(names, list) else ())

    def check_data(self, given: DataRecord) -> None:
        """Refuse data other than the run's own, naming both; warn once if unrecorded."""
        if self.directory is None:
            return  # a bare checkpoint: only its class count can be checked (``check_classes``)
        recorded = self.data_record()
        if recorded is None or recorded.fingerprint is None:
            warn_unrecorded(self.path, recorded is not None and bool(recorded.class_names))
        if recorded is None:
            return
        refusal = data_mismatch(
            str(self.path), recorded, given, "evaluate it on the data it was trained on"
        )
        if refusal:
            raise refusal

    def check_classes(self, tree: RoutedTree, class_names: tuple[str, ...], dataset: str) -> None:
        """Refuse data whose classes the network cannot answer (another class count)."""
        if tree.num_classes != len(class_names):
            shown = ", ".join(class_names[:SHOWN_CLASSES])
            more = ", ..." if len(class_names) > SHOWN_CLASSES else ""
            raise DynrouteError(
                f"{self.path} is a network for {tree.num_classes} classes, but {dataset} has "
                f"{len(class_names)} ({shown}{more}); evaluate it on the data it was trained on"
            )

    def check_routed(self, tree: RoutedTree, command: str) -> None:
        """Refuse a network with one exit (a static run): it has no routing to analyse."""
        if len(tree.leaves) < 2 or not tree.junctions:
            raise DynrouteError(
                f"{self.path} is a static network (one exit, no routing): it has a single "
                f"operating point, so there is nothing for {command} to compare or choose; "
                "use `dynroute evaluate` for its accuracy and cost"
            )

    def class_names(self, count: int) -> tuple[str, ...]:
        """The names of the run's ``count`` classes: from its summary, else from its built-in
        dataset, else "0", "1", ... (nothing is loaded or built)."""
        from dynroute.data.datasets import DATASETS

        names: Any = None
        summary = self.directory / SUMMARY_FILE if self.directory else None
        if summary is not None and summary.exists():
            try:
                names = json.loads(summary.read_text()).get("class_names")
            except (OSError, ValueError, AttributeError, RecursionError):
                names = None
        dataset = (self.config or {}).get("dataset")
        if not names and dataset in DATASETS:
            names = DATASETS[dataset].class_names
        if not names or len(names) != count or not all(isinstance(n, str) for n in names):
            names = [str(label) for label in range(count)]
        return tuple(names)

    # ------------------------------------------------------------ calibration
    def calibration(self) -> Calibration | None:
        """The operating point ``dynroute calibrate`` chose for this run, if any: checked
        (``Calibration.from_dict``), bound to this run's checkpoint where it records one,
        and its MACs within what the checkpoint's exits cost under its policy."""
        path = self.calibration_path
        if path is None or not path.exists():
            return None
        state = _file_state(path, self.checkpoint_path)
        if self._calibration is not None and self._calibration[0] == state:
            return self._calibration[1]
        try:
            record = Calibration.from_dict(_read_object(path, "calibration"))
        except DynrouteError as exc:
            raise DynrouteError(
                f"{path} is unreadable or corrupt ({exc}); run `dynroute calibrate` again"
            ) from None
        if record.checkpoint is not None and record.checkpoint != checkpoint_fingerprint(
            self.checkpoint_path
        ):
            raise DynrouteError(
                f"{path} was fitted on another network than {self.checkpoint_path} (the "
                "checkpoint's SHA-256 differs: it was retrained, replaced or copied from another "
                "run); run `dynroute calibrate` again"
            )
        costs = self.exit_costs(record.policy)
        try:
            record.check_costs(costs)
        except DynrouteError as exc:
            message = f"{path} is corrupt ({exc}); run `dynroute calibrate` again"
            raise DynrouteError(message) from None
        self._calibration = (state, record)
        return record

    def exit_costs(self, policy: Policy) -> tuple[int, int]:
        """What the cheapest and the dearest exit of the run's network cost under
        ``policy``: every mean MAC count the policy can spend lies between them."""
        from dynroute.nn.macs import policy_path_macs

        tree = self.load_tree()
        try:
            policy.check(len(tree.leaves), tree.num_classes)
            macs = policy_path_macs(tree, policy)
        except MALFORMED as exc:
            raise DynrouteError(f"a malformed {policy.name} policy ({exc})") from None
        leaf_macs = [macs[leaf] for leaf in tree.leaves]
        return min(leaf_macs), max(leaf_macs)

    @property
    def calibration_path(self) -> Path | None:
        return self.directory / CALIBRATION_FILE if self.directory else None

    def save_calibration(self, record: Calibration) -> Path:
        if self.calibration_path is None:
            raise DynrouteError("a calibration is saved in a run directory, not beside a file")
        with run_lock(self.path, "calibrating"):  # not while a trainer writes the run
            return write_json_atomic(self.calibration_path, record.to_dict())

    def operating_point(self) -> tuple[Policy, float | None]:
        """The calibrated policy and k_cpt input, or the routers' own (learned, no k_cpt)."""
        record = self.calibration()
        if record is None:
            return LEARNED, None
        return record.policy, record.k_cpt


@dataclass
class Calibration:
    """What ``dynroute calibrate`` chose for a run (``calibration.json``): the policy and
    k_cpt input, the target, where it was chosen, what it measured there and on test, the
    runs it was chosen among, the guarantee it holds with (``guarantee``: None for a point
    estimate), and the SHA-256 of the checkpoint it was fitted on (``checkpoint``: the
    writer sets it with ``checkpoint_fingerprint``; None in a calibration from before)."""

    policy: Policy
    k_cpt: float | None
    target: dict[str, Any]
    split: str
    measured: dict[str, dict[str, float]]
    candidates_from: list[str]
    guarantee: dict[str, Any] | None = None
    checkpoint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = {
            "format": CALIBRATION_FORMAT,
            "policy": self.policy.to_dict(),
            "k_cpt": self.k_cpt,
            "target": self.target,
            "split": self.split,
            **self.measured,
            "candidates_from": self.candidates_from,
            "guarantee": self.guarantee,
        }
        if self.checkpoint is not None:
            data["checkpoint_sha256"] = self.checkpoint
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        """A calibration from ``to_dict``'s data, every field checked: the policy, the
        k_cpt input and the target in range, the measurements accuracies and MAC counts,
        the guarantee consistent (``dynroute.core.guarantee.certified``), certifying the
        calibrated point at its target, and never on the training split."""
        if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
            raise DynrouteError(f"a malformed calibration (format {_format_of(data)!r})")
        if "policy" not in data or data.get("split") not in SPLITS:
            raise DynrouteError("a malformed calibration: it needs a policy and a split")
        policy = read_policy(data["policy"])
        k_cpt = checks.k_cpt(data.get("k_cpt"))
        split = data["split"]
        target = _calibration_target(data.get("target"))
        measured = {
            s: _measurement(data[s], s) for s in dict.fromkeys((split, "test")) if s in data
        }
        sources = data.get("candidates_from") or []
        if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
            raise DynrouteError("a calibration's `candidates_from` must list run directories")
        guarantee = data.get("guarantee")
        if guarantee is not None:
            if split == "train":
                raise DynrouteError("a guarantee certified on the training split holds nothing")
            try:
                guarantee = certified(guarantee, policy, k_cpt)
            except DynrouteError as exc:
                raise DynrouteError(f"its guarantee: {exc}") from None
            if (
                target.get(guarantee["target"]) != guarantee["level"]
                or target.get("delta") != guarantee["delta"]
            ):
                raise DynrouteError("its guarantee certifies another target than it was given")
        digest = data.get("checkpoint_sha256")
        if digest is not None and (
            not isinstance(digest, str) or len(digest) != 64 or digest.strip("0123456789abcdef")
        ):
            raise DynrouteError("a calibration's `checkpoint_sha256` must be 64 hex digits")
        return cls(policy, k_cpt, target, split, measured, list(sources), guarantee, digest)

    def check_costs(self, costs: tuple[float, float]) -> None:
        """Refuse MAC counts (measured, or guaranteed) that the network's exits cannot
        spend under the calibrated policy: ``costs`` is (cheapest, dearest)."""
        cheapest, dearest = costs
        for split, values in self.measured.items():
            if not cheapest * (1 - 1e-9) <= values["mean_macs"] <= dearest * (1 + 1e-9):
                raise DynrouteError(
                    f"its {split} mean MACs {values['mean_macs'] / 1e6:.4g} M lie outside what "
                    f"the exits cost ({cheapest / 1e6:.4g} to {dearest / 1e6:.4g} M)"
                )
        if self.guarantee is not None:
            Guarantee.from_dict(self.guarantee).check_costs(cheapest)


def _format_of(data: Any) -> Any:
    return data.get("format") if isinstance(data, dict) else type(data).__name__


def _calibration_target(value: Any) -> dict[str, Any]:
    """A calibration's target: at most a MAC budget, an accuracy, a disagreement and a
    delta, each in its range (the ranges ``calibrate`` takes)."""
    value = value or {}
    ranges = {
        "accuracy": checks.TARGET_ACCURACY,
        "disagreement": checks.MAX_DISAGREEMENT,
        "delta": checks.DELTA,
    }
    if not isinstance(value, dict) or set(value) - {"mean_macs", *ranges}:
        raise DynrouteError("a calibration's `target` must name mean_macs, accuracy, "
                            "disagreement and delta only")  # fmt: skip
    checks.target_macs(value.get("mean_macs"))
    for key, allowed in ranges.items():
        if value.get(key) is not None:
            checks.in_range(value[key], key, allowed)
    return dict(value)


def _measurement(value: Any, split: str) -> dict[str, float]:
    """What a calibration measured on one split: an accuracy and a mean MAC count."""
    if not isinstance(value, dict):
        raise DynrouteError(f"a calibration's `{split}` must hold accuracy and mean_macs")
    accuracy = checks.unit_interval(value.get("accuracy"), f"{split} accuracy")
    macs = value.get("mean_macs")
    if not checks.is_number(macs) or not 0 < macs <= checks.MAX_MACS:
        raise DynrouteError(f"a calibration's {split} mean_macs must be a positive count")
    return {"accuracy": accuracy, "mean_macs": float(macs)}


def check_one_dataset(runs: list[Run]) -> None:
    """Refuse runs of different datasets: their operating points are not comparable."""
    first = runs[0]
    first_record = first.data_record()
    for run in runs[1:]:
        record = run.data_record()
        if first_record is None or record is None:
            continue
        differs = first_record.data_differences(record)
        unknown = first_record.fingerprint is None or record.fingerprint is None
        if not differs and unknown and first_record.dataset != record.dataset:
            differs = ["the dataset"]  # runs from before data records: by name
        if differs:
            raise DynrouteError(
                f"calibrate chooses among runs of one dataset, but {first.path} was trained on "
                f"{first_record.describe()} and {run.path} on {record.describe()} (they differ "
                f"in {' and '.join(differs)}); calibrate each dataset's runs separately"
            )


#: What a run's config must hold for its data to be rebuilt (``Run.split``): the finer
#: ranges are the training options' own (``TrainConfig``) and the data's.
_CONFIG_TYPES = {
    "dataset": str,
    "validation_size": int,
    "seed": int,
    "image_size": int,
    "test_fraction": float,
}


def _check_config(config: dict[str, Any], path: Path) -> dict[str, Any]:
    """Refuse a run config whose data settings are of the wrong type (a validation size
    given as text), in one line naming the field, before anything is loaded."""
    for key, kind in _CONFIG_TYPES.items():
        value = config.get(key)
        if value is None:
            continue
        fits = (
            isinstance(value, str)
            if kind is str
            else checks.is_integer(value) and value >= 0
            if kind is int
            else checks.is_finite_number(value)
        )
        if not fits:
            what = {str: "text", int: "an integer >= 0", float: "a finite number"}[kind]
            raise DynrouteError(f"run config {path}: `{key}` must be {what}, got {value!r}")
    return config


def open_run(path: str | os.PathLike[str]) -> Run:
    """A run directory (its checkpoint and config) or a checkpoint file."""
    path = Path(path)
    if path.is_dir():
        file = path / CHECKPOINT_FILE
        if not file.exists():
            raise DynrouteError(f"no checkpoint in run directory {path}")
        config_path = path / CONFIG_FILE
        config = None
        if config_path.exists():
            config = _check_config(_read_object(config_path, "run config"), config_path)
        return Run(path, file, config)
    if not path.exists():
        raise DynrouteError(f"no such run directory or checkpoint: {path}")
    return Run(path, path, None)


def metrics_line(record: dict[str, Any], path: Path) -> str:
    """One record of ``metrics.jsonl``: strict JSON on one line."""
    from dynroute.io.atomic import json_text

    return json_text(record, path)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The evaluation records of a run; a line a killed process left half-written is skipped."""
    if not path.exists():
        return []
    records, broken = [], 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            broken += 1
            continue
        if isinstance(record, dict) and isinstance(record.get("iteration"), int):
            records.append(record)
        else:
            broken += 1
    if broken:
        print(f"dynroute: skipped {broken} unreadable line(s) of {path}", file=sys.stderr)
    return records
