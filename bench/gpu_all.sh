#!/usr/bin/env bash
# Every GPU-side check and timing in one call (for a lent H100/H200; no TensorRT there).
#   OUT=/some/dir bash bench/gpu_all.sh
# Writes gpu_kernel_check.json, gpu_speed.json, gpu_conv_layers.json, gpu_train.json, gpu_pytest.log and
# gpu_clocks.csv (nvidia-smi samples, 1 s) under $OUT.
# SKIP="kernel_check train" leaves steps out (names: kernel_check speed conv_layers train pytest).
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-gpu_results}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
# SM clock, power and temperature once a second through the run: is a slow step the chip slowing down?
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,utilization.gpu \
    --format=csv -lms 1000 > "$OUT/gpu_clocks.csv" 2>/dev/null &
CLOCKS=$!
trap 'kill $CLOCKS 2>/dev/null' EXIT
SKIP=" ${SKIP:-} "
step() { local name=$1 limit=$2; shift 2
         if [[ "$SKIP" == *" $name "* ]]; then echo "=== $name skipped (SKIP)"; return; fi
         echo "=== $name: $* (limit ${limit}s)"; local t0=$SECONDS
         timeout "$limit" "$@"; echo "=== exit $? after $((SECONDS - t0))s"; }
step kernel_check 120 python3 bench/gpu_kernel_check.py --out "$OUT/gpu_kernel_check.json"
step speed 240 python3 bench/gpu_speed.py --out "$OUT/gpu_speed.json" --budget-s 200 --images 3072
step conv_layers 60 python3 bench/gpu_conv_layers.py --out "$OUT/gpu_conv_layers.json"
step train 90 python3 bench/bench_train.py --device cuda --config cub_vgg16_fc7 --iters 10 --out "$OUT/gpu_train.json"
step pytest 90 bash -c "python3 -m pytest -q -p no:cacheprovider -m gpu -x tests/ops tests/plugins tests/test_infer.py \
     tests/test_fastpath_split.py 2>&1 | tee '$OUT/gpu_pytest.log' | tail -15"
