#!/usr/bin/env bash
# The GPU checks of issue 11 §4 in one script, for a lent GPU machine (or any CUDA machine).
# Writes its logs and tables to $OUT (default ./gpu-check). On a machine without internet,
# carry the wheels the image lacks (torchdeq, submitit) in .whl/ (see the device tool's README).
#   bash perf/gpu_check.sh
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
PY=${PY:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } \
    | tee "$OUT/log.txt"
# each step's whole output goes to log.txt (the device tool brings back at most 8 files)
step() { local name=$1 limit=$2; shift 2; echo "== $name" | tee -a "$OUT/log.txt"
    timeout "$limit" "$@" 2>&1 | tee -a "$OUT/log.txt" | tail -n 15
    echo "== $name: exit ${PIPESTATUS[0]}" | tee -a "$OUT/log.txt"; }
step pytest_cuda 90 $PY -m pytest -q -p no:cacheprovider -m cuda tests
step benchmark_cuda 100 env IMPLICIT_BENCH_DEVICE=cuda $PY -m pytest perf -q \
    -p no:cacheprovider --benchmark-only --benchmark-json="$OUT/benchmark_cuda.json"
step backward_cuda 80 $PY perf/backward_report.py --device cuda --repeats 9
step perf_cuda 50 $PY perf/perf_report.py --device cuda --repeats 21
step memory_gap 30 $PY perf/cuda_memory_gap.py
step quick_cuda 120 $PY -m bench.cli run quick --device cuda --quiet --out /tmp/gpu-quick
cp /tmp/gpu-quick/runs.csv "$OUT/quick_cuda_runs.csv" 2>/dev/null
cp /tmp/gpu-quick/suite_timing.json "$OUT/quick_cuda_suite_timing.json" 2>/dev/null
# the CPU baseline on the same machine: the same suite, its runs spread over the cores
step quick_cpu 120 $PY -m bench.cli run quick --device cpu -j 4 --quiet --out /tmp/cpu-quick
cp /tmp/cpu-quick/runs.csv "$OUT/quick_cpu_runs.csv" 2>/dev/null
ls "$OUT"
