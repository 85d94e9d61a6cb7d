"""int8 exports: the models int8 speeds up quantized, the operating point re-fitted on int8 answers,
checked against float32; the torch-free runtime runs them unchanged."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dynroute.delivery import quantize
from dynroute.delivery.export import export_run
from dynroute.deploy import load
from dynroute.deploy.manifest import model_files

pytest.importorskip("onnxruntime", reason="int8 exports need the deploy extra")


@pytest.mark.slow
def test_an_int8_export_keeps_early_exit_and_agrees_with_float32(
    trained, tmp_path, monkeypatch
) -> None:
    run = trained["budgeted"]  # calibrated for 1.5 M MACs with per-exit thresholds
    monkeypatch.setattr(quantize, "FASTER_BY", 0.0)  # every model int8, however fast
    manifest, how, check = export_run(run, tmp_path / "int8", int8=True)
    assert manifest["model"]["precision"] == "int8" and manifest["guarantee"] is None
    assert "re-fitted for 1.5 M MACs on the int8 answers" in how
    assert check["same_class"] >= 0.8 and abs(check["accuracy_difference"]) <= 0.1
    assert check["int8"]["mean_macs"] <= 1.5e6 * 1.5
    written = json.loads((tmp_path / "int8" / "manifest.json").read_text())
    assert written["source"]["int8_check"] == check
    assert len(written["operating_points"]["points"]) >= 2  # predict --target-macs works
    model = load(tmp_path / "int8")
    x = np.random.default_rng(0).random((16, *model.input_shape), dtype=np.float32)
    routed = model.predict(x)
    assert routed.logits.dtype == np.float32 and len(set(routed.exits.tolist())) >= 1
    import onnx

    quantized = onnx.load(str(tmp_path / "int8" / manifest["segments"][0]["file"]))
    assert any(n.op_type == "QuantizeLinear" for n in quantized.graph.node)
    record = written["source"]["int8_models"]
    assert set(record) == set(model_files(written))
    assert all(r["precision"] == "int8" and r["int8_ms"] > 0 for r in record.values())


@pytest.mark.slow
def test_a_model_int8_does_not_speed_up_stays_float32(trained, tmp_path, monkeypatch) -> None:
    """Where int8 runs slower (a small or memory-bound model), the export keeps the float32
    model: here none is fast enough, so every file is the float32 export's, yet the
    manifest says int8, records each model's timings, and the operating point is re-fitted."""
    run = trained["budgeted"]
    export_run(run, tmp_path / "float32")
    monkeypatch.setattr(quantize, "FASTER_BY", float("inf"))
    manifest, how, _ = export_run(run, tmp_path / "int8", int8=True)
    assert manifest["model"]["precision"] == "int8" and "int8 answers" in how
    for name in model_files(manifest):
        assert (tmp_path / "int8" / name).read_bytes() == (tmp_path / "float32" / name).read_bytes()
    assert {r["precision"] for r in manifest["source"]["int8_models"].values()} == {"float32"}


@pytest.mark.parametrize("boost", [0.0, 0.5])
def test_every_exit_of_an_export_is_its_dense_graph(tmp_path, boost: float) -> None:
    """The segment walk that int8 calibration and re-fitting read gives what dense.onnx
    does (boosted answers composed the same way)."""
    import torch

    from dynroute.core.decisions import boosted_exits
    from dynroute.delivery.export import export_tree
    from helpers.routing import random_conv_tree, scramble_routing

    gen = torch.Generator().manual_seed(2)
    x = torch.rand(32, 3, 4, 4, generator=gen)
    tree = scramble_routing(random_conv_tree(2, boost=boost), x)
    export_tree(tree, tmp_path / "export", dense=True)
    model = load(tmp_path / "export")
    answers, scores = model.every_exit(x.numpy())
    outputs = model._dense[0]([x.numpy()])
    heads = dict(zip(model.leaves, outputs[: len(model.leaves)], strict=True))
    dense = boosted_exits(model.shape, heads, model.boost)
    np.testing.assert_allclose(
        answers, np.stack([dense[leaf] for leaf in model.leaves], 1), rtol=1e-4, atol=1e-4
    )
    for j, s in zip(model.junctions, outputs[len(model.leaves) :], strict=True):
        np.testing.assert_allclose(scores[j], s, rtol=1e-4, atol=1e-4)
