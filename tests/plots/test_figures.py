"""Every figure renders from result files alone (synthetic results, no training)."""

from __future__ import annotations

import pytest

from dynroute.cli import main
from dynroute.plots.figures import render
from helpers.experiment_results import STATIC, shifted, write_curve

SCALE = "smoke"


@pytest.fixture
def results_dir(tmp_path):
    root = tmp_path / "results"
    write_curve(root, SCALE, "hybrid-static", STATIC)
    write_curve(root, SCALE, "hybrid-actor", shifted(STATIC, 0.03, 0.5))
    write_curve(root, SCALE, "hybrid-actor-tree", shifted(STATIC, 0.02, 0.6))
    write_curve(root, SCALE, "hybrid-actor-dynkcpt", shifted(STATIC, 0.02, 0.55))
    write_curve(root, SCALE, "cifar2-static", STATIC)
    write_curve(root, SCALE, "cifar2-actor", shifted(STATIC, 0.05, 0.4))
    return root


@pytest.mark.slow
def test_every_figure_renders_png_and_on_demand_pdf(results_dir):
    paths = render(results_dir, SCALE)
    names = {p.name for p in paths}
    for stem in ("figure5-acc-eff", "figure9-acc-eff", "figure6-dataflow", "figure7-dataflow",
                 "figure8-training-dataflow", "histogram-hybrid-actor"):  # fmt: skip
        assert f"{stem}.png" in names
    assert not any(name.endswith(".pdf") for name in names)  # PNG only, unless asked
    pdfs = render(results_dir, SCALE, "acc-eff", formats=("png", "pdf"))
    assert {"figure5-acc-eff.pdf", "figure5-acc-eff.png"} <= {p.name for p in pdfs}
    assert "figure10-acc-eff.png" not in names  # no CIFAR-10 width results
    assert all(p.stat().st_size > 1000 for p in paths)
    assert all(p.parent == results_dir / SCALE / "figures" for p in paths)


@pytest.mark.slow
def test_figure10_renders_once_width_results_exist(results_dir):
    for suffix, gain in (("", 0.03), ("-width2", 0.04), ("-width3", 0.05)):
        write_curve(results_dir, SCALE, f"cifar10-static{suffix}", STATIC)
        write_curve(results_dir, SCALE, f"cifar10-actor{suffix}", shifted(STATIC, gain, 0.5))
    names = {p.name for p in render(results_dir, SCALE)}
    assert "figure10-acc-eff.png" in names


def test_plot_command(results_dir, tmp_path, capsys):
    out = tmp_path / "figs"
    args = ["--scale", SCALE, "--results", str(results_dir), "--out", str(out)]
    assert main(["plot", "training-dataflow", *args]) == 0
    assert (out / "figure8-training-dataflow.png").exists()
    assert not (out / "figure5-acc-eff.png").exists()
    assert main(["plot", "acc-eff", *args, "--format", "pdf"]) == 0
    assert (out / "figure5-acc-eff.pdf").exists() and not (out / "figure5-acc-eff.png").exists()
    # A mistyped results folder or scale is an error that names it, and creates nothing.
    assert main(["plot", "acc-eff", "--scale", "quick", "--results", str(results_dir)]) == 2
    assert f"{results_dir / 'quick'} does not exist" in capsys.readouterr().err
    assert not (results_dir / "quick").exists()
