#!/usr/bin/env bash
# The synthetic-teacher experiment (plain host vs FSR joint vs FSR layer-wise, equal budget) trained and evaluated on
# one CUDA GPU, all runs at once. Usage: KIMG=40 SEEDS=0 bash scripts/gpu_synthetic.sh (about 5 min of training on
# an H200, plus the evaluation; a device call may last 10 min)
# Writes $OUT/synthetic.tar.gz (report, figures, metric jsonl, logs, last sample grids; no pickles) and
# $OUT/synthetic.log. On 2026-12-04 (one H200, 15 minutes of device time) the training of all three arms at 20 kimg
# took 150-166 s, but the evaluation did not finish within the time left; size KIMG and LIMIT_S for both.
set -u
cd "$(dirname "$0")/.."
O=${OUT:-/tmp/gpu_synthetic}
mkdir -p "$O"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
KIMG=${KIMG:-40}
SEEDS=${SEEDS:-0}
JOBS=$(( 3 * $(echo "$SEEDS" | tr ',' '\n' | wc -l) ))
D=/tmp/exp-synthetic
rm -rf "$D"
start=$(date +%s)
timeout "${LIMIT_S:-3000}" $PY -m fsr_plugin.experiments synthetic --outdir="$D" --kimg="$KIMG" --seeds="$SEEDS" \
  --jobs="$JOBS" --threads=2 --device="${DEV:-cuda}" --train-args="--device=${DEV:-cuda} ${TRAIN_ARGS:-}" ${EXP_ARGS:-} \
  >"$O/synthetic.log" 2>&1
echo "experiment rc $? after $(( $(date +%s) - start )) s"
tail -40 "$O/synthetic.log"
# Everything but pickles and the per-tick sample grids (about 1 MB each); each run's last grid is kept.
cd "$D" && find . \( -name '*.md' -o -name '*.png' -o -name '*.jsonl' -o -name '*.json' -o -name 'log.txt' \) \
  ! -name 'fakes0*.png' >/tmp/keep.txt
for run in runs/*/*/; do ls "$run"fakes0*.png 2>/dev/null | tail -1; done >>/tmp/keep.txt
tar czf "$O/synthetic.tar.gz" -T /tmp/keep.txt
ls -la "$O"
[ -f report.md ] && cat report.md | head -80
