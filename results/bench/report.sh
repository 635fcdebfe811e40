#!/usr/bin/env bash
# Render every benchmark's exported records (results/bench/<name>.records.jsonl) to a Markdown
# and a CSV leaderboard and a tradeoff plot beside them. Usage: bash results/bench/report.sh [name ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  for rec in results/bench/*.records.jsonl; do names+=("$(basename "$rec" .records.jsonl)"); done
fi
for name in "${names[@]}"; do
  rec="results/bench/$name.records.jsonl"
  mi-bench leaderboard --records "$rec" --format markdown -o "results/bench/$name.md" --plot "results/bench/${name}_tradeoff.png"
  mi-bench leaderboard --records "$rec" --format csv -o "results/bench/$name.csv"
done
