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

from dynroute.deploy import load
from dynroute.deploy.manifest import CHECKSUM_FILE, MANIFEST_FILE, checksum_lines
from dynroute.errors import DynrouteError
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


def _edited(export: Path, tmp_path: Path, edit) -> Path:
    """A copy of the export with its manifest edited and its SHA256SUMS recomputed (what a
    determined user or attacker would do)."""
    folder = Path(shutil.copytree(export, tmp_path / f"edit{len(list(tmp_path.iterdir()))}"))
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    edit(manifest)
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    names = [line.split("  ", 1)[1] for line in (folder / CHECKSUM_FILE).read_text().splitlines()]
    (folder / CHECKSUM_FILE).write_text(checksum_lines(folder, names))
    return folder


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
    folder = _edited(export, tmp_path, EDITS[name])
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
    names = [line.split("  ", 1)[1] for line in (swapped / CHECKSUM_FILE).read_text().splitlines()]
    (swapped / CHECKSUM_FILE).write_text(checksum_lines(swapped, names))
    with pytest.raises(DynrouteError, match="it is not this export's model"):
        load(swapped)


def test_checksums_that_are_not_utf8_are_one_line(export, tmp_path) -> None:
    folder = Path(shutil.copytree(export, tmp_path / "bytes"))
    (folder / CHECKSUM_FILE).write_bytes(b"\xff\xfe garbage")
    with pytest.raises(DynrouteError, match="not UTF-8"):
        load(folder)
    assert copy.deepcopy  # (the module's imports are all used)
