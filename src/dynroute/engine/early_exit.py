"""Early-exit inference: each example runs only the nodes on its own path.

The dense pass evaluates every node on every example; that is what training
needs, but at inference it wastes the work the routers decided to skip. The
engine instead walks the tree with a work stack of sub-batches. At every
junction it splits the current sub-batch by the routers' argmax decision
(``index_select`` compaction), pushes each non-empty part to the sink it
chose, and at the leaves scatters logits back into the original order.

In eval mode every layer acts on each example independently (batch norm uses
its running statistics), so the engine returns what the dense reference
returns: the same exits and MACs, and logits equal up to floating-point
summation order.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dynroute.core.decisions import boosted
from dynroute.core.errors import DynrouteError
from dynroute.core.policy import LEARNED, Policy
from dynroute.core.probabilities import log_softmax
from dynroute.engine.fold import fold_batchnorm as fold_batchnorm_into
from dynroute.nn.macs import policy_path_macs
from dynroute.nn.prediction import Prediction, check_images
from dynroute.nn.routing import decider, to_numpy
from dynroute.nn.tree import RoutedTree
from dynroute.platform.devices import bf16_on, use_channels_last


def select_rows(signal: Any, rows: torch.Tensor) -> Any:
    """The examples ``rows`` of a signal (a tensor or a nested list/tuple of tensors)."""
    if isinstance(signal, torch.Tensor):
        if signal.is_contiguous():
            return signal.index_select(0, rows)
        if signal.dim() == 4 and signal.is_contiguous(memory_format=torch.channels_last):
            # index_select would drop the channels-last strides and advanced indexing is
            # ~3x slower; on the NHWC view a row is one contiguous block.
            return signal.permute(0, 2, 3, 1).index_select(0, rows).permute(0, 3, 1, 2)
        return signal[rows]
    return type(signal)(select_rows(part, rows) for part in signal)


def is_channels_last(module: torch.nn.Module) -> bool:
    """Whether the module's convolution weights are stored channels-last."""
    for m in module.modules():
        if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1):
            weight = m.weight
            return weight.is_contiguous(memory_format=torch.channels_last) and not (
                weight.is_contiguous()
            )
    return False


def _whole(signal: Any) -> Any:
    return signal


def out_device(signal: Any) -> torch.device:
    """The device of a signal (a tensor or a nested list/tuple of tensors)."""
    while not isinstance(signal, torch.Tensor):
        signal = signal[0]
    return signal.device


# A node's pending work: its input, the original rows it holds (None while it still
# holds the whole batch in order), their k_cpt feature and, where the policy reads them,
# the raw log-softmaxes of the exits they passed ((rows, m, classes) NumPy, path order).
_Work = tuple[Any, torch.Tensor | None, torch.Tensor | None, np.ndarray | None]


class EarlyExitEngine:
    """Hard-routing inference that skips every node an example does not reach.

    ``channels_last=True`` converts the tree's convolution weights and the
    inputs to channels-last memory format (faster with oneDNN on CPU and with
    tensor cores on GPU); the default follows the layout the tree already has.
    ``fold_batchnorm=True`` folds the (eval-mode) tree's batch norms into the
    layers before them, in place: faster, equal to the dense pass up to rounding.
    ``bf16=True`` runs the nodes in bfloat16 where the device computes it natively (NCHW
    on a CPU); answers then differ from float32 ones by bf16's rounding.
    """

    def __init__(
        self,
        tree: RoutedTree,
        channels_last: bool | None = None,
        fold_batchnorm: bool = False,
        policy: Policy = LEARNED,
        bf16: bool = False,
    ) -> None:
        if not policy.deployable:
            raise DynrouteError(
                f"the {policy.name} policy needs every exit's answer and the labels: it is a "
                "bound to compare with (dynroute policies), not a way to run a network"
            )
        self.tree = tree
        self.policy = policy
        #: The one implementation of the policy's decisions (``dynroute.core.decisions``).
        self.decider = decider(tree, policy)
        #: The k_cpt input used when a call gives none (set by ``from_run``).
        self.default_k_cpt: float | None = None
        # Which junctions run their router under this policy (exit rules: only to choose
        # among several non-exit sinks), and which sinks are exits whose heads decide.
        self._runs_router = [
            node.is_junction and self.decider.runs_router(i) for i, node in enumerate(tree.nodes)
        ]
        # Where answers build on the exits passed (boosted exits, combined answers), their
        # heads run and their answers are carried even under the routers.
        self.boost = tree.boost
        self._carries = self.decider.needs_history or bool(tree.boost)
        self._exit_sinks = [
            [c for c in tree.children_of[i] if tree.nodes[c].is_leaf]
            if self.decider.runs_heads
            else []
            for i in range(len(tree.nodes))
        ]
        self._position = {leaf: k for k, leaf in enumerate(tree.leaves)}
        if fold_batchnorm:
            fold_batchnorm_into(tree)
        device = next(tree.parameters()).device
        #: bfloat16 autocast for the nodes (``devices.bf16_on``: CUDA, or a CPU that has it);
        #: answers and decisions stay float32.
        self.bf16 = bf16_on(device, bf16)
        if channels_last is None:
            channels_last = is_channels_last(tree) and use_channels_last(device, self.bf16)
        self.channels_last = channels_last
        if channels_last:
            tree.to(memory_format=torch.channels_last)
        # What each node reads of its input; a leaf head that uses only part of the
        # signal (``reads``) gets only that part compacted when the batch splits.
        self._reads = [
            getattr(node.transform, "reads", _whole) if node.is_leaf else _whole
            for node in tree.nodes
        ]
        # Cumulative MACs of the root-to-leaf path under the policy, looked up by exit index.
        path_macs = policy_path_macs(tree, policy)
        self._path_macs = torch.tensor(path_macs, dtype=torch.long)
        self._path_macs_by_device: dict[torch.device, torch.Tensor] = {}

    @classmethod
    def from_run(cls, path: Any, device: Any = "cpu", **options: Any) -> EarlyExitEngine:
        """The engine of a run directory at its calibrated operating point (``dynroute
        calibrate``; ``dynroute.policies.resolve``): policy and threshold, and the k_cpt
        input of a dynamic-k_cpt net, which calls then need not pass. Without a calibration:
        the learned routers."""
        from dynroute.policies.resolve import resolve_operating_point
        from dynroute.runs import open_run

        run = open_run(path)
        point = resolve_operating_point(run)
        engine = cls(run.load_tree(device), policy=point.policy, **options)
        engine.default_k_cpt = point.k_cpt
        return engine

    def _path_macs_on(self, device: torch.device) -> torch.Tensor:
        if device not in self._path_macs_by_device:
            self._path_macs_by_device[device] = self._path_macs.to(device)
        return self._path_macs_by_device[device]

    def __call__(self, x: torch.Tensor, k_cpt: torch.Tensor | float | None = None) -> Prediction:
        return self.predict(x, k_cpt)

    def predict(self, x: torch.Tensor, k_cpt: torch.Tensor | float | None = None) -> Prediction:
        """Route ``x`` (N examples) by argmax and run each example's path only.

        ``k_cpt`` is needed for dynamic-k_cpt trees: a scalar or one value per
        example, compacted along with the examples.
        """
        tree = self.tree
        if k_cpt is None:
            k_cpt = self.default_k_cpt
        if tree.training:
            raise DynrouteError("the early-exit engine needs the tree in eval mode (tree.eval())")
        weight = next(tree.parameters())
        with torch.inference_mode():
            x = check_images(x, tree.input_shape, weight.dtype).to(weight.device)
            device = weight.device
            if self.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            n = int(x.shape[0])
            exits = torch.empty(n, dtype=torch.long, device=device)
            if n == 0:
                logits = x.new_empty((0, tree.num_classes))
                return Prediction(logits, exits, exits.clone())
            k_feature = tree.router_k_cpt(k_cpt, n, x)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16):
                logits = self._run(x, n, k_feature, exits)
            return Prediction(logits.float(), exits, self._path_macs_on(device)[exits])

    def _run(
        self, x: torch.Tensor, n: int, k_feature: torch.Tensor | None, exits: torch.Tensor
    ) -> torch.Tensor:
        """Depth-first walk over sub-batches; fills ``exits`` and returns the logits."""
        tree = self.tree
        children_of = tree.children_of
        logits: torch.Tensor | None = None

        rule = self.decider
        position = self._position

        def visit(index: int, work: _Work) -> list[tuple[int, _Work]]:
            nonlocal logits
            signal, rows, k, history = work
            out = tree.nodes[index].transform(signal)
            children = children_of[index]
            if not children:
                if rule.transforms or self.boost:
                    answer = boosted(to_numpy(out), history, self.boost)
                    if rule.transforms:
                        answer = rule.answer(position[index], history, answer)
                    out = torch.from_numpy(answer).to(out.device)
                if logits is None:
                    logits = out.new_empty((n, out.shape[1]))
                if rows is None:
                    logits.copy_(out)
                    exits.fill_(index)
                else:
                    logits.index_copy_(0, rows, out)
                    exits.index_fill_(0, rows, index)
                return []
            if len(children) == 1:
                return [(children[0], (out, rows, k, history))]
            scores = tree.router_scores(index, out, k) if self._runs_router[index] else None
            raw = {
                c: boosted(
                    to_numpy(tree.nodes[c].transform(self._reads[c](out))), history, self.boost
                )
                for c in self._exit_sinks[index]
            }
            measures = {}
            if rule.reads_exits:
                answers = {c: rule.answer(position[c], history, z) for c, z in raw.items()}
                measures = {
                    k_: rule.measure(position[c], history, answers[c])
                    for k_, c in enumerate(children)
                    if c in answers
                }
            # Exits taken here read only the exits before them; deeper nodes carry these too.
            deeper = history
            if self._carries and raw:
                passed = np.stack([log_softmax(z) for z in raw.values()], 1)
                deeper = passed if history is None else np.concatenate([history, passed], 1)
            carried = [history if tree.nodes[c].is_leaf else deeper for c in children]
            choice = rule.choose(index, None if scores is None else to_numpy(scores), measures)
            decision = torch.from_numpy(choice).to(out_device(out))
            # The one host sync per junction: how many examples go to each sink.
            counts = np.bincount(choice, minlength=len(children)).tolist()
            size = int(choice.shape[0])
            if size in counts:  # everyone agrees: pass the sub-batch on untouched
                chosen = counts.index(size)
                return [(children[chosen], (out, rows, k, carried[chosen]))]
            order = torch.argsort(decision, stable=True)
            order_np = np.argsort(choice, kind="stable")
            parts_np = np.split(order_np, np.cumsum(counts)[:-1])
            return [
                (
                    child,
                    (
                        select_rows(self._reads[child](out), part),
                        part if rows is None else rows.index_select(0, part),
                        None if k is None else k.index_select(0, part),
                        None if past is None else past[part_np],
                    ),
                )
                for child, part, part_np, count, past in zip(
                    children, order.split(counts), parts_np, counts, carried, strict=True
                )
                if count
            ]

        tree.walk((x, None, k_feature, None), visit)
        assert logits is not None  # every example ends at a leaf
        return logits
