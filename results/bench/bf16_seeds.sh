#!/usr/bin/env bash
# Issue 21: amp=bf16 on the CPU against float32 (amp=off), 3 target seeds each, the same code,
# cache and judges (digits, preset quick, GMI, defense none, seeds 0-2). Runs the cells
# (resumable: cells with a record are skipped), exports them, renders their leaderboard
# (bf16_seeds.md / .csv, the golden test's pair) and the paired comparison
# (bf16_seeds_compare.md). About 30 min alone on the 2-core machine (one cold cell, five warm).
#   bash results/bench/bf16_seeds.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export MI_BENCH_CACHE=${MI_BENCH_CACHE:-/tmp/mi-bench-bf16-cache}
export MI_BENCH_DATA=${MI_BENCH_DATA:-../shared/data}
DB=${BF16_DB:-results/local/bf16.sqlite}
mkdir -p results/local
mi-bench sweep dataset=digits preset=quick defense=none attack=gmi amp=bf16,off seed=0,1,2 threads=1 \
  results_db=$DB results_dir=results/local/runs --quiet
REC=results/bench/bf16_seeds.records.jsonl
mi-bench db export --db "$DB" -o "$REC"
mi-bench leaderboard --records "$REC" --format markdown -o results/bench/bf16_seeds.md
mi-bench leaderboard --records "$REC" --format csv -o results/bench/bf16_seeds.csv
python results/bench/bf16_seeds.py
