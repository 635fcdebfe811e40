#!/usr/bin/env bash
# Export a benchmark's local results database (results/local/<name>.sqlite, ignored by git) to the
# text records kept in the repository (results/bench/<name>.records.jsonl), then render them.
# Usage: bash results/bench/export.sh <name>
set -euo pipefail
cd "$(dirname "$0")/../.."
name=$1
mi-bench db export --db "results/local/$name.sqlite" -o "results/bench/$name.records.jsonl"
bash results/bench/report.sh "$name"
