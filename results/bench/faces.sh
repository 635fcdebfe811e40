#!/usr/bin/env bash
# Issue 8 face benchmark. Run from anywhere, on a quiet machine:
#
#   bash results/bench/faces.sh cpu   # LFW, preset=cpu, one thread: GMI, KED-MI, PLG-MI and the
#                                     # random/pixel baselines against none and bido
#                                     # -> results/bench/faces.{md,records.jsonl}
#   ATTACKS="gmi kedmi" bash results/bench/faces.sh cpu   # a subset of the attacks
#   bash results/bench/faces.sh gpu   # CelebA, preset=paper, one undefended run per attack, CUDA
#
# cpu: 6 runs. Estimated from component timings taken on this 2-core machine while others were
# busy (results/faces/README.md; a quiet machine should be faster): first run GMI/none ~25-30 min
# (decoding 12,365 JPEGs ~1 min, target ~2-3 min, evaluator ~3-5 min, WGAN-GP 1,200 G steps
# ~13-19 min, inversion ~4 min); GMI/bido ~7-10 min (prior and evaluator cached); KED-MI and
# PLG-MI ~20-25 min each (their priors are trained per target). About 2-2.5 hours in all, plus
# ~3 min per run for Inception FID when pytorch-fid's weights are on disk.
# Every run records attack accuracy with its Wilson interval, top-5, pixel-NN, KNN distance, FID
# on evaluator features and Inception FID (null with the reason when the weights are absent),
# per-stage wall time, and a grid of reconstructions beside real images of the same people.
#
# gpu: needs CelebA at $MI_BENCH_DATA/celeba (img_align_celeba/, identity_CelebA.txt); 1,000
# private identities, the first 300 attacked (as published), published CelebA attack settings
# passed on the command line (configs/dataset/celeba.yaml lists them). Estimate on one H100:
# target VGG16-BN 50 epochs + evaluator IR-50/112 30 epochs ~30-60 min (once, cached), then per
# attack a prior of 1-3 hours and an inversion of minutes to an hour; see results/faces/README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
export MI_BENCH_CACHE=${MI_BENCH_CACHE:-/tmp/mi-bench-faces-cache}
export MI_BENCH_DATA=${MI_BENCH_DATA:-../shared/data}
mode=${1:-cpu}

if [ "$mode" = cpu ]; then
  DB=results/local/faces.sqlite
  OUT="results_db=$DB results_dir=results/local/faces/runs --quiet"
  LOG=results/bench/faces_times.log
  # GMI first: its prior is shared, so GMI/bido reuses the prior and the evaluator (the "further
  # defense within 10 minutes" check); KED-MI and PLG-MI train a prior per target. Then the
  # calibration baselines (issue 12): `random` (best of N samples of GMI's cached prior) and
  # `pixel` (GAN-free gradient inversion from public faces), against the same targets.
  for attack in ${ATTACKS:-gmi kedmi plgmi random pixel}; do
    for defense in none bido; do
      start=$(date +%s)
      mi-bench run dataset=lfw preset=cpu threads=1 attack=$attack defense=$defense $OUT
      echo "$(date -Is) lfw cpu $attack $defense $(( $(date +%s) - start )) s" | tee -a "$LOG"
    done
  done
  python results/bench/faces_report.py "$DB" > results/bench/faces.md
  mi-bench leaderboard --db "$DB" --format markdown -o results/bench/faces_leaderboard.md \
    --plot results/bench/faces_tradeoff.png
  mi-bench db export --db "$DB" -o results/bench/faces.records.jsonl
elif [ "$mode" = gpu ]; then
  DB=results/bench/faces_gpu.sqlite
  CLASSES="classes=[$(seq -s, 0 299)]"
  OUT="dataset=celeba preset=paper device=cuda threads=8 $CLASSES results_db=$DB results_dir=results/bench/faces_gpu_grids --quiet"
  LOG=results/bench/faces_gpu_times.log
  run() { start=$(date +%s); mi-bench run "$@" $OUT; echo "$(date -Is) celeba paper $1 $(( $(date +%s) - start )) s" | tee -a "$LOG"; }
  # GMI: WGAN-GP 120 epochs of 30,000 images (11,250 G steps), lr 0.02, 1,500 iterations, 5 restarts
  run attack=gmi defense=none attack.gan_steps=11250 attack.lr=0.02 attack.iterations=1500 attack.restarts=5
  # KED-MI: 120 epochs (11,250 G steps), 2,400 iterations, no latent clamp (as the official runs)
  run attack=kedmi defense=none attack.gan_steps=11250 attack.iterations=2400 attack.latent_clamp=none
  # PLG-MI: 30,000 GAN iterations, top-30 pseudo-labels, 600 inversion iterations
  run attack=plgmi defense=none attack.gan_steps=30000 attack.top_n=30 attack.iterations=600
  python results/bench/faces_report.py "$DB" > results/bench/faces_gpu.md
else
  echo "usage: $0 cpu|gpu" >&2
  exit 2
fi
