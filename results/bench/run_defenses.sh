#!/usr/bin/env bash
# Issue 4 benchmarks: each defense against GMI, KED-MI and PLG-MI on digits (default quickstart)
# and on MNIST quick, plus a strength sweep of three values per defense (against GMI and
# PLG-MI on digits). Usage: bash results/bench/run_defenses.sh -> results/bench/defenses.records.jsonl
set -euo pipefail
cd "$(dirname "$0")/../.."
export MI_BENCH_CACHE=${MI_BENCH_CACHE:-/tmp/mi-bench-bench-cache}
export MI_BENCH_DATA=${MI_BENCH_DATA:-../shared/data}
OUT="results_db=results/local/defenses.sqlite results_dir=results/local/runs --quiet"
mi-bench sweep seed=0 defense=none,mid,qad,desmil,dpsgd attack=gmi,kedmi,plgmi $OUT
mi-bench sweep seed=0 defense=mid defense.beta=0.01,0.1,0.5 attack=gmi,plgmi $OUT
mi-bench sweep seed=0 defense=qad defense.alpha_q=0.001,0.003,0.03 attack=gmi,plgmi $OUT
mi-bench sweep seed=0 defense=desmil defense.beta_dec=1.0,10.0,100.0 attack=gmi,plgmi $OUT
mi-bench sweep seed=0 defense=dpsgd defense.noise_multiplier=0.5,1.0,2.0 attack=gmi,plgmi $OUT
mi-bench sweep seed=0 defense=bido defense.lambda_x=0.3,0.5,1.0 defense.lambda_y=2.5 attack=gmi,plgmi $OUT
mi-bench sweep seed=0 dataset=mnist preset=quick defense=none,mid,qad,desmil,dpsgd attack=gmi,kedmi,plgmi $OUT
bash results/bench/export.sh defenses   # text records + leaderboard in results/bench/
