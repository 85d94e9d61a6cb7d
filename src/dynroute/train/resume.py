"""A run directory's rules for training: what a new run writes, when a run may resume
(same options, same data, same sweep entry), and what it continues with.

Everything here runs before any data is loaded or any step taken, so a refusal costs
nothing; the trainer (``dynroute.train.trainer``) only calls ``prepare_run_dir``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from dynroute.core.errors import DynrouteError
from dynroute.io.atomic import read_json_object, write_json_atomic, write_text_atomic
from dynroute.nn.registry import CUSTOM_MODEL
from dynroute.runs import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    RUN_FILES,
    DataRecord,
    metrics_line,
    read_data_record,
    read_metrics,
    warn_unrecorded,
    write_data_record,
)
from dynroute.train.config import DEFAULTED_FIELDS, EXECUTION_ONLY, TrainConfig

#: Registered models of each kind (static or routed) that a custom tree's config is checked
#: as: it passes the same checks; the strategy checks the tree itself.
_STAND_INS = {True: "static-1", False: "chain"}


def validate_config(config: TrainConfig) -> TrainConfig:
    """``config.validate()``, also for a run on the caller's own tree (model ``custom``, not a
    registered name): that config is checked as one for a registered model of its kind."""
    if config.model != CUSTOM_MODEL:
        return config.validate()
    replace(config, model=_STAND_INS[config.strategy == "static"]).validate()
    return config


def stored_config_differences(stored: dict[str, Any], requested: TrainConfig) -> list[str]:
    """Names of the options in which a run directory's ``config.json`` and ``requested`` differ.

    Execution-only options may differ. A defaulted option (``DEFAULTED_FIELDS``) left at
    ``None`` in ``requested`` accepts what the run stored, so a run resumes with the schedule
    it started with even if the defaults changed since; one set explicitly must equal the
    stored value, both resolved (a ``null`` stored by older versions resolves to today's
    default, as it always did).
    """
    stored_values = _config_from_stored(stored).resolved().to_dict()
    requested_values = requested.resolved().to_dict()
    mine = requested.to_dict()
    differs: list[str] = []
    for name in sorted(set(stored) | set(mine)):
        if name in EXECUTION_ONLY:
            continue
        if name in DEFAULTED_FIELDS:
            if getattr(requested, name) is None:
                continue  # "use the default": the run's own value
            if stored_values[name] != requested_values[name]:
                differs.append(name)
        elif stored.get(name) != mine.get(name):
            differs.append(name)
    return differs


def run_config_for(stored: dict[str, Any], requested: TrainConfig) -> TrainConfig:
    """The config a resumed run continues with: ``requested`` with the stored schedule.

    Call only when ``stored_config_differences`` found no difference.
    """
    stored_config = _config_from_stored(stored).resolved()
    schedule = {name: getattr(stored_config, name) for name in DEFAULTED_FIELDS}
    return validate_config(replace(requested, **schedule))


def _config_from_stored(stored: dict[str, Any]) -> TrainConfig:
    """The stored options this version knows (unknown ones show up as differences)."""
    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig.from_dict({k: v for k, v in stored.items() if k in known})


@dataclass(frozen=True)
class RunDirPlan:
    """What ``inspect_run_dir`` found: the config to run and whether to resume."""

    config: TrainConfig
    resume: bool
    fresh: bool


def _read_stored_config(path: Path) -> dict[str, Any]:
    return read_json_object(path, "run config", "pass `overwrite` to start the run over")


def inspect_run_dir(
    out_dir: Path, config: TrainConfig, resume: bool, overwrite: bool
) -> RunDirPlan:
    """Check the run directory against the request without writing anything.

    Runs before any data is loaded, so a refusal costs nothing. Returns the config the run
    goes on with (every default resolved; on resume, the schedule stored when it began).
    """
    config_path = out_dir / CONFIG_FILE
    if resume and overwrite:
        raise DynrouteError("`resume` and `overwrite` exclude each other")
    if out_dir.exists() and not out_dir.is_dir():
        raise DynrouteError(f"`out` {out_dir} is a file, not a run directory")
    if config_path.exists() and not overwrite:
        existing = _read_stored_config(config_path)
        if not resume:
            raise DynrouteError(
                f"{out_dir} already holds a run; pass `resume` to continue it "
                "or `overwrite` to replace it"
            )
        try:
            differs = stored_config_differences(existing, config)
        except DynrouteError as exc:
            raise DynrouteError(
                f"{config_path} is not a valid run configuration ({exc}); pass `overwrite` "
                "to start the run over"
            ) from None
        if differs:
            raise DynrouteError(
                f"{out_dir} holds a different run (differs in {', '.join(differs)}); "
                "pass `overwrite` to replace it"
            )
        has_checkpoint = (out_dir / CHECKPOINT_FILE).exists()
        return RunDirPlan(run_config_for(existing, config), has_checkpoint, False)
    if (out_dir / CHECKPOINT_FILE).exists() and not overwrite:
        raise DynrouteError(
            f"{out_dir} holds a checkpoint but no {CONFIG_FILE}, so it cannot be resumed "
            "safely; pass `overwrite` to replace it"
        )
    if resume:
        raise DynrouteError(
            f"nothing to resume in {out_dir} (no {CONFIG_FILE}); leave out `resume` to start "
            "a new run there"
        )
    return RunDirPlan(config.resolved(), False, True)


def prepare_run_dir(
    out_dir: Path,
    config: TrainConfig,
    resume: bool,
    overwrite: bool,
    record: DataRecord | None = None,
) -> tuple[TrainConfig, bool]:
    """Check (``inspect_run_dir``), then create the run directory or clear it on overwrite.

    ``record``: the data the run trains on; a new run writes it, a resumed one must have
    been trained on the same data (and, for a sweep's run, for the same network).
    Returns the config the run goes on with and whether there is a checkpoint to resume.
    """
    plan = inspect_run_dir(out_dir, config, resume, overwrite)
    if not plan.fresh:
        if record is not None:
            _check_resumed_data(out_dir, record)
        return plan.config, plan.resume
    try:
        if overwrite and out_dir.is_dir():
            for name in RUN_FILES:
                (out_dir / name).unlink(missing_ok=True)
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DynrouteError(f"cannot write the run directory {out_dir}: {exc}") from None
    # Explicit values, not the defaults' nulls: a resume must not pick up changed defaults.
    write_json_atomic(out_dir / CONFIG_FILE, plan.config.to_dict(), indent=2)
    if record is not None:
        write_data_record(out_dir, record)
    return plan.config, False


def _check_resumed_data(out_dir: Path, record: DataRecord) -> None:
    """Refuse to resume a run on other data than it began on, or for another sweep entry."""
    stored = read_data_record(out_dir)
    if stored is None:  # a run from before data records: bind it from now on
        warn_unrecorded(out_dir)
        write_data_record(out_dir, record)
        return
    differs = stored.data_differences(record)
    if differs:
        raise DynrouteError(
            f"cannot resume {out_dir}: it was trained on {stored.describe()}, but the data "
            f"given now is {record.describe()}: they differ in {' and '.join(differs)}; give "
            "it the data it began on, or pass `overwrite` to start the run over"
        )
    mine, theirs = stored.origin, record.origin
    if mine and theirs and mine != theirs:
        raise DynrouteError(
            f"cannot resume {out_dir}: it holds the run of {_origin(mine)}, not of "
            f"{_origin(theirs)}; pass `overwrite` to start the run over"
        )


def _origin(origin: dict[str, str]) -> str:
    return ", ".join(f"{key} {value}" for key, value in origin.items())


def truncate_metrics(path: Path, last_step: int) -> list[dict[str, Any]]:
    """Keep the metric records up to the checkpoint we resume from; returns them."""
    keep = [record for record in read_metrics(path) if record["iteration"] <= last_step]
    if path.exists():
        write_text_atomic(path, "".join(metrics_line(record, path) + "\n" for record in keep))
    return keep
