#!/usr/bin/env bash
# Render every benchmark database to a Markdown leaderboard and a tradeoff plot.
set -euo pipefail
cd "$(dirname "$0")/../.."
for db in results/bench/*.sqlite; do
  name=$(basename "$db" .sqlite)
  mi-bench leaderboard --db "$db" --format markdown -o "results/bench/$name.md" --plot "results/bench/${name}_tradeoff.png"
  mi-bench leaderboard --db "$db" --format csv -o "results/bench/$name.csv"
done
