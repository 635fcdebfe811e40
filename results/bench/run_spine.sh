#!/usr/bin/env bash
# Benchmarks of issue 2 (the spine): GMI vs none / BiDO on digits (default dataset and preset),
# cold cache then warm, plus MNIST quick under both public protocols, plus a BiDO strength sweep.
# Usage: bash results/bench/run_spine.sh   (-> results/bench/spine.records.jsonl and logs)
set -euo pipefail
cd "$(dirname "$0")/../.."
export MI_BENCH_CACHE=${MI_BENCH_CACHE:-/tmp/mi-bench-bench-cache}
export MI_BENCH_DATA=${MI_BENCH_DATA:-../shared/data}
DB=results/local/spine.sqlite
OUT="results_db=$DB results_dir=results/local/runs"
rm -rf "$MI_BENCH_CACHE"
t() { local s=$(date +%s.%N); "$@"; echo "WALL $(echo "$(date +%s.%N) - $s" | bc) :: $*" >> results/bench/spine_times.log; }
: > results/bench/spine_times.log
t mi-bench run defense=none attack=gmi $OUT --quiet          # cold
t mi-bench run defense=none attack=gmi $OUT --quiet          # warm
rm -rf "$MI_BENCH_CACHE"
t mi-bench run defense=bido attack=gmi $OUT --quiet          # cold
t mi-bench run defense=bido attack=gmi $OUT --quiet          # warm
t mi-bench run defense=none attack=gmi dataset.protocol=disjoint_classes $OUT --quiet
t mi-bench run defense=bido attack=gmi dataset.protocol=disjoint_classes $OUT --quiet
t mi-bench sweep seed=0 defense=bido defense.lambda_x=0.05 defense.lambda_y=0.1,1.0,2.5 $OUT --quiet
t mi-bench sweep seed=0 defense=bido defense.lambda_x=0.1,0.2 defense.lambda_y=1.0 $OUT --quiet
for proto in disjoint_classes disjoint_samples; do
  t mi-bench run dataset=mnist preset=quick defense=none attack=gmi dataset.protocol=$proto $OUT --quiet
  t mi-bench run dataset=mnist preset=quick defense=bido attack=gmi dataset.protocol=$proto $OUT --quiet
done
bash results/bench/export.sh spine   # text records + leaderboard in results/bench/
