#!/usr/bin/env bash
# One short GPU session (~8 min on one H100/H200): the GPU tests, then the benchmarks of the GPU goals.
# Run it when a GPU is lent; every step has its own time limit so one slow step cannot eat the rest.
#
#   bash bench/gpu_check.sh            # logs under $OUT (the device tool's folder) or runs/gpu_check/
#
# The machine's image has Python 3.12 with torch and lightning but no network: first, here,
# `bash bench/gpu_wheels.sh` (the other packages as wheels, into .whl/), then carry .whl:
#
#   run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=540)
#
# Steps (seconds of limit):
#   env      (60)   the wheels into /tmp/site (no network needed); the repository on PYTHONPATH
#   tests    (150)  pytest -m gpu: FSDP2 on one GPU (= plain run to 1e-3, resume, export, bf16 + compile),
#                   CUDA numerics of the model
#   mfu      (150)  bench/bench_training.py --mfu: 1b preset, bf16-mixed, eager vs compiled, seq 1024 and 2048
#   sampling (120)  bench/bench_sampling.py on cuda/bf16: small preset trained on arithmetic in-script, then
#                   plain vs prefix vs dual vs dual+threshold (tokens/s, accuracy, agreement), t2i plain vs cached
set -uo pipefail
cd "$(dirname "$0")/.."
LOG="${OUT:-runs/gpu_check}"
mkdir -p "$LOG"
export HF_HUB_OFFLINE=1 PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 DVC_NO_ANALYTICS=1 \
       MLFLOW_DISABLE_TELEMETRY=true
step() {  # step NAME LIMIT CMD...: run with a limit, log to $LOG/NAME.log, record the status
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >"$LOG/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc ${SECONDS}s total, $((SECONDS - t0))s" | tee -a "$LOG/summary.txt"
    tail -n 25 "$LOG/$name.log"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$LOG/gpu.txt"
PY=${PYTHON:-python3}
step env 60 $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
$PY -c "import torch, lightning, mlflow, webdataset, pydantic; print('torch', torch.__version__, torch.cuda.get_device_name())" \
    | tee -a "$LOG/summary.txt"
# collection imports each named file only (the UI and pipeline tests need Prefect, DVC and a browser)
step tests 150 $PY -m pytest -q -m gpu -p no:cacheprovider tests/test_training_fsdp.py tests/test_training_e2e.py \
    tests/test_models_modeling.py
step mfu 150 $PY bench/bench_training.py --mfu --preset 1b --seq-len 1024 2048 --rows 0 --steps 8 --warmup 3
step sampling 120 $PY bench/bench_sampling.py --device cuda --dtype bf16 --accuracy-preset small \
    --train-steps 300 --cache-dir /tmp/gpu_check_cache --configs plain,+prefix,+dual,+dual+thr,+threshold \
    --speed-configs all --preset 1b --t2i-text-len 128 --json "$LOG/sampling.json"
