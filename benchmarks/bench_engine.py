"""Wall-clock of the early-exit engine against the static 8-column network.

The chain is built in eval mode and its routing is scripted: the first router
still runs (so its cost is paid) but its scores are replaced by a fixed
decision per example, sending a random fraction f of the batch to exit 1;
every later router has a zero last layer with bias (0, 1), so the rest
continue to exit 8. The static-8 network runs the same eight columns densely
on the whole batch. Reported: median wall-clock over repeats (the two
networks timed alternately), and the ratio static / engine next to the ratio
of MACs per example.

Both networks get the same inference preparation: channels-last layout and batch
norms folded into the convolutions (``--no-channels-last``, ``--no-fold`` to compare).

Run: python benchmarks/bench_engine.py [--device cuda] [--batch 256] [--repeats 15]
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
from torch import nn

from dynroute.engine.early_exit import EarlyExitEngine
from dynroute.engine.fold import fold_batchnorm
from dynroute.nn.macs import tree_costs
from dynroute.nn.models import build_model
from dynroute.platform.devices import configure_cpu, machine_description
from timing import interleaved_seconds, median_speedup


class ScriptedRouter(nn.Module):
    """Runs the real router, then returns scores that pick ``decisions`` (one per example)."""

    def __init__(self, router: nn.Module) -> None:
        super().__init__()
        self.router = router
        self.decisions: torch.Tensor | None = None

    def forward(self, signal, k_feature=None) -> torch.Tensor:
        scores = self.router(signal, k_feature)
        if self.decisions is None or self.decisions.shape[0] != scores.shape[0]:
            return scores
        return nn.functional.one_hot(self.decisions, scores.shape[1]).to(scores.dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.0, 0.5, 0.9])
    parser.add_argument(
        "--no-channels-last", dest="channels_last", action="store_false", help="NCHW layout"
    )
    parser.add_argument(
        "--no-fold", dest="fold", action="store_false", help="keep batch norms unfolded"
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: every core); 1 is steadier "
        "on a loaded machine, where idle OpenMP workers wait for descheduled ones",
    )
    args = parser.parse_args()
    configure_cpu(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)

    chain = build_model("chain").to(device).eval()
    for j in chain.junctions[1:]:
        last = chain.nodes[j].router.layers[-1]
        nn.init.zeros_(last.weight)
        last.bias.data = torch.tensor([0.0, 1.0], device=device)  # always continue
    scripted = ScriptedRouter(chain.nodes[0].router)
    chain.nodes[0].router = scripted
    engine = EarlyExitEngine(chain, channels_last=args.channels_last, fold_batchnorm=args.fold)
    static = build_model("static-8").to(device).eval()
    if args.fold:  # the same inference preparation for both networks
        fold_batchnorm(static)
    if args.channels_last:
        static.to(memory_format=torch.channels_last)
    static_macs = tree_costs(static).path_macs[static.leaves[0]]

    x = torch.rand(args.batch, 3, 32, 32, device=device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    print(f"machine: {json.dumps(machine_description())}")
    print(f"batch {args.batch}; median of {args.repeats}; channels-last {args.channels_last}, "
          f"batch norms folded {args.fold}")  # fmt: skip
    print(f"static-8: {static_macs / 1e6:.2f} M MACs per image")
    print(f"{'f':>5}{'static-8 ms':>13}{'engine ms':>11}{'wall-clock ratio':>18}{'MAC ratio':>11}")
    for f in args.fractions:
        n_exit = round(f * args.batch)
        # 0 = take exit 1, 1 = continue; exiting examples are scattered through the batch.
        scripted.decisions = (torch.randperm(args.batch, device=device) >= n_exit).long()
        result = engine(x)
        assert int((result.exits == chain.leaves[0]).sum()) == n_exit
        with torch.inference_mode():
            static_times, engine_times = interleaved_seconds(
                [lambda: static(x), lambda: engine(x)], args.repeats, device
            )
        static_seconds, engine_seconds = map(statistics.median, (static_times, engine_times))
        mean_macs = result.macs.double().mean().item()
        print(
            f"{f:>5.2f}{static_seconds * 1e3:>13.1f}{engine_seconds * 1e3:>11.1f}"
            f"{median_speedup(static_times, engine_times):>18.2f}{static_macs / mean_macs:>11.2f}"
        )


if __name__ == "__main__":
    main()
