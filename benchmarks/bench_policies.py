"""Wall-clock of the learned decision against the best baseline, at the same budget.

For a trained run with a validation split, builds the equal-footing policy table
(``dynroute.policies.table``), then at each budget runs, in the early-exit engine, the best
baseline (chosen on validation) and the best learned decision (the scheduler, or the
routers, most accurate on validation) on a seeded sample of test images, and times them
against each other (median over interleaved rounds, batch 256 and batch 1). Prints test
accuracy, mean MACs and images/s, and the learned decision's wall-clock relative to the
baseline next to its MAC ratio.

    python benchmarks/bench_policies.py RUN [--budgets 3,5,8] [--threads N] [--json FILE]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from dynroute.engine.early_exit import EarlyExitEngine
from dynroute.experiments.policy_claims import best_learned
from dynroute.platform.devices import configure_cpu, machine_description
from dynroute.policies.exit_table import dense_outputs
from dynroute.policies.table import budget_table, cell_policy
from dynroute.runs import open_run
from dynroute.train.strategies import trains_routers
from timing import interleaved_seconds, median_speedup, save_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run directory trained with a validation split")
    parser.add_argument("--budgets", default="3,5,8", help="millions of MACs (default 3,5,8)")
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--singles", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--json", default=None, help="also write every number here")
    args = parser.parse_args()
    configure_cpu(args.threads)
    run = open_run(args.run)
    tree = run.load_tree().eval()
    validation = run.split("validation", args.data_dir)
    test = run.split("test", args.data_dir)
    budgets = [float(b) * 1e6 for b in args.budgets.split(",")]
    routers = trains_routers((run.config or {}).get("strategy", "actor"))
    table = budget_table(
        tree,
        dense_outputs(tree, *validation[:2]),
        dense_outputs(tree, *test[:2]),
        budgets,
        routers=routers,
    )
    gen = torch.Generator().manual_seed(0)
    pick = torch.randperm(len(test[1]), generator=gen)[: args.images]
    images = torch.from_numpy(test[0][pick.numpy()])
    batches = [images[s : s + 256] for s in range(0, len(images), 256)]
    rows = []
    for row in table["budgets"]:
        keys = [row.get("best_baseline"), best_learned(row)]
        pairs = [(k, cell_policy(table, row, k)) for k in keys if k is not None]
        pairs = [(k, p) for k, p in pairs if p is not None]
        if len(pairs) < 2:
            continue
        names = [k for k, _ in pairs]
        engines = [EarlyExitEngine(tree, policy=p) for _, p in pairs]
        batch_runs = [lambda e=e: [e(b) for b in batches] for e in engines]
        single_runs = [
            lambda e=e: [e(images[i : i + 1]) for i in range(args.singles)] for e in engines
        ]
        device = torch.device("cpu")
        batch_times = interleaved_seconds(batch_runs, args.repeats, device)
        single_times = interleaved_seconds(single_runs, max(3, args.repeats // 3), device)
        print(f"budget {row['budget'] / 1e6:.2f} M MACs ({args.images} test images):")
        sample_macs = [float(e(images).macs.double().mean()) for e in engines]
        for k, name in enumerate(names):
            test_point = row["policies"][name]["test"]
            entry = {
                "budget": row["budget"],
                "policy": name,
                "role": "best baseline" if k == 0 else "learned decision",
                "test_accuracy": test_point["accuracy"],
                "test_mean_macs": test_point["mean_macs"],
                "sample_mean_macs": sample_macs[k],
                "batch256_img_per_s": len(images) / statistics.median(batch_times[k]),
                "batch1_img_per_s": args.singles / statistics.median(single_times[k]),
                "speed_vs_baseline_batch256": median_speedup(batch_times[0], batch_times[k]),
                "speed_vs_baseline_batch1": median_speedup(single_times[0], single_times[k]),
                "mac_ratio_vs_baseline": sample_macs[0] / sample_macs[k],
            }
            rows.append(entry)
            print(
                f"  {entry['role']:<16} {name:<22} test {100 * entry['test_accuracy']:.2f} % at "
                f"{entry['test_mean_macs'] / 1e6:.2f} M; {entry['batch256_img_per_s']:.0f} img/s "
                f"(batch 256), {entry['batch1_img_per_s']:.0f} img/s (batch 1); vs baseline: "
                f"{entry['speed_vs_baseline_batch256']:.2f}x / "
                f"{entry['speed_vs_baseline_batch1']:.2f}x wall-clock, MAC ratio "
                f"{entry['mac_ratio_vs_baseline']:.2f}"
            )
    save_results({"machine": machine_description(), "run": str(run.path), "rows": rows}, args.json)


if __name__ == "__main__":
    main()
