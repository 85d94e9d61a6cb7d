"""One resolver for a run's operating point: the policy and k_cpt input a run runs by.

``evaluate``, ``export``, ``predict``, ``serve`` and ``EarlyExitEngine.from_run`` all ask
here, so they cannot disagree: the run's calibration (``dynroute calibrate``), or the
learned routers without one; overridden by a policy name, answers or threshold given;
or chosen for a MAC budget on the run's validation split, as ``calibrate`` chooses
(nothing is saved). The options are checked once, as an ``OperatingRequest``
(``dynroute.core.operating``); an export resolves the same request in ``ExportedModel.resolve``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch

from dynroute.core.operating import BEST, OperatingRequest, chosen_for_budget
from dynroute.core.policy import Policy
from dynroute.nn.prediction import as_tensor
from dynroute.policies.calibration import (
    Candidate,
    candidates,
    choose,
    dense_k_cpt,
    families,
)
from dynroute.policies.exit_table import dense_outputs
from dynroute.runs import Run


@dataclass
class OperatingPoint:
    """A resolved operating point: the policy, the k_cpt input, how it was chosen, and,
    when it was chosen for a budget, every candidate measured on the validation split
    (an export stores them, so it need not measure them again)."""

    policy: Policy
    k_cpt: float | None
    how: str
    candidates: list[Candidate] | None = field(default=None, repr=False)
    guarantee: dict[str, Any] | None = None


def family_name(policy: Policy) -> tuple[str, str | None]:
    """The policy name and answers ``calibration.families`` expands to ``policy``'s own."""
    if not policy.rule.reads_exits:  # the routers: one answers kind per operating point
        return policy.name, None
    return policy.name, policy.answers


def resolve_operating_point(
    run: Run,
    policy: str | None = None,
    threshold: float | None = None,
    target_macs: float | None = None,
    k_cpt: float | None = None,
    *,
    answers: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    allow_checksum_mismatch: bool = False,
) -> OperatingPoint:
    """The policy and k_cpt input to run ``run`` by, and how they were chosen (see the
    module's docstring). ``target_macs``: mean MACs per example, chosen among the operating
    points of ``policy`` (default: the calibrated policy's kind; ``best``: every kind)."""
    request = OperatingRequest(policy, threshold, target_macs, k_cpt, answers)
    calibration = run.calibration()
    calibrated, calibrated_k = run.operating_point()
    k = calibrated_k if k_cpt is None else k_cpt
    if target_macs is not None:
        name, kind = (policy, answers) if policy is not None else family_name(calibrated)
        wanted = families(name, answers if policy is not None else kind)
        points = _measure(run, wanted, k, data_dir, allow_checksum_mismatch)
        chosen = choose(points, target_macs, None)
        how = chosen_for_budget(target_macs, chosen)
        return OperatingPoint(chosen.policy, chosen.k_cpt if chosen.k_cpt is not None else k,
                              how, points)  # fmt: skip
    chosen_policy = request.applied_to(calibrated)
    if chosen_policy is calibrated:
        how = "learned routers (no calibration)" if calibration is None else "calibrated"
        guarantee = None if calibration is None else calibration.guarantee
    else:
        how, guarantee = "given", None
    return OperatingPoint(chosen_policy, k, how, guarantee=guarantee)


def _measure(
    run: Run,
    wanted: list[tuple[str, str]],
    k_cpt: float | None,
    data_dir: str | os.PathLike[str] | None,
    allow_checksum_mismatch: bool,
    fitted: Policy | None = None,
) -> list[Candidate]:
    tree = run.load_tree().eval()
    run.check_routed(tree, "choosing an operating point")
    images, labels, _ = run.split("validation", data_dir, None, allow_checksum_mismatch)
    images_t, labels_t = as_tensor(images, torch.float32), as_tensor(labels, torch.long)
    outputs = dense_outputs(tree, images_t, labels_t, dense_k_cpt(tree, k_cpt))
    return candidates(0, tree, outputs, wanted, k_cpt, images_t, fitted)


def operating_points_of(
    run: Run,
    point: OperatingPoint,
    data_dir: str | os.PathLike[str] | None = None,
    allow_checksum_mismatch: bool = False,
    policy: str | None = None,
    answers: str | None = None,
) -> list[Candidate]:
    """The validation operating points ``point`` was chosen among; or, for a calibrated or
    given policy, those of ``policy`` (default: the point's own kind), measured with the
    point's fitted answers and models."""
    if point.candidates is not None:
        return point.candidates
    name, kind = (policy, answers) if policy is not None else family_name(point.policy)
    if name == BEST:
        name, kind = family_name(point.policy)
    return _measure(
        run, families(name, kind), point.k_cpt, data_dir, allow_checksum_mismatch, point.policy
    )
