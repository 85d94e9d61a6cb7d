"""The claims table is computed from result files: supported, not supported, not run."""

from __future__ import annotations

import math

from dynroute.cli import main
from dynroute.experiments.results import CurvePoint, curve, load_results
from dynroute.plots.report import (
    NOT_RUN,
    NOT_SUPPORTED,
    SUPPORTED,
    check_claims,
    dynamic_macs_for_accuracy,
    static_error_at,
)
from experiment_results import STATIC, shifted, write_curve

SCALE = "smoke"


def verdicts(root) -> dict[str, tuple[str, str]]:
    claims = check_claims(load_results(root, SCALE))
    return {c.claim.split(" (")[0]: (c.verdict, c.evidence) for c in claims}


def test_interpolation_helpers():
    static = [CurvePoint("s", "a", None, m, a) for a, m in STATIC]
    assert static_error_at(static, 1.0e6) is None
    assert abs(static_error_at(static, (5.3e6 + 7.6e6) / 2) - 0.225) < 1e-9
    assert dynamic_macs_for_accuracy(static, 0.95) is None
    assert abs(dynamic_macs_for_accuracy(static, 0.85) - (11.4e6 + 13.5e6) / 2) < 1


def test_claims_supported(tmp_path):
    write_curve(tmp_path, SCALE, "hybrid-static", STATIC)
    write_curve(tmp_path, SCALE, "hybrid-actor", shifted(STATIC, 0.04, 0.4))
    write_curve(tmp_path, SCALE, "hybrid-critic", shifted(STATIC, 0.02, 0.7))
    write_curve(tmp_path, SCALE, "hybrid-critic-optimistic", shifted(STATIC, 0.01, 0.9))
    write_curve(tmp_path, SCALE, "hybrid-actor-notalr", shifted(STATIC, 0.0, 0.4))
    write_curve(tmp_path, SCALE, "hybrid-actor-dynkcpt", shifted(STATIC, 0.03, 0.45))
    found = verdicts(tmp_path)
    assert found["dynamic beats static at equal MACs on hybrid"][0] == SUPPORTED
    assert found["actor > pragmatic critic > optimistic critic"][0] == SUPPORTED
    assert found["TALR helps at high accuracy"][0] == SUPPORTED
    assert found["one dynamic-k_cpt net ≈ 8 specialised nets"][0] == SUPPORTED
    verdict, evidence = found["2–3× fewer MACs than static at equal accuracy"]
    assert verdict == SUPPORTED and "vs 20.60 M" in evidence and "ratio" in evidence
    assert found["k_dec > 0 is needed for actors"][0] == NOT_RUN
    assert "hybrid-actor-nokdec" in found["k_dec > 0 is needed for actors"][1]
    assert found["dynamic routing helps most when easy examples are common"][0] == NOT_RUN


def test_claims_not_supported(tmp_path):
    write_curve(tmp_path, SCALE, "hybrid-static", STATIC)
    write_curve(tmp_path, SCALE, "hybrid-actor", shifted(STATIC, -0.05, 1.0))
    write_curve(tmp_path, SCALE, "hybrid-actor-regpolicy", shifted(STATIC, 0.01, 1.0))
    write_curve(tmp_path, SCALE, "cifar2-static", STATIC)
    write_curve(tmp_path, SCALE, "cifar2-actor", shifted(STATIC, 0.01, 0.9))
    write_curve(tmp_path, SCALE, "cifar10-static", STATIC)
    write_curve(tmp_path, SCALE, "cifar10-actor", shifted(STATIC, 0.01, 0.5))
    found = verdicts(tmp_path)
    verdict, evidence = found["dynamic beats static at equal MACs on hybrid"]
    assert verdict == NOT_SUPPORTED
    # The margin comes with the noise the test set allows: 1,000 images per point here.
    actor = curve(load_results(tmp_path, SCALE)["hybrid-actor"])
    inside = [p for p in actor if 5e6 <= p.mean_macs <= 15e6]
    noise = sum(math.sqrt(p.accuracy * (1 - p.accuracy) / 1000) for p in inside) / len(inside)
    assert f"on 1000 test images: ±{100 * noise:.2f} points" in evidence
    assert found["regularising the policy hurts peak accuracy"][0] == NOT_SUPPORTED
    assert found["2–3× fewer MACs than static at equal accuracy"][0] == NOT_SUPPORTED
    verdict, evidence = found["dynamic routing helps most when easy examples are common"]
    assert verdict == NOT_SUPPORTED and "CIFAR-2" in evidence


def test_report_command_writes_markdown_and_html(tmp_path):
    write_curve(tmp_path, SCALE, "hybrid-static", STATIC)
    write_curve(tmp_path, SCALE, "hybrid-actor", shifted(STATIC, 0.04, 0.4))
    assert main(["report", "--scale", SCALE, "--results", str(tmp_path)]) == 0
    markdown = (tmp_path / SCALE / "report.md").read_text()
    assert "| dynamic beats static" in markdown and "**supported**" in markdown
    assert "![figure5-acc-eff](figures/figure5-acc-eff.png)" in markdown
    assert "**not run**" in markdown
    page = (tmp_path / SCALE / "report.html").read_text()
    assert "<table" in page and "figures/figure5-acc-eff.png" in page
