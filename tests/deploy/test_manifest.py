"""What the torch-free reader recomputes instead of trusting: a guarantee's bound and
p-value from n, and a manifest's path costs from its nodes' costs."""

from __future__ import annotations

import numpy as np
import pytest

from dynroute.core.decisions import base_path_macs
from dynroute.core.errors import DynrouteError
from dynroute.core.guarantee import (
    METHOD_BINARY,
    METHOD_BOUNDED,
    Guarantee,
    binary_p_value,
    failures_behind,
    lower_bound,
)
from dynroute.nn.macs import count_macs, tree_costs
from helpers.routing import random_conv_tree
from helpers.toy_trees import random_tree


@pytest.mark.parametrize("n", [1, 2, 7, 30, 1000, 5000])
@pytest.mark.parametrize("delta", [0.01, 0.1, 0.5])
def test_the_failures_behind_a_bound_are_found_again(n: int, delta: float) -> None:
    for failures in sorted({0, 1, n // 10, n // 2, n - 1}):
        bound = lower_bound(n - failures, n, delta)
        assert failures_behind(bound, n, delta) == failures
    assert failures_behind(0.0, n, delta) == n  # no success: the bound is 0
    assert failures_behind(1.0, n, delta) is None  # no finite sample proves accuracy 1


def _accuracy(n: int, failures: int, level: float, delta: float = 0.1) -> dict:
    bound = lower_bound(n - failures, n, delta)
    p_value = binary_p_value(failures, n, 1 - level)
    return Guarantee("accuracy", level, delta, METHOD_BINARY, n, n, bound, p_value).to_dict()


def test_a_consistent_guarantee_reads_back_with_its_promise_rewritten() -> None:
    written = _accuracy(2000, 100, 0.9)
    read = Guarantee.from_dict({**written, "promise": "anything", "method": "anything"})
    assert read.to_dict() == written
    disagreement = Guarantee.from_dict(
        {**written, "target": "disagreement", "level": 0.1, "bound": 1 - written["bound"]}
    )
    assert "disagreeing with the full network on at most 0.1" in disagreement.promise()
    macs = Guarantee.from_dict({**written, "target": "mean_macs", "level": 3e6, "bound": 2.5e6})
    assert macs.method == METHOD_BOUNDED and "at most 3 M MACs" in macs.promise()
    with pytest.raises(DynrouteError, match="less than the cheapest exit costs"):
        macs.check_costs(2.6e6)
    macs.check_costs(2.4e6)


@pytest.mark.parametrize(
    "changes",
    [
        {"n": 1, "p_value": 0.01},  # one example cannot reach p = 0.01
        {"n": 200},  # the bound is another n's
        {"p_value": 0.05},  # not the p-value the bound gives
        {"bound": 0.999},  # more than any count of failures gives
        {"fit_examples": -1},
        {"fit_examples": 1.5},
        {"level": float("nan")},
        {"target": "speed"},
        {"method": None},
    ],
)
def test_an_inconsistent_guarantee_is_refused(changes: dict) -> None:
    with pytest.raises(DynrouteError):
        Guarantee.from_dict({**_accuracy(2000, 100, 0.9), **changes})


def _by_definition(tree) -> dict[str, list[int]]:
    """Each cost model's path MACs summed along each root path, as ``nn.macs`` documents
    them (the quadratic definition the linear recurrence must equal)."""
    transform, router = count_macs(tree)
    shape = tree.shape
    heads = [0] * len(transform)
    routers = [0] * len(transform)
    for j in shape.junctions:
        kids = shape.children[j]
        heads[j] = sum(transform[c] for c in kids if shape.is_leaf(c))
        routers[j] = router[j] if sum(not shape.is_leaf(c) for c in kids) != 1 else 0
    out: dict[str, list[int]] = {"learned": [], "threshold": [], "oracle": []}
    for i in range(len(transform)):
        path = shape.path_to(i)
        out["learned"].append(sum(transform[n] + router[n] for n in path))
        out["oracle"].append(sum(transform[n] for n in path))
        above = sum(transform[n] + heads[n] + routers[n] for n in path[:-1])
        own = (
            0
            if shape.is_leaf(i) and shape.decided_at_junction(i)
            else (transform[i] + heads[i] + routers[i])
        )
        out["threshold"].append(above + own)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_path_costs_are_recomputed_from_node_costs(seed: int) -> None:
    """The torch-free recurrence an export's reader checks ``costs.path_macs`` with gives
    every random tree's path costs, boosted or not."""
    for tree in (random_tree(seed, boost=0.5 * (seed % 2)), random_conv_tree(seed)):
        transform, router = count_macs(tree)
        expected = _by_definition(tree)
        assert base_path_macs(tree.shape, transform, router) == expected
        costs = tree_costs(tree).base_path_macs()
        assert {k: list(v) for k, v in costs.items()} == expected
        assert np.all(np.asarray(expected["learned"]) >= np.asarray(expected["oracle"]))
