#!/usr/bin/env bash
# Every GPU check in one go, sized for a short lease (about 10 minutes on one H100):
#   1. the CUDA tests (tests/platform/test_cuda.py: same batches and losses as the CPU, no host
#      synchronisation inside a training step, CUDA-graph training, engine routing);
#   2. the paper-scale (80,000-iteration) hybrid actor chain: step time per execution mode,
#      the projected run time, and the full run itself when it fits --full-budget;
#      phase paper-run (only when PHASES names it: 10-15 minutes) trains that run with
#      `dynroute train` (CUDA graphs) and, run again with the same OUT_DIR after a time
#      limit cut it off, resumes it from its checkpoint;
#   3. training throughput, routed chain vs static-8 (bench_train.py), eager and with CUDA graphs;
#   4. a k_cpt sweep as one vmapped ensemble vs network by network (bench_ensemble.py);
#   5. the inference engine vs static-8 at trained operating points (bench_inference.py).
# Each phase has its own time limit and writes into OUT_DIR as it goes; with BUNDLE=FILE.tar.gz
# OUT_DIR (checkpoints left out) is also packed into one file after every phase.
#
# PHASES="dataset paper-time" runs only those; MODES, FULL_BUDGET and PAPER_LIMIT tune phase 2,
# RUN_LIMIT paper-run (default 580 s).
#
# Usage: benchmarks/gpu_check.sh OUT_DIR DATA_DIR [TRAINED_RUN_DIR...]
#   Runs from a plain checkout (PYTHONPATH=src) with the machine's own torch, so it works
#   where nothing can be installed. Where uploads are limited, DATA_DIR can be the ~40 MB
#   folder that `python benchmarks/hybrid_data_subset.py DIR` writes.
set -uo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: benchmarks/gpu_check.sh OUT_DIR DATA_DIR [RUN_DIR...]" >&2; exit 2; }
# shellcheck source=benchmarks/gpu_common.sh
source benchmarks/gpu_common.sh
shift 2

phase() {  # phase NAME SECONDS COMMAND...: run with a limit, log to OUT_DIR/NAME.txt
    local name=$1 limit=$2
    shift 2
    [[ -z ${PHASES:-} || " $PHASES " == *" $name "* ]] || return 0
    echo "=== $name (limit ${limit} s)"
    local started=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee -a "$out/$name.txt" | tail -n 40
    echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - started)) s" | tee -a "$out/$name.txt"
    if [ -n "${BUNDLE:-}" ]; then tar czf "$BUNDLE" --exclude=checkpoint.pt -C "$out" .; fi
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$out/gpu.txt"
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"
phase dataset 50 "$py" -c "from dynroute.data.datasets import load_dataset; print(load_dataset('hybrid').train.images.shape)"
phase tests 110 "$py" -m pytest -q -p no:cacheprovider tests/platform/test_cuda.py
phase paper-time "${PAPER_LIMIT:-280}" "$py" benchmarks/bench_paper_time.py --device cuda \
    --modes "${MODES:-eager,bf16,graphs}" \
    --full auto --full-budget "${FULL_BUDGET:-200}" --json "$out/paper-time.json" --out-dir "$out"
if [[ " ${PHASES:-} " == *" paper-run "* ]]; then  # only when named: it takes 10-15 minutes
    resume=() && [ -f "$out/paper-run/checkpoint.pt" ] && resume=(--resume)
    phase paper-run "${RUN_LIMIT:-580}" "$py" -m dynroute.cli train --dataset hybrid \
        --model chain --strategy actor --k-cpt 4e-9 --iterations 80000 --device cuda --compile \
        --compile-mode reduce-overhead --no-progress --out "$out/paper-run" "${resume[@]}"
fi
phase train 40 "$py" benchmarks/bench_train.py --device cuda --rounds 5 --steps 20 \
    --json "$out/train.json"
phase train-graphs 120 "$py" benchmarks/bench_train.py --device cuda --rounds 5 --steps 50 \
    --compile --compile-mode reduce-overhead --json "$out/train-graphs.json"
phase ensemble 60 "$py" benchmarks/bench_ensemble.py --device cuda --networks 8 --repeats 10
if [ $# -gt 0 ]; then
    phase inference 40 "$py" benchmarks/bench_inference.py "$@" --device cuda \
        --json "$out/inference.json"
fi
