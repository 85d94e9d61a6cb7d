"""Export a routed tree to ONNX, one model per segment, for ``dynroute.deploy``.

A *segment* is the chain of transforms from the root, or from a junction's sink, down to
the next junction or exit: nothing inside it can route an example elsewhere, so it runs
as one ONNX model. Every exit head and every router is a model of its own, so a runtime
runs, per sub-batch, exactly the models on its path (``dynroute.deploy.runtime``). The
policy's decision itself (argmax, thresholds, the ensemble's combination) is a few
NumPy operations on those models' outputs, recorded with its parameters in the manifest,
so one export serves any deployable policy.

Batch norm is folded into the layers before it (``dynroute.engine.fold``); every model has
a dynamic batch axis and opset ``dynroute.deploy.manifest.OPSET``. Models are traced with
torch's TorchScript-based ONNX exporter (no extra dependency beyond ``onnx``), which is
deprecated from torch 2.9 on but present in every torch this project allows (< 2.14).
A model's inputs are the parts of the signal it actually reads: the exporter drops unused
inputs, and the manifest records which parts remain, so a split batch compacts only those.
Maps cross between models channels-last (``to_boundary``), and modules with an
``export_form()`` are swapped for it first (the multi-scale column's split convolutions):
both make onnxruntime faster, neither changes what the network computes.
"""

from __future__ import annotations

import copy
import io
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dynroute import __version__
from dynroute.core import selection
from dynroute.core.errors import DynrouteError
from dynroute.core.policy import LEARNED, Policy
from dynroute.deploy import manifest as fmt
from dynroute.engine.fold import fold_batchnorm
from dynroute.io.atomic import (
    cannot_write,
    current_umask,
    fsync_folder,
    make_folder,
    os_reason,
    read_json_object,
    write_atomic,
    write_json_atomic,
    write_text_atomic,
)
from dynroute.nn.macs import tree_costs
from dynroute.nn.prediction import predict_dense
from dynroute.nn.routing import decider
from dynroute.nn.tree import K_CPT_INPUT_SCALE, RoutedTree

#: Examples traced per model (any batch size runs afterwards: the batch axis is dynamic).
TRACE_BATCH = 2


def _parts(signal: Any, where: str) -> list[torch.Tensor]:
    """A signal as its list of tensors (a tensor, or a flat list or tuple of tensors)."""
    if isinstance(signal, torch.Tensor):
        return [signal]
    if isinstance(signal, (list, tuple)) and all(isinstance(t, torch.Tensor) for t in signal):
        return list(signal)
    raise DynrouteError(
        f"{where} outputs a {type(signal).__name__} that is neither a tensor nor a flat list "
        "of tensors; such a node cannot be exported"
    )


def to_boundary(tensor: torch.Tensor) -> torch.Tensor:
    """A signal part as it crosses between models: maps channels-last (N, H, W, C), since
    onnxruntime converts its blocked layout to and from that faster than to NCHW."""
    return tensor.permute(0, 2, 3, 1) if tensor.dim() == 4 else tensor


def from_boundary(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.permute(0, 3, 1, 2) if tensor.dim() == 4 else tensor


def _signal(parts: Sequence[torch.Tensor], is_list: bool, boundary: bool) -> Any:
    """The signal a module takes, from the parts a model receives (``boundary``: parts come
    from another model, maps channels-last; else from the caller, NCHW)."""
    parts = [from_boundary(part) for part in parts] if boundary else list(parts)
    return parts if is_list else parts[0]


class _Segment(nn.Module):
    """Transforms applied in sequence, on and to signals given as separate tensors."""

    def __init__(self, transforms: Sequence[nn.Module], is_list: bool, boundary: bool) -> None:
        super().__init__()
        self.transforms = nn.ModuleList(transforms)
        self.is_list = is_list
        self.boundary = boundary

    def forward(self, *parts: torch.Tensor) -> tuple[torch.Tensor, ...]:
        signal = _signal(parts, self.is_list, self.boundary)
        for transform in self.transforms:
            signal = transform(signal)
        return tuple(to_boundary(part) for part in _parts(signal, "a segment"))


class _Head(nn.Module):
    def __init__(self, head: nn.Module, is_list: bool, boundary: bool) -> None:
        super().__init__()
        self.head = head
        self.is_list = is_list
        self.boundary = boundary

    def forward(self, *parts: torch.Tensor) -> torch.Tensor:
        return self.head(_signal(parts, self.is_list, self.boundary))


class _Router(nn.Module):
    def __init__(self, router: nn.Module, is_list: bool, k_input: bool) -> None:
        super().__init__()
        self.router = router
        self.is_list = is_list
        self.k_input = k_input

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.k_input:
            return self.router(_signal(inputs[:-1], self.is_list, True), inputs[-1])
        return self.router(_signal(inputs, self.is_list, True))


class _Dense(nn.Module):
    """The whole tree on every example: every exit's logits (leaf order), then every
    router's scores (junction order)."""

    def __init__(self, tree: RoutedTree) -> None:
        super().__init__()
        self.tree = tree

    def forward(self, x: torch.Tensor, *k: torch.Tensor) -> tuple[torch.Tensor, ...]:
        tree = self.tree
        k_feature = k[0] if k else None
        logits: dict[int, torch.Tensor] = {}
        scores: dict[int, torch.Tensor] = {}

        def visit(index: int, signal: Any) -> list[tuple[int, Any]]:
            out, score = tree.run_node(index, signal, k_feature)
            if score is not None:
                scores[index] = score
            if tree.nodes[index].is_leaf:
                logits[index] = out
            return [(child, out) for child in tree.children_of[index]]

        tree.walk(x, visit)
        return (*(logits[i] for i in tree.leaves), *(scores[j] for j in tree.junctions))


def use_export_forms(module: nn.Module) -> int:
    """Swap, in place, every submodule with an ``export_form()`` (the multi-scale column's
    ``SplitColumn``) for that form; returns how many."""
    swapped = 0
    for name, child in list(module.named_children()):
        form = getattr(child, "export_form", None)
        if callable(form):
            setattr(module, name, form())
            swapped += 1
        else:
            swapped += use_export_forms(child)
    return swapped


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise DynrouteError(
            "exporting needs the onnx package: pip install 'dynroute[export]'"
        ) from None
    return onnx


def to_onnx(
    module: nn.Module, inputs: Sequence[torch.Tensor], names: Sequence[str], outputs: int
) -> tuple[bytes, tuple[str, ...]]:
    """ONNX bytes of ``module`` traced on ``inputs`` (batch axis dynamic) and the input names
    the graph kept (inputs the module never reads are dropped)."""
    onnx = _onnx()
    output_names = [fmt.output_name(i) for i in range(outputs)]
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter says it is deprecated, and the tracer that shapes are
        # constants: they are (only the batch axis varies, and it is declared dynamic).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            tuple(inputs),
            buffer,
            dynamo=False,
            opset_version=fmt.OPSET,
            input_names=list(names),
            output_names=output_names,
            dynamic_axes={name: {0: "batch"} for name in [*names, *output_names]},
            do_constant_folding=True,
        )
    data = buffer.getvalue()
    model = onnx.load_from_string(data)
    onnx.checker.check_model(model)
    kept = tuple(value.name for value in model.graph.input)
    return data, kept


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60]


def segments(tree: RoutedTree) -> list[list[int]]:
    """The tree's segments: chains of non-leaf nodes from the root or a junction's sink to
    the next junction, or to a node whose one sink is an exit (pre-order)."""
    out = []
    for start, node in enumerate(tree.nodes):
        parent = tree.parent[start]
        begins = parent < 0 or tree.nodes[parent].is_junction
        if node.is_leaf or not begins:
            continue
        chain = [start]
        while len(tree.children_of[chain[-1]]) == 1:
            child = tree.children_of[chain[-1]][0]
            if tree.nodes[child].is_leaf:
                break
            chain.append(child)
        out.append(chain)
    return out


def export_tree(
    tree: RoutedTree,
    out: str | os.PathLike[str],
    *,
    policy: Policy = LEARNED,
    k_cpt: float | None = None,
    class_names: Sequence[str] | None = None,
    preprocessing: dict[str, Any] | None = None,
    source: dict[str, Any] | None = None,
    dense: bool = False,
    force: bool = False,
    operating_points: dict[str, Any] | None = None,
    guarantee: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``tree`` as an export folder ``out`` (see ``dynroute.deploy.manifest``) and
    return its manifest. The tree itself is left as it is (a copy is folded and traced).

    ``policy`` and ``k_cpt`` are the operating point the export runs by default;
    ``class_names`` and ``preprocessing`` go to the manifest for ``dynroute predict`` and
    ``serve``; ``dense`` also writes ``dense.onnx`` (every exit on every example);
    ``force`` replaces an existing export at ``out``; ``operating_points`` (measured on
    held-out data: ``export_run``) lets a runtime choose another budget. The folder appears
    whole or not at all.
    """
    if not policy.deployable:
        raise DynrouteError(f"the {policy.name} policy is a bound to compare with; it cannot run")
    decider(tree, policy)  # its parameters checked against the tree
    if tree.dynamic_k_cpt and k_cpt is None:
        print(
            "dynroute: note: this net routes on k_cpt and none was given: callers must pass "
            "`k_cpt`",
        )
    labels = list(class_names) if class_names else [str(c) for c in range(tree.num_classes)]
    if len(labels) != tree.num_classes:
        raise DynrouteError(
            f"{len(labels)} class names for a network of {tree.num_classes} classes"
        )
    out = Path(os.path.abspath(out))  # `.` and `..` resolved: `--out .` has a name to check
    run = (source or {}).get("run")
    _check_target(out, force, run)
    costs = tree_costs(tree)
    folded = copy.deepcopy(tree).float().cpu().eval()
    folded.to(memory_format=torch.contiguous_format)
    fold_batchnorm(folded)
    use_export_forms(folded)

    # One traced pass records what each node receives and emits.
    generator = torch.Generator().manual_seed(0)
    x = torch.rand((TRACE_BATCH, *tree.input_shape), generator=generator)
    k_feature = folded.router_k_cpt(k_cpt or 0.0, TRACE_BATCH, x)
    received: dict[int, list[torch.Tensor]] = {}
    is_list: dict[int, bool] = {}
    emitted: dict[int, Any] = {}

    def visit(index: int, signal: Any) -> list[tuple[int, Any]]:
        where = f"node {folded.nodes[index].name}"
        received[index] = _parts(signal, where)
        is_list[index] = not isinstance(signal, torch.Tensor)
        out_signal = folded.nodes[index].transform(signal)
        _parts(out_signal, where)
        emitted[index] = out_signal
        return [(child, out_signal) for child in folded.children_of[index]]

    with torch.no_grad():
        folded.walk(x, visit)

    files: dict[str, bytes] = {}
    order = "{:0" + str(len(str(len(folded.nodes)))) + "d}"

    def add(kind: str, index: int, module: nn.Module, inputs: list, names: list, n_out: int):
        file = f"{kind}-{order.format(index)}-{_slug(folded.nodes[index].name)}.onnx"
        with torch.no_grad():
            data, kept = to_onnx(module, inputs, names, n_out)
        files[file] = data
        reads = sorted(int(name[2:]) for name in kept if name != fmt.K_FEATURE)
        return file, reads, fmt.K_FEATURE in kept

    def part_names(count: int) -> list[str]:
        return [fmt.input_name(i) for i in range(count)]

    transform_macs = [m - r for m, r in zip(costs.node_macs, costs.router_macs, strict=True)]
    segment_entries = []
    for chain in segments(folded):
        first, last = chain[0], chain[-1]
        boundary = first != 0  # the root segment reads the caller's NCHW images
        module = _Segment([folded.nodes[i].transform for i in chain], is_list[first], boundary)
        n_out = len(_parts(emitted[last], "segment"))
        inputs = [to_boundary(p) for p in received[first]] if boundary else received[first]
        file, reads, _ = add("segment", first, module, inputs, part_names(len(inputs)), n_out)
        segment_entries.append(
            {
                "file": file,
                "nodes": chain,
                "reads": reads,
                "outputs": n_out,
                "macs": sum(transform_macs[i] for i in chain),
            }
        )
    head_entries = []
    for leaf in folded.leaves:
        boundary = leaf != 0
        inputs = [to_boundary(p) for p in received[leaf]] if boundary else received[leaf]
        module = _Head(folded.nodes[leaf].transform, is_list[leaf], boundary)
        file, reads, _ = add("exit", leaf, module, inputs, part_names(len(inputs)), 1)
        head_entries.append(
            {
                "leaf": leaf,
                "name": folded.nodes[leaf].name,
                "file": file,
                "reads": reads,
                "macs": transform_macs[leaf],
            }
        )
    router_entries = []
    for junction in folded.junctions:
        parts = [to_boundary(p) for p in _parts(emitted[junction], "router input")]
        router = folded.nodes[junction].router
        assert router is not None
        k_input = k_feature is not None
        module = _Router(router, not isinstance(emitted[junction], torch.Tensor), k_input)
        inputs = parts + ([k_feature] if k_input else [])
        names = part_names(len(parts)) + ([fmt.K_FEATURE] if k_input else [])
        file, reads, takes_k = add("router", junction, module, inputs, names, 1)
        router_entries.append(
            {
                "junction": junction,
                "file": file,
                "reads": reads,
                "k_cpt_input": takes_k,
                "macs": costs.router_macs[junction],
            }
        )
    dense_entry = None
    if dense:
        module = _Dense(folded)
        inputs = [x] + ([k_feature] if k_feature is not None else [])
        names = ["in0"] + ([fmt.K_FEATURE] if k_feature is not None else [])
        n_out = len(folded.leaves) + len(folded.junctions)
        with torch.no_grad():
            data, kept = to_onnx(module, inputs, names, n_out)
        files[fmt.DENSE_FILE] = data
        dense_entry = {
            "file": fmt.DENSE_FILE,
            "reads": [0],
            "k_cpt_input": fmt.K_FEATURE in kept,
            "outputs": [f"logits {folded.nodes[i].name}" for i in folded.leaves]
            + [f"scores {folded.nodes[j].name}" for j in folded.junctions],
            "macs": sum(costs.node_macs),
        }

    nodes = []
    for index, node in enumerate(folded.nodes):
        kids = folded.children_of[index]
        kind = "leaf" if not kids else "junction" if len(kids) >= 2 else "node"
        nodes.append(
            {
                "name": node.name,
                "parent": folded.parent[index],
                "children": list(kids),
                "kind": kind,
                "macs": transform_macs[index],
                "router_macs": costs.router_macs[index],
            }
        )
    manifest: dict[str, Any] = {
        "format": fmt.FORMAT,
        "version": fmt.FORMAT_VERSION,
        "dynroute": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": source or {},
        "model": {
            "spec": dict(tree.spec),
            "input_shape": list(tree.input_shape),
            "num_classes": tree.num_classes,
            "dynamic_k_cpt": tree.dynamic_k_cpt,
            "boost": tree.boost,
            "k_cpt_input_scale": K_CPT_INPUT_SCALE,
            "dtype": "float32",
        },
        "class_names": labels,
        "preprocessing": preprocessing,
        "policy": policy.to_dict(),
        "k_cpt": k_cpt,
        "guarantee": guarantee,
        "operating_points": operating_points,
        "onnx": {
            "opset": fmt.OPSET,
            "batch_axis": 0,
            "batchnorm_folded": True,
            "signal_layout": "maps channels-last (N, H, W, C) between models; input as given",
            "exporter": f"torch.onnx TorchScript exporter, torch {torch.__version__}",
        },
        "nodes": nodes,
        "segments": segment_entries,
        "heads": head_entries,
        "routers": router_entries,
        "dense": dense_entry,
        "costs": {
            "node_macs": list(costs.node_macs),
            "path_macs": {model: list(costs.base_path_macs()[model]) for model in fmt.COST_MODELS},
        },
    }
    fmt.bind_models(manifest, files)  # each model's SHA-256 in its entry
    fmt.validate(manifest)
    _write(out, files, manifest, force, run)
    return manifest


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _export_files(out: Path) -> set[str] | None:
    """The names of the files an export folder is made of, from its manifest (read through
    the gate: a FIFO or a huge file in its place is refused, not read); None if ``out``
    holds no dynroute export."""
    try:
        manifest = read_json_object(out / fmt.MANIFEST_FILE, "export manifest")
        if manifest.get("format") != fmt.FORMAT:
            return None
        models = fmt.model_files(manifest)
    except (DynrouteError, KeyError, TypeError, AttributeError):
        return None
    return {*map(str, models), fmt.MANIFEST_FILE, fmt.CHECKSUM_FILE}


def _check_target(out: Path, force: bool, run: str | None = None) -> None:
    """Write only into a new or empty folder, or, with ``force``, over a dynroute export
    (its manifest says so) that holds nothing but its own files: never over anything else
    (a user's files beside an export included), nor over a link, the folder the command
    runs in (or one holding it), or one holding the run exported (``run``)."""
    if not out.name:
        raise DynrouteError(f"`out` {out} cannot be an export folder; name a folder inside it")
    if os.path.islink(out):
        raise DynrouteError(
            f"`out` {out} is a link (to {os.readlink(out)}); give the folder itself"
        )
    if not os.path.lexists(out):
        above = out.parent
        while not os.path.lexists(above) and above != above.parent:
            above = above.parent
        if not above.is_dir():
            raise DynrouteError(f"`out` {out} cannot be made: {above} is a file, not a folder")
        return
    if not out.is_dir():
        raise DynrouteError(f"`out` {out} exists and is not a folder")
    real = os.path.realpath(out)
    if _within(os.path.realpath(os.getcwd()), real):
        raise DynrouteError(
            f"`out` {out} is the current folder or holds it; run export from another folder "
            "(replacing it would pull the folder from under you)"
        )
    if run is not None and _within(os.path.realpath(run), real):
        raise DynrouteError(f"`out` {out} holds the run {run} being exported; choose another")
    try:
        present = sorted(os.listdir(out))
    except OSError as exc:
        raise DynrouteError(f"cannot read `out` {out}: {os_reason(exc)}") from None
    if not present:
        return
    own = _export_files(out)
    if own is None:
        raise DynrouteError(
            f"`out` {out} is a folder with other files (not a dynroute export); choose an empty one"
        )
    if not force:
        raise DynrouteError(f"`out` {out} already holds an export; pass `force` to replace it")
    others = [name for name in present if name not in own]
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise DynrouteError(
            f"`out` {out} holds an export and files that are not the export's ({shown}); "
            "`force` replaces only an export: move them, or choose another folder"
        )


def _write(
    out: Path, files: dict[str, bytes], manifest: dict[str, Any], force: bool, run: str | None
) -> None:
    """Write the export into a hidden sibling folder, then rename it into place (the old
    export, checked again, is first renamed to a fresh hidden name of its own, and put back
    if the new one cannot take its place)."""
    make_folder(out.parent)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as exc:
        raise cannot_write(out, exc, os.path.lexists(out)) from None
    try:
        staging.chmod(0o777 & ~current_umask())  # mkdtemp's 0700 is not the user's choice
        for name, data in files.items():
            write_atomic(staging / name, lambda f, data=data: f.write(data))
        write_json_atomic(staging / fmt.MANIFEST_FILE, manifest)
        listed = [*files, fmt.MANIFEST_FILE]
        write_text_atomic(staging / fmt.CHECKSUM_FILE, fmt.checksum_lines(staging, listed))
        if os.path.lexists(out):
            _check_target(out, force, run)
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.rename(out, old)  # onto the empty folder just made: no one else's name
            try:
                os.rename(staging, out)
            except BaseException:
                os.rename(old, out)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, out)
        fsync_folder(out.parent)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise cannot_write(out, exc, os.path.lexists(out)) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def check_export(
    tree: RoutedTree,
    folder: str | os.PathLike[str],
    images: torch.Tensor,
    policy: Policy = LEARNED,
    k_cpt: float | None = None,
) -> dict[str, Any]:
    """Run the export (``dynroute.deploy``) and the PyTorch dense reference on ``images``:
    how many exits agree and the largest logit difference where they do."""
    from dynroute.deploy import load

    model = load(folder, policy=policy.to_dict(), k_cpt=k_cpt)
    with torch.no_grad():
        reference = predict_dense(tree.eval(), images, k_cpt, policy=policy)
    routed = model.predict(images.numpy(), k_cpt)
    same = reference.exits.numpy() == routed.exits
    difference = (reference.logits.numpy() - routed.logits)[same]
    return {
        "examples": len(images),
        "same_exits": int(same.sum()),
        "same_macs": bool((reference.macs.numpy() == routed.macs)[same].all()),
        "max_logit_difference": float(abs(difference).max()) if difference.size else 0.0,
    }


def export_run(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    policy: str | None = None,
    threshold: float | None = None,
    target_macs: float | None = None,
    k_cpt: float | None = None,
    answers: str | None = None,
    dense: bool = False,
    force: bool = False,
    data_dir: str | os.PathLike[str] | None = None,
    allow_checksum_mismatch: bool = False,
    check: int = 64,
    operating_points: bool = True,
    int8: bool = False,
) -> tuple[dict[str, Any], str, dict[str, Any] | None]:
    """Export a run directory at its operating point (its calibration, or the one
    ``policy``/``threshold``/``target_macs`` give: ``dynroute.policies.resolve``), then, if
    onnxruntime is installed and ``check`` > 0, compare the export with the PyTorch dense
    reference on ``check`` random inputs. With ``operating_points``, the export also carries
    its policy's operating points measured on the run's validation split (when that split can
    be read; those the resolver measured for a budget are reused), so that ``dynroute predict
    EXPORT --target-macs`` chooses a budget without data, exactly as the run would. With
    ``int8``, every model is quantized and the operating point re-fitted on the int8 answers
    (``dynroute.delivery.quantize``); the check is then the int8 export against the float32
    one on the test split. Returns the manifest, how the operating point was chosen, and the
    check (None if skipped)."""
    from dynroute.data.files import preprocessing
    from dynroute.policies.resolve import resolve_operating_point
    from dynroute.runs import open_run

    run = open_run(path)
    if run.directory is None:
        raise DynrouteError("export takes a run directory (its config says how to read images)")
    _check_target(Path(os.path.abspath(out)), force, str(run.path.resolve()))  # before the work
    point = resolve_operating_point(
        run,
        policy,
        threshold,
        target_macs,
        k_cpt,
        answers=answers,
        data_dir=data_dir,
        allow_checksum_mismatch=allow_checksum_mismatch,
    )
    tree = run.load_tree().eval()
    if tree.dynamic_k_cpt and point.k_cpt is None and point.policy.uses_threshold:
        raise DynrouteError(
            "this net routes on k_cpt: give `k_cpt` (its routers' input at this operating "
            "point) or calibrate the run first"
        )
    shape = tree.input_shape
    config = run.config or {}
    images = len(shape) == 3 and shape[0] == 3 and shape[1] == shape[2]
    points = (
        _held_out_points(run, point, data_dir, allow_checksum_mismatch, policy, answers)
        if operating_points and not int8  # an int8 export measures its own
        else None
    )
    arguments = dict(
        policy=point.policy,
        k_cpt=point.k_cpt,
        class_names=run.class_names(tree.num_classes),
        preprocessing=preprocessing(config.get("dataset"), shape[1]) if images else None,
        source={
            "run": str(run.path.resolve()),
            "checkpoint_sha256": fmt.sha256_file(run.checkpoint_path),
            "operating_point": point.how,
            "dataset": config.get("dataset"),
            "model": config.get("model"),
        },
        dense=dense,
        force=force,
        operating_points=points,
        guarantee=point.guarantee,
    )
    if int8:
        manifest, how, result = int8_export(
            run, tree, point, out, arguments, target_macs, data_dir, allow_checksum_mismatch
        )
        return manifest, how, result
    manifest = export_tree(tree, out, **arguments)
    result = None
    if check > 0 and tree.dynamic_k_cpt and point.k_cpt is None:
        print("dynroute: note: no k_cpt input given: the export was not run to check it")
    elif check > 0:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            print("dynroute: onnxruntime is not installed: the export was not run to check it")
        else:
            generator = torch.Generator().manual_seed(0)
            x = torch.rand((check, *shape), generator=generator)
            x *= torch.rand((check, *[1] * len(shape)), generator=generator)  # mixed brightness
            result = check_export(tree, out, x, point.policy, point.k_cpt)
    return manifest, point.how, result


def _held_out_points(
    run: Any,
    point: Any,
    data_dir: str | os.PathLike[str] | None,
    allow_checksum_mismatch: bool,
    policy: str | None,
    answers: str | None,
) -> dict[str, Any] | None:
    """The operating points ``point``'s policy offers on the run's validation split, as
    manifest data (``dynroute.deploy.manifest.operating_points``): the frontier the
    selection rule can choose from, so that the export chooses every budget as the run
    does. None where the split cannot be read (said on stdout)."""
    from dynroute.policies.resolve import operating_points_of

    try:
        measured = operating_points_of(
            run, point, data_dir, allow_checksum_mismatch, policy, answers
        )
    except DynrouteError as exc:
        print(f"dynroute: note: no operating points stored ({exc})")
        return None
    return points_record(measured)


def points_record(measured: list[Any]) -> dict[str, Any]:
    """Measured operating points (``Candidate``s) as manifest data: the frontier the
    selection rule can choose from, each family's fitted answers and models stored once."""
    shared: dict[str, dict[str, Any]] = {}
    rows = []
    for candidate in selection.frontier(measured):
        stored = candidate.policy.to_dict()
        fitted = {k: stored.pop(k) for k in ("weights", "biases", "scheduler") if k in stored}
        if fitted:
            key = candidate.family
            shared.setdefault(key, fitted)
            stored["shared"] = key
        rows.append(
            {
                "policy": stored,
                "k_cpt": candidate.k_cpt,
                "accuracy": candidate.accuracy,
                "mean_macs": candidate.mean_macs,
                "family": candidate.family,
            }
        )
    examples = len(measured[0].positions) if measured and measured[0].positions is not None else 0
    return {"split": "validation", "examples": examples, "shared": shared, "points": rows}


def _split(run: Any, name: str, data_dir: Any, allow_checksum_mismatch: bool):
    """A split of the run's data as float32 (N, C, H, W) images and int64 labels."""
    images, labels, _ = run.split(name, data_dir, None, allow_checksum_mismatch)
    images = np.asarray(images)
    if images.dtype != np.float32:
        images = images.astype(np.float32) / (255.0 if images.dtype == np.uint8 else 1.0)
    return images, np.asarray(labels, dtype=np.int64)


def write_quantized(
    folder: str | os.PathLike[str],
    out: str | os.PathLike[str],
    images: np.ndarray,
    k_cpt: float | None = None,
    force: bool = False,
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The float32 export in ``folder`` with its models quantized on ``images``
    (``dynroute.delivery.quantize.quantize_models``: those that run faster in int8 on this
    machine), written to ``out`` at the same operating point: its manifest
    (``precision`` int8, each model's precision and timings in ``source.int8_models``, no
    guarantee: it was certified on float32 answers) and its files. ``int8_export`` then
    re-fits the operating point."""
    import json

    from dynroute.delivery.quantize import quantize_models

    manifest = json.loads((Path(folder) / fmt.MANIFEST_FILE).read_text(encoding="utf-8"))
    files = {name: (Path(folder) / name).read_bytes() for name in fmt.model_files(manifest)}
    quantized, record = quantize_models(folder, images, k_cpt)
    files.update(quantized)
    manifest["model"]["precision"] = "int8"
    manifest["source"]["int8_models"] = record
    manifest["guarantee"] = None
    fmt.bind_models(manifest, files)
    fmt.validate(manifest)
    _write(Path(out), files, manifest, force, None)
    return manifest, files


def int8_export(
    run: Any,
    tree: Any,
    point: Any,
    out: str | os.PathLike[str],
    arguments: dict[str, Any],
    target_macs: float | None,
    data_dir: Any,
    allow_checksum_mismatch: bool,
) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """Write ``out`` as the int8 export of ``run`` at ``point``
    (``dynroute.delivery.quantize``): the manifest, how its operating point was chosen,
    and its check against float32."""

    from dynroute.delivery.quantize import CALIBRATION_IMAGES, compare, exit_outputs
    from dynroute.policies.calibration import candidates, choose, families
    from dynroute.policies.resolve import family_name

    if tree.dynamic_k_cpt:
        raise DynrouteError("int8 exports take fixed-k_cpt networks (their routers' k_cpt input)")
    validation, validation_labels = _split(run, "validation", data_dir, allow_checksum_mismatch)
    test, test_labels = _split(run, "test", data_dir, allow_checksum_mismatch)
    k = point.k_cpt
    with tempfile.TemporaryDirectory(prefix="dynroute-int8-") as scratch:
        fp32 = Path(scratch) / "float32"
        export_tree(tree, fp32, **{**arguments, "force": False, "operating_points": None})
        staged = Path(scratch) / "int8"
        manifest, files = write_quantized(fp32, staged, validation[:CALIBRATION_IMAGES], k)
        outputs = exit_outputs(staged, validation, validation_labels, k)
        name, kind = family_name(point.policy)
        measured = candidates(
            0, tree, outputs, families(name, kind), k, torch.from_numpy(validation.copy())
        )
        target = _target(run, target_macs)
        if target is None:  # a policy given as it is: its parameters are kept
            chosen_policy = point.policy
            how = f"{point.how}; kept as given on int8 answers (no target to re-fit for)"
        else:
            chosen = choose(measured, *target)
            chosen_policy = chosen.policy
            what = (
                f"{target[0] / 1e6:g} M MACs" if target[0] is not None else f"accuracy {target[1]}"
            )
            how = (
                f"{chosen.policy.label()} re-fitted for {what} on the int8 answers of the "
                f"validation split (accuracy {chosen.accuracy:.4f} at "
                f"{chosen.mean_macs / 1e6:.3f} M there)"
            )
        manifest["policy"] = chosen_policy.to_dict()
        manifest["operating_points"] = points_record(measured)
        manifest["source"]["operating_point"] = how
        fmt.validate(manifest)
        _write(staged, files, manifest, True, None)
        check = compare(fp32, staged, test, test_labels, k)
        manifest["source"]["int8_check"] = check
        fmt.validate(manifest)
        _write(Path(out), files, manifest, arguments["force"], str(run.path.resolve()))
    return manifest, how, check


def _target(run: Any, target_macs: float | None) -> tuple[float | None, float | None] | None:
    """What the operating point was chosen for: a budget given now, else the run's
    calibrated budget or accuracy target (None: a policy given as it is)."""
    if target_macs is not None:
        return target_macs, None
    calibration = run.calibration()
    if calibration is None:
        return None
    target = calibration.target
    if target.get("mean_macs") is not None:
        return float(target["mean_macs"]), None
    if target.get("accuracy") is not None:
        return None, float(target["accuracy"])
    return None
