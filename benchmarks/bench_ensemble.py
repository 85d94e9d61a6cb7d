"""Would a k_cpt sweep train faster as one batched ensemble (torch.func)?

The networks of a k_cpt sweep share an architecture, a seed and a batch stream, and
differ only in k_cpt. This stacks N copies of the hybrid actor chain's parameters and
buffers, takes gradients of all N losses (with TALR scales) in one ``vmap`` over
``functional_call``, checks them against an ordinary backward pass of each network, and
times the batched step against N sequential forward + backward passes. Not a test, and
not a training path: it measures whether one would pay (issue 6's stretch).

    python benchmarks/bench_ensemble.py [--networks 4] [--device cpu] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

from dynroute.nn.models import build_model
from dynroute.platform.devices import configure_cpu, machine_description, resolve_device
from dynroute.train.config import PAPER_K_CPT_SET
from dynroute.train.strategies import Strategy, make_strategy
from dynroute.train.talr import talr_scales
from timing import interleaved_seconds, median_speedup


class Objective(nn.Module):
    """Forward pass, loss and TALR scales as one module, so ``functional_call`` swaps the
    parameters everywhere they are read (the loss's L2 term reads them too)."""

    def __init__(self, tree: nn.Module, strategy: Strategy) -> None:
        super().__init__()
        self.tree, self.strategy = tree, strategy

    def forward(self, x: torch.Tensor, y: torch.Tensor, k_cpt: torch.Tensor):
        out = self.strategy.loss(self.tree, self.tree.forward_dense(x), y, k_cpt, 1.0)
        return out.loss, talr_scales(out.arrival)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not 1 <= args.networks <= len(PAPER_K_CPT_SET):
        parser.error(f"--networks must be 1..{len(PAPER_K_CPT_SET)} (one per k_cpt of the paper)")
    configure_cpu()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    tree = build_model("chain", 10).to(device).to(memory_format=torch.channels_last)
    objective = Objective(tree, make_strategy("actor"))
    copies = [copy.deepcopy(objective) for _ in range(args.networks)]
    params, buffers = stack_module_state(copies)
    k_cpts = torch.tensor(PAPER_K_CPT_SET[: args.networks], device=device)
    x = torch.rand(args.batch_size, 3, 32, 32, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(10, (args.batch_size,), device=device)

    def loss(p, b, k):
        return functional_call(objective, (p, b), (x, y, k))

    batched = vmap(grad_and_value(loss, has_aux=True), randomness="same")

    def ensemble_step():
        return batched(params, buffers, k_cpts)

    def sequential_step():
        for model, k in zip(copies, k_cpts, strict=True):
            model.zero_grad(set_to_none=True)
            model(x, y, k)[0].backward()

    grads, (losses, _) = ensemble_step()
    sequential_step()

    # Over each network's whole gradient: single tensors can be pure rounding noise (the
    # biases of convolutions followed by batch norm have a true gradient of zero).
    def flat(tensors) -> torch.Tensor:
        return torch.cat([t.detach().flatten() for t in tensors])

    worst = max(
        float(
            (flat(grads[n][i] for n, _ in named) - flat(p.grad for _, p in named)).norm()
            / flat(p.grad for _, p in named).norm()
        )
        for i, named in enumerate(list(model.named_parameters()) for model in copies)
    )
    ensemble_times, sequential_times = interleaved_seconds(
        [ensemble_step, sequential_step], args.repeats, device
    )
    ensemble_s, sequential_s = map(statistics.median, (ensemble_times, sequential_times))
    result = {
        "networks": args.networks,
        "batch_size": args.batch_size,
        "largest_relative_gradient_difference": worst,
        "ensemble_step_ms": 1e3 * ensemble_s,
        "sequential_steps_ms": 1e3 * sequential_s,
        "speedup": median_speedup(sequential_times, ensemble_times),
        "machine": machine_description(),
    }
    print(
        f"{args.networks} networks, batch {args.batch_size}: one vmapped step "
        f"{1e3 * ensemble_s:.0f} ms, {args.networks} sequential steps {1e3 * sequential_s:.0f} ms: "
        f"{result['speedup']:.2f}x (median of interleaved pairs; gradients agree to {worst:.1e})"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
