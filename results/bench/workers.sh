#!/usr/bin/env bash
# Issue 9 benchmark: a 2 defenses x 2 attacks x 2 seeds grid (digits, quick preset; 8 cells) run
# three ways, each from a cold cache:
#   sequential        the default: one process, threads=1
#   sequential-t2     one process, threads=2
#   workers2          --workers 2: two worker processes, 1 thread each
# Reports wall time, how many times each artifact was trained (every artifact - 4 targets, 1
# evaluator, 2 GMI priors, 4 KED-MI priors - must be trained exactly once) and that every cell
# has exactly one record. Run it ALONE on the machine (wall times). Expected: ~20 min on the
# 2-core development CPU (sequential ~8 min, the other two ~5-6 min each).
# Usage: bash results/bench/workers.sh  -> results/bench/workers.md
# A quick check of the script itself: PRESET=smoke OUT_MD=/tmp/workers.md bash results/bench/workers.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PRESET=${PRESET:-quick}
OUT_MD=${OUT_MD:-results/bench/workers.md}
LOCAL=results/local/workers
GRID="dataset=digits preset=$PRESET defense=none,bido attack=gmi,kedmi seed=0,1"
rm -rf "$LOCAL"
mkdir -p "$LOCAL"
for mode in sequential sequential-t2 workers2; do
  case $mode in
    sequential) extra="" ;;
    sequential-t2) extra="threads=2" ;;
    workers2) extra="--workers 2" ;;
  esac
  dir=$LOCAL/$mode
  export MI_BENCH_CACHE=$dir/cache
  start=$(date +%s.%N)
  mi-bench sweep $GRID results_db=$dir/results.sqlite results_dir=$dir/runs $extra --quiet 2> "$dir.log" \
    || { echo "sweep $mode failed; see $dir.log"; exit 1; }
  end=$(date +%s.%N)
  echo "$mode $(echo "$end - $start" | bc)" >> "$LOCAL/times.txt"
done
python - "$LOCAL" "$OUT_MD" "$GRID" <<'PY'
import json, sys
from collections import Counter
from pathlib import Path
from mi_bench.results import ResultStore
from mi_bench.sweep import make_cells

local, out_md, grid = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
cells = make_cells(grid.split())
expected = {c.hash for c in cells}
times = dict(line.split() for line in (local / "times.txt").read_text().splitlines())
lines = [f"# Parallel sweep benchmark (`results/bench/workers.sh`)", "",
         f"Grid: `mi-bench sweep {grid}` ({len(cells)} cells), cold cache each time.", "",
         "| mode | wall time (s) | records | cells with exactly one record | artifacts trained | trained more than once |",
         "|---|---|---|---|---|---|"]
for mode, secs in times.items():
    recs = ResultStore(local / mode / "results.sqlite").records()
    per_cell = Counter(r["config_hash"] for r in recs)
    json_files = list((local / mode / "runs").glob("*/record.json"))
    assert len(json_files) == len(recs), (mode, len(json_files), len(recs))
    trained = Counter((k, a["key"]) for r in recs for k, a in r["artifacts"].items() if not a["cached"])
    twice = {f"{k} {key}": n for (k, key), n in trained.items() if n > 1}
    ok = sum(1 for h in expected if per_cell.get(h) == 1)
    lines.append(f"| {mode} | {float(secs):.0f} | {len(recs)} | {ok} of {len(expected)} | "
                 f"{sum(trained.values())} ({', '.join(f'{n} {k}' for k, n in sorted(Counter(k for k, _ in trained).items()))}) | "
                 f"{twice or 'none'} |")
machine = recs[0]["machine"] if recs else {}
lines += ["", f"Machine: {machine.get('platform')}, {machine.get('cpu_count')} CPUs, device {machine.get('device')}."]
out_md.write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
