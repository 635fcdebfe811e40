#!/usr/bin/env bash
# Issue 7: the CPU must not get slower. Run ALONE on the 2-core development machine (nothing else
# running), about 12 minutes in all:
#   OFFICIAL_BIDO=/tmp/defend_mi_bido bash results/bench/cpu_timing.sh
# 1. wall time of the quick preset, cold and warm cache, `defense=none attack=gmi` and
#    `defense=bido attack=gmi` (today's reference: none+gmi 125 s cold, 29-34 s warm;
#    results/README.md "Wall time") -> results/bench/cpu_timing.log (~6 min);
# 2. old vs new code interleaved in one process, stage by stage (results/bench/cpu_ab.py,
#    base = the commit before issue 7) -> results/bench/cpu_ab.md (~4 min);
# 3. mi-bench's BiDO / QAD-style / DESMIL-style steps next to the official BiDO step
#    (results/bench/bido_step.py) -> results/bench/bido_step.md (~2 min). OFFICIAL_BIDO is a
#    folder holding hsic.py and model.py of AlanPeng0897/Defend_MI's BiDO/ (never committed);
#    without it this part is skipped.
set -euo pipefail
cd "$(dirname "$0")/../.."
export MI_BENCH_CACHE=/tmp/mi-bench-cpu-timing-cache MI_BENCH_OFFLINE=1
OUT="results_db=results/local/cpu_timing.sqlite results_dir=results/local/runs"
LOG=results/bench/cpu_timing.log
{
  echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
} > "$LOG"
t() { local s e; s=$(date +%s.%N); "$@" > /dev/null; e=$(date +%s.%N); echo "$(echo "$e - $s" | bc) s :: $*" >> "$LOG"; }
for run in "defense=none attack=gmi" "defense=bido attack=gmi"; do
  rm -rf "$MI_BENCH_CACHE"
  t mi-bench run $run $OUT --quiet      # cold: trains target, evaluator, prior
  t mi-bench run $run $OUT --quiet      # warm: everything cached
done
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$LOG"
cat "$LOG"
python results/bench/cpu_ab.py --rounds 3
if [ -n "${OFFICIAL_BIDO:-}" ]; then
  python results/bench/bido_step.py "$OFFICIAL_BIDO" --threads 1 --steps 20 --rounds 5
else
  echo "OFFICIAL_BIDO not set: bido_step.py skipped" >&2
fi
