"""Measure torch intra-op threads (1 vs 2) on mi-bench's hot loops; writes results/threads.md.

Usage: python results/bench/threads.py [--note "machine load description"]
Each workload runs in a fresh subprocess per thread count (torch fixes threads per process).
"""

import json
import subprocess
import sys
import time
from pathlib import Path

WORK = r'''
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[1])); torch.set_num_interop_threads(1)
from pathlib import Path
from mi_bench.data import DatasetConfig, load_splits
from mi_bench.models import build_model
from mi_bench.train import TrainConfig, train_classifier
from mi_bench.attacks.gmi import GMI, GMIConfig
from mi_bench.runtime import NULL_BARS, Accel
from mi_bench.config import compose
accel = Accel.from_config(compose([]))  # a run's defaults (channels_last=auto, inversion_chunk)
s = load_splits(DatasetConfig(), Path("."))
out = {}
t = time.perf_counter()
m = train_classifier(lambda: build_model("mcnn", num_classes=5, in_channels=1, width=1.0),
                     s.private_train, s.private_val, TrainConfig(epochs=3), seed=0, accel=accel).model
out["mcnn_train_3_epochs"] = time.perf_counter() - t
a = GMI(GMIConfig(name="gmi", gan_width=16, gan_steps=20, iterations=50, restarts=3, samples_per_class=5),
        image_shape=(1, 32, 32), num_classes=5, device=torch.device("cpu"))
a.accel = accel
t = time.perf_counter(); prior = a.train_prior(s.public[0], None, seed=0, progress=NULL_BARS)
out["wgan_gp_20_steps"] = time.perf_counter() - t
t = time.perf_counter(); a.invert(m, prior, list(range(5)), seed=0, progress=NULL_BARS)
out["gmi_invert_50_iters_75_latents"] = time.perf_counter() - t
print(json.dumps(out))
'''


def measure(load: bool) -> dict[int, dict[str, float]]:
    """Times per thread count; with ``load`` a busy-looping process occupies one core."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if load else None
    try:
        rows = {}
        for n in (1, 2):
            r = subprocess.run([sys.executable, "-c", WORK, str(n)], capture_output=True, text=True, check=True)
            rows[n] = json.loads(r.stdout.strip().splitlines()[-1])
        return rows
    finally:
        if hog:
            hog.kill()


def main() -> None:
    lines = ["# Threads: torch intra-op threads on mi-bench's hot loops", "",
             f"Command: `python results/bench/threads.py`  ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
             "Machine: 2-core CPU, no GPU, torch " + __import__("torch").__version__ + ".",
             "Settings: a run's defaults (`channels_last=auto`: the MCNN trains channels-last on the CPU; "
             "`inversion_chunk` 512). Each workload in a fresh process per thread count."]
    for load in (False, True):
        rows = measure(load)
        lines += ["", "### " + ("with one other busy process on the machine" if load else "alone on the machine"), "",
                  "| workload | 1 thread (s) | 2 threads (s) | 2 vs 1 |", "|---|---|---|---|"]
        for k in rows[1]:
            lines.append(f"| {k} | {rows[1][k]:.2f} | {rows[2][k]:.2f} | {rows[1][k] / rows[2][k]:.2f}x |")
    Path("results/threads.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
