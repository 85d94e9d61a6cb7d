"""A routed network is a tree of nodes.

Each ``Node`` carries its transformation, an optional router and its sinks
(children). A node with one sink always passes its output on; a node with
n >= 2 sinks is a *junction* whose router scores the sinks; a node without
sinks is a *leaf*: its transformation is a classifier and its output logits.

``RoutedTree`` is pure structure: it numbers the nodes in pre-order, knows each
node's parent and sinks, walks the tree (``walk``), and offers the two primitives
every strategy and evaluator is built from: a dense forward pass (every node on
every example) and routing probabilities derived from router scores. What a node
costs is counted in ``dynroute.nn.macs`` (docs/method.md §3).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dynroute.core.decisions import Shape

#: Router input for dynamic k_cpt is expressed in cost per ten million MACs (paper §4.6).
K_CPT_INPUT_SCALE = 1e7


@contextmanager
def evaluation_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put ``module`` in eval mode for a block and restore its training mode after."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def k_cpt_per_example(k_cpt: torch.Tensor | float, batch: int, like: torch.Tensor) -> torch.Tensor:
    """``k_cpt`` (a number, a 0-d or a (batch,) tensor) as a (batch,) tensor like ``like``."""
    if not isinstance(k_cpt, torch.Tensor):  # a fill, not a host-to-device copy (GPU stall)
        return torch.full((batch,), float(k_cpt), dtype=like.dtype, device=like.device)
    k = k_cpt.to(dtype=like.dtype, device=like.device)
    return k.expand(batch) if k.dim() == 0 else k.reshape(batch)


class Node(nn.Module):
    """One node of a routed tree: ``transform``, optional ``router``, ``sinks``."""

    def __init__(
        self,
        transform: nn.Module,
        sinks: Sequence[Node] = (),
        router: nn.Module | None = None,
        name: str = "",
    ) -> None:
        super().__init__()
        if len(sinks) >= 2 and router is None:
            raise ValueError(f"node {name!r} has {len(sinks)} sinks and needs a router")
        if len(sinks) < 2 and router is not None:
            raise ValueError(f"node {name!r} has a router but fewer than two sinks")
        self.transform = transform
        self.router = router
        self.sinks = nn.ModuleList(sinks)
        self.name = name

    @property
    def is_leaf(self) -> bool:
        return len(self.sinks) == 0

    @property
    def is_junction(self) -> bool:
        return len(self.sinks) >= 2

    def own_modules(self) -> Iterator[nn.Module]:
        """The node's transformation and router, not its sinks."""
        yield self.transform
        if self.router is not None:
            yield self.router

    def own_parameters(self) -> Iterator[nn.Parameter]:
        for module in self.own_modules():
            yield from module.parameters()


@dataclass
class DenseOutput:
    """Everything a dense pass computes: router scores and classifier logits."""

    scores: dict[int, torch.Tensor] = field(default_factory=dict)
    logits: dict[int, torch.Tensor] = field(default_factory=dict)


#: What a visit of ``RoutedTree.walk`` hands on: (sink index, payload) pairs.
Visit = Callable[[int, Any], Iterable[tuple[int, Any]]]


class RoutedTree(nn.Module):
    """A tree of ``Node`` objects with pre-order indexing, parents and sinks.

    ``spec`` is the plain-data description the tree was built from (see
    ``dynroute.nn.registry``); checkpoints store it so a model can be rebuilt
    from the checkpoint alone. ``input_shape`` (C, H, W) is the shape of one
    example, which MAC counting and input checks use.
    """

    def __init__(
        self,
        root: Node,
        input_shape: tuple[int, ...],
        num_classes: int,
        dynamic_k_cpt: bool = False,
        spec: dict[str, Any] | None = None,
        boost: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= boost <= 1.0:
            raise ValueError(f"boost must lie in [0, 1], got {boost!r}")
        self.root = root
        #: Boosted exits (BoostNet): each exit's answer adds ``boost`` times the
        #: log-softmax of the answer of the exit passed last (``decisions.boosted``); 0: none.
        self.boost = float(boost)
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.dynamic_k_cpt = dynamic_k_cpt
        self.spec = dict(spec or {})
        nodes: list[Node] = []
        parent: list[int] = []
        branch: list[int] = []

        def visit(node: Node, parent_index: int, branch_index: int) -> None:
            index = len(nodes)
            nodes.append(node)
            parent.append(parent_index)
            branch.append(branch_index)
            for k, sink in enumerate(node.sinks):
                visit(sink, index, k)

        visit(root, -1, -1)
        # A plain list: the nodes are already registered as submodules through ``root``.
        self.nodes: list[Node] = nodes
        self.parent = parent
        self.branch = branch
        self.children_of: list[list[int]] = [[] for _ in nodes]
        for i, p in enumerate(parent):
            if p >= 0:
                self.children_of[p].append(i)
        for i, node in enumerate(nodes):
            if not node.name:
                node.name = f"node{i}"
        names = [n.name for n in nodes]
        if len(set(names)) != len(names):
            raise ValueError("node names must be unique")
        self.leaves = [i for i, n in enumerate(nodes) if n.is_leaf]
        #: Each leaf's place in ``leaves`` (where per-exit parameters are stored).
        self.leaf_position = {leaf: k for k, leaf in enumerate(self.leaves)}
        self.junctions = [i for i, n in enumerate(nodes) if n.is_junction]
        self.leaves_below = self._count_leaves_below()
        # Floors live with the parameters (non-persistent buffers: not in checkpoints), so
        # a training step on a GPU never copies them from the host.
        for j in self.junctions:
            counts = [float(self.leaves_below[c]) for c in self.children_of[j]]
            floor = torch.tensor(counts) / sum(counts)
            self.register_buffer(f"_floor{j}", floor, persistent=False)

    # ------------------------------------------------------------------ structure
    def _count_leaves_below(self) -> list[int]:
        counts = [0] * len(self.nodes)
        for i in reversed(range(len(self.nodes))):
            kids = self.children_of[i]
            counts[i] = 1 if not kids else sum(counts[c] for c in kids)
        return counts

    def path_to(self, index: int) -> list[int]:
        """Node indices from the root to ``index`` inclusive."""
        path = [index]
        while self.parent[path[-1]] >= 0:
            path.append(self.parent[path[-1]])
        return path[::-1]

    @property
    def shape(self) -> Shape:
        """The tree's structure without torch (what ``dynroute.core.decisions`` decides on)."""
        shape = self.__dict__.get("_shape")
        if shape is None:
            shape = Shape(tuple(self.parent), tuple(tuple(c) for c in self.children_of), self.boost)
            self.__dict__["_shape"] = shape
        return shape

    def node_index(self, name: str) -> int:
        for i, node in enumerate(self.nodes):
            if node.name == name:
                return i
        raise KeyError(name)

    # ------------------------------------------------------------------ forward
    def walk(self, payload: Any, visit: Visit) -> None:
        """Depth-first walk from the root: ``visit(index, payload)`` runs a node and returns
        the (sink, payload) pairs to continue with (all sinks, some, or none).

        The one traversal the dense pass, MAC counting and the early-exit engine share.
        """
        stack: list[tuple[int, Any]] = [(0, payload)]
        while stack:
            index, item = stack.pop()
            stack.extend(reversed(list(visit(index, item))))

    def router_k_cpt(self, k_cpt: torch.Tensor | float | None, batch: int, like: torch.Tensor):
        """The k_cpt column routers see, or ``None`` for a fixed-cost tree."""
        if not self.dynamic_k_cpt:
            return None
        if k_cpt is None:
            raise ValueError("this tree routes on k_cpt: pass k_cpt to the forward pass")
        return k_cpt_per_example(k_cpt, batch, like).reshape(batch, 1) * K_CPT_INPUT_SCALE

    def run_node(self, index: int, signal: Any, k_feature: torch.Tensor | None):
        """Apply one node: returns (output, router scores or None)."""
        out = self.nodes[index].transform(signal)
        return out, self.router_scores(index, out, k_feature)

    def router_scores(
        self, index: int, out: Any, k_feature: torch.Tensor | None
    ) -> torch.Tensor | None:
        """The node's router on its own output (None for a node without a router)."""
        router = self.nodes[index].router
        if router is None:
            return None
        return router(out) if k_feature is None else router(out, k_feature)

    def forward_dense(
        self,
        x: torch.Tensor,
        k_cpt: torch.Tensor | float | None = None,
        gradient_scales: dict[int, float] | None = None,
    ) -> DenseOutput:
        """Evaluate every node on every example (what the actor loss needs).

        ``gradient_scales`` (training only) multiplies the gradient that flows back from a
        node into its parent's output, by node (gradient equilibrium); the forward pass is
        unchanged. A boosted tree's logits are its exits' answers (``boosted_logits``).
        """
        k_feature = self.router_k_cpt(k_cpt, x.shape[0], x)
        result = DenseOutput()
        scales = gradient_scales or {}

        def visit(index: int, signal: Any) -> list[tuple[int, Any]]:
            out, scores = self.run_node(index, signal, k_feature)
            if scores is not None:
                result.scores[index] = scores
            if self.nodes[index].is_leaf:
                result.logits[index] = out
            return [
                (child, scale_gradient(out, scales[child]) if child in scales else out)
                for child in self.children_of[index]
            ]

        self.walk(x, visit)
        if self.boost:
            result.logits = self.boosted_logits(result.logits)
        return result

    def forward_dense_by_k(self, x: torch.Tensor, k_values: list[float]) -> list[DenseOutput]:
        """``forward_dense`` at every k_cpt of ``k_values``, running every node once: only
        the routers read k_cpt, so only they run again per value (a dynamic-k_cpt net's
        evaluation at its whole k_cpt set costs one pass, not one per value)."""
        if not self.dynamic_k_cpt or not k_values:
            out = self.forward_dense(x, None)
            return [out for _ in k_values]
        first = float(k_values[0])
        kept: dict[int, Any] = {}
        base = DenseOutput()
        k_feature = self.router_k_cpt(first, x.shape[0], x)

        def visit(index: int, signal: Any) -> list[tuple[int, Any]]:
            out, scores = self.run_node(index, signal, k_feature)
            if scores is not None:
                base.scores[index] = scores
                kept[index] = out
            if self.nodes[index].is_leaf:
                base.logits[index] = out
            return [(child, out) for child in self.children_of[index]]

        self.walk(x, visit)
        if self.boost:
            base.logits = self.boosted_logits(base.logits)
        results = [base]
        for k in k_values[1:]:
            feature = self.router_k_cpt(float(k), x.shape[0], x)
            scores = {j: self.router_scores(j, out, feature) for j, out in kept.items()}
            results.append(DenseOutput(scores, base.logits))
        return results

    def boosted_logits(self, heads: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Each exit's answer from every exit head's output: its own output plus ``boost``
        times the log-softmax of the answer of the exit it passed last (the running
        ensemble of BoostNet, up to a constant per example). While training, the earlier
        answer is a constant: each exit learns what the exits before it got wrong."""
        history = self.shape.history
        answers: dict[int, torch.Tensor] = {}
        for leaf in sorted(heads, key=lambda leaf: len(history[leaf])):
            answer = heads[leaf]
            if history[leaf]:
                previous = torch.log_softmax(answers[history[leaf][-1]].float(), dim=1)
                if self.training:
                    previous = previous.detach()
                answer = answer + (self.boost * previous).to(answer.dtype)
            answers[leaf] = answer
        return answers

    def forward(self, x: torch.Tensor, k_cpt: torch.Tensor | float | None = None) -> DenseOutput:
        return self.forward_dense(x, k_cpt)

    # ------------------------------------------------------------------ routing
    def exploration_floor(self, junction: int) -> torch.Tensor:
        """Share of the exploration floor per sink: proportional to leaves below it."""
        return getattr(self, f"_floor{junction}")

    def branch_probabilities(
        self, scores: dict[int, torch.Tensor], tau: float, epsilon: float = 1e-6
    ) -> dict[int, torch.Tensor]:
        """Training policy per junction: softmax(s / tau) mixed with a floor epsilon."""
        out = {}
        for j, s in scores.items():
            floor = self.exploration_floor(j).to(device=s.device, dtype=s.dtype)
            out[j] = (1.0 - epsilon) * torch.softmax(s / tau, dim=1) + epsilon * floor
        return out

    def hard_branches(self, scores: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Inference policy per junction: one-hot argmax of the scores."""
        return {
            j: nn.functional.one_hot(s.argmax(dim=1), s.shape[1]).to(s.dtype)
            for j, s in scores.items()
        }

    def arrival_probabilities(
        self, branches: dict[int, torch.Tensor], batch: int, like: torch.Tensor
    ) -> list[torch.Tensor]:
        """Probability that each example reaches each node (product along its path)."""
        probs: list[torch.Tensor] = [torch.ones(batch, dtype=like.dtype, device=like.device)]
        for i in range(1, len(self.nodes)):
            p, k = self.parent[i], self.branch[i]
            if p in branches:
                probs.append(probs[p] * branches[p][:, k])
            else:
                probs.append(probs[p])
        return probs


class _ScaleGradient(torch.autograd.Function):
    """The identity forward; the gradient times ``scale`` backward."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


def scale_gradient(signal: Any, scale: float) -> Any:
    """``signal`` (a tensor or a list/tuple of tensors) with its gradient scaled by ``scale``."""
    if isinstance(signal, torch.Tensor):
        return _ScaleGradient.apply(signal, scale)
    return type(signal)(scale_gradient(part, scale) for part in signal)


def coarsest(signal: Any) -> torch.Tensor:
    """Flattened coarsest map of a signal (a tensor or a fine-to-coarse list)."""
    if isinstance(signal, (list, tuple)):
        signal = signal[-1]
    return signal.flatten(1)
