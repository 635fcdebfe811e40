#!/usr/bin/env bash
# Issue 23, "What it must show": how much each attack leaks from an UNDEFENDED target, on every
# judge, with the prior's KID and the wall time of every stage, over target seeds 0-2.
#   attacks: gmi, kedmi, plgmi, LOMMA on gmi and on kedmi (attack.lomma=true), and the two
#            calibration baselines random (best prior sample, no optimisation) and pixel
#   settings: digits quick, MNIST quick (disjoint_classes), LFW cpu
# Then results/bench/strength_report.py writes strength.md: per setting and attack, every
# judge's accuracy (mean over seeds, Student-t 95% interval), the margin over `random` on every
# judge, LOMMA's paired change on GMI and KED-MI, the prior's KID, the stage times, and the
# human labels where people labelled the seed-0 runs (`mi-bench label RUN_DIR`, copied to
# results/bench/labels/<run_id>.labels.json).
#
# Usage:  bash results/bench/strength.sh                       # all settings, seeds 0-2
#         STRENGTH_SETTINGS="mnist:quick" bash results/bench/strength.sh   # one setting
#         STRENGTH_SEEDS=0 ...         # one seed (the rest resumes later)
#         STRENGTH_UNTIL=22:10 ...     # start no cell after 22:10 UTC (then export and report)
#         STRENGTH_EXPORT_ONLY=1 ...   # only the export and the report
# Resumable: the sweep skips a cell with a record; cells run one at a time, one torch thread.
# Order: per seed, per setting, the attacks sharing a prior run next to each other (gmi, its LOMMA
# variant and random share GMI's prior), so that an interrupted run leaves whole seeds.
# Wall time: see the "Wall time" section of strength.md (per stage, per cell).
set -euo pipefail
cd "$(dirname "$0")/../.."
export MI_BENCH_CACHE=${MI_BENCH_CACHE:-/tmp/mi-bench-strength-cache}
export MI_BENCH_DATA=${MI_BENCH_DATA:-../shared/data}
MIB=${MIB:-mi-bench}
command -v "${MIB%% *}" >/dev/null || { echo "strength.sh: ${MIB%% *} not found: pip install -e . in this checkout first (or set MIB)" >&2; exit 2; }
SETTINGS=${STRENGTH_SETTINGS:-"digits:quick mnist:quick lfw:cpu"}
SEEDS=${STRENGTH_SEEDS:-0,1,2}
DB=${STRENGTH_DB:-results/local/strength.sqlite}
NAME=${STRENGTH_NAME:-strength}
# its own run folder: another benchmark's runs in it would be swept into this database by
# a database rebuild (the runs of one benchmark stay together)
RUNS=${STRENGTH_RUNS:-results/local/runs/$NAME}
OUT="results_db=$DB results_dir=$RUNS threads=1 --quiet"
ATTACKS=("attack=gmi" "attack=gmi attack.lomma=true" "attack=random" "attack=kedmi"
         "attack=kedmi attack.lomma=true" "attack=plgmi" "attack=pixel")

# STRENGTH_UNTIL is a UTC clock time; one earlier than now means tomorrow (a run past midnight)
UNTIL_S=
if [[ -n "${STRENGTH_UNTIL:-}" ]]; then
  UNTIL_S=$(date -u -d "$STRENGTH_UNTIL" +%s) || { echo "strength.sh: STRENGTH_UNTIL=$STRENGTH_UNTIL is not a clock time: give HH:MM (UTC)" >&2; exit 2; }
  (( UNTIL_S > $(date -u +%s) )) || UNTIL_S=$((UNTIL_S + 86400))
fi
late() { [[ -n "$UNTIL_S" ]] && (( $(date -u +%s) > UNTIL_S )); }
cell() {
  if late; then echo "strength.sh: past $STRENGTH_UNTIL UTC, not starting: $*" >&2; return 0; fi
  local t0=$SECONDS
  # shellcheck disable=SC2086  # the overrides are words
  $MIB sweep "$@" defense=none $OUT || echo "strength.sh: cell failed: $*" >&2
  echo "$(date -u +%FT%TZ) $((SECONDS - t0)) s: $*" >> "${STRENGTH_TIMES:-results/local/strength_times.log}"
}
if [[ "${STRENGTH_EXPORT_ONLY:-0}" != 1 ]]; then
  mkdir -p results/local
  for s in ${SEEDS//,/ }; do
    for setting in $SETTINGS; do
      ds=${setting%%:*} preset=${setting##*:}
      for a in "${ATTACKS[@]}"; do
        # shellcheck disable=SC2086
        cell dataset=$ds preset=$preset $a seed=$s
      done
    done
  done
fi

REC=results/bench/$NAME.records.jsonl.gz  # gzipped (over 1 MB of JSON lines); db export writes .gz as gzip
# --merge: the committed records the database lacks (another machine's runs, a database lost with
# its machine) stay; a run of the same config in the database replaces its old record
$MIB db export --db "$DB" -o "$REC" --merge
# $NAME.md: the report (tests/test_golden.py renders the committed records to it);
# the leaderboard view of the same records beside it
python results/bench/strength_report.py --copy-grids "$REC"  # seed-0 grids into results/bench/grids/strength/
python results/bench/strength_report.py "$REC" > "results/bench/$NAME.md"
$MIB leaderboard --records "$REC" --format markdown -o "results/bench/${NAME}_leaderboard.md"
$MIB leaderboard --records "$REC" --format csv -o "results/bench/$NAME.csv"
