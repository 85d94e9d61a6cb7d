"""``dynroute export``: a trained run and its export agree under every policy, choose every
budget alike, and carry a guarantee into deployment."""

from __future__ import annotations

import csv
import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from dynroute.cli import main
from dynroute.core.errors import DynrouteError
from dynroute.core.policy import Policy
from dynroute.deploy import load
from dynroute.nn.prediction import predict_dense
from helpers.delivery import SIZE, coloured, image_folder

pytest.importorskip("onnx", reason="exporting needs the export extra")
pytest.importorskip("onnxruntime", reason="running an export needs the deploy extra")

REPO = Path(__file__).resolve().parents[2]
NO_TORCH = "import sys; sys.modules['torch'] = None\n"


@pytest.mark.slow
def test_a_trained_run_and_its_export_agree_under_every_policy(
    trained: dict[str, Path], tmp_path: Path, capsys
) -> None:
    from dynroute.runs import open_run

    run = open_run(trained["plain"])
    images, _, _ = run.split("test")
    x = torch.from_numpy(np.array(images))
    tree = run.load_tree().eval()
    cases = [
        ("plain", []),
        ("plain", ["--policy", "confidence", "--threshold", "0.6"]),
        ("plain", ["--policy", "entropy", "--threshold", "0.5"]),
        ("budgeted", []),
        ("ensemble", []),
    ]
    folder = image_folder(tmp_path)
    exits_seen = set()
    for index, (which, options) in enumerate(cases):
        out = tmp_path / f"export{index}"
        assert main(["export", str(trained[which]), "--out", str(out), "--dense", *options]) == 0
        printed = capsys.readouterr().out
        assert "64/64 exits as PyTorch's dense reference" in printed
        model = load(out)
        policy = Policy.from_dict(model.policy)
        reference = predict_dense(tree, x, policy=policy)
        ours = model.predict(images)
        np.testing.assert_array_equal(ours.exits, reference.exits.numpy())
        np.testing.assert_array_equal(ours.macs, reference.macs.numpy())
        np.testing.assert_allclose(ours.logits, reference.logits.numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(model.predict_dense(images).exits, ours.exits)
        exits_seen.add(len(np.unique(ours.exits)))
        # predict on files: the run (PyTorch engine) and its export write the same rows
        rows = {}
        for target in (trained[which], out):
            assert main(["predict", str(target), str(folder), "--no-progress", *options]) == 0
            rows[target] = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
        by_run, by_export = rows.values()
        assert [(r["class"], r["exit"], r["macs"]) for r in by_run] == [
            (r["class"], r["exit"], r["macs"]) for r in by_export
        ]
    assert max(exits_seen) >= 2  # some operating points split the batch


@pytest.mark.slow
def test_an_export_chooses_a_budget_as_its_run_does(
    trained: dict[str, Path], tmp_path: Path, capsys, monkeypatch
) -> None:
    """The export carries its policy's operating points measured on the validation split
    (the frontier the selection rule chooses from: ``test_selection``), so ``predict EXPORT
    --target-macs`` picks exactly the point the run itself would pick, at default settings."""
    folder = image_folder(tmp_path)
    for which, policy in (("plain", "confidence"), ("ensemble", "ensemble"), ("budgeted", None)):
        out = tmp_path / f"export-{which}"
        options = ["--policy", policy] if policy else []
        if policy == "confidence":
            options += ["--threshold", "0.5"]
        command = ["export", str(trained[which]), "--out", str(out), "--check", "0"]
        assert main([*command, *options]) == 0
        assert "operating points measured on the validation split" in capsys.readouterr().out
        points = load(out).manifest["operating_points"]
        assert points["examples"] == 60 and len(points["points"]) >= 2
        lowest = min(p["mean_macs"] for p in points["points"]) / 1e6
        highest = max(p["mean_macs"] for p in points["points"]) / 1e6
        for target in (lowest * 1.01, (lowest + highest) / 2, highest):
            budget = ["--target-macs", f"{target:.6f}", "--no-progress"]
            rows = {}
            for source in (trained[which], out):
                by_name = ["--policy", policy or which] if source != out else []
                assert main(["predict", str(source), str(folder), *budget, *by_name]) == 0
                rows[source] = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
            by_run, by_export = rows.values()
            assert [(r["class"], r["exit"], r["macs"]) for r in by_run] == [
                (r["class"], r["exit"], r["macs"]) for r in by_export
            ]
        too_low = ["--target-macs", f"{lowest / 2:.6f}", "--no-progress"]
        assert main(["predict", str(out), str(folder), *too_low]) == 2
        assert "no operating point stays within" in capsys.readouterr().err
    # without the run's data, the export says why it carries no points, and still works
    out = tmp_path / "no-points"
    options = ["--policy", "confidence", "--threshold", "0.5", "--check", "0"]
    assert main(["export", str(trained["plain"]), "--out", str(out), "--no-operating-points",
                 *options]) == 0  # fmt: skip
    assert load(out).manifest["operating_points"] is None
    capsys.readouterr()
    assert main(["predict", str(out), str(folder), "--target-macs", "1", "--no-progress"]) == 2
    assert "carries no operating points" in capsys.readouterr().err


@pytest.mark.slow
def test_a_guarantee_travels_from_calibrate_into_the_export(
    trained: dict[str, Path], tmp_path: Path, capsys
) -> None:
    """``calibrate --target-accuracy A --delta D`` certifies an operating point; the export
    carries the guarantee, ``predict`` reports it and the manifest check refuses one that
    does not fit its operating point. An impossible target is one line naming the best
    guarantee at hand and the examples it would need."""
    run = tmp_path / "run"
    subprocess.run(["cp", "-r", str(trained["plain"]), str(run)], check=True)
    impossible = ["calibrate", str(run), "--policy", "confidence", "--target-accuracy", "0.995"]
    assert main([*impossible, "--delta", "0.1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the best it guarantees is accuracy >=" in err[0], err
    command = ["calibrate", str(run), "--policy", "confidence", "--target-accuracy", "0.3"]
    assert main([*command, "--delta", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "guarantee: accuracy >= 0.3" in out and "Learn-then-Test" in out
    saved = json.loads((run / "calibration.json").read_text())
    assert saved["guarantee"]["delta"] == 0.2 and saved["guarantee"]["n"] == 30
    folder = tmp_path / "export"
    assert main(["export", str(run), "--out", str(folder), "--check", "0"]) == 0
    manifest = load(folder).manifest
    assert manifest["guarantee"]["target"] == "accuracy"
    assert manifest["guarantee"]["policy"] == manifest["policy"]
    capsys.readouterr()
    photos = image_folder(tmp_path)
    assert main(["predict", str(folder), str(photos), "--no-progress"]) == 0
    assert "guaranteed: accuracy >= 0.3" in capsys.readouterr().err
    # another threshold than the certified one: the guarantee no longer applies
    assert main(["predict", str(folder), str(photos), "--threshold", "0.9", "--no-progress"]) == 0
    assert "guaranteed" not in capsys.readouterr().err
    # a manifest whose guarantee names another operating point is refused on load
    from dynroute.deploy.manifest import CHECKSUM_FILE, MANIFEST_FILE, checksum_lines

    edited = json.loads((folder / MANIFEST_FILE).read_text())
    edited["guarantee"]["policy"]["threshold"] = 0.01
    (folder / MANIFEST_FILE).write_text(json.dumps(edited))
    names = [line.split("  ", 1)[1] for line in (folder / CHECKSUM_FILE).read_text().splitlines()]
    (folder / CHECKSUM_FILE).write_text(checksum_lines(folder, names))
    with pytest.raises(DynrouteError, match="its guarantee: it certifies another policy"):
        load(folder)


@pytest.mark.slow
def test_the_export_options_that_used_to_fail(
    trained: dict[str, Path], tmp_path: Path, capsys
) -> None:
    """An ensemble chosen for a budget (a per-exit rule among them) exports; the learned
    routers' export says it carries one operating point."""
    for target in ("1.2", "1.5", "3"):
        out = tmp_path / f"ensemble-{target}"
        assert main(["export", str(trained["plain"]), "--out", str(out), "--policy", "ensemble",
                     "--target-macs", target, "--check", "0"]) == 0  # fmt: skip
        assert "operating points measured" in capsys.readouterr().out
    out = tmp_path / "learned"
    assert main(["export", str(trained["plain"]), "--out", str(out), "--check", "0"]) == 0
    assert "one operating point only" in capsys.readouterr().out


@pytest.mark.slow
def test_a_dynamic_k_cpt_run_exports_without_a_k_cpt(tmp_path: Path, capsys) -> None:
    x_train, y_train = coloured(120, 0)
    x_test, y_test = coloured(30, 1)
    npz = tmp_path / "colours.npz"
    np.savez(npz, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    run = tmp_path / "dynamic"
    assert main(["train", "--dataset", f"npz:{npz}", "--image-size", str(SIZE), "--iterations",
                 "4", "--batch-size", "16", "--dynamic-k-cpt", "--validation-size", "30",
                 "--threads", "1", "--no-progress", "--out", str(run)]) == 0  # fmt: skip
    capsys.readouterr()
    for extra in ([], ["--no-operating-points"]):
        out = tmp_path / f"export{len(extra)}"
        assert main(["export", str(run), "--out", str(out), *extra]) == 0
        printed = capsys.readouterr()
        assert "Traceback" not in printed.err and "callers must pass" in printed.out
    assert main(["export", str(run), "--out", str(tmp_path / "k"), "--k-cpt", "4e-9"]) == 0
    assert "exits as PyTorch's dense reference" in capsys.readouterr().out


@pytest.mark.slow
def test_force_replaces_an_export_whole_and_nothing_beside_it(tmp_path: Path) -> None:
    """The old export is moved aside under a fresh name of its own, not a fixed one that a
    user's folder may already hold; nothing is left behind but the new export."""
    from dynroute.delivery.export import export_tree
    from dynroute.nn.models import build_model

    tree = build_model("chain", num_classes=3, image_size=SIZE)
    out = tmp_path / "chain"
    export_tree(tree, out)
    (tmp_path / ".chain.old").mkdir()
    (tmp_path / ".chain.old" / "mine.txt").write_text("keep")
    with pytest.raises(DynrouteError, match="pass `force`"):
        export_tree(tree, out)
    export_tree(tree, out, policy=Policy("confidence", 0.5), force=True)
    assert (tmp_path / ".chain.old" / "mine.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".chain.old", "chain"]
    assert load(out).policy["threshold"] == 0.5
