#!/usr/bin/env bash
# Render the benchmarks' exported records (results/bench/<name>.records.jsonl):
#  - per benchmark, a Markdown and a CSV leaderboard and a tradeoff plot beside the records;
#  - for all of them together, the self-contained HTML report results/report.html (sortable
#    leaderboards, tradeoff plots with the Pareto front, galleries, protocols) and a screenshot
#    of its top, results/report.png (when Chromium and selenium are installed).
# Usage: bash results/bench/report.sh [name ...]     (names: only those benchmarks' md/csv/png)
# Galleries need each run's folder (results/local/runs/<run_id>, from re-running the benchmarks)
# and, for real images of MNIST, the dataset ($MI_BENCH_DATA, e.g. ../shared/data); records
# whose images were not kept show their grid.png if it is in the repository, or say so.
# About 10-30 s on the 2-core machine (loading the datasets dominates).
set -euo pipefail
cd "$(dirname "$0")/../.."
# real private images for the galleries (without them each gallery falls back to its run's full-size
# grid.png, which made the page 19.8 MB instead of 4)
export MI_BENCH_DATA=${MI_BENCH_DATA:-../shared/data}
# records: results/bench/<name>.records.jsonl, or .jsonl.gz when kept gzipped (over 1 MB as JSON)
records_of() { local f="results/bench/$1.records.jsonl"; [ -e "$f" ] && echo "$f" || echo "$f.gz"; }
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  for rec in results/bench/*.records.jsonl results/bench/*.records.jsonl.gz; do
    if [ -e "$rec" ]; then names+=("$(basename "${rec%.gz}" .records.jsonl)"); fi
  done
fi
for name in "${names[@]}"; do
  rec=$(records_of "$name")
  md="results/bench/$name.md"
  # a benchmark with its own report (faces.md, strength.md: <name>_report.py) keeps its
  # leaderboard beside it
  [ -e "results/bench/${name}_leaderboard.md" ] && md="results/bench/${name}_leaderboard.md"
  mi-bench leaderboard --records "$rec" --format markdown -o "$md" --plot "results/bench/${name}_tradeoff.png"
  mi-bench leaderboard --records "$rec" --format csv -o "results/bench/$name.csv"
done
# the HTML report covers the current benchmarks (fidelity.sh + judges.sh, faces.sh); REPORT_ALL=1
# adds the earlier ones (results/README.md, "Earlier benchmarks": other recipes, no judges)
sources=()
if [ "${REPORT_ALL:-0}" = 1 ]; then
  for rec in results/bench/*.records.jsonl results/bench/*.records.jsonl.gz; do
    if [ -e "$rec" ]; then sources+=(--records "$rec"); fi
  done
else
  for name in fidelity faces; do sources+=(--records "$(records_of "$name")"); done
fi
shot=()
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] && python -c "import selenium" 2>/dev/null; then
  shot=(--screenshot results/report.png)
else
  echo "report.sh: no Chromium/chromedriver/selenium: results/report.png not updated" >&2
fi
# 3 reconstructions per class: 6.0 MB for the 105 entries of fidelity + faces (2026-11-26)
mi-bench report "${sources[@]}" --runs results/local/runs --gallery-samples 3 -o results/report.html "${shot[@]}"
