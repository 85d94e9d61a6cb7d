#!/usr/bin/env bash
# Train what is left of a sweep on one lent GPU, several networks at a time, and bring the
# finished result files back as one archive.
#
# The networks run as `dynroute sweep ... --device cuda --workers WORKERS` (spawned processes
# sharing the GPU; CUDA graphs by default) against the checkout's own results/ folder, so the
# networks whose result files are committed are skipped. The sweep stops at LIMIT seconds; its
# training state (RUNS, default /tmp/dynroute-runs) stays on the machine, so the same command
# in the next call resumes the unfinished networks from their checkpoints while the machine is
# still warm. After the sweep, OUT_DIR/sweep.tar.gz holds every result file written in this
# call (paths relative to the checkout: unpack with `tar xzf sweep.tar.gz` in its root) and
# OUT_DIR/sweep.log the sweep's log, with each finished network's training time.
#
# Usage: benchmarks/gpu_sweep.sh OUT_DIR DATA_DIR EXPERIMENT...
#   SCALE (default cpu), WORKERS (default 8), LIMIT (default 540 s), DEVICE (default cuda),
#   RESULTS (default results), RUNS (default /tmp/dynroute-runs), COMPILE (default
#   "--compile --compile-mode reduce-overhead"; empty for eager).
#   Runs from a plain checkout (PYTHONPATH=src) with the machine's own torch. For the hybrid
#   experiments DATA_DIR can be the ~40 MB folder `python benchmarks/hybrid_data_subset.py DIR`
#   writes (it fits the device's 64 MiB upload); the CIFAR experiments need the whole
#   CIFAR-10 copy.
set -uo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 3 ] || { echo "usage: benchmarks/gpu_sweep.sh OUT_DIR DATA_DIR EXPERIMENT..." >&2; exit 2; }
# shellcheck source=benchmarks/gpu_common.sh
source benchmarks/gpu_common.sh
shift 2
stamp=$(mktemp) && touch "$stamp"
if [ "${DEVICE:-cuda}" = cuda ]; then
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$out/sweep.log"
fi
started=$SECONDS
# shellcheck disable=SC2086  # COMPILE is a list of options
timeout "${LIMIT:-540}" "$py" -m dynroute.cli sweep "$@" --scale "${SCALE:-cpu}" \
    --device "${DEVICE:-cuda}" ${COMPILE---compile --compile-mode reduce-overhead} \
    --workers "${WORKERS:-8}" --results "${RESULTS:-results}" \
    --runs "${RUNS:-/tmp/dynroute-runs}" --no-progress 2>&1 | tee -a "$out/sweep.log"
status=${PIPESTATUS[0]}
echo "sweep: exit $status after $((SECONDS - started)) s" | tee -a "$out/sweep.log"
find "${RESULTS:-results}" -name '*.json' -newer "$stamp" | sort >"$out/new-results.txt"
echo "$(wc -l <"$out/new-results.txt") new result files" | tee -a "$out/sweep.log"
tar czf "$out/sweep.tar.gz" -T "$out/new-results.txt"
rm -f "$stamp"
