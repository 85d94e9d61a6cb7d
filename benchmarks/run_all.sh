#!/usr/bin/env bash
# Every benchmark, one after the other on a quiet machine, into results/bench/$DEVICE/.
# Usage: [DEVICE=cuda] benchmarks/run_all.sh TRAINED_RUN_DIR...
#   TRAINED_RUN_DIR: trained routed networks for the inference benchmark (one row each), e.g.
#   runs/quick/hybrid-actor/k_cpt-* from `dynroute sweep hybrid-actor --scale quick`, or
#   dynroute train --model chain --strategy actor --k-cpt 4e-9 --iterations 1500 --out runs/actor
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: [DEVICE=cuda] benchmarks/run_all.sh TRAINED_RUN_DIR..." >&2; exit 2; }
device=${DEVICE:-cpu}
out=results/bench/$device
mkdir -p "$out"
python3 benchmarks/bench_augment.py | tee "$out/augment.txt"
python3 benchmarks/bench_engine.py --device "$device" | tee "$out/engine.txt"
python3 benchmarks/bench_train.py --device "$device" --json "$out/train.json" | tee "$out/train.txt"
python3 benchmarks/bench_train.py --device "$device" --compile --json "$out/train-compile.json" \
    | tee "$out/train-compile.txt"
python3 benchmarks/bench_inference.py "$@" --device "$device" --json "$out/inference.json" \
    | tee "$out/inference.txt"
