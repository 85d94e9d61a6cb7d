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
  names, the preprocessing of the training images, and in each model's entry the SHA-256
  of its file (``bind_models``), which binds the file to its place in the tree;
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
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynroute.core import checks, decisions
from dynroute.core.decisions import Decider, Shape
from dynroute.core.errors import DynrouteError
from dynroute.core.guarantee import MALFORMED, certified, read_policy
from dynroute.core.policy import Policy
from dynroute.io import gate

FORMAT = "dynroute-export"
#: 2: policies as a rule on raw, calibrated or combined answers (``dynroute.core.policy``);
#: 3: every model entry binds its file's SHA-256, every node its MACs.
FORMAT_VERSION = 3
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
#: a policy's own paths add what deciding costs (``dynroute.core.decisions.path_macs``).
COST_MODELS = ("learned", "threshold", "oracle")

NODE_KINDS = ("node", "junction", "leaf")


def shape(manifest: dict[str, Any]) -> Shape:
    """The exported tree's structure."""
    nodes = manifest["nodes"]
    return Shape(
        tuple(n["parent"] for n in nodes),
        tuple(tuple(n["children"]) for n in nodes),
        float(manifest["model"].get("boost", 0.0)),
    )


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a regular file (a FIFO or device named in a manifest is refused by
    ``dynroute.io.gate``, never opened)."""
    digest = hashlib.sha256()
    with gate.open_regular(Path(path)) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checksum_lines(folder: Path, names: list[str]) -> str:
    """``SHA256SUMS`` text for ``names`` in ``folder`` (``sha256sum -c`` reads it)."""
    return "".join(f"{sha256_file(folder / name)}  {name}\n" for name in sorted(names))


def _read_checksums(folder: Path) -> dict[str, str]:
    path = folder / CHECKSUM_FILE
    if not os.path.lexists(path):
        raise DynrouteError(f"{folder} is not a dynroute export: no {CHECKSUM_FILE}")
    text = gate.read_json_bytes(path)  # a regular file of bounded size, UTF-8
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
        if not os.path.lexists(path):
            raise DynrouteError(f"export {folder}: cannot read {name} (it is missing)")
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
    """The manifest of an export folder, its files checked first (``verify``: each against
    ``SHA256SUMS`` and against the digest its manifest entry binds it to) and its structure,
    costs, operating points and guarantee validated. The guarantee comes back rewritten from
    its checked numbers (``dynroute.core.guarantee.certified``), never as the file has it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DynrouteError(f"no such export folder: {folder}")
    if not (folder / MANIFEST_FILE).exists():
        raise DynrouteError(f"{folder} is not a dynroute export: no {MANIFEST_FILE}")
    sums = verify_files(folder) if verify else None
    try:
        manifest = json.loads(gate.read_json_bytes(folder / MANIFEST_FILE))
    except ValueError as exc:
        raise DynrouteError(f"{folder / MANIFEST_FILE} is unreadable ({exc})") from None
    except RecursionError:
        raise DynrouteError(f"{folder / MANIFEST_FILE} is nested too deeply to read") from None
    guarantee = validate(manifest, folder)
    if sums is not None:
        for entry in model_entries(manifest):
            name = entry["file"]
            if name not in sums:
                raise DynrouteError(f"export {folder}: {CHECKSUM_FILE} does not list {name}")
            if sums[name] != entry["sha256"]:
                raise DynrouteError(
                    f"export {folder}: {name} is not the model its manifest entry was exported "
                    "with (another SHA-256): export the run again"
                )
    if guarantee is not None:
        manifest["guarantee"] = guarantee
    return manifest


#: What the models of an export compute in (``dynroute export --int8``: quantized models).
PRECISIONS = ("float32", "int8")


def bind_models(manifest: dict[str, Any], files: dict[str, bytes]) -> None:
    """Record in each model entry of ``manifest`` the SHA-256 of its file's bytes
    (``files``): the manifest, itself listed in ``SHA256SUMS``, then binds every model to
    its place in the tree, so two files swapped (and ``SHA256SUMS`` rewritten) are refused."""
    for entry in model_entries(manifest):
        entry["sha256"] = hashlib.sha256(files[entry["file"]]).hexdigest()


def model_entries(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Every model entry of the manifest (segments, heads, routers, the dense graph)."""
    entries = [entry for key in ("segments", "heads", "routers") for entry in manifest[key]]
    if manifest.get("dense"):
        entries.append(manifest["dense"])
    return entries


def model_files(manifest: dict[str, Any]) -> list[str]:
    """Every ONNX file the manifest refers to."""
    return [entry["file"] for entry in model_entries(manifest)]


def _fail(folder: Path | None, what: str) -> DynrouteError:
    where = f"{folder / MANIFEST_FILE}" if folder else "manifest"
    return DynrouteError(f"{where}: {what}")


#: Bounds of a manifest's numbers: a tree's nodes, an image's side, a path's MACs.
MAX_NODES = 100_000
MAX_IMAGE_SIDE = 1024
MAX_MACS = checks.MAX_MACS
MAX_CLASSES = 100_000
#: How far a mean of per-example MACs may stray outside its exits' costs (float rounding).
MACS_TOLERANCE = 1e-9


class _Schema:
    """Checks of one manifest, each failure one line naming the field."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder

    def fail(self, what: str) -> DynrouteError:
        return _fail(self.folder, what)

    def object(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(f"{where} must be an object")
        return value

    def array(self, value: Any, where: str, limit: int = MAX_NODES) -> list[Any]:
        if not isinstance(value, list) or len(value) > limit:
            raise self.fail(f"{where} must be a list (of at most {limit} entries)")
        return value

    def integer(self, value: Any, where: str, low: int, high: int) -> int:
        if not checks.is_integer(value) or not low <= value <= high:
            raise self.fail(f"{where} must be an integer in {low}..{high}, got {value!r}")
        return value

    def flag(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(f"{where} must be true or false, got {value!r}")
        return value

    def text(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value or len(value) > 4096:
            raise self.fail(f"{where} must be a non-empty string")
        return value

    def file(self, value: Any, where: str) -> str:
        name = self.text(value, where)
        if "/" in name or "\\" in name or name.startswith(".") or not name.endswith(".onnx"):
            raise self.fail(f"{where} must name an .onnx file in the export folder, got {name!r}")
        return name

    def reads(self, value: Any, where: str) -> list[int]:
        parts = self.array(value, where, 64)
        return [self.integer(part, f"{where}[{k}]", 0, 63) for k, part in enumerate(parts)]

    def model(self, entry: Any, where: str) -> dict[str, Any]:
        """A model entry: its file, the SHA-256 that binds it, what it reads and costs."""
        entry = self.object(entry, where)
        self.file(entry.get("file"), f"{where}.file")
        digest = entry.get("sha256")
        if not isinstance(digest, str) or len(digest) != 64 or digest.strip("0123456789abcdef"):
            raise self.fail(f"{where}.sha256 must be the SHA-256 of its file (64 hex digits)")
        self.reads(entry.get("reads"), f"{where}.reads")
        self.integer(entry.get("macs"), f"{where}.macs", 0, MAX_MACS)
        self.flag(entry.get("k_cpt_input", False), f"{where}.k_cpt_input")
        return entry


def validate(manifest: Any, folder: Path | None = None) -> dict[str, Any] | None:
    """Refuse a manifest of another format or version, or one whose fields are missing, of
    the wrong type or out of bounds, whose tree does not hold together, whose costs disagree
    with one another (a path's MACs are recomputed from its nodes', a node's from its
    models'), or whose operating points or guarantee claim what its exits cannot cost: a
    damaged or hand-edited file is one line naming what is wrong, never a traceback, a run
    that routes examples nowhere (or resizes them to 20000 x 20000) or a cost it does not
    have. Returns the guarantee as checked (``_checked_guarantee``), None without one."""
    check = _Schema(folder)
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
    classes = _check_model(check, manifest)
    nodes = _check_nodes(check, manifest["nodes"])
    _check_models(check, manifest, nodes)
    base = _check_costs(check, manifest, nodes)
    if manifest.get("k_cpt") is not None and not (
        checks.is_number(manifest["k_cpt"]) and 0 <= manifest["k_cpt"] <= 1
    ):
        raise check.fail("k_cpt must be a number in [0, 1]")
    tree = shape(manifest)
    try:
        check_policy(manifest["policy"], tree, classes)
    except DynrouteError as exc:
        raise _fail(folder, f"its policy: {exc}") from None
    guarantee = None
    if manifest.get("guarantee") is not None:
        guarantee = _checked_guarantee(manifest, folder)
    if manifest.get("operating_points") is not None:
        try:
            for point in operating_points(manifest):
                chosen = check_policy(point["policy"], tree, classes)
                cheapest, dearest = exit_costs(chosen, tree, classes, base)
                _within_costs(point["mean_macs"], cheapest, dearest, "an operating point")
                checks.k_cpt(point.get("k_cpt"))
        except DynrouteError as exc:
            raise _fail(folder, f"its operating points: {exc}") from None
    return guarantee


def _check_model(check: _Schema, manifest: dict[str, Any]) -> int:
    """The network's description and class names; returns the number of classes."""
    model = check.object(manifest["model"], "model")
    classes = check.integer(model.get("num_classes"), "model.num_classes", 2, MAX_CLASSES)
    shape_ = check.array(model.get("input_shape"), "model.input_shape", 4)
    if not shape_ or any(not checks.is_integer(v) or not 1 <= v <= MAX_IMAGE_SIDE for v in shape_):
        raise check.fail(
            f"model.input_shape must hold sizes in 1..{MAX_IMAGE_SIDE}, got {shape_!r}"
        )
    if len(shape_) == 3 and shape_[0] == 3 and shape_[1] != shape_[2]:
        raise check.fail(f"model.input_shape {shape_!r} is not a square image")
    check.flag(model.get("dynamic_k_cpt"), "model.dynamic_k_cpt")
    boost = model.get("boost", 0.0)
    if not checks.is_finite_number(boost) or not 0 <= boost <= 1:
        raise check.fail("model.boost must be a number in [0, 1]")
    if model.get("precision", "float32") not in PRECISIONS:
        raise check.fail(f"model.precision must be one of {', '.join(PRECISIONS)}")
    scale = model.get("k_cpt_input_scale", 1e7)
    if not checks.is_finite_number(scale) or not 0 < scale < 1e15:
        raise check.fail("model.k_cpt_input_scale must be a positive number")
    names = check.array(manifest["class_names"], "class_names", MAX_CLASSES)
    if len(names) != classes or not all(isinstance(n, str) for n in names):
        raise check.fail("class names do not match the number of classes")
    return classes


def _check_nodes(check: _Schema, value: Any) -> list[dict[str, Any]]:
    """The tree: pre-order nodes whose parents and sinks agree, each with its MACs."""
    nodes = check.array(value, "nodes")
    count = len(nodes)
    if not count:
        raise check.fail("the tree has no nodes")
    for index, node in enumerate(nodes):
        node = check.object(node, f"node {index}")
        check.text(node.get("name"), f"node {index}'s name")
        parent = node.get("parent")
        children = node.get("children")
        if node.get("kind") not in NODE_KINDS or not isinstance(children, list):
            raise check.fail(f"node {index} is malformed")
        if not checks.is_integer(parent):
            raise check.fail(f"node {index} has parent {parent!r}: nodes must be in pre-order")
        if (index == 0) != (parent == -1) or not -1 <= parent < index:
            raise check.fail(f"node {index} has parent {parent!r}: nodes must be in pre-order")
        if any(not checks.is_integer(c) or not index < c < count for c in children):
            raise check.fail(f"node {index} has sinks outside the tree")
        if any(nodes[c].get("parent") != index for c in children if isinstance(nodes[c], dict)):
            raise check.fail(f"node {index}'s sinks do not name it as their parent")
        expected = "leaf" if not children else "junction" if len(children) >= 2 else "node"
        if node["kind"] != expected:
            raise check.fail(f"node {index} is a {node['kind']} with {len(children)} sinks")
        for key in ("macs", "router_macs"):
            check.integer(node.get(key), f"node {index}'s {key}", 0, MAX_MACS)
    return nodes


def _check_models(check: _Schema, manifest: dict[str, Any], nodes: list[dict[str, Any]]) -> None:
    """The model entries: one segment chain from the root and every inner sink, a head per
    exit, a router per junction, each file once, each entry's MACs its nodes'."""
    count = len(nodes)
    leaves = [i for i, node in enumerate(nodes) if node["kind"] == "leaf"]
    junctions = [i for i, node in enumerate(nodes) if node["kind"] == "junction"]
    for key in ("segments", "heads", "routers"):
        for k, entry in enumerate(check.array(manifest[key], key)):
            check.model(entry, f"{key}[{k}]")
    if [h.get("leaf") for h in manifest["heads"]] != leaves:
        raise check.fail("needs one exit head per leaf, in pre-order")
    if [r.get("junction") for r in manifest["routers"]] != junctions:
        raise check.fail("needs one router per junction, in pre-order")
    starts: set[int] = set()
    for k, segment in enumerate(manifest["segments"]):
        chain = check.array(segment.get("nodes"), f"segments[{k}].nodes")
        if not chain or any(
            not checks.is_integer(i) or not 0 <= i < count or nodes[i]["kind"] == "leaf"
            for i in chain
        ):
            raise check.fail(f"segments[{k}].nodes must name inner nodes of the tree")
        check.integer(segment.get("outputs"), f"segments[{k}].outputs", 1, 64)
        if segment["macs"] != sum(nodes[i]["macs"] for i in chain):
            raise check.fail(f"segments[{k}].macs is not the MACs of its nodes")
        starts.add(chain[0])
    needed = {
        0,
        *(c for j in junctions for c in nodes[j]["children"] if nodes[c]["kind"] != "leaf"),
    }
    if not needed <= starts:
        raise check.fail("needs a segment starting at the root and at every inner sink")
    for k, head in enumerate(manifest["heads"]):
        if head["macs"] != nodes[head["leaf"]]["macs"]:
            raise check.fail(f"heads[{k}].macs is not the MACs of its exit")
    for k, router in enumerate(manifest["routers"]):
        if router["macs"] != nodes[router["junction"]]["router_macs"]:
            raise check.fail(f"routers[{k}].macs is not the MACs of its junction's router")
    dense = manifest.get("dense")
    if dense is not None:
        check.model(dense, "dense")
        outputs = check.array(dense.get("outputs"), "dense.outputs")
        if len(outputs) != len(leaves) + len(junctions):
            raise check.fail("dense.outputs must name every exit's and router's output")
        if dense["macs"] != sum(node["macs"] + node["router_macs"] for node in nodes):
            raise check.fail("dense.macs is not the MACs of the whole tree")
    files = [entry["file"] for entry in model_entries(manifest)]
    if len(set(files)) != len(files):
        raise check.fail("names one model file for two models")


def _check_costs(
    check: _Schema, manifest: dict[str, Any], nodes: list[dict[str, Any]]
) -> dict[str, list[int]]:
    """``costs`` as the nodes' MACs say they are: each node's total, and each path's under
    every cost model, recomputed (``dynroute.core.decisions.base_path_macs``). Returns the path
    MACs."""
    costs = check.object(manifest["costs"], "costs")
    count = len(nodes)
    node_macs = costs.get("node_macs")
    if not isinstance(node_macs, list) or node_macs != [
        node["macs"] + node["router_macs"] for node in nodes
    ]:
        raise check.fail("costs.node_macs must be each node's MACs and its router's")
    path_macs = check.object(costs.get("path_macs"), "costs.path_macs")
    transform = [node["macs"] for node in nodes]
    router = [node["router_macs"] for node in nodes]
    recomputed = decisions.base_path_macs(shape(manifest), transform, router)
    for name in COST_MODELS:
        values = path_macs.get(name)
        if not isinstance(values, list) or len(values) != count:
            raise check.fail("needs the path MACs of every node under every cost model")
        for index, value in enumerate(values):
            check.integer(value, f"costs.path_macs.{name}[{index}]", 0, MAX_MACS)
        wrong = [i for i, value in enumerate(recomputed[name]) if values[i] != value]
        if wrong:
            raise check.fail(
                f"costs.path_macs.{name}[{wrong[0]}] is {values[wrong[0]]}, but its nodes cost "
                f"{recomputed[name][wrong[0]]}"
            )
    return recomputed


def exit_costs(
    policy: Policy, tree: Shape, classes: int, base: dict[str, list[int]]
) -> tuple[int, int]:
    """What the cheapest and the dearest exit cost under ``policy``: every mean MAC count
    it can spend lies between them."""
    macs = decisions.path_macs(policy, tree, classes, base)
    leaf_macs = [macs[leaf] for leaf in tree.leaves]
    return min(leaf_macs), max(leaf_macs)


def _within_costs(mean_macs: float, cheapest: float, dearest: float, what: str) -> None:
    if not cheapest * (1 - MACS_TOLERANCE) <= mean_macs <= dearest * (1 + MACS_TOLERANCE):
        raise DynrouteError(
            f"{what} spends {mean_macs / 1e6:.4g} M mean MACs, outside what its exits cost "
            f"({cheapest / 1e6:.4g} to {dearest / 1e6:.4g} M)"
        )


def _checked_guarantee(manifest: dict[str, Any], folder: Path | None) -> dict[str, Any]:
    """The manifest's guarantee, checked against the exported operating point and its
    exits' costs, as ``dynroute.core.guarantee.certified`` writes it."""
    tree = shape(manifest)
    classes = manifest["model"]["num_classes"]
    try:
        policy = check_policy(manifest["policy"], tree, classes)
        base = {name: list(v) for name, v in manifest["costs"]["path_macs"].items()}
        cheapest, _ = exit_costs(policy, tree, classes, base)
        return certified(manifest["guarantee"], policy, manifest.get("k_cpt"), cheapest)
    except DynrouteError as exc:
        raise _fail(folder, f"its guarantee: {exc}") from None


@dataclass(frozen=True)
class StoredPoint:
    """An operating point an export carries: its accuracy and mean MACs on held-out data,
    and its whole entry (``operating_points``)."""

    mean_macs: float
    accuracy: float
    entry: dict[str, Any]


def stored_points(manifest: dict[str, Any]) -> list[StoredPoint]:
    """``operating_points`` as points the selection rules choose among."""
    return [StoredPoint(p["mean_macs"], p["accuracy"], p) for p in operating_points(manifest)]


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
        if not (
            checks.is_number(macs)
            and 0 < macs <= MAX_MACS
            and checks.is_finite_number(accuracy)
            and 0 <= accuracy <= 1
        ):
            raise DynrouteError("an operating point needs `mean_macs` > 0 and `accuracy` in [0, 1]")
        policy = dict(point["policy"])
        refers = policy.pop("shared", None)
        if refers is not None:
            if not isinstance(refers, str) or not isinstance(shared.get(refers), dict):
                raise DynrouteError(f"an operating point refers to unknown shared data {refers!r}")
            policy.update(shared[refers])
        out.append({**point, "policy": policy})
    return out


def check_policy(policy: Any, tree: Shape, classes: int) -> Policy:
    """A deployable policy from plain data (``dynroute.core.policy.Policy.to_dict``), checked
    against the exported tree's exits and classes; returns it."""
    chosen = read_policy(policy)
    if not chosen.deployable:
        raise DynrouteError(f"the {chosen.name} policy is a bound to compare with; it cannot run")
    try:
        Decider(chosen, tree, classes)  # checks every parameter against the tree
    except MALFORMED as exc:
        raise DynrouteError(f"a malformed {chosen.name} policy ({exc})") from None
    return chosen
