"""The export format: a folder of ONNX files, ``manifest.json`` and ``SHA256SUMS``.

``dynroute export`` (``dynroute.delivery.export``) writes it; ``dynroute.deploy`` reads it
without torch. This module is the one place that knows the file names, the manifest's
fields and how the files are checked, so the writer and the reader cannot drift apart.

An export folder holds:

- one ONNX model per *segment* (the chain of transforms from the root or a junction's sink
  down to the next junction or exit), per exit head and per router, batch norm folded, with
  a dynamic batch axis;
- optionally ``dense.onnx``: the whole tree as one graph that computes every exit (the
  baseline an early-exit runtime has to beat);
- ``manifest.json``: the tree (nodes, parents, sinks), what every model reads and how many
  multiply-accumulates (MACs) it costs, the MACs of every root-to-exit path under each
  cost model, the routing policy with its calibrated parameters, the k_cpt input, class
  names, the preprocessing of the training images, and the SHA-256 of every model file;
- ``SHA256SUMS``: the SHA-256 of every file, the manifest included, in the format of
  ``sha256sum -c``.

A signal between models is a list of float32 arrays with the batch on axis 0 (a node's
output is one tensor, or several for the multi-scale columns' fine-to-coarse maps); maps
cross between models channels-last, (N, H, W, C), while the network's input stays as the
caller gives it, (N, C, H, W). A
model's inputs are named ``in0``, ``in1``, ... after the parts of the signal it reads
(``reads`` lists their positions; parts it does not read are not inputs), plus
``k_feature`` ((N, 1): k_cpt x ``k_cpt_input_scale``) for the routers of a dynamic-k_cpt
net; its outputs are ``out0``, ``out1``, ...
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

from dynroute.decisions import Decider, Shape
from dynroute.errors import DynrouteError
from dynroute.guarantee import Guarantee
from dynroute.policy import Policy

FORMAT = "dynroute-export"
#: 2: policies as a rule on raw, calibrated or combined answers (``dynroute.policy``).
FORMAT_VERSION = 2
MANIFEST_FILE = "manifest.json"
CHECKSUM_FILE = "SHA256SUMS"
DENSE_FILE = "dense.onnx"
#: ONNX opset of the exported models: onnxruntime's CPU provider runs it from 1.14 on.
OPSET = 17
#: Input and output names of every model.
K_FEATURE = "k_feature"


def input_name(part: int) -> str:
    return f"in{part}"


def output_name(part: int) -> str:
    return f"out{part}"


#: Base cost models of ``costs.path_macs`` (``dynroute.nn.macs.TreeCosts.base_path_macs``);
#: a policy's own paths add what deciding costs (``dynroute.decisions.path_macs``).
COST_MODELS = ("learned", "threshold", "oracle")

NODE_KINDS = ("node", "junction", "leaf")


def shape(manifest: dict[str, Any]) -> Shape:
    """The exported tree's structure."""
    nodes = manifest["nodes"]
    return Shape(tuple(n["parent"] for n in nodes), tuple(tuple(n["children"]) for n in nodes))


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checksum_lines(folder: Path, names: list[str]) -> str:
    """``SHA256SUMS`` text for ``names`` in ``folder`` (``sha256sum -c`` reads it)."""
    return "".join(f"{sha256_file(folder / name)}  {name}\n" for name in sorted(names))


def _read_checksums(folder: Path) -> dict[str, str]:
    path = folder / CHECKSUM_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DynrouteError(
            f"{folder} is not a dynroute export: no readable {CHECKSUM_FILE} ({exc})"
        ) from None
    sums = {}
    for number, line in enumerate(text.splitlines(), start=1):
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name or any(c not in "0123456789abcdef" for c in digest):
            raise DynrouteError(f"{path}: line {number} is not '<sha256>  <file>'")
        sums[name] = digest
    return sums


def verify_files(folder: Path) -> dict[str, str]:
    """Check every file ``SHA256SUMS`` lists (the manifest among them) against its digest.

    A missing, changed or unlisted model file is a ``DynrouteError`` naming it: an export is
    used whole or not at all.
    """
    sums = _read_checksums(folder)
    if MANIFEST_FILE not in sums:
        raise DynrouteError(f"{folder / CHECKSUM_FILE} does not list {MANIFEST_FILE}")
    for name, digest in sums.items():
        path = folder / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise DynrouteError(f"{folder / CHECKSUM_FILE} names a file outside the export: {name}")
        try:
            actual = sha256_file(path)
        except OSError as exc:
            raise DynrouteError(f"export {folder}: cannot read {name} ({exc})") from None
        if actual != digest:
            raise DynrouteError(
                f"export {folder}: {name} does not match its SHA-256 in {CHECKSUM_FILE} "
                "(changed or damaged since the export); export the run again"
            )
    return sums


def is_export_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a dynroute export (its manifest names the format), so that
    replacing it can never delete someone else's files."""
    try:
        data = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT


def read_manifest(folder: str | os.PathLike[str], verify: bool = True) -> dict[str, Any]:
    """The manifest of an export folder, its files checked first (``verify``) and its
    structure validated."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DynrouteError(f"no such export folder: {folder}")
    if not (folder / MANIFEST_FILE).exists():
        raise DynrouteError(f"{folder} is not a dynroute export: no {MANIFEST_FILE}")
    sums = verify_files(folder) if verify else None
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DynrouteError(f"{folder / MANIFEST_FILE} is unreadable ({exc})") from None
    validate(manifest, folder)
    if sums is not None:
        missing = sorted(set(model_files(manifest)) - set(sums))
        if missing:
            raise DynrouteError(f"export {folder}: {CHECKSUM_FILE} does not list {missing[0]}")
    return manifest


def model_files(manifest: dict[str, Any]) -> list[str]:
    """Every ONNX file the manifest refers to."""
    files = [entry["file"] for key in ("segments", "heads", "routers") for entry in manifest[key]]
    if manifest.get("dense"):
        files.append(manifest["dense"]["file"])
    return files


def _fail(folder: Path | None, what: str) -> DynrouteError:
    where = f"{folder / MANIFEST_FILE}" if folder else "manifest"
    return DynrouteError(f"{where}: {what}")


def validate(manifest: Any, folder: Path | None = None) -> None:
    """Refuse a manifest of another format or version, or one whose tree does not hold
    together (a damaged or hand-edited file would otherwise route examples nowhere)."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _fail(folder, f"not a {FORMAT} manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise _fail(
            folder,
            f"format version {manifest.get('version')!r}; this dynroute reads version "
            f"{FORMAT_VERSION}: export the run again with this version",
        )
    required = ("model", "nodes", "segments", "heads", "routers", "costs", "policy", "class_names")
    for key in required:
        if key not in manifest:
            raise _fail(folder, f"no {key!r} entry")
    nodes = manifest["nodes"]
    count = len(nodes)
    if not count:
        raise _fail(folder, "the tree has no nodes")
    for index, node in enumerate(nodes):
        parent, children = node.get("parent"), node.get("children")
        if node.get("kind") not in NODE_KINDS or not isinstance(children, list):
            raise _fail(folder, f"node {index} is malformed")
        if (index == 0) != (parent == -1) or not -1 <= parent < index:
            raise _fail(folder, f"node {index} has parent {parent!r}: nodes must be in pre-order")
        if any(not isinstance(c, int) or not index < c < count for c in children):
            raise _fail(folder, f"node {index} has sinks outside the tree")
        expected = "leaf" if not children else "junction" if len(children) >= 2 else "node"
        if node["kind"] != expected:
            raise _fail(folder, f"node {index} is a {node['kind']} with {len(children)} sinks")
    leaves = [i for i, node in enumerate(nodes) if node["kind"] == "leaf"]
    junctions = [i for i, node in enumerate(nodes) if node["kind"] == "junction"]
    if [h.get("leaf") for h in manifest["heads"]] != leaves:
        raise _fail(folder, "needs one exit head per leaf, in pre-order")
    if [r.get("junction") for r in manifest["routers"]] != junctions:
        raise _fail(folder, "needs one router per junction, in pre-order")
    classes = manifest["model"].get("num_classes")
    if not isinstance(classes, int) or len(manifest["class_names"]) != classes:
        raise _fail(folder, "class names do not match the number of classes")
    path_macs = manifest["costs"].get("path_macs", {})
    if any(len(path_macs.get(model, ())) != count for model in COST_MODELS):
        raise _fail(folder, "needs the path MACs of every node under every cost model")
    try:
        check_policy(manifest["policy"], shape(manifest), classes)
    except DynrouteError as exc:
        raise _fail(folder, f"its policy: {exc}") from None
    if manifest.get("guarantee") is not None:
        try:
            check_guarantee(manifest["guarantee"], manifest["policy"], manifest.get("k_cpt"))
        except DynrouteError as exc:
            raise _fail(folder, f"its guarantee: {exc}") from None
    if manifest.get("operating_points") is not None:
        try:
            for point in operating_points(manifest):
                check_policy(point["policy"], shape(manifest), classes)
        except DynrouteError as exc:
            raise _fail(folder, f"its operating points: {exc}") from None


def operating_points(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The operating points the export was measured at on held-out data (``dynroute export``
    stores them when it can read the run's validation split), each with its whole policy:
    fitted answers and scheduler models are shared by the points of one policy, stored once
    (``shared``). Empty if none."""
    table = manifest.get("operating_points")
    if table is None:
        return []
    if not isinstance(table, dict) or not isinstance(table.get("points"), list):
        raise DynrouteError("`operating_points` must hold a list of `points`")
    shared = table.get("shared", {})
    if not isinstance(shared, dict):
        raise DynrouteError("`operating_points.shared` must be an object")
    out = []
    for point in table["points"]:
        if not isinstance(point, dict) or not isinstance(point.get("policy"), dict):
            raise DynrouteError("an operating point needs a `policy` object")
        macs, accuracy = point.get("mean_macs"), point.get("accuracy")
        if not (_number(macs) and macs > 0 and _in_unit(accuracy)):
            raise DynrouteError("an operating point needs `mean_macs` > 0 and `accuracy` in [0, 1]")
        policy = dict(point["policy"])
        refers = policy.pop("shared", None)
        if refers is not None:
            if refers not in shared or not isinstance(shared[refers], dict):
                raise DynrouteError(f"an operating point refers to unknown shared data {refers!r}")
            policy.update(shared[refers])
        out.append({**point, "policy": policy})
    return out


def check_guarantee(guarantee: Any, policy: Any, k_cpt: Any) -> dict[str, Any]:
    """A guarantee as plain data (``dynroute.policies.guarantees``), refused unless it is
    consistent and certifies exactly the exported operating point."""
    checked = Guarantee.from_dict(guarantee)
    certified = guarantee.get("policy")
    if certified is None or Policy.from_dict(certified) != Policy.from_dict(policy):
        raise DynrouteError("it certifies another policy than the exported one")
    if certified.get("scheduler") != policy.get("scheduler") or guarantee.get("k_cpt") != k_cpt:
        raise DynrouteError("it certifies another operating point than the exported one")
    return {**guarantee, **checked.to_dict()}


def check_policy(policy: Any, tree: Shape, classes: int) -> Policy:
    """A deployable policy from plain data (``dynroute.policy.Policy.to_dict``), checked
    against the exported tree's exits and classes; returns it."""
    chosen = Policy.from_dict(policy)
    if not chosen.deployable:
        raise DynrouteError(f"the {chosen.name} policy is a bound to compare with; it cannot run")
    Decider(chosen, tree, classes)  # checks every parameter against the tree
    return chosen


def _in_unit(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
