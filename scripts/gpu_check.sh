#!/usr/bin/env bash
# One-call check of the CUDA side on a machine with an NVIDIA GPU, nvcc and a CUDA build of torch:
#   1. environment (GPU, driver, torch, nvcc);
#   2. the CUDA/nvcc-marked tests: our kernels built by ninja and checked against the reference paths, whole
#      networks with kernels vs reference, R1 on GPU vs CPU, float16 training, train.py (host and --fsr) on the GPU;
#   3. speed: bias_act kernel vs reference, G+D step at the benchmark configuration (fp32 and fp16 blocks);
#   4. train.py throughput on the GPU: --cfg=cpu host and --fsr (the synthetic experiment's FSR settings), and
#      --cfg=paper256 at 256x256.
# Logs go to $OUT (or /tmp/gpu_check); every stage runs even if an earlier one fails. Usage: bash scripts/gpu_check.sh
# On an H200 (2026-12-04) the test stage took 250 s (kernel builds included) and the benchmarks 55 s; the training
# stage needs about 5 more minutes, so give the call 10 minutes.
set -u
cd "$(dirname "$0")/.."
O=${OUT:-/tmp/gpu_check}
mkdir -p "$O"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }

stamp environment
{ nvidia-smi; nvcc --version; $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'device', torch.cuda.get_device_name(), torch.cuda.get_device_capability())"; nproc; } >"$O/env.txt" 2>&1
tail -3 "$O/env.txt"

stamp tests
timeout 300 $PY -m pytest -p no:cacheprovider -q -rs --durations=15 -m "cuda or nvcc" tests >"$O/tests.log" 2>&1
echo "pytest rc $?"; tail -5 "$O/tests.log"

stamp benchmarks
{ timeout 60 $PY bench/bench_bias_act.py --reps 20
  timeout 120 $PY bench/bench_networks.py --device cuda --modes fp32,bf16 --iters 32; } >"$O/bench.log" 2>&1
tail -25 "$O/bench.log"

train_rate() {  # name, then train.py args: prints s/kimg and img/s over the ticks after the first
  local name=$1; shift
  timeout 240 $PY train.py --outdir="$O/runs" --device="${GPU_CHECK_DEVICE:-cuda}" --metrics=none --snap=1000 "$@" >"$O/runs-$name.log" 2>&1
  echo "$name rc $?"
  $PY - "$O/runs" "$name" <<'EOF'
import glob, json, sys
run = sorted(glob.glob(f'{sys.argv[1]}/*'))[-1]
stats = [json.loads(line) for line in open(f'{run}/stats.jsonl')][1:]
if stats:
    sec = sum(s['Timing/sec_per_tick']['mean'] for s in stats)
    kimg = stats[-1]['Progress/kimg']['mean'] - json.loads(open(f'{run}/stats.jsonl').readline())['Progress/kimg']['mean']
    print(f'{sys.argv[2]}: {sec / kimg:.2f} s/kimg, {kimg * 1000 / sec:.0f} img/s over {len(stats)} ticks ({run})')
EOF
}
stamp training throughput
{ train_rate cpu-host --data=fsr-synthetic --cfg=cpu --kimg=4 --tick=1
  train_rate cpu-fsr --data=fsr-synthetic --cfg=cpu --kimg=4 --tick=1 --fsr=1 --fsr-head-kernel=3 --fsr-relu=1 \
      --fsr-unit-atoms=1 --fsr-head-lr=10
  train_rate paper256 --data=toy-shapes:res=256,num=1000 --cfg=paper256 --batch=32 --kimg=2 --tick=0.5 --workers=8; } \
  >"$O/train.log" 2>&1
cat "$O/train.log"
rm -rf "$O/runs"
nvidia-smi --query-gpu=memory.used,temperature.gpu,clocks.sm --format=csv >>"$O/env.txt" 2>&1
stamp done
