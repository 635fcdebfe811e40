#!/usr/bin/env bash
# Issue 21: one training step per network family (MCNN, SCNN, ResNet-8, MadryNet, VGG16-BN and
# IR-18 at the presets' widths, GMI's WGAN-GP step), NCHW float32 (the plain PyTorch reference)
# vs channels-last vs bf16 autocast vs both, interleaved in one process, 1 thread; then mi-bench's
# train_classifier before (channels_last=never) and after (auto, amp=bf16), and a torch.profiler
# table of the slowest family -> results/bench/cpu_speed.md (~6 min on the 2-core machine).
# Ratios are what to read: the machine may be shared. `--quick` (~2 min) for a short check.
#   bash results/bench/cpu_speed.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/../.."
python results/bench/cpu_speed.py "$@" --out results/bench/cpu_speed.md
