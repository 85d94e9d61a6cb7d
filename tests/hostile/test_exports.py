"""Exports against hostile folders and hand-edited manifests: ``--force`` replaces only a
dynroute export, and every field of a manifest is checked (types and bounds) on load, with
a one-line refusal, its checksums recomputed or not."""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import pytest

from dynroute.core.errors import DynrouteError
from dynroute.deploy import load
from dynroute.deploy.manifest import CHECKSUM_FILE, MANIFEST_FILE, checksum_lines
from helpers.delivery import make_export


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    return make_export(tmp_path_factory.mktemp("hostile-export") / "chain")


def test_force_replaces_only_a_dynroute_export(export, tmp_path) -> None:
    from dynroute.delivery.export import _check_target

    site = tmp_path / "site"
    site.mkdir()
    (site / "manifest.json").write_text(json.dumps({"name": "my web app"}))
    (site / "index.html").write_text("<html></html>")
    with pytest.raises(DynrouteError, match="not a dynroute export"):
        _check_target(site, force=True)
    assert (site / "index.html").exists()
    _check_target(export, force=True)  # a real export may be replaced


def test_force_never_deletes_a_users_files_beside_an_export(export, tmp_path) -> None:
    from dynroute.delivery.export import _check_target

    folder = Path(shutil.copytree(export, tmp_path / "chain"))
    (folder / "notes.txt").write_text("my notes")
    (folder / "results").mkdir()
    with pytest.raises(DynrouteError, match=r"files that are not the export's \(notes.txt, "):
        _check_target(folder, force=True)
    with pytest.raises(DynrouteError, match="already holds an export; pass `force`"):
        _check_target(tmp_path / "chain", force=False)
    assert (folder / "notes.txt").read_text() == "my notes"
    load(folder)


def test_export_out_refuses_what_it_must_not_replace(
    workspace, export, tmp_path, capsys, deadline
) -> None:
    """The folder it runs in (`--out .`), a link, the run itself or a folder holding it, a
    file, a folder whose manifest is a FIFO: one line each, before any work, nothing
    touched."""
    from helpers.hostile import refused

    run = workspace / "routed"
    here = Path(shutil.copytree(export, tmp_path / "here"))
    before = sorted(p.name for p in here.iterdir())
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(here)
        line = refused(capsys, "export", run, "--out", ".", "--force", "--check", "0")
        assert f"--out {here} is the current folder or holds it" in line
        line = refused(capsys, "export", run, "--out", "..", "--force", "--check", "0")
        assert f"--out {tmp_path} is the current folder or holds it" in line
    assert sorted(p.name for p in here.iterdir()) == before
    (tmp_path / "link").symlink_to(here)
    line = refused(capsys, "export", run, "--out", tmp_path / "link", "--force")
    assert f"is a link (to {here})" in line
    line = refused(capsys, "export", run, "--out", workspace, "--force")
    assert f"--out {workspace} holds the run {run}" in line
    (tmp_path / "file").write_text("a file")
    line = refused(capsys, "export", run, "--out", tmp_path / "file", "--force")
    assert "exists and is not a folder" in line
    line = refused(capsys, "export", run, "--out", "/", "--force")
    assert "--out / cannot be an export folder" in line
    fifo = tmp_path / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / MANIFEST_FILE)
    line = refused(capsys, "export", run, "--out", fifo, "--force")  # never opened: no hang
    assert "not a dynroute export" in line


def _edited(export: Path, tmp_path: Path, edit) -> Path:
    """A copy of the export with its manifest edited and its SHA256SUMS recomputed (what a
    determined user or attacker would do)."""
    folder = Path(shutil.copytree(export, tmp_path / f"edit{len(list(tmp_path.iterdir()))}"))
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    edit(manifest)
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    _rewrite_checksums(folder)
    return folder


def _rewrite_checksums(folder: Path) -> None:
    """``SHA256SUMS`` recomputed for the files it lists, as they are now."""
    names = [line.split("  ", 1)[1] for line in (folder / CHECKSUM_FILE).read_text().splitlines()]
    (folder / CHECKSUM_FILE).write_text(checksum_lines(folder, names))


def _set(path: str, value):
    def edit(manifest: dict) -> None:
        target, keys = manifest, path.split(".")
        for key in keys[:-1]:
            target = target[int(key)] if isinstance(target, list) else target[key]
        last = keys[-1]
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value

    return edit


EDITS = {
    "a head without its file": lambda m: m["heads"][0].pop("file"),
    "a node that is not an object": _set("nodes.1", "node"),
    "a parent given as a string": _set("nodes.1.parent", "0"),
    "NaN path MACs": _set("costs.path_macs.threshold.1", float("nan")),
    "huge path MACs": _set("costs.path_macs.threshold.1", 10**30),
    "negative node MACs": _set("nodes.1.macs", -5),
    "fewer class names": lambda m: m["class_names"].pop(),
    "an empty input shape": _set("model.input_shape", [3, 0, 0]),
    "a negative input shape": _set("model.input_shape", [3, -5, -5]),
    "a giant input shape": _set("model.input_shape", [3, 20000, 20000]),
    "a model file outside the folder": _set("heads.0.file", "../../etc/passwd.onnx"),
    "reads that are not numbers": _set("segments.0.reads", ["x"]),
    "a k_cpt of infinity": _set("k_cpt", 1e300),
    "a policy of another kind": _set("policy", {"name": "oracle"}),
}


@pytest.mark.parametrize("name", list(EDITS))
def test_a_hand_edited_manifest_is_refused_in_one_line(export, tmp_path, name) -> None:
    _refused_in_one_line(_edited(export, tmp_path, EDITS[name]))


def _refused_in_one_line(folder: Path) -> None:
    """Loading ``folder`` fails with one line that names it."""
    with pytest.raises(DynrouteError) as refused:
        load(folder)
    message = str(refused.value)
    assert "\n" not in message and str(folder) in message


def test_a_wrong_input_shape_for_its_models_is_refused(export, tmp_path) -> None:
    """A consistent manifest whose input shape its models do not read (64 instead of 16)."""
    folder = _edited(export, tmp_path, _set("model.input_shape", [3, 64, 64]))
    with pytest.raises(DynrouteError, match=r"reads inputs of shape \[3, 16, 16\]"):
        load(folder)


def test_a_fifo_or_a_foreign_model_listed_as_a_segment_is_refused(
    export, tmp_path, deadline
) -> None:
    manifest = json.loads((export / MANIFEST_FILE).read_text())
    folder = Path(shutil.copytree(export, tmp_path / "fifo"))
    segment = manifest["segments"][1]["file"]
    (folder / segment).unlink()
    os.mkfifo(folder / segment)
    with pytest.raises(DynrouteError, match="named pipe"):
        load(folder)
    swapped = Path(shutil.copytree(export, tmp_path / "swapped"))
    first, second = manifest["segments"][0]["file"], manifest["heads"][0]["file"]
    shutil.copy(swapped / second, swapped / first)  # another valid ONNX model in its place
    _rewrite_checksums(swapped)
    with pytest.raises(DynrouteError, match="is not the model its manifest entry was exported"):
        load(swapped)  # the manifest binds each file's SHA-256
    with pytest.raises(DynrouteError, match="not (this export's model|the model its manifest)"):
        load(swapped, verify=False)  # unhashed, its signature still gives it away


def test_checksums_that_are_not_utf8_are_one_line(export, tmp_path) -> None:
    folder = Path(shutil.copytree(export, tmp_path / "bytes"))
    (folder / CHECKSUM_FILE).write_bytes(b"\xff\xfe garbage")
    with pytest.raises(DynrouteError, match="not UTF-8"):
        load(folder)
    assert copy.deepcopy  # (the module's imports are all used)


# ------------------------------------------------------------------ checked promises
def _guarantee(**changes) -> dict:
    """A guarantee the exported point (confidence 0.4) could hold: 60 errors in 1000 test
    examples certify accuracy >= 0.9 at delta 0.1."""
    from dynroute.core.guarantee import METHOD_BINARY, binary_p_value, lower_bound

    n, errors = 1000, 60
    data = {
        "target": "accuracy",
        "level": 0.9,
        "delta": 0.1,
        "method": METHOD_BINARY,
        "n": n,
        "fit_examples": n,
        "bound": lower_bound(n - errors, n, 0.1),
        "p_value": binary_p_value(errors, n, 0.1),
        "promise": "accuracy >= 0.9",
        "policy": {"name": "confidence", "threshold": 0.4},
        "k_cpt": None,
    }
    return {**data, **changes}


def _with_guarantee(**changes):
    return _set("guarantee", _guarantee(**changes))


FORGED_GUARANTEES = {
    "accuracy 2.0": _with_guarantee(level=2.0, bound=2.0),
    "disagreement -1": _with_guarantee(target="disagreement", level=-1.0, bound=-1.0),
    "a level given as text": _with_guarantee(level="0.9"),
    "a level given as true": _with_guarantee(level=True),
    "n = 1 with p = 0.01": _with_guarantee(n=1, p_value=0.01),
    "a bound that n does not give": _with_guarantee(bound=0.99),
    "a p-value that the bound does not give": _with_guarantee(p_value=1e-3),
    "n as text": _with_guarantee(n="1000"),
    "n = 0": _with_guarantee(n=0),
    "delta 0": _with_guarantee(delta=0.0),
    "mean MACs of 1,000 (the cheapest exit costs more)": _with_guarantee(
        target="mean_macs", level=1000.0, bound=900.0, p_value=0.01
    ),
    "a guarantee of another threshold": _with_guarantee(
        policy={"name": "confidence", "threshold": 0.9}
    ),
    "a guarantee that is a list": _set("guarantee", [1, 2]),
    "certification statistics that are text": _with_guarantee(certification={"chance": "all"}),
}


@pytest.mark.parametrize("name", list(FORGED_GUARANTEES))
def test_a_forged_guarantee_is_refused_in_one_line(export, tmp_path, name) -> None:
    folder = _edited(export, tmp_path, FORGED_GUARANTEES[name])
    with pytest.raises(DynrouteError) as refused:
        load(folder)
    message = str(refused.value)
    assert "\n" not in message and f"{folder / MANIFEST_FILE}: its guarantee" in message


@pytest.mark.parametrize("promise", [12345, "guaranteed: FORGED", None])
def test_the_promise_is_written_from_the_numbers_never_from_the_file(
    export, tmp_path, promise
) -> None:
    from dynroute.delivery.predict import open_predictor

    changes = {"promise": promise} if promise is not None else {}
    edit = _with_guarantee(**changes)
    if promise is None:  # a guarantee without a promise

        def edit(manifest: dict) -> None:
            manifest["guarantee"] = _guarantee()
            del manifest["guarantee"]["promise"]

    folder = _edited(export, tmp_path, edit)
    guarantee = load(folder).manifest["guarantee"]
    assert guarantee["promise"] == (
        "accuracy >= 0.9 on new data like the calibration split; what is bounded: over random "
        "calibration samples, the chance that this procedure certifies a point that misses it "
        "is at most 0.1"
    )
    described = open_predictor(folder).describe()
    assert f"guaranteed: {guarantee['promise']}" in described
    assert "FORGED" not in described and "12345" not in described


def _points(*points: tuple[float, float]):
    def edit(manifest: dict) -> None:
        manifest["operating_points"] = {
            "points": [
                {"policy": {"name": "confidence", "threshold": t}, "mean_macs": m, "accuracy": 0.5}
                for t, m in points
            ]
        }

    return edit


def _cheapest_and_dearest(export: Path) -> tuple[int, int]:
    model = load(export)
    macs = model.path_macs().values()
    return min(macs), max(macs)


def test_operating_points_are_checked_against_the_exits_costs(export, tmp_path) -> None:
    """Points whose mean MACs no exit mix can spend (1 MAC) are refused; honest ones let
    ``--target-macs`` choose, and report the point's own cost."""
    cheapest, dearest = _cheapest_and_dearest(export)
    forged = _edited(export, tmp_path, _points((0.3, 1.0), (0.9, float(dearest))))
    with pytest.raises(DynrouteError, match="its operating points: an operating point spends"):
        load(forged)
    honest = _edited(export, tmp_path, _points((0.3, float(cheapest)), (0.9, float(dearest))))
    model, point = load(honest).for_budget(2.0 * cheapest)
    assert point["mean_macs"] == cheapest and model.policy["threshold"] == 0.3


COST_EDITS = {
    "every path's MACs set to 1": lambda m: m["costs"]["path_macs"].update(
        {name: [1] * len(m["nodes"]) for name in m["costs"]["path_macs"]}
    ),
    "one path's MACs changed": lambda m: m["costs"]["path_macs"]["learned"].__setitem__(
        -1, m["costs"]["path_macs"]["learned"][-1] + 1
    ),
    "a node's MACs that its total disagrees with": lambda m: m["nodes"][1].__setitem__(
        "macs", m["nodes"][1]["macs"] + 7
    ),
    "node MACs and path MACs changed together": lambda m: (
        m["nodes"][0].__setitem__("macs", 1),
        m["costs"]["node_macs"].__setitem__(0, 1 + m["nodes"][0]["router_macs"]),
    ),
    "a segment's MACs": lambda m: m["segments"][0].__setitem__("macs", 1),
    "a head's MACs": lambda m: m["heads"][0].__setitem__("macs", 1),
    "a node without its MACs": lambda m: m["nodes"][2].pop("macs"),
    "dense set to true": _set("dense", True),
    "a router's k_cpt input given as text": _set("routers.0.k_cpt_input", "yes"),
    "a model entry without its SHA-256": lambda m: m["heads"][1].pop("sha256"),
    "two heads on one file": lambda m: m["heads"][1].__setitem__("file", m["heads"][0]["file"]),
    "a policy name that is a list": _set("policy", {"name": ["confidence"]}),
    "weights that are a number": _set(
        "policy",
        {
            "name": "confidence",
            "threshold": 0.4,
            "answers": "calibrated",
            "weights": 5,
            "biases": 5,
        },
    ),  # fmt: skip
}


@pytest.mark.parametrize("name", list(COST_EDITS))
def test_costs_and_entries_that_disagree_are_refused_in_one_line(export, tmp_path, name) -> None:
    _refused_in_one_line(_edited(export, tmp_path, COST_EDITS[name]))


def test_two_exits_swapped_are_refused(export, tmp_path) -> None:
    """Files exchanged between two exits (and SHA256SUMS rewritten to match): every entry
    binds its file's SHA-256 inside the manifest, so the swap is seen."""
    folder = Path(shutil.copytree(export, tmp_path / "swapped-exits"))
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    first, second = manifest["heads"][0]["file"], manifest["heads"][1]["file"]
    a, b = (folder / first).read_bytes(), (folder / second).read_bytes()
    (folder / first).write_bytes(b)
    (folder / second).write_bytes(a)
    _rewrite_checksums(folder)
    with pytest.raises(DynrouteError, match=f"{first} is not the model its manifest entry"):
        load(folder)


def test_a_manifest_nested_too_deeply_is_one_line(export, tmp_path) -> None:
    folder = Path(shutil.copytree(export, tmp_path / "deep"))
    (folder / MANIFEST_FILE).write_text("[" * 100_000 + "]" * 100_000)
    _rewrite_checksums(folder)
    with pytest.raises(DynrouteError, match="nested too deeply"):
        load(folder)
