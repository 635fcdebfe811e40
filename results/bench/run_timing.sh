#!/usr/bin/env bash
# Wall-time benchmarks on the 2-core CPU, run ALONE (nothing else on the machine):
# cold cache and warm cache for the default dataset/preset, per attack.
# Usage: bash results/bench/run_timing.sh   -> results/bench/timing.records.jsonl, timing_times.log
set -euo pipefail
cd "$(dirname "$0")/../.."
export MI_BENCH_CACHE=/tmp/mi-bench-timing-cache
DB=results/local/timing.sqlite
OUT="results_db=$DB results_dir=results/local/runs"
LOG=results/bench/timing_times.log
: > $LOG
t() { local s=$(date +%s.%N); "$@" > /dev/null; echo "$(echo "$(date +%s.%N) - $s" | bc) s :: $*" >> $LOG; }
for run in "defense=none attack=gmi" "defense=bido attack=gmi" "defense=none attack=kedmi" "defense=none attack=plgmi"; do
  rm -rf "$MI_BENCH_CACHE"
  t mi-bench run $run $OUT --quiet      # cold: trains target, evaluator, prior
  t mi-bench run $run $OUT --quiet      # warm: everything cached
done
bash results/bench/export.sh timing   # text records + leaderboard in results/bench/
