#!/usr/bin/env bash
# The GPU checks of issue 13 in one command, ~8 minutes on an H100/H200:
#   1. the CUDA tests of the SAM 3 backend (tests/test_sam3.py -k cuda)
#   2. throughput, full-size random SAM 3, 1008² tiles: geoseg bf16 at batch 16 with 1
#      and 3 prompts, eager and compiled, against the naive Sam3Processor path (bf16, fp32)
#   3. end to end (geoseg.segment -> GeoPackage) on 20k² then 40k² scenes: GPU busy share
#
#   bash benchmarks/gpu_wheels.sh        # here, once, with network: .whl/ (geo wheels)
#   bash benchmarks/gpu.sh [DIR]         # there; device tool: carry [".whl"], then
#                                        # copy DIR's files to benchmarks/results/ and run
#                                        # python benchmarks/sam3_throughput.py --readme-only
# Results (.json, .md, logs) go to DIR [default: $OUT, else benchmarks/results]. Each step
# has its own time limit and a failed step does not stop the next.
set -u
cd "$(dirname "$0")/.."
DIR=${1:-${OUT:-benchmarks/results}}
mkdir -p "$DIR"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if ! $PY -c "import rasterio, pyogrio, geopandas" 2>/dev/null; then
  [ -d .whl ] || { echo "no rasterio/pyogrio/geopandas and no .whl/: run benchmarks/gpu_wheels.sh first"; exit 2; }
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 2
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$DIR/gpu.txt"
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
  | tee -a "$DIR/gpu.txt"

step() {  # step NAME SECONDS COMMAND...: run with a limit, log to DIR/NAME.log, keep going
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$DIR/$name.log" 2>&1
  echo "$name: exit $? in $((SECONDS - t0)) s" | tee -a "$DIR/steps.txt"
  tail -n 25 "$DIR/$name.log"
}

# SMOKE=1: the same steps with the tiny model on the CPU, to check this script anywhere.
if [ "${SMOKE:-0}" = 1 ]; then
  SIZE=tiny DEV=cpu TESTS="cuda" BATCH=2 TILES=2 NAIVE=1 SCENES="2048" DTYPES="fp32"
else
  SIZE=full DEV=cuda TESTS="cuda or one_call or 536" BATCH=16 TILES=64 NAIVE=8 SCENES="20480 40960" DTYPES="bf16"
fi
MODEL=/tmp/sam3_$SIZE
step tests 60 $PY -m pytest -q -p no:cacheprovider tests/test_sam3.py -k "$TESTS"
step build 90 $PY -c "from geoseg.testing.sam3 import build_tiny_sam3; build_tiny_sam3('$MODEL', size='$SIZE', device='$DEV')"
step throughput 200 $PY benchmarks/sam3_throughput.py --model "$MODEL" --size $SIZE --device $DEV --batches $BATCH \
  --prompts 1 3 --dtypes $DTYPES --naive-dtypes $DTYPES fp32 --compile --tiles $TILES --naive-tiles $NAIVE --repeats 2 \
  --out "$DIR"
step e2e 180 $PY benchmarks/sam3_e2e.py --model "$MODEL" --size $SIZE --device $DEV --dtype $DTYPES --sizes $SCENES \
  --prompts 1 --score-threshold 0.8 --out "$DIR"
cat "$DIR"/sam3_*.md 2>/dev/null
