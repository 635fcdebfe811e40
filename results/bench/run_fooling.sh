#!/usr/bin/env bash
# Do the attacks' reconstructions look like the class, or only fool the classifiers?
# Re-scores the undefended runs with the pixel-space nearest-neighbour diagnostic, and tries
# PLG-MI with a 2x wider, 3x longer-trained conditional GAN than its quick preset.
# Usage: bash results/bench/run_fooling.sh -> results/bench/fooling.records.jsonl
set -euo pipefail
cd "$(dirname "$0")/../.."
export MI_BENCH_CACHE=${MI_BENCH_CACHE:-/tmp/mi-bench-bench-cache}
export MI_BENCH_DATA=${MI_BENCH_DATA:-../shared/data}
OUT="results_db=results/local/fooling.sqlite results_dir=results/local/runs --quiet"
mi-bench sweep seed=0 attack=gmi,kedmi,plgmi dataset.protocol=disjoint_samples,disjoint_classes $OUT
mi-bench sweep seed=0 dataset=mnist preset=quick attack=gmi,kedmi,plgmi $OUT
STRONG="attack.gen_width=16 attack.disc_width=16 attack.gan_steps=600"
mi-bench sweep seed=0 attack=plgmi dataset.protocol=disjoint_samples,disjoint_classes $STRONG $OUT
mi-bench sweep seed=0 dataset=mnist preset=quick attack=plgmi $STRONG $OUT
bash results/bench/export.sh fooling   # text records + leaderboard in results/bench/
