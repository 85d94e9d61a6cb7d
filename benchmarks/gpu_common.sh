# Sourced by the GPU scripts from the checkout's root, their arguments unchanged: OUT_DIR and
# DATA_DIR from the first two, and what a plain checkout needs to run (PYTHONPATH=src, the
# data folder, unbuffered output, the machine's own python).
out=$1 data=$2
mkdir -p "$out"
export DYNROUTE_DATA=$data PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
