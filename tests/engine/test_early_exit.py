"""The early-exit engine must reproduce the dense hard-routing reference exactly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dynroute.core.errors import DynrouteError
from dynroute.core.policy import LEARNED, Policy
from dynroute.engine.early_exit import EarlyExitEngine, select_rows
from dynroute.engine.fold import fold_batchnorm
from dynroute.nn.models import build_model
from dynroute.nn.prediction import Prediction, predict_dense
from helpers.routing import fitted_policies, random_conv_tree, scramble_routing
from helpers.toy_trees import random_tree

K_CPT_SET = torch.tensor([0, 1e-9, 2e-9, 4e-9, 8e-9, 1.6e-8, 3.2e-8, 6.4e-8])


def assert_same(engine: Prediction, dense: Prediction) -> None:
    assert torch.equal(engine.exits, dense.exits)
    assert torch.equal(engine.macs, dense.macs)
    assert torch.equal(engine.predictions, dense.predictions)
    torch.testing.assert_close(engine.logits, dense.logits, rtol=1e-4, atol=1e-4)


def check_tree(
    tree, x: torch.Tensor, k_cpt=None, single: int = 4, policy: Policy = LEARNED
) -> Prediction:
    """Engine == dense on the batch, and on single examples against the batch reference."""
    engine = EarlyExitEngine(tree, policy=policy)
    dense = predict_dense(tree, x, k_cpt, policy=policy)
    assert_same(engine(x, k_cpt), dense)
    for i in range(single):
        k = k_cpt[i : i + 1] if isinstance(k_cpt, torch.Tensor) else k_cpt
        one = engine(x[i : i + 1], k)
        assert one.exits.item() == dense.exits[i].item()
        assert one.macs.item() == dense.macs[i].item()
        torch.testing.assert_close(one.logits[0], dense.logits[i], rtol=1e-4, atol=1e-4)
    return dense


def k_cpt_per_example(n: int, seed: int) -> torch.Tensor:
    pick = torch.randint(len(K_CPT_SET), (n,), generator=torch.Generator().manual_seed(seed))
    return K_CPT_SET[pick]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("dynamic", [False, True])
def test_random_vector_trees(seed: int, dynamic: bool) -> None:
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(seed))
    k = k_cpt_per_example(64, seed) if dynamic else None
    tree = scramble_routing(random_tree(seed, max_depth=4, dynamic_k_cpt=dynamic), x, k)
    dense = check_tree(tree, x, k)
    assert dense.exits.unique().numel() >= 2  # routing is mixed


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("dynamic", [False, True])
def test_random_conv_trees(seed: int, dynamic: bool) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(64, 3, 4, 4, generator=gen) * torch.rand(64, 1, 1, 1, generator=gen)
    k = k_cpt_per_example(64, seed) if dynamic else None
    tree = scramble_routing(random_conv_tree(seed, dynamic=dynamic), x, k)
    dense = check_tree(tree, x, k)
    assert dense.exits.unique().numel() >= 2


THRESHOLD_POLICIES = [Policy("confidence", 0.45), Policy("entropy", 0.9)]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("policy", THRESHOLD_POLICIES, ids=lambda p: p.name)
def test_threshold_policies_on_random_trees(seed: int, policy: Policy) -> None:
    """Every deployable policy: the engine runs what the dense reference decides."""
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(seed)) * 3
    tree = scramble_routing(random_tree(seed, max_depth=4), x)
    dense = check_tree(tree, x, policy=policy)
    learned = predict_dense(tree, x)
    assert dense.exits.unique().numel() >= 2  # the threshold splits the batch
    assert not torch.equal(dense.exits, learned.exits)  # and routes unlike the routers


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("policy", THRESHOLD_POLICIES, ids=lambda p: p.name)
def test_threshold_policies_on_random_conv_trees(seed: int, policy: Policy) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(64, 3, 4, 4, generator=gen) * torch.rand(64, 1, 1, 1, generator=gen)
    tree = scramble_routing(random_conv_tree(seed), x)
    check_tree(tree, x, policy=policy)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(64, 3, 32, 32, generator=gen) * torch.rand(64, 1, 1, 1, generator=gen)


def test_chain_with_random_routers(images: torch.Tensor) -> None:
    torch.manual_seed(0)
    tree = scramble_routing(build_model("chain"), images)
    dense = check_tree(tree, images)
    assert dense.exits.unique().numel() >= 3


@pytest.mark.parametrize("per_example", [False, True])
def test_dynamic_chain(images: torch.Tensor, per_example: bool) -> None:
    torch.manual_seed(1)
    k = k_cpt_per_example(64, 1) * 100 if per_example else 2e-8
    tree = scramble_routing(build_model("chain", dynamic_k_cpt=True), images, k)
    dense = check_tree(tree, images, k)
    assert dense.exits.unique().numel() >= 2


def test_branching_tree_three_way_junctions(images: torch.Tensor) -> None:
    torch.manual_seed(2)
    tree = scramble_routing(build_model("tree", width=1), images[:32])
    dense = check_tree(tree, images[:32], single=2)
    assert dense.exits.unique().numel() >= 3


def test_channels_last_matches(images: torch.Tensor) -> None:
    torch.manual_seed(0)
    tree = scramble_routing(build_model("chain"), images)
    dense = predict_dense(tree, images)
    assert_same(EarlyExitEngine(tree, channels_last=True)(images), dense)


def test_empty_batch_and_training_mode() -> None:
    tree = random_tree(0).eval()
    empty = EarlyExitEngine(tree)(torch.zeros(0, 6))
    assert empty.logits.shape == (0, 3) and len(empty) == 0
    with pytest.raises(DynrouteError, match="eval mode"):
        EarlyExitEngine(tree.train())(torch.zeros(2, 6))


def test_select_rows_keeps_channels_last_and_values() -> None:
    x = torch.rand(8, 5, 4, 4).contiguous(memory_format=torch.channels_last)
    rows = torch.tensor([6, 1, 3])
    picked = select_rows([x, x.contiguous()], rows)
    assert picked[0].is_contiguous(memory_format=torch.channels_last)
    assert not picked[0].is_contiguous()
    assert torch.equal(picked[0], x[rows]) and torch.equal(picked[1], x[rows])


@pytest.mark.parametrize("name", ["chain", "conv-tree"])
def test_folded_batchnorm_engine_matches_unfolded_dense(images: torch.Tensor, name: str) -> None:
    torch.manual_seed(3)
    if name == "chain":  # the multi-scale column folds itself; routers are Sequentials
        x, tree = images, build_model("chain")
    else:  # a user's conv-BN-ReLU Sequential nodes
        x, tree = images[:, :, :4, :4], random_conv_tree(3)
    tree = scramble_routing(tree, x)
    dense = predict_dense(tree, x)
    assert fold_batchnorm(tree) > 0
    assert fold_batchnorm(tree) == 0  # folding twice is harmless
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in tree.modules())
    folded = EarlyExitEngine(tree, channels_last=True)(x)
    assert torch.equal(folded.exits, dense.exits) and torch.equal(folded.macs, dense.macs)
    torch.testing.assert_close(folded.logits, dense.logits, rtol=1e-3, atol=1e-3)
    assert dense.exits.unique().numel() >= 2


def test_fold_batchnorm_needs_eval_mode() -> None:
    with pytest.raises(DynrouteError, match="eval mode"):
        fold_batchnorm(build_model("static-1"))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("which", [0, 1, 2], ids=["budgeted", "ensemble", "ensemble-per-exit"])
def test_fitted_policies_on_random_trees(seed: int, which: int) -> None:
    """The budgeted and ensemble policies: the engine runs what the dense reference decides,
    carrying each example's passed exits along its own path."""
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(seed)) * 3
    tree = scramble_routing(random_tree(seed, max_depth=4), x)
    dense = check_tree(tree, x, policy=fitted_policies(tree, seed)[which])
    assert dense.exits.unique().numel() >= 2


@pytest.mark.parametrize("which", [0, 1, 2], ids=["budgeted", "ensemble", "ensemble-per-exit"])
def test_fitted_policies_on_the_chain_and_the_tree(images: torch.Tensor, which: int) -> None:
    torch.manual_seed(4)
    for name, x in (("chain", images), ("tree", images[:32])):
        tree = scramble_routing(build_model(name), x)
        check_tree(tree, x, single=2, policy=fitted_policies(tree, 4)[which])
    conv = scramble_routing(random_conv_tree(1), images[:, :, :4, :4])
    check_tree(conv, images[:, :, :4, :4], policy=fitted_policies(conv, 1)[which])


@pytest.mark.parametrize("answers", ["calibrated", "combined"])
def test_answers_with_unit_weights_and_no_bias_are_the_raw_answers(answers: str) -> None:
    """Weights (0, ..., 0, 1) and no biases: every exit answers alone, as with raw answers."""
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(5)) * 3
    tree = scramble_routing(random_tree(5, max_depth=4), x)
    weights = [[0.0] * len(tree.shape.history[leaf]) + [1.0] for leaf in tree.leaves]
    biases = [[0.0] * tree.num_classes for _ in tree.leaves]
    for rule in ("confidence", "entropy"):
        fitted = Policy(rule, 0.45, answers=answers, weights=weights, biases=biases)
        alone = predict_dense(tree, x, policy=fitted)
        raw = predict_dense(tree, x, policy=Policy(rule, 0.45))
        assert torch.equal(alone.exits, raw.exits)
        assert torch.equal(alone.predictions, raw.predictions)


def test_fitted_policies_refuse_another_trees_parameters() -> None:
    tree = random_tree(0).eval()
    with pytest.raises(DynrouteError, match="fitted on another network"):
        EarlyExitEngine(tree, policy=Policy("budgeted", thresholds=[0.5]))


@pytest.mark.parametrize("seed", [0, 1])
def test_boosted_trees_under_every_policy(seed: int) -> None:
    """Boosted exits (each answer builds on the exits passed): the engine carries the
    answers it passed and pays for their heads even under the routers."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(64, 3, 4, 4, generator=gen) * torch.rand(64, 1, 1, 1, generator=gen)
    tree = scramble_routing(random_conv_tree(seed, boost=0.7), x)
    plain = scramble_routing(random_conv_tree(seed), x)
    plain.load_state_dict(tree.state_dict())
    for policy in [LEARNED, *THRESHOLD_POLICIES, *fitted_policies(tree, seed)]:
        check_tree(tree, x, policy=policy)
    boosted, unboosted = predict_dense(tree, x), predict_dense(plain, x)
    assert torch.equal(boosted.exits, unboosted.exits)  # the routers see the same features
    passed = [leaf for leaf in tree.leaves if tree.shape.history[leaf]]
    deep = torch.isin(boosted.exits, torch.tensor(passed))
    assert deep.any() and bool((boosted.macs[deep] > unboosted.macs[deep]).all())
    assert not torch.allclose(boosted.logits[deep], unboosted.logits[deep])
