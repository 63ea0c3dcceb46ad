#!/usr/bin/env bash
# `make bench`: fetch the full sample videos if possible, then run every benchmark.
# Each writes its figures to bench-results/<name>.json and prints its table.
# Add a benchmark: put it in benchmarks/ and add one line below.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=bench-results
mkdir -p "$OUT"
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1  # idle BLAS threads spin on a small box

./scripts/fetch_data.sh || echo "(full videos unavailable; benchmarks use the committed excerpts)"
VTEST=$($PY -c 'from streamedge.datasets import find_video; print(find_video("vtest"))')
PNET=streamedge/models/data/mtcnn/pnet.onnx

failed=0
run() {
  local name=$1; shift
  echo
  echo "==================== $name ===================="
  if ! "$PY" "benchmarks/$name.py" "$@" --json "$OUT/$name.json"; then
    echo "benchmark $name FAILED"
    failed=1
  fi
}

run filters_cost --video "$VTEST"
run lookup
run embedders --video "$VTEST"
run layer_cache --model "$PNET" --video "$VTEST" --frames 100 --scales 0.6 0.3
run stats_overhead --repeats 9
run ingest --messages 20000  # needs mosquitto
run ingest_coap --messages 2000 --clients 8 --frames 60
run sharing --video "$VTEST" --max-frames 300
run tiers --video "$VTEST"
MEGAMIND=$($PY -c 'from streamedge.datasets import find_video; print(find_video("megamind"))')
run layer_cache_detector --video "$VTEST" "$MEGAMIND" --jitter 4 --frames 795 --psnr 20 --refresh-every 20 --recheck-margin none 0 --harness
run reuse --video "$VTEST"  # MTCNN reference answers of the derived cameras cached in ~/.cache
run eval --video "$VTEST"  # also writes $OUT/eval.png; reference answers cached in ~/.cache
run filters --video "$VTEST" --video "$MEGAMIND"  # first 300 frames each; --full for all

echo
echo "results in $OUT/"
exit $failed
