#!/usr/bin/env bash
# Issue 3 benchmarks: KED-MI and PLG-MI (and GMI for the ordering) against the undefended and the
# BiDO target, on digits (default quickstart, both protocols) and on MNIST quick under both
# public protocols. Usage: bash results/bench/run_attacks.sh -> results/bench/attacks.records.jsonl
set -euo pipefail
cd "$(dirname "$0")/../.."
export MI_BENCH_CACHE=${MI_BENCH_CACHE:-/tmp/mi-bench-bench-cache}
export MI_BENCH_DATA=${MI_BENCH_DATA:-../shared/data}
OUT="results_db=results/local/attacks.sqlite results_dir=results/local/runs --quiet"
mi-bench sweep attack=gmi,kedmi,plgmi defense=none,bido seed=0,1,2 $OUT
mi-bench sweep seed=0 attack=gmi,kedmi,plgmi defense=none,bido dataset.protocol=disjoint_classes $OUT
mi-bench sweep seed=0 dataset=mnist preset=quick attack=gmi,kedmi,plgmi defense=none,bido dataset.protocol=disjoint_classes,disjoint_samples $OUT
# more seeds for the published-ordering claims under the published protocol
mi-bench sweep attack=gmi,kedmi,plgmi dataset.protocol=disjoint_classes seed=1,2 $OUT
mi-bench sweep dataset=mnist preset=quick attack=gmi,kedmi,plgmi dataset.protocol=disjoint_classes seed=1,2 $OUT
bash results/bench/export.sh attacks   # text records + leaderboard in results/bench/
