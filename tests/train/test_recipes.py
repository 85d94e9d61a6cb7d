"""The exit-training recipes: distillation, gradient equilibrium, weights, boosting."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dynroute.core.errors import DynrouteError
from dynroute.nn.macs import tree_costs
from dynroute.train.config import TrainConfig
from dynroute.train.strategies import make_strategy
from dynroute.train.trainer import Trainer
from helpers.toy_trees import random_tree
from helpers.training import synthetic_data, tiny_config


def batch(seed: int = 0, n: int = 32, features: int = 6, classes: int = 3):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, features, generator=gen), torch.randint(classes, (n,), generator=gen)


def chain_like(seed: int = 0, boost: float = 0.0):
    """A random tree whose every junction keeps an exit: several exits, a deepest one."""
    return random_tree(seed, max_depth=3, boost=boost)


def test_plain_options_are_the_mean_cross_entropy_and_the_actors_expected_error() -> None:
    tree = chain_like()
    x, y = batch()
    dense = tree.forward_dense(x)
    ce = {leaf: F.cross_entropy(dense.logits[leaf], y, reduction="none") for leaf in tree.leaves}
    multi = make_strategy("multi-exit", k_l2=0.0)
    multi.check(tree)
    expected = torch.stack(list(ce.values())).mean(0).mean()
    torch.testing.assert_close(multi.loss(tree, dense, y, 0.0, 1.0).loss, expected)
    actor = make_strategy("actor", k_l2=0.0, k_dec=0.0)
    actor.check(tree)
    out = actor.loss(tree, dense, y, 0.0, 1.0)
    branches = tree.branch_probabilities(dense.scores, 1.0, actor.epsilon)
    arrival = tree.arrival_probabilities(branches, len(y), x)
    expected = sum(arrival[leaf] * ce[leaf] for leaf in tree.leaves).mean()
    torch.testing.assert_close(out.loss, expected)


@pytest.mark.parametrize("teacher", ["deepest", "ensemble"])
def test_distillation_mixes_in_the_teachers_softened_answer(teacher: str) -> None:
    tree = chain_like()
    x, y = batch()
    dense = tree.forward_dense(x)
    strategy = make_strategy("multi-exit", distill=0.25, distill_temperature=2.0,
                             distill_teacher=teacher)  # fmt: skip
    strategy.check(tree)
    losses = strategy.exit_losses(tree, dense, y)
    macs = tree_costs(tree).oracle_path_macs
    deepest = max(tree.leaves, key=lambda leaf: (macs[leaf], leaf))
    soft = {leaf: torch.softmax(dense.logits[leaf] / 2.0, 1) for leaf in tree.leaves}
    target = soft[deepest] if teacher == "deepest" else torch.stack(list(soft.values())).mean(0)
    for leaf in tree.leaves:
        ce = F.cross_entropy(dense.logits[leaf], y, reduction="none")
        if teacher == "deepest" and leaf == deepest:
            torch.testing.assert_close(losses[leaf], ce)  # the teacher learns the labels
            continue
        kl = (target * (target.log() - soft[leaf].log())).sum(1)
        torch.testing.assert_close(losses[leaf], 0.75 * ce + 0.25 * 4.0 * kl)
    # The teacher's answer is a target, not a path for gradients.
    total = sum(losses[leaf] for leaf in tree.leaves if leaf != deepest).sum()
    head = tree.nodes[deepest].transform
    assert torch.autograd.grad(total, list(head.parameters()), allow_unused=True)[0] is None


def test_gradient_equilibrium_gives_each_node_the_mean_of_its_exits_gradients() -> None:
    """At the root (every exit below) that is the plain mean loss's gradient; at a node
    with one exit below it is n times the plain one, which divides by all n exits."""
    tree = chain_like(1)
    x, y = batch(1)

    def gradients(**options) -> dict[int, torch.Tensor]:
        strategy = make_strategy("multi-exit", k_l2=0.0, **options)
        strategy.check(tree)
        tree.zero_grad()
        dense = tree.forward_dense(x, None, strategy.gradient_scales(tree))
        strategy.loss(tree, dense, y, 0.0, 1.0).loss.backward()
        return {
            i: node.transform[0].weight.grad.clone()
            for i, node in enumerate(tree.nodes)
            if not node.is_leaf
        }

    plain, equilibrium = gradients(), gradients(gradient_equilibrium=True)
    n = len(tree.leaves)
    torch.testing.assert_close(equilibrium[0], plain[0])
    for node, grad in plain.items():
        below = tree.leaves_below[node]
        torch.testing.assert_close(equilibrium[node], grad * n / below, rtol=1e-4, atol=1e-6)
    assert any(tree.leaves_below[node] < n for node in plain)  # the test compares something
    scales = make_strategy("multi-exit", gradient_equilibrium=True).gradient_scales(tree)
    for j in tree.junctions:
        assert sum(scales[c] for c in tree.children_of[j]) == pytest.approx(1.0)


def test_the_ramp_brings_the_early_exits_in_over_the_first_half() -> None:
    """The deepest exit keeps its weight throughout (as SDN's final classifier does), so
    the deep layers' steps are never larger than plain training's."""
    tree = chain_like()
    strategy = make_strategy("multi-exit", exit_weight_schedule="ramp")
    strategy.check(tree)
    deepest = tree.leaves.index(strategy.teacher_leaf(tree))
    other = 1 - deepest if deepest < 2 else 0
    plain = [1 / len(tree.leaves)] * len(tree.leaves)
    strategy.set_progress(0.0)
    start = strategy.base_weights(tree, 1.0)
    assert start[deepest] == pytest.approx(plain[deepest]) and start[other] == 0.0
    strategy.set_progress(0.25)
    quarter = strategy.base_weights(tree, 1.0)
    assert quarter[deepest] == pytest.approx(plain[deepest])
    assert quarter[other] == pytest.approx(plain[other] / 2)
    strategy.set_progress(0.6)
    assert strategy.base_weights(tree, 1.0) == pytest.approx(plain)


def test_boosted_exits_add_the_previous_answer_and_learn_its_residual() -> None:
    tree = chain_like(2, boost=0.5)
    x, y = batch(2)
    tree.eval()
    heads = {}
    for leaf in tree.leaves:
        tree.nodes[leaf].transform.register_forward_hook(
            lambda module, args, out, leaf=leaf: heads.__setitem__(leaf, out)
        )
    answers = tree.forward_dense(x).logits
    history = tree.shape.history
    boosted = [leaf for leaf in tree.leaves if history[leaf]]
    assert boosted
    for leaf in tree.leaves:
        expected = heads[leaf]
        if history[leaf]:
            previous = torch.log_softmax(answers[history[leaf][-1]], 1)
            expected = expected + 0.5 * previous
        torch.testing.assert_close(answers[leaf], expected)
    tree.train()
    answers = tree.forward_dense(x).logits
    leaf = boosted[-1]
    earlier = tree.nodes[history[leaf][-1]].transform
    loss = F.cross_entropy(answers[leaf], y)
    assert torch.autograd.grad(loss, list(earlier.parameters()), allow_unused=True)[0] is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"strategy": "critic", "distill": 0.5}, "multi-exit and actor strategies only"),
        ({"strategy": "critic", "gradient_equilibrium": True}, "multi-exit and actor"),
        ({"model": "static-3", "strategy": "static", "exit_weight_schedule": "ramp"}, "only"),
        ({"model": "static-3", "strategy": "static", "boost": 1.0}, "several exits"),
        ({"strategy": "actor", "learned_exit_weights": True}, "multi-exit strategy only"),
        ({"strategy": "multi-exit", "distill_temperature": 2.0}, "only with `distill` > 0"),
        ({"strategy": "multi-exit", "distill": 1.0}, "`distill` must be"),
        ({"strategy": "multi-exit", "exit_weight_schedule": "cosine"}, "must be one of"),
        ({"strategy": "multi-exit", "boost": 1.5}, "`boost` must be"),
    ],
)
def test_recipe_options_are_checked(changes: dict, message: str) -> None:
    with pytest.raises(DynrouteError, match=message):
        TrainConfig(dataset="hybrid", **changes).validate()


@pytest.mark.slow
def test_learned_exit_weights_train_and_resume(tmp_path) -> None:
    config = tiny_config(strategy="multi-exit", learned_exit_weights=True, iterations=4)
    trainer = Trainer(config, synthetic_data(), tmp_path / "run", progress=False)
    trainer.run()
    learned = trainer.strategy.log_variances.detach().clone()
    assert learned.shape == (8,) and bool((learned != 0).any())
    again = Trainer(config, synthetic_data(), tmp_path / "run", progress=False)
    again.load()
    torch.testing.assert_close(again.strategy.log_variances.detach(), learned)


@pytest.mark.slow
def test_a_boosted_chain_trains_and_its_checkpoint_rebuilds_it(tmp_path) -> None:
    from dynroute.runs import open_run

    config = tiny_config(strategy="multi-exit", boost=1.0, iterations=2, eval_every=2)
    Trainer(config, synthetic_data(), tmp_path / "run", progress=False).run()
    tree = open_run(tmp_path / "run").load_tree("cpu")
    assert tree.boost == 1.0 and tree.spec["boost"] == 1.0
