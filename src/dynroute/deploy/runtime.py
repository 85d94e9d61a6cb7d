"""Real early exit on an export, with NumPy and onnxruntime only.

``ExportedModel.predict`` walks the tree with sub-batches, like the PyTorch engine
(``dynroute.engine.early_exit``): it runs a segment's ONNX model on the examples that reached it;
at a junction it runs what the policy decides with (the router, or the exit heads of the
junction's exits), splits the sub-batch by the decision (a stable argsort, so every part
keeps its examples in input order), and carries each part on only through the models on
its own path, compacting only the parts of the signal the next model reads. Exits write
their logits into the examples' rows of the output, so results come back in input order.
Examples that leave early never touch the deeper models: that is where the saving is.

``ExportedModel.predict_dense`` runs ``dense.onnx`` (when exported) instead: every exit on
every example, then the same decisions; the reference the routed run is timed against.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dynroute.core import checks, decisions, probabilities
from dynroute.core.errors import DynrouteError
from dynroute.core.operating import OperatingRequest, chosen_for_budget
from dynroute.core.policy import Policy
from dynroute.core.selection import choose
from dynroute.deploy.manifest import (
    K_FEATURE,
    StoredPoint,
    check_policy,
    input_name,
    operating_points,
    read_manifest,
    shape,
    stored_points,
)
from dynroute.platform.machine import available_cores

_MANIFEST_K_CPT = object()  # "use the manifest's k_cpt"


@dataclass
class ExportPrediction:
    """Per-example outcome: ``logits`` (N, classes) of the exit taken (log-probabilities
    where the policy's answers are calibrated or combined), ``exits`` (N,) its node index,
    ``macs`` (N,) the multiply-accumulates spent on the example under the policy."""

    logits: np.ndarray
    exits: np.ndarray
    macs: np.ndarray

    @property
    def predictions(self) -> np.ndarray:
        return self.logits.argmax(axis=1)

    @property
    def confidences(self) -> np.ndarray:
        """Max softmax probability of each answer."""
        return probabilities.confidence(self.logits)

    def __len__(self) -> int:
        return int(self.exits.shape[0])


@dataclass
class _Model:
    """One ONNX model: its session, the signal parts it reads, whether it takes k_cpt."""

    file: str
    session: Any
    reads: tuple[int, ...]
    k_input: bool = False

    def __call__(self, parts: Sequence[np.ndarray | None], k: np.ndarray | None = None):
        feed = {input_name(i): parts[i] for i in self.reads}
        if self.k_input:
            feed[K_FEATURE] = k
        return self.session.run(None, feed)


def _check_signature(folder: Path, model: _Model, outputs: int) -> None:
    """Refuse a model file whose inputs or outputs are not what the manifest says it reads
    and writes (a segment swapped for another valid ONNX model)."""
    wanted = [input_name(i) for i in model.reads] + ([K_FEATURE] if model.k_input else [])
    found = [i.name for i in model.session.get_inputs()]
    count = len(model.session.get_outputs())
    if sorted(found) != sorted(wanted) or count != outputs:
        raise DynrouteError(
            f"export {folder}: {model.file} takes {found} and gives {count} outputs, but the "
            f"manifest says {wanted} and {outputs}: it is not this export's model"
        )


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise DynrouteError(
            "running an export needs onnxruntime: pip install 'dynroute[deploy]' "
            "(or pip install onnxruntime)"
        ) from None
    return onnxruntime


def session_options(threads: int | None = None) -> Any:
    """onnxruntime options: ``threads`` intra-op threads (default: every available core),
    one model at a time (the runtime calls them in sequence), full graph optimisation."""
    ort = _onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or available_cores()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    # Dozens of small models run one after another: idle worker threads must not spin
    # on a core the next model needs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class ExportedModel:
    """An export folder (``dynroute export``), loaded and checked, ready to classify.

    ``policy``: a deployable policy as plain data (``{"name": "confidence", "threshold":
    0.8}``, the format of ``dynroute.core.policy.Policy.to_dict``) instead of the export's own;
    ``k_cpt``: the routers' k_cpt input of a dynamic-k_cpt net instead of the export's;
    ``threads``: onnxruntime's intra-op threads (default: every available core);
    ``verify``: check every file's SHA-256 first (``SHA256SUMS``).
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        policy: dict[str, Any] | None = None,
        k_cpt: Any = _MANIFEST_K_CPT,
        threads: int | None = None,
        verify: bool = True,
    ) -> None:
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder, verify=verify)
        self.threads = threads or available_cores()
        m = self.manifest
        self.nodes: list[dict[str, Any]] = m["nodes"]
        self.children: list[list[int]] = [list(node["children"]) for node in self.nodes]
        self.is_leaf = [not kids for kids in self.children]
        self.leaves = [i for i, leaf in enumerate(self.is_leaf) if leaf]
        self.leaf_position = {leaf: k for k, leaf in enumerate(self.leaves)}
        self.junctions = [i for i, kids in enumerate(self.children) if len(kids) >= 2]
        self.input_shape = tuple(m["model"]["input_shape"])
        self.num_classes = int(m["model"]["num_classes"])
        self.dynamic_k_cpt = bool(m["model"]["dynamic_k_cpt"])
        self.k_cpt_scale = np.float32(m["model"].get("k_cpt_input_scale", 1e7))
        self.class_names: tuple[str, ...] = tuple(m["class_names"])
        self.exit_names = {leaf: self.nodes[leaf]["name"] for leaf in self.leaves}
        self.preprocessing: dict[str, Any] | None = m.get("preprocessing")
        self._load_sessions()
        self._set_policy(m["policy"] if policy is None else policy)
        self.k_cpt = m.get("k_cpt") if k_cpt is _MANIFEST_K_CPT else k_cpt

    # ------------------------------------------------------------------ loading
    def _load_sessions(self) -> None:
        ort = _onnxruntime()
        options = session_options(self.threads)
        cache: dict[str, Any] = {}

        def model(entry: dict[str, Any], outputs: int = 1) -> _Model:
            file = entry["file"]
            if file not in cache:
                try:
                    cache[file] = ort.InferenceSession(
                        str(self.folder / file), options, providers=["CPUExecutionProvider"]
                    )
                except Exception as exc:  # onnxruntime raises its own exception types
                    message = f"export {self.folder}: cannot load {file}: {exc}"
                    raise DynrouteError(message) from None
            model = _Model(
                file, cache[file], tuple(entry["reads"]), bool(entry.get("k_cpt_input", False))
            )
            _check_signature(self.folder, model, outputs)
            return model

        m = self.manifest
        self._segments = {
            seg["nodes"][0]: (model(seg, seg["outputs"]), seg["nodes"][-1]) for seg in m["segments"]
        }
        root = self._segments[0][0] if 0 in self._segments else None
        if root is not None and root.reads:
            declared = list(root.session.get_inputs()[0].shape[1:])
            fixed = all(isinstance(d, int) for d in declared)
            if fixed and declared != list(self.input_shape):
                raise DynrouteError(
                    f"export {self.folder}: its first model reads inputs of shape {declared}, "
                    f"but the manifest says {list(self.input_shape)}"
                )
        self._heads = {head["leaf"]: model(head) for head in m["heads"]}
        self._routers = {router["junction"]: model(router) for router in m["routers"]}
        dense = m.get("dense")
        self._dense = None if not dense else (model(dense, len(dense["outputs"])), dense)
        # What the first model of each node's subtree reads of its input: only those parts
        # are compacted when a batch splits.
        self._reads_at = {
            index: (self._heads[index] if self.is_leaf[index] else self._segments[index][0]).reads
            for index in range(len(self.nodes))
            if self.is_leaf[index] or index in self._segments
        }

    def _set_policy(self, policy: dict[str, Any]) -> None:
        self.shape = shape(self.manifest)
        #: Boosted exits (``decisions.boosted``): every answer builds on the exits passed.
        self.boost = self.shape.boost
        chosen = check_policy(dict(policy), self.shape, self.num_classes)
        self.policy = chosen.to_dict()
        self.decider = decisions.Decider(chosen, self.shape, self.num_classes)
        base = self.manifest["costs"]["path_macs"]
        self._path_macs = np.asarray(
            decisions.path_macs(chosen, self.shape, self.num_classes, base), dtype=np.int64
        )
        self._runs_router = {j: self.decider.runs_router(j) for j in self.junctions}

    def with_policy(self, policy: dict[str, Any] | None = None, k_cpt: Any = _MANIFEST_K_CPT):
        """The same loaded models under another policy or k_cpt input (no reloading)."""
        other = object.__new__(ExportedModel)
        other.__dict__.update(self.__dict__)
        other._set_policy(self.policy if policy is None else policy)
        if k_cpt is not _MANIFEST_K_CPT:
            other.k_cpt = k_cpt
        return other

    def for_budget(self, target_macs: float) -> tuple[ExportedModel, dict[str, Any]]:
        """The same models at the operating point that spends at most ``target_macs`` mean
        MACs per example on the export's held-out points (chosen as ``dynroute calibrate``
        chooses), and that point (its policy, k_cpt input, accuracy and mean MACs there)."""
        checks.target_macs(target_macs, required=True)
        points = operating_points(self.manifest)
        if not points:
            raise DynrouteError(
                f"export {self.folder} carries no operating points to choose a budget from "
                "(it was exported without its run's validation data, or its policy has one "
                "operating point): export again with the data, or with `target_macs`"
            )
        chosen = choose(stored_points(self.manifest), target_macs, None).entry
        k_cpt = chosen.get("k_cpt") if self.dynamic_k_cpt else self.k_cpt
        return self.with_policy(chosen["policy"], k_cpt), chosen

    def resolve(self, request: OperatingRequest) -> tuple[ExportedModel, str]:
        """The same models at the operating point ``request`` asks (``dynroute.core.operating``,
        as a run resolves it): the export's own, one given, or the one its stored points
        choose for a budget; and how it was chosen."""
        current = Policy.from_dict(self.policy)
        if request.target_macs is not None:
            if request.policy is not None or request.answers is not None:
                raise DynrouteError(
                    f"export {self.folder} chooses a budget among the operating points it "
                    f"carries ({current.describe()}); export the run again for another policy"
                )
            model, entry = self.for_budget(request.target_macs)
            if request.k_cpt is not None:
                model = model.with_policy(None, request.k_cpt)
            point = StoredPoint(entry["mean_macs"], entry["accuracy"], entry)
            where = "the run's validation split"
            return model, chosen_for_budget(request.target_macs, point, where)
        chosen = request.applied_to(current)
        model = self if chosen is current else self.with_policy(chosen.to_dict())
        if request.k_cpt is not None:
            model = model.with_policy(None, request.k_cpt)
        return model, "exported" if chosen is current else "given"

    @property
    def has_dense(self) -> bool:
        return self._dense is not None

    def path_macs(self) -> dict[str, int]:
        """MACs of the path to each exit under the current policy, by exit name."""
        return {self.exit_names[leaf]: int(self._path_macs[leaf]) for leaf in self.leaves}

    # ------------------------------------------------------------------ inputs
    def check_inputs(self, x: Any) -> np.ndarray:
        """``x`` as a C-contiguous float32 (N, *input_shape) batch, or a ``DynrouteError``."""
        x = np.asarray(x)
        if x.ndim != len(self.input_shape) + 1 or tuple(x.shape[1:]) != self.input_shape:
            expected = "(N, " + ", ".join(map(str, self.input_shape)) + ")"
            raise DynrouteError(
                f"inputs of shape {tuple(x.shape)} given; this network reads batches of {expected}"
            )
        if not np.issubdtype(x.dtype, np.floating):
            raise DynrouteError(
                f"inputs of dtype {x.dtype} given; pass floating-point intensities in [0, 1]"
            )
        x = np.ascontiguousarray(x, dtype=np.float32)
        finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1) if len(x) else np.ones(0, bool)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            raise DynrouteError(
                f"{len(bad)} input(s) hold NaN or infinite values (first: index {int(bad[0])}); "
                "they cannot be routed"
            )
        return x

    def _k_feature(self, k_cpt: Any, n: int) -> np.ndarray | None:
        if not self.dynamic_k_cpt:
            return None
        if k_cpt is None:
            raise DynrouteError("this network routes on k_cpt: pass `k_cpt` (none was exported)")
        k = np.asarray(k_cpt, dtype=np.float32)
        k = np.broadcast_to(k, (n,)) if k.ndim == 0 else k.reshape(n)
        return np.ascontiguousarray((k * self.k_cpt_scale).reshape(n, 1), dtype=np.float32)

    # ------------------------------------------------------------------ prediction
    def predict(self, x: Any, k_cpt: Any = None) -> ExportPrediction:
        """Route ``x`` (N examples) and run each one's path only."""
        x = self.check_inputs(x)
        n = x.shape[0]
        exits = np.empty(n, dtype=np.int64)
        if n == 0:
            return ExportPrediction(
                np.empty((0, self.num_classes), np.float32), exits, exits.copy()
            )
        k_feature = self._k_feature(self.k_cpt if k_cpt is None else k_cpt, n)
        logits = self._route(x, k_feature, exits)
        return ExportPrediction(logits, exits, self._path_macs[exits])

    __call__ = predict

    def _route(self, x: np.ndarray, k_feature: np.ndarray | None, exits: np.ndarray) -> np.ndarray:
        n = x.shape[0]
        logits = np.empty((n, self.num_classes), dtype=np.float32)
        rule = self.decider
        position = self.leaf_position

        def finish(index: int, rows: np.ndarray | None, out: np.ndarray) -> None:
            if rows is None:
                logits[:] = out
                exits[:] = index
            else:
                logits[rows] = out
                exits[rows] = index

        # Work: (node, signal parts, original rows or None for the whole batch in order,
        # k_cpt feature, raw log-softmaxes of the exits passed where the policy reads them).
        stack: list[tuple[int, list, np.ndarray | None, Any, Any]] = [
            (0, [x], None, k_feature, None)
        ]
        while stack:
            index, parts, rows, k, history = stack.pop()
            if self.is_leaf[index]:
                out = decisions.boosted(self._heads[index](parts)[0], history, self.boost)
                if rule.transforms:
                    out = rule.answer(position[index], history, out)
                finish(index, rows, out)
                continue
            segment, end = self._segments[index]
            parts = segment(parts)
            children = self.children[end]
            if len(children) == 1:  # the segment ends above an exit
                stack.append((children[0], parts, rows, k, history))
                continue
            scores = self._routers[end](parts, k)[0] if self._runs_router[end] else None
            answers: dict[int, np.ndarray] = {}
            measures: dict[int, np.ndarray] = {}
            deeper = history
            if rule.runs_heads:
                raw = {
                    s: decisions.boosted(self._heads[c](parts)[0], history, self.boost)
                    for s, c in enumerate(children)
                    if self.is_leaf[c]
                }
                for s, z in raw.items():
                    answers[s] = rule.answer(position[children[s]], history, z)
                    if rule.reads_exits:
                        measures[s] = rule.measure(position[children[s]], history, answers[s])
                if (rule.needs_history or self.boost) and raw:
                    passed = np.stack([probabilities.log_softmax(z) for z in raw.values()], axis=1)
                    deeper = passed if history is None else np.concatenate([history, passed], 1)
            decision = rule.choose(end, scores, measures)
            size = decision.shape[0]
            counts = np.bincount(decision, minlength=len(children))
            if counts.max() == size:  # everyone agrees: pass the sub-batch on untouched
                s = int(counts.argmax())
                child = children[s]
                if s in answers:
                    finish(child, rows, answers[s])
                else:
                    carried = history if self.is_leaf[child] else deeper
                    stack.append((child, parts, rows, k, carried))
                continue
            order = np.argsort(decision, kind="stable")
            for s, part in enumerate(np.split(order, np.cumsum(counts)[:-1])):
                if not len(part):
                    continue
                child = children[s]
                sub_rows = part if rows is None else rows[part]
                if s in answers:  # an exit the policy already evaluated: its answer stands
                    finish(child, sub_rows, answers[s][part])
                    continue
                reads = self._reads_at[child]
                sub_parts = [p[part] if i in reads else None for i, p in enumerate(parts)]
                carried = history if self.is_leaf[child] else deeper
                stack.append(
                    (
                        child,
                        sub_parts,
                        sub_rows,
                        None if k is None else k[part],
                        None if carried is None else carried[part],
                    )
                )
        return logits

    def every_exit(
        self, x: Any, k_cpt: Any = None, feeds: dict[str, list[dict[str, np.ndarray]]] | None = None
    ) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """Every exit's answer (N, exits, classes; boosted exits composed) and every
        router's scores on every example, through the segment models (no dense graph
        needed): what re-fitting an operating point on this export's own answers reads.
        ``feeds``: where given, every model's inputs are recorded in it by file (what
        calibrating a quantized export reads)."""
        x = self.check_inputs(x)
        n = x.shape[0]
        k = self._k_feature(self.k_cpt if k_cpt is None else k_cpt, n)
        heads: dict[int, np.ndarray] = {}
        scores: dict[int, np.ndarray] = {}

        def run(model: _Model, parts: list, with_k: bool = False) -> list[np.ndarray]:
            if feeds is not None:
                feed = {input_name(i): parts[i] for i in model.reads}
                if model.k_input:
                    feed[K_FEATURE] = k
                feeds.setdefault(model.file, []).append(feed)
            return model(parts, k)

        stack: list[tuple[int, list]] = [(0, [x])]
        while stack:
            index, parts = stack.pop()
            if self.is_leaf[index]:
                heads[index] = run(self._heads[index], parts)[0]
                continue
            segment, end = self._segments[index]
            parts = run(segment, parts)
            if end in self._routers:
                scores[end] = run(self._routers[end], parts)[0]
            stack.extend((child, parts) for child in self.children[end])
        answers = decisions.boosted_exits(self.shape, heads, self.boost)
        return np.stack([answers[leaf] for leaf in self.leaves], axis=1), scores

    def predict_dense(self, x: Any, k_cpt: Any = None) -> ExportPrediction:
        """Every exit on every example (``dense.onnx``), then the same decisions."""
        if self._dense is None:
            raise DynrouteError(
                f"export {self.folder} has no dense graph; export it with `dense` to get one"
            )
        model, entry = self._dense
        x = self.check_inputs(x)
        n = x.shape[0]
        if n == 0:
            empty = np.empty(0, dtype=np.int64)
            return ExportPrediction(
                np.empty((0, self.num_classes), np.float32), empty, empty.copy()
            )
        k_feature = self._k_feature(self.k_cpt if k_cpt is None else k_cpt, n)
        outputs = model([x], k_feature)
        heads = dict(zip(self.leaves, outputs[: len(self.leaves)], strict=True))
        leaf_logits = decisions.boosted_exits(self.shape, heads, self.boost)
        scores = dict(zip(self.junctions, outputs[len(self.leaves) :], strict=True))
        rule = self.decider
        answers, measures = rule.every_exit(leaf_logits)
        needed = {j: s for j, s in scores.items() if self._runs_router[j]}
        exits = rule.reached_exits(rule.dense_choices(measures, needed), n)
        stacked = np.stack([answers[leaf] for leaf in self.leaves], axis=0)
        at_leaf = np.asarray([self.leaf_position[int(e)] for e in exits], dtype=np.int64)
        logits = stacked[at_leaf, np.arange(n)]
        return ExportPrediction(logits, exits, self._path_macs[exits])


def load(folder: str | os.PathLike[str], **options: Any) -> ExportedModel:
    """Load an export folder (see ``ExportedModel`` for the options)."""
    return ExportedModel(folder, **options)
