"""Routing decisions at inference: how each policy (``dynroute.nn.policy``) decides.

The threshold policies are the field's standard early exiting (BranchyNet, MSDNet,
Shallow-Deep Networks). At a junction they evaluate its exit heads; an example leaves at
the exit that passes the threshold (the most confident, if several do), otherwise it goes
on: to the one non-exit sink, or, where there are several, to the one the router prefers
among them. Each policy charges what it runs (``dynroute.nn.macs.TreeCosts.policy_path_macs``).
``junction_choice`` is the one decision rule that both the dense reference
(``predict_dense``) and the early-exit engine apply.
"""

from __future__ import annotations

import math

import torch

from dynroute.nn.policy import Policy
from dynroute.nn.tree import RoutedTree


def confidence(logits: torch.Tensor) -> torch.Tensor:
    """Max softmax probability per example."""
    return torch.softmax(logits.float(), dim=1).max(dim=1).values


def normalised_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the softmax divided by log(classes), in [0, 1]."""
    log_p = torch.log_softmax(logits.float(), dim=1)
    return -(log_p.exp() * log_p).sum(dim=1) / math.log(logits.shape[1])


def exit_certainty(policy: Policy, logits: torch.Tensor) -> torch.Tensor:
    """Higher is more certain: 1 - normalised entropy for the entropy policy, else the
    confidence (of the combined answer, for the ensemble policy: pass those logits)."""
    if policy.name == "entropy":
        return 1.0 - normalised_entropy(logits)
    return confidence(logits)


def passes(policy: Policy, logits: torch.Tensor, position: int | None = None) -> torch.Tensor:
    """Whether an exit's prediction is certain enough to stop there; ``position`` is the
    exit's place in ``tree.leaves`` (the budgeted policy has a threshold per exit)."""
    if policy.name == "entropy":
        return normalised_entropy(logits) <= policy.threshold
    if policy.thresholds is not None:  # budgeted, or ensemble with a threshold per exit
        assert position is not None
        return confidence(logits) >= policy.thresholds[position]
    return confidence(logits) >= policy.threshold


def history_exits(tree: RoutedTree) -> dict[int, list[int]]:
    """Per leaf, the exits an example has passed before reaching it, in path order: the
    leaf sinks of every junction above it (its own junction's excluded). The ensemble
    policy combines their answers with the leaf's own."""
    out = {}
    for leaf in tree.leaves:
        parent = tree.parent[leaf]
        above = tree.path_to(parent) if parent >= 0 else []
        out[leaf] = [
            c
            for n in above
            if tree.nodes[n].is_junction and leaf not in tree.children_of[n]
            for c in tree.children_of[n]
            if tree.nodes[c].is_leaf
        ]
    return out


def combine(
    policy: Policy, position: int, history: torch.Tensor | None, logits: torch.Tensor
) -> torch.Tensor:
    """The ensemble policy's answer at the exit ``position`` (in ``tree.leaves``): log-probs
    of the weighted geometric mean of the exits passed (``history``: (N, m, classes)
    log-softmaxes, path order) and this exit's own ``logits`` (N, classes)."""
    assert policy.weights is not None and policy.biases is not None
    own = torch.log_softmax(logits.float(), dim=1)
    weights = own.new_tensor(policy.weights[position])
    bias = own.new_tensor(policy.biases[position])
    mixed = own * weights[-1] + bias
    if history is not None and history.shape[1]:
        mixed = mixed + (history * weights[:-1, None]).sum(dim=1)
    return torch.log_softmax(mixed, dim=1)


def combined_logits(
    tree: RoutedTree, policy: Policy, logits: dict[int, torch.Tensor]
) -> dict[int, torch.Tensor]:
    """Every leaf's ensemble answer from every leaf's raw logits (a dense pass's)."""
    own = {leaf: torch.log_softmax(logits[leaf].float(), dim=1) for leaf in tree.leaves}
    out = {}
    for position, (leaf, passed) in enumerate(history_exits(tree).items()):
        history = torch.stack([own[c] for c in passed], dim=1) if passed else None
        out[leaf] = combine(policy, position, history, logits[leaf])
    return out


def needs_router(tree: RoutedTree, junction: int, policy: Policy) -> bool:
    """Whether ``policy`` runs the junction's router (learned: always; thresholds: only to
    choose among several non-exit sinks)."""
    if not policy.uses_threshold:
        return True
    inner = [c for c in tree.children_of[junction] if not tree.nodes[c].is_leaf]
    return len(inner) != 1


def junction_choice(
    tree: RoutedTree,
    junction: int,
    policy: Policy,
    scores: torch.Tensor | None,
    exit_logits: dict[int, torch.Tensor],
) -> torch.Tensor:
    """Position (among the junction's sinks) each example goes to, shape (N,).

    ``scores``: the router's output (needed when ``needs_router``); ``exit_logits``: the
    logits of the junction's leaf sinks by node index (needed by threshold policies; the
    combined answers, ``combine``, for the ensemble policy).
    """
    children = tree.children_of[junction]
    if not policy.uses_threshold:
        assert scores is not None
        return scores.argmax(dim=1)
    positions = range(len(children))
    leaves = [k for k in positions if tree.nodes[children[k]].is_leaf]
    inner = [k for k in positions if not tree.nodes[children[k]].is_leaf]
    if not leaves:  # no exit to test here: the router chooses
        assert scores is not None
        return scores.argmax(dim=1)
    if inner:
        if len(inner) == 1:
            like = exit_logits[children[leaves[0]]]
            fallback = torch.full((like.shape[0],), inner[0], dtype=torch.long, device=like.device)
        else:
            assert scores is not None
            pick = scores[:, inner].argmax(dim=1)
            fallback = torch.tensor(inner, device=scores.device)[pick]
    else:  # only exits here: the router (which the policy then runs) picks one
        assert scores is not None
        fallback = scores.argmax(dim=1)
    certainty = torch.stack([exit_certainty(policy, exit_logits[children[k]]) for k in leaves], 1)
    where = tree.leaf_position
    passing = torch.stack(
        [passes(policy, exit_logits[children[k]], where[children[k]]) for k in leaves], 1
    )
    best = certainty.masked_fill(~passing, -1.0).argmax(dim=1)
    leaf_positions = torch.tensor(leaves, device=best.device)[best]
    return torch.where(passing.any(dim=1), leaf_positions, fallback)


def oracle_exits(
    logits: dict[int, torch.Tensor], labels: torch.Tensor, leaves: list[int], leaf_macs: list[int]
) -> torch.Tensor:
    """Each example's cheapest correct exit (node index), or the cheapest exit if none is."""
    order = sorted(range(len(leaves)), key=lambda k: leaf_macs[k])
    correct = torch.stack([logits[leaves[k]].argmax(dim=1) == labels for k in order], dim=1)
    first = correct.to(torch.uint8).argmax(dim=1)  # 0 (the cheapest) when none is correct
    return torch.tensor([leaves[k] for k in order], device=labels.device)[first]
