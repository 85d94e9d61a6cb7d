"""Loss terms of the strategies against brute force and hand computation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dynroute.core.errors import DynrouteError
from dynroute.nn.heads import Classifier, Router
from dynroute.nn.macs import tree_costs
from dynroute.nn.tree import K_CPT_INPUT_SCALE, DenseOutput, Node, RoutedTree
from dynroute.train.strategies import (
    ActorStrategy,
    CriticStrategy,
    make_strategy,
    node_weight_norms,
    subtree_costs,
)
from dynroute.train.talr import apply_talr, talr_scales
from helpers.toy_trees import random_tree


def brute_force_expected_cost(tree, dense, labels, k_cpt, tau, epsilon):
    """E[c_inf] by enumerating every root-to-leaf path and its probability."""
    macs = tree_costs(tree).node_macs
    total = torch.zeros(labels.shape[0])
    for leaf in tree.leaves:
        path = tree.path_to(leaf)
        prob = torch.ones(labels.shape[0])
        for parent, child in zip(path[:-1], path[1:], strict=False):
            kids = tree.children_of[parent]
            if len(kids) < 2:
                continue
            counts = torch.tensor([float(tree.leaves_below[c]) for c in kids])
            policy = torch.softmax(dense.scores[parent] / tau, dim=1)
            policy = (1 - epsilon) * policy + epsilon * counts / counts.sum()
            prob = prob * policy[:, kids.index(child)]
        error = F.cross_entropy(dense.logits[leaf], labels, reduction="none")
        total = total + prob * (error + k_cpt * sum(macs[i] for i in path))
    return total.mean()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_actor_loss_and_gradients_equal_brute_force(seed):
    tree = random_tree(seed)
    assert tree.junctions, "the toy tree must route"
    x = torch.randn(16, 6)
    labels = torch.randint(0, 3, (16,))
    k_cpt, tau = 1e-3, 0.7
    actor = ActorStrategy(k_l2=0.0, k_dec=0.0, epsilon=1e-2)

    loss = actor.loss(tree, tree(x), labels, k_cpt, tau).loss
    grads = torch.autograd.grad(loss, list(tree.parameters()), allow_unused=True)
    reference = brute_force_expected_cost(tree, tree(x), labels, k_cpt, tau, 1e-2)
    ref_grads = torch.autograd.grad(reference, list(tree.parameters()), allow_unused=True)

    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    for g, r in zip(grads, ref_grads, strict=True):
        if r is None:
            assert g is None or torch.count_nonzero(g) == 0
        else:
            torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)


def test_actor_decisiveness_and_l2_terms():
    tree = random_tree(5)
    x = torch.randn(8, 6)
    labels = torch.randint(0, 3, (8,))
    dense = tree(x)
    base = ActorStrategy(k_l2=0.0, k_dec=0.0).loss(tree, dense, labels, 0.0, 1.0).loss
    with_dec = ActorStrategy(k_l2=0.0, k_dec=0.5).loss(tree, dense, labels, 0.0, 1.0)
    expected = sum(
        (with_dec.arrival[j] * dense.scores[j].pow(2).sum(1)).mean() for j in tree.junctions
    )
    assert (with_dec.loss - base).item() == pytest.approx(0.5 * expected.item(), rel=1e-5)

    with_l2 = ActorStrategy(k_l2=0.1, k_dec=0.0).loss(tree, dense, labels, 0.0, 1.0)
    norms = [sum(p.pow(2).sum() for p in n.own_parameters() if p.dim() > 1) for n in tree.nodes]
    l2 = sum(p.mean() * n for p, n in zip(with_l2.arrival, norms, strict=True))
    assert (with_l2.loss - base).item() == pytest.approx(0.1 * l2.item(), rel=1e-5)


def test_node_weight_norms_value_and_gradient_match_plain_autograd():
    tree = three_level_toy()  # node "last" has no weights: its norm is 0
    weights = [[p for p in n.own_parameters() if p.dim() > 1] for n in tree.nodes]
    assert any(not w for w in weights) and sum(map(len, weights)) > 2
    coefficients = torch.rand(len(tree.nodes))
    norms = node_weight_norms(tree)
    fast = torch.autograd.grad((coefficients * norms).sum(), [w for ws in weights for w in ws])
    plain_norms = torch.stack(
        [sum((w.pow(2).sum() for w in ws), torch.zeros(())) for ws in weights]
    )
    plain = torch.autograd.grad(
        (coefficients * plain_norms).sum(), [w for ws in weights for w in ws]
    )
    torch.testing.assert_close(norms, plain_norms)
    for got, expected in zip(fast, plain, strict=True):
        torch.testing.assert_close(got, expected)


def test_regularised_policy_sends_l2_gradient_into_routers():
    tree = random_tree(7)
    x = torch.randn(8, 6)
    labels = torch.randint(0, 3, (8,))
    router_params = [p for j in tree.junctions for p in tree.nodes[j].router.parameters()]

    def router_grad(regularise: bool) -> torch.Tensor:
        actor = ActorStrategy(k_l2=1.0, k_dec=0.0, regularise_policy=regularise)
        plain = ActorStrategy(k_l2=0.0, k_dec=0.0)
        dense = tree(x)
        diff = (
            actor.loss(tree, dense, labels, 0.0, 1.0).loss
            - plain.loss(tree, dense, labels, 0.0, 1.0).loss
        )
        grads = torch.autograd.grad(diff, router_params, allow_unused=True)
        return sum(g.abs().sum() for g in grads if g is not None)

    # With stop-gradient the L2 term only reaches router weights through their own norm.
    assert router_grad(True) != pytest.approx(router_grad(False))


def three_level_toy():
    """root --(exit a | middle)--, middle --(exit b | leaf node -> exit c)."""
    torch.manual_seed(0)
    exit_a = Node(Classifier(2, 2), name="a")
    exit_b = Node(Classifier(2, 2), name="b")
    last = Node(torch.nn.Identity(), [Node(Classifier(2, 2), name="c")], name="last")
    middle = Node(torch.nn.Identity(), [exit_b, last], Router(2, 2), name="middle")
    root = Node(torch.nn.Identity(), [exit_a, middle], Router(2, 2), name="root")
    return RoutedTree(root, (2,), 2)


def test_critic_targets_by_hand():
    tree = three_level_toy()
    a, m, b, last, c = (tree.node_index(n) for n in ["a", "middle", "b", "last", "c"])
    root = 0
    macs = tree_costs(tree).node_macs
    labels = torch.tensor([0])
    k = torch.tensor([0.01])
    # Hand-made outputs: scores and logits for one example.
    logits = {
        a: torch.tensor([[0.0, 1.0]]),  # wrong, CE = log(1 + e)
        b: torch.tensor([[2.0, 0.0]]),  # right, CE = log(1 + e^-2)
        c: torch.tensor([[5.0, 0.0]]),  # right, CE = log(1 + e^-5)
    }
    dense = DenseOutput(
        scores={root: torch.tensor([[0.0, 1.0]]), m: torch.tensor([[1.0, 0.0]])},
        logits=logits,
    )
    ce = {n: math.log(1 + math.exp(v)) for n, v in [(a, 1.0), (b, -2.0), (c, -5.0)]}
    cost = {n: 0.01 * macs[n] for n in range(len(tree.nodes))}
    leaf_b = cost[b] + ce[b]
    leaf_c = cost[c] + cost[last] + ce[c]
    # Pragmatic: middle follows its argmax (exit b).
    prag = subtree_costs(tree, dense, labels, k, "pragmatic", "cross-entropy")
    assert prag[m].item() == pytest.approx(cost[m] + leaf_b, rel=1e-6)
    assert prag[a].item() == pytest.approx(cost[a] + ce[a], rel=1e-6)
    assert prag[root].item() == pytest.approx(cost[root] + prag[m].item(), rel=1e-6)
    # Optimistic: middle takes the cheaper of exit b and the deeper exit c.
    opt = subtree_costs(tree, dense, labels, k, "optimistic", "cross-entropy")
    assert opt[m].item() == pytest.approx(cost[m] + min(leaf_b, leaf_c), rel=1e-6)
    # Classification error: 0/1 instead of cross-entropy.
    err = subtree_costs(tree, dense, labels, k, "pragmatic", "classification")
    assert err[a].item() == pytest.approx(cost[a] + 1.0, rel=1e-6)
    assert err[m].item() == pytest.approx(cost[m] + cost[b], rel=1e-6)
    opt_err = subtree_costs(tree, dense, labels, k, "optimistic", "classification")
    assert opt_err[m].item() == pytest.approx(cost[m] + min(cost[b], cost[c] + cost[last]))


def test_critic_routers_get_no_gradient_through_probabilities():
    tree = random_tree(3)
    x = torch.randn(8, 6)
    labels = torch.randint(0, 3, (8,))
    critic = CriticStrategy(k_l2=0.0, k_cre=0.0)
    out = critic.loss(tree, tree(x), labels, 0.0, 0.1)
    router_params = [p for j in tree.junctions for p in tree.nodes[j].router.parameters()]
    grads = torch.autograd.grad(out.loss, router_params, allow_unused=True)
    assert all(g is None or torch.count_nonzero(g) == 0 for g in grads)
    # With the regression term on, the routers do learn.
    critic = CriticStrategy(k_l2=0.0, k_cre=1.0)
    grads = torch.autograd.grad(
        critic.loss(tree, tree(x), labels, 0.0, 0.1).loss, router_params, allow_unused=True
    )
    assert any(g is not None and torch.count_nonzero(g) > 0 for g in grads)


def test_talr_scales_and_application():
    tree = random_tree(4)
    x = torch.randn(32, 6)
    labels = torch.randint(0, 3, (32,))
    actor = ActorStrategy()
    out = actor.loss(tree, tree(x), labels, 0.0, 1.0)
    scales = talr_scales(out.arrival)
    for i, p in enumerate(out.arrival):
        assert scales[i].item() == pytest.approx(1 / math.sqrt(p.pow(2).mean().item()), rel=1e-5)
    assert scales[0].item() == pytest.approx(1.0)
    out.loss.backward()
    before = [p.grad.clone() for p in tree.parameters()]
    apply_talr(tree, scales)
    after = {id(p): p.grad for p in tree.parameters()}
    for index, node in enumerate(tree.nodes):
        for p in node.own_parameters():
            k = [id(q) for q in tree.parameters()].index(id(p))
            torch.testing.assert_close(after[id(p)], before[k] * scales[index])
    # TALR off means scale 1: gradients stay untouched.
    snapshot = [p.grad.clone() for p in tree.parameters()]
    apply_talr(tree, torch.ones(len(tree.nodes)))
    for p, s in zip(tree.parameters(), snapshot, strict=True):
        torch.testing.assert_close(p.grad, s)


def test_dynamic_k_cpt_reaches_router_input():
    tree = random_tree(2, dynamic_k_cpt=True)
    seen = []
    router = tree.nodes[tree.junctions[0]].router
    handle = router.layers[0].register_forward_hook(lambda m, i, o: seen.append(i[0]))
    x = torch.randn(4, 6)
    k = torch.tensor([0.0, 1e-9, 4e-9, 6.4e-8])
    tree(x, k)
    handle.remove()
    torch.testing.assert_close(seen[0][:, -1], k * K_CPT_INPUT_SCALE)
    with pytest.raises(ValueError, match="k_cpt"):
        tree(x)


def test_make_strategy_validation():
    with pytest.raises(DynrouteError, match="unknown strategy"):
        make_strategy("greedy")
    with pytest.raises(DynrouteError, match="does not take"):
        make_strategy("static", k_cre=1.0)
    with pytest.raises(DynrouteError, match="`critic_target` must be one of pragmatic"):
        make_strategy("critic", critic_target="lazy")
    with pytest.raises(DynrouteError, match="does not take"):
        make_strategy("static", k_dec=0.1)  # the static strategy has no routers to push
    with pytest.raises(DynrouteError, match="without junctions"):
        make_strategy("static").check(random_tree(0))


def test_multi_exit_loss_is_the_weighted_mean_of_every_exit():
    tree = random_tree(1)
    x, labels = torch.randn(16, 6), torch.randint(0, 3, (16,))
    dense = tree(x)
    ce = [F.cross_entropy(dense.logits[leaf], labels) for leaf in tree.leaves]
    out = make_strategy("multi-exit", k_l2=0.0).loss(tree, dense, labels, 0.0, 1.0)
    assert out.loss.item() == pytest.approx(sum(ce).item() / len(ce), rel=1e-5)
    weights = tuple(float(i + 1) for i in range(len(tree.leaves)))
    out = make_strategy("multi-exit", k_l2=0.0, exit_weights=weights).loss(
        tree, dense, labels, 0.0, 1.0
    )
    expected = sum(w * c for w, c in zip(weights, ce, strict=True)) / sum(weights)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    router = [p for j in tree.junctions for p in tree.nodes[j].router.parameters()]
    grads = torch.autograd.grad(out.loss, router, allow_unused=True)
    assert all(g is None or not g.any() for g in grads)  # routers learn nothing here
    with pytest.raises(DynrouteError, match="`exit_weights` has 2 values"):
        make_strategy("multi-exit", exit_weights=(1.0, 1.0)).check(tree)
