"""Exports and the torch-free runtime: the runtime takes the exits the PyTorch dense
reference takes, with the same MACs and logits up to float rounding, for every deployable
policy, on random trees, the paper's networks and a trained run; exports are checked file
by file; ``dynroute.deploy`` and ``predict`` on an export never import torch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dynroute.core.errors import DynrouteError
from dynroute.core.policy import LEARNED, Policy
from dynroute.delivery.export import export_tree, segments
from dynroute.deploy import load
from dynroute.deploy.manifest import CHECKSUM_FILE, MANIFEST_FILE, read_manifest
from dynroute.nn.models import build_model
from dynroute.nn.prediction import Prediction, predict_dense
from helpers.routing import fitted_policies, random_conv_tree, scramble_routing
from helpers.toy_trees import random_tree

pytest.importorskip("onnx", reason="exporting needs the export extra")
pytest.importorskip("onnxruntime", reason="running an export needs the deploy extra")

REPO = Path(__file__).resolve().parents[2]
K_CPT_SET = torch.tensor([0, 1e-9, 2e-9, 4e-9, 8e-9, 1.6e-8, 3.2e-8, 6.4e-8])
#: Python code that makes ``import torch`` fail, as in an environment without it.
NO_TORCH = "import sys; sys.modules['torch'] = None\n"


def policies(tree, seed: int) -> list[Policy]:
    """Every deployable policy, with parameters for ``tree``."""
    fitted = fitted_policies(tree, seed)
    return [LEARNED, Policy("confidence", 0.45), Policy("entropy", 0.9), *fitted]


def assert_same(ours, reference: Prediction) -> None:
    np.testing.assert_array_equal(ours.exits, reference.exits.numpy())
    np.testing.assert_array_equal(ours.macs, reference.macs.numpy())
    np.testing.assert_allclose(ours.logits, reference.logits.numpy(), rtol=1e-4, atol=1e-4)


def check(model, tree, x: torch.Tensor, k=None, single: int = 3) -> list[Prediction]:
    """The export under every policy equals the dense reference: routed (whole batch and
    single examples) and dense.onnx. Returns the references."""
    references = []
    k_np = k.numpy() if isinstance(k, torch.Tensor) else k
    for policy in policies(tree, 0):
        under = model.with_policy(policy.to_dict())
        reference = predict_dense(tree, x, k, policy=policy)
        assert_same(under.predict(x.numpy(), k_np), reference)
        assert_same(under.predict_dense(x.numpy(), k_np), reference)
        for i in range(single):
            k_one = k_np[i : i + 1] if isinstance(k_np, np.ndarray) else k_np
            one = under.predict(x[i : i + 1].numpy(), k_one)
            assert int(one.exits[0]) == int(reference.exits[i])
            np.testing.assert_allclose(one.logits[0], reference.logits[i], rtol=1e-4, atol=1e-4)
        references.append(reference)
    return references


def exported(tree, folder: Path, **options):
    export_tree(tree, folder, dense=True, **options)
    return load(folder)


@pytest.mark.parametrize(
    ("seed", "dynamic"), [(0, False), pytest.param(1, False, marks=pytest.mark.slow), (2, True)]
)
def test_random_vector_trees(tmp_path: Path, seed: int, dynamic: bool) -> None:
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(seed)) * 3
    pick = torch.randint(len(K_CPT_SET), (64,), generator=torch.Generator().manual_seed(seed))
    k = K_CPT_SET[pick] if dynamic else None
    tree = scramble_routing(random_tree(seed, max_depth=4, dynamic_k_cpt=dynamic), x, k)
    model = exported(tree, tmp_path / "export", k_cpt=2e-9 if dynamic else None)
    references = check(model, tree, x, k)
    assert all(r.exits.unique().numel() >= 2 for r in references)  # every policy splits
    assert len({tuple(r.exits.tolist()) for r in references}) >= 3  # and they differ


@pytest.mark.parametrize(("seed", "dynamic"), [(0, False), (1, True)])
def test_random_conv_trees(tmp_path: Path, seed: int, dynamic: bool) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(64, 3, 4, 4, generator=gen) * torch.rand(64, 1, 1, 1, generator=gen)
    k = 1e-8 if dynamic else None
    tree = scramble_routing(random_conv_tree(seed, dynamic=dynamic), x, k)
    model = exported(tree, tmp_path / "export", k_cpt=k)
    references = check(model, tree, x, k)
    assert any(r.exits.unique().numel() >= 3 for r in references)


def test_boosted_trees(tmp_path: Path) -> None:
    """A boosted tree's export composes every answer as the PyTorch tree does, routed and
    dense, and records the boost in its manifest."""
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(64, 3, 4, 4, generator=gen) * torch.rand(64, 1, 1, 1, generator=gen)
    tree = scramble_routing(random_conv_tree(3, boost=0.5), x)
    model = exported(tree, tmp_path / "export")
    assert model.manifest["model"]["boost"] == 0.5
    references = check(model, tree, x)
    assert any(r.exits.unique().numel() >= 3 for r in references)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(48, 3, 32, 32, generator=gen) * torch.rand(48, 1, 1, 1, generator=gen)


@pytest.fixture(scope="module")
def chain(tmp_path_factory, images):
    """The paper's chain (multi-scale signals: lists of maps), random routers, exported."""
    torch.manual_seed(0)
    tree = scramble_routing(build_model("chain"), images)
    folder = tmp_path_factory.mktemp("chain") / "export"
    names = [f"class {c}" for c in range(10)]
    model = exported(tree, folder, class_names=names, policy=Policy("confidence", 0.3))
    return tree, folder, model


def test_the_chain_with_batch_norm_folded(chain, images) -> None:
    tree, folder, model = chain
    references = check(model, tree, images)
    assert references[0].exits.unique().numel() >= 3
    manifest = read_manifest(folder)
    assert manifest["onnx"]["batchnorm_folded"] and manifest["onnx"]["opset"] == 17
    assert manifest["policy"] == {"name": "confidence", "threshold": 0.3}
    assert model.class_names[3] == "class 3"
    # one segment per column, each reading only the scales it uses: column 3 reads the
    # three coarsest of column 2's four maps, exits only the coarsest
    assert [s["nodes"] for s in manifest["segments"]] == [[2 * i] for i in range(8)]
    assert manifest["segments"][2]["reads"] == [1, 2, 3]
    assert [h["reads"] for h in manifest["heads"][:3]] == [[3], [3], [2]]
    # MACs per segment add up to the tree's
    assert sum(s["macs"] for s in manifest["segments"]) + sum(
        h["macs"] for h in manifest["heads"]
    ) + sum(r["macs"] for r in manifest["routers"]) == sum(manifest["costs"]["node_macs"])


def test_runtime_batches_of_any_size_and_bad_inputs(chain, images) -> None:
    tree, _, model = chain
    empty = model.predict(np.empty((0, 3, 32, 32), np.float32))
    assert len(empty) == 0 and empty.logits.shape == (0, 10)
    double = model.predict(images.numpy().astype(np.float64))  # cast to float32
    assert_same(double, predict_dense(tree, images, policy=Policy("confidence", 0.3)))
    with pytest.raises(DynrouteError, match="batches of"):
        model.predict(np.zeros((2, 3, 16, 16), np.float32))
    with pytest.raises(DynrouteError, match="floating-point"):
        model.predict(np.zeros((2, 3, 32, 32), np.uint8))
    bad = images[:2].numpy().copy()
    bad[1, 0, 0, 0] = np.nan
    with pytest.raises(DynrouteError, match="NaN"):
        model.predict(bad)
    with pytest.raises(DynrouteError, match="a bound to compare with"):
        model.with_policy({"name": "oracle"})
    with pytest.raises(DynrouteError, match="`threshold`"):
        model.with_policy({"name": "confidence"})


@pytest.mark.slow
def test_the_branching_tree(tmp_path: Path, images) -> None:
    torch.manual_seed(2)
    tree = scramble_routing(build_model("tree"), images[:32])
    model = exported(tree, tmp_path / "export")
    references = check(model, tree, images[:32], single=1)
    assert references[0].exits.unique().numel() >= 3
    assert len(segments(tree)) == len(tree.nodes) - len(tree.leaves)  # every column splits


def test_a_dynamic_chain_takes_k_cpt_from_the_export_or_the_call(tmp_path: Path, images) -> None:
    torch.manual_seed(1)
    tree = scramble_routing(build_model("chain", dynamic_k_cpt=True), images, 2e-8)
    model = exported(tree, tmp_path / "export", k_cpt=2e-8)
    assert_same(model.predict(images.numpy()), predict_dense(tree, images, 2e-8))
    k = K_CPT_SET[torch.arange(48) % 8] * 100
    assert_same(model.predict(images.numpy(), k.numpy()), predict_dense(tree, images, k))
    bare = exported(tree, tmp_path / "bare")
    with pytest.raises(DynrouteError, match="pass `k_cpt`"):
        bare.predict(images.numpy())


# ---------------------------------------------------------------------- the files


def copy_export(folder: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    return copy


def test_every_file_is_checked_on_load(chain, tmp_path: Path) -> None:
    _, folder, _ = chain
    sums = (folder / CHECKSUM_FILE).read_text().splitlines()
    listed = {line.split("  ", 1)[1] for line in sums}
    assert listed == {p.name for p in folder.iterdir()} - {CHECKSUM_FILE}
    if shutil.which("sha256sum"):
        subprocess.run(["sha256sum", "--quiet", "-c", CHECKSUM_FILE], cwd=folder, check=True)

    changed = copy_export(folder, tmp_path)
    segment = changed / read_manifest(changed)["segments"][3]["file"]
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 1
    segment.write_bytes(bytes(data))
    with pytest.raises(DynrouteError, match=f"{segment.name} does not match its SHA-256"):
        load(changed)

    shutil.rmtree(changed)
    missing = copy_export(folder, tmp_path)
    (missing / read_manifest(missing)["heads"][0]["file"]).unlink()
    with pytest.raises(DynrouteError, match="cannot read exit-"):
        load(missing)

    shutil.rmtree(missing)
    edited = copy_export(folder, tmp_path)
    manifest = json.loads((edited / MANIFEST_FILE).read_text())
    manifest["nodes"][1]["children"] = [0]
    (edited / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(DynrouteError, match="manifest.json does not match"):
        load(edited)
    (edited / CHECKSUM_FILE).unlink()
    with pytest.raises(DynrouteError, match="no SHA256SUMS"):
        load(edited)
    with pytest.raises(DynrouteError, match="sinks outside the tree"):
        load(edited, verify=False)


def test_export_folders_are_written_whole_and_never_clobbered(tmp_path: Path) -> None:
    tree = random_tree(0, max_depth=2).eval()
    target = tmp_path / "export"
    export_tree(tree, target)
    with pytest.raises(DynrouteError, match="already holds an export"):
        export_tree(tree, target)
    export_tree(tree, target, force=True, policy=Policy("entropy", 0.5))
    assert read_manifest(target)["policy"]["name"] == "entropy"
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(DynrouteError, match="other files"):
        export_tree(tree, other, force=True)
    with pytest.raises(DynrouteError, match="bound to compare"):
        export_tree(tree, tmp_path / "oracle", policy=Policy("oracle"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "other"]  # no leftovers


# ---------------------------------------------------------------------- without torch


def run_python(code: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=cwd, timeout=120
    )


def test_the_runtime_runs_where_torch_cannot_be_imported(chain, images, tmp_path: Path) -> None:
    tree, folder, _ = chain
    np.save(tmp_path / "x.npy", images.numpy())
    code = NO_TORCH + (
        "import numpy as np\n"
        "import dynroute, dynroute.deploy\n"
        f"model = dynroute.deploy.load({str(folder)!r})\n"
        f"p = model.predict(np.load({str(tmp_path / 'x.npy')!r}))\n"
        f"np.savez({str(tmp_path / 'out.npz')!r}, logits=p.logits, exits=p.exits, macs=p.macs)\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    out = np.load(tmp_path / "out.npz")
    reference = predict_dense(tree, images, policy=Policy("confidence", 0.3))
    np.testing.assert_array_equal(out["exits"], reference.exits.numpy())
    np.testing.assert_allclose(out["logits"], reference.logits.numpy(), rtol=1e-4, atol=1e-4)
    # and nothing pulls torch in when it is installed either
    probe = run_python(
        "import sys, dynroute, dynroute.deploy, dynroute.delivery.predict, dynroute.data.files\n"
        "print('torch' in sys.modules)"
    )
    assert probe.stdout.strip() == "False", probe.stderr
