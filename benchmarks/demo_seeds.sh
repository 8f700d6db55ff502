#!/bin/bash
# `make demo` for seeds 0-4 on a fresh clone of this repository, one after another; prints mIoU and wall time per
# seed (seed 0's includes creating the venv). Run it with nothing else on the machine:
#   benchmarks/demo_seeds.sh [OUT_DIR]     (default /tmp/demo_seeds; SEEDS="0 1" to choose)
set -u
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-/tmp/demo_seeds}
rm -rf "$out" && mkdir -p "$out" && git clone -q "$repo" "$out/clone" && cd "$out/clone" || exit 1
for seed in ${SEEDS:-0 1 2 3 4}; do
  rm -rf data work_dirs
  start=$(date +%s.%N)
  make demo ARGS="--set train.seed=$seed" > "$out/seed$seed.log" 2>&1
  rc=$?
  wall=$(python3 -c "print(round($(date +%s.%N) - $start, 1))")
  echo "seed $seed rc=$rc wall=${wall}s $(grep '\[demo\] mIoU' "$out/seed$seed.log")" | tee -a "$out/summary.txt"
  cp work_dirs/demo/log.jsonl "$out/seed$seed.jsonl" 2>/dev/null
done
