"""Wall-clock of the fitted policies in the early-exit engine, at the same budget.

For a trained run with a validation split, fits each deployable policy to a MAC budget on
validation (confidence threshold, MSDNet's budgeted thresholds, the ensemble), then routes
a seeded sample of test images with the engine under each and times them against each
other (median over interleaved rounds, batch 256 and batch 1). Prints accuracy, mean MACs
and images/s, and each policy's wall-clock relative to the confidence threshold next to
its MAC ratio: the ensemble's combining work should cost next to nothing.

    python benchmarks/bench_policies.py RUN [--budgets 3,5,8] [--threads N] [--json FILE]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from dynroute.policies.operating_points import dense_outputs

from dynroute.devices import configure_cpu, machine_description
from dynroute.engine.early_exit import EarlyExitEngine
from dynroute.policies.table import budget_table
from dynroute.policy import Policy
from dynroute.runs import open_run
from timing import interleaved_seconds, median_speedup, save_results

POLICIES = ("confidence", "budgeted", "ensemble")


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
    tree = run.load_tree()
    validation = run.split("validation", args.data_dir)
    test = run.split("test", args.data_dir)
    budgets = [float(b) * 1e6 for b in args.budgets.split(",")]
    table = budget_table(
        tree, dense_outputs(tree, *validation[:2]), dense_outputs(tree, *test[:2]), budgets
    )
    weights = table["ensemble"]
    gen = torch.Generator().manual_seed(0)
    pick = torch.randperm(len(test[1]), generator=gen)[: args.images]
    images = torch.from_numpy(test[0][pick.numpy()])
    batches = [images[s : s + 256] for s in range(0, len(images), 256)]
    rows = []
    for row in table["budgets"]:
        engines, names = [], []
        for name in POLICIES:
            entry = row["policies"].get(name)
            if entry is None:
                continue
            params = dict(entry["parameters"])
            if name == "ensemble":
                params.update(weights)
            engines.append(EarlyExitEngine(tree, policy=Policy(name, **params)))
            names.append(name)
        batch_runs = [lambda e=e: [e(b) for b in batches] for e in engines]
        single_runs = [
            lambda e=e: [e(images[i : i + 1]) for i in range(args.singles)] for e in engines
        ]
        device = torch.device("cpu")
        batch_times = interleaved_seconds(batch_runs, args.repeats, device)
        single_times = interleaved_seconds(single_runs, max(3, args.repeats // 3), device)
        print(f"budget {row['budget'] / 1e6:.2f} M MACs ({args.images} test images):")
        for k, name in enumerate(names):
            test_point = row["policies"][name]["test"]
            macs = float(engines[k](images).macs.double().mean())
            base_macs = float(engines[0](images).macs.double().mean())
            entry = {
                "budget": row["budget"],
                "policy": name,
                "test_accuracy": test_point["accuracy"],
                "test_mean_macs": test_point["mean_macs"],
                "sample_mean_macs": macs,
                "batch256_img_per_s": len(images) / statistics.median(batch_times[k]),
                "batch1_img_per_s": args.singles / statistics.median(single_times[k]),
                "speed_vs_confidence_batch256": median_speedup(batch_times[0], batch_times[k]),
                "speed_vs_confidence_batch1": median_speedup(single_times[0], single_times[k]),
                "mac_ratio_vs_confidence": base_macs / macs,
            }
            rows.append(entry)
            print(
                f"  {name:<11} test {100 * entry['test_accuracy']:.2f} % at "
                f"{entry['test_mean_macs'] / 1e6:.2f} M; {entry['batch256_img_per_s']:.0f} img/s "
                f"(batch 256), {entry['batch1_img_per_s']:.0f} img/s (batch 1); vs confidence: "
                f"{entry['speed_vs_confidence_batch256']:.2f}x / "
                f"{entry['speed_vs_confidence_batch1']:.2f}x wall-clock, MAC ratio "
                f"{entry['mac_ratio_vs_confidence']:.2f}"
            )
    save_results({"machine": machine_description(), "run": str(run.path), "rows": rows}, args.json)


if __name__ == "__main__":
    main()
