#!/usr/bin/env bash
# Every benchmark, one after the other on a quiet machine, into results/bench/.
# Usage: benchmarks/run_all.sh TRAINED_RUN_DIR [DEVICE]
#   TRAINED_RUN_DIR: a trained routed network for the inference benchmark, e.g. from
#   dynroute train --model chain --strategy actor --k-cpt 4e-9 --iterations 1500 --out runs/actor
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:?usage: benchmarks/run_all.sh TRAINED_RUN_DIR [DEVICE]}
device=${2:-cpu}
out=results/bench/$device
mkdir -p "$out"
python3 benchmarks/bench_augment.py | tee "$out/augment.txt"
python3 benchmarks/bench_engine.py --device "$device" | tee "$out/engine.txt"
python3 benchmarks/bench_train.py --device "$device" --json "$out/train.json" | tee "$out/train.txt"
python3 benchmarks/bench_train.py --device "$device" --compile --json "$out/train-compile.json" \
    | tee "$out/train-compile.txt"
python3 benchmarks/bench_inference.py "$run" --device "$device" --json "$out/inference.json" \
    | tee "$out/inference.txt"
