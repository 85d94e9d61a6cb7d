"""A run directory's layout, and a finished run read back: checkpoint, config, data,
calibration.

The trainer writes a run here (``config.json``, ``metrics.jsonl``, ``checkpoint.pt``,
``summary.json``); ``evaluate``, ``policies``, ``calibrate`` and
``EarlyExitEngine.from_run`` read it back. This is the one place that knows the file names
and how to find what they need in a run directory (or a bare checkpoint file).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dynroute.atomic import read_json_object, write_json_atomic
from dynroute.errors import DynrouteError
from dynroute.nn import checkpoint
from dynroute.nn.policy import LEARNED, Policy
from dynroute.nn.tree import RoutedTree

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
SUMMARY_FILE = "summary.json"
CALIBRATION_FILE = "calibration.json"
CALIBRATION_FORMAT = 1


@dataclass
class Run:
    """A run directory or checkpoint file; ``config`` is None for a bare checkpoint."""

    path: Path
    checkpoint_path: Path
    config: dict[str, Any] | None

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
        part = getattr(splits, name)
        if part is None:
            raise DynrouteError(
                f"{self.path} was trained without a {name} split; retrain it with "
                "`validation_size` N to hold N training examples out for choosing operating "
                "points (the test split is for reporting them)"
            )
        return part.images, part.labels, splits.class_names

    def class_names(self, count: int) -> tuple[str, ...]:
        """The names of the run's ``count`` classes: from its summary, else from its built-in
        dataset, else "0", "1", ... (nothing is loaded or built)."""
        from dynroute.data.datasets import DATASETS

        names: Any = None
        summary = self.directory / SUMMARY_FILE if self.directory else None
        if summary is not None and summary.exists():
            try:
                names = json.loads(summary.read_text()).get("class_names")
            except (OSError, ValueError, AttributeError):
                names = None
        dataset = (self.config or {}).get("dataset")
        if not names and dataset in DATASETS:
            names = DATASETS[dataset].class_names
        if not names or len(names) != count or not all(isinstance(n, str) for n in names):
            names = [str(label) for label in range(count)]
        return tuple(names)

    # ------------------------------------------------------------ calibration
    def calibration(self) -> dict[str, Any] | None:
        """The operating point ``dynroute calibrate`` chose for this run, if any."""
        path = self.calibration_path
        if path is None or not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
            Policy.from_dict(data["policy"])
            if data.get("format") != CALIBRATION_FORMAT:
                raise ValueError(f"format {data.get('format')!r}")
        except (OSError, ValueError, KeyError, TypeError, DynrouteError) as exc:
            raise DynrouteError(
                f"{path} is unreadable or corrupt ({exc}); run `dynroute calibrate` again"
            ) from None
        return data

    @property
    def calibration_path(self) -> Path | None:
        return self.directory / CALIBRATION_FILE if self.directory else None

    def save_calibration(self, data: dict[str, Any]) -> Path:
        if self.calibration_path is None:
            raise DynrouteError("a calibration is saved in a run directory, not beside a file")
        return write_json_atomic(self.calibration_path, {"format": CALIBRATION_FORMAT, **data})

    def operating_point(self) -> tuple[Policy, float | None]:
        """The calibrated policy and k_cpt input, or the routers' own (learned, no k_cpt)."""
        data = self.calibration()
        if data is None:
            return LEARNED, None
        return Policy.from_dict(data["policy"]), data.get("k_cpt")


def open_run(path: str | os.PathLike[str]) -> Run:
    """A run directory (its checkpoint and config) or a checkpoint file."""
    path = Path(path)
    if path.is_dir():
        file = path / CHECKPOINT_FILE
        if not file.exists():
            raise DynrouteError(f"no checkpoint in run directory {path}")
        config_path = path / CONFIG_FILE
        config = read_json_object(config_path, "run config") if config_path.exists() else None
        return Run(path, file, config)
    if not path.exists():
        raise DynrouteError(f"no such run directory or checkpoint: {path}")
    return Run(path, path, None)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The evaluation records of a run; a line a killed process left half-written is skipped."""
    if not path.exists():
        return []
    records, broken = [], 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            broken += 1
            continue
        if isinstance(record, dict) and isinstance(record.get("iteration"), int):
            records.append(record)
        else:
            broken += 1
    if broken:
        print(f"dynroute: skipped {broken} unreadable line(s) of {path}", file=sys.stderr)
    return records
