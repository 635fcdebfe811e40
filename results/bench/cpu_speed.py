"""Issue 21: one training step per network family on the CPU, in four layouts / precisions,
interleaved in one process; writes results/bench/cpu_speed.md.

Variants of the same step (same network, same initial weights, same batch of 64):

* ``ref``     the plain PyTorch reference: NCHW float32 (the textbook loop, today's mi-bench);
* ``cl``      channels-last float32 (network and inputs ``torch.channels_last``);
* ``bf16``    NCHW, forward and loss under ``torch.autocast("cpu", torch.bfloat16)``;
* ``cl_bf16`` both.

Classifier step: SGD (momentum 0.9, wd 1e-4), cross-entropy, zero_grad/forward/backward/step.
GAN step: GMI's WGAN-GP generator step (``n_critic`` critic steps with the gradient penalty, one
generator step, Adam), as ``attacks/gmi.py`` trains it.

The machine is shared, so times are not comparable across runs: every repetition times each
variant once (order rotated between repetitions), several repetitions, and the table reports the
median time of each variant and its ratio to ``ref``'s median (> 1 = faster than the reference).
One intra-op thread (results/threads.md). A ``torch.profiler`` top-10 (self CPU time) of the
slowest family's reference and best variant closes the report.

The mi-bench trainer section times whole ``train_classifier`` epochs (MCNN on synthetic digits-
sized data) with ``channels_last=never`` (before) and ``auto`` (after), and ``amp=bf16``.

Usage: python results/bench/cpu_speed.py [--quick] [--reps N] [--steps N] [--out PATH]
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import subprocess
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from mi_bench.attacks.common import DCGANGenerator, WGANCritic, gradient_penalty
from mi_bench.face_models import IR18, VGG16BN
from mi_bench.models import MCNN, SCNN, MadryNet, ResNet8
from mi_bench.cpu import CPU_CHANNELS_LAST
from mi_bench.runtime import Accel, cpu_has_native_bf16, set_threads
from mi_bench.train import TrainConfig, train_classifier

VARIANTS = ("ref", "cl", "bf16", "cl_bf16")
BATCH = 64

# (family, what is run, model factory, input shape, classes); sizes are the presets' own
CLASSIFIERS = [
    ("mcnn", "MCNN width 1 (digits/MNIST target)", lambda: MCNN(10, 1, 1.0), (1, 32, 32), 10),
    ("scnn", "SCNN width 1 (digits/MNIST evaluator)", lambda: SCNN(10, 1, 1.0), (1, 32, 32), 10),
    ("resnet8", "ResNet-8 width 0.5 (quick judge)", lambda: ResNet8(10, 1, 0.5), (1, 32, 32), 10),
    ("madrynet", "MadryNet width 0.5 (quick robust judge)", lambda: MadryNet(10, 1, 0.5), (1, 32, 32), 10),
    ("vgg16_bn", "VGG16-BN width 0.25, 32x32x3 (LFW cpu target)", lambda: VGG16BN(62, 3, 0.25), (3, 32, 32), 62),
    ("ir18", "IR-18 width 0.5, 32x32x3 (LFW cpu evaluator)", lambda: IR18(62, 3, 0.5), (3, 32, 32), 62),
]
GAN_WIDTH, N_CRITIC = 32, 5


def lscpu_flags() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0].split()
    except (OSError, IndexError):
        return "unknown"
    keep = [f for f in flags if f.startswith(("avx512_bf16", "amx", "avx512f", "avx2", "avx512_vnni"))]
    return ", ".join(sorted(set(keep))) or "none of avx2/avx512/amx"


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def _fmt(t: torch.Tensor, cl: bool) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last) if cl and t.dim() == 4 else t


class ClassifierStep:
    def __init__(self, make, shape, classes, variant: str, seed: int = 0):
        torch.manual_seed(seed)
        self.cl, bf16 = variant.startswith("cl"), variant.endswith("bf16")
        self.model = make()
        if self.cl:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.model.train()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        g = torch.Generator().manual_seed(1)
        self.x = _fmt(torch.rand(BATCH, *shape, generator=g), self.cl)
        self.y = torch.randint(0, classes, (BATCH,), generator=g)
        self.ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else nullcontext

    def __call__(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        with self.ctx():
            loss = F.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()


class GANStep:
    """GMI's prior step (attacks/gmi.py train_prior), eager."""

    def __init__(self, variant: str, seed: int = 0, shape=(1, 32, 32)):
        torch.manual_seed(seed)
        self.cl, bf16 = variant.startswith("cl"), variant.endswith("bf16")
        self.g, self.d = DCGANGenerator(shape, 100, GAN_WIDTH), WGANCritic(shape, GAN_WIDTH)
        if self.cl:
            self.g, self.d = self.g.to(memory_format=torch.channels_last), self.d.to(memory_format=torch.channels_last)
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.real = _fmt(torch.rand(BATCH, *shape, generator=torch.Generator().manual_seed(1)), self.cl)
        self.ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else nullcontext

    def __call__(self) -> None:
        for _ in range(N_CRITIC):
            z = torch.randn(BATCH, 100)
            with self.ctx():
                with torch.no_grad():
                    fake = self.g(z)
                d_loss = self.d(fake).mean() - self.d(self.real).mean()
                d_loss = d_loss + 10.0 * gradient_penalty(self.d, self.real, fake)
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_d.step()
        with self.ctx():
            g_loss = -self.d(self.g(torch.randn(BATCH, 100))).mean()
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()


def interleaved(steps: dict, reps: int, k: int, warmup: int = 2) -> dict[str, list[float]]:
    """Seconds per step of each callable, one value per repetition; each repetition runs every
    variant once (``k`` steps), the order rotated between repetitions."""
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {v: [] for v in steps}
    names = list(steps)
    for r in range(reps):
        order = names[r % len(names):] + names[:r % len(names)]
        for v in order:
            t0 = time.perf_counter()
            for _ in range(k):
                steps[v]()
            times[v].append((time.perf_counter() - t0) / k)
    return times


def summary(times: dict[str, list[float]], ref: str) -> dict[str, tuple[float, float, float, float]]:
    """Per variant: median seconds, and the paired ratio ref / variant of each repetition (the
    two timed moments apart, so a load change hits both): median, first and third quartile."""
    out = {}
    for v, ts in times.items():
        r = sorted(a / b for a, b in zip(times[ref], ts))
        q = statistics.quantiles(r, n=4) if len(r) > 1 else [r[0], r[0], r[0]]
        out[v] = (statistics.median(ts), statistics.median(r), q[0], q[2])
    return out


def trainer_epochs(reps: int, epochs: int) -> dict[str, float]:
    """mi-bench's own train_classifier (MCNN, 500 synthetic 1x32x32 images, 10 classes), seconds
    per run of ``epochs`` epochs, interleaved."""
    g = torch.Generator().manual_seed(0)
    train = (torch.rand(500, 1, 32, 32, generator=g), torch.randint(0, 10, (500,), generator=g))
    val = (torch.rand(100, 1, 32, 32, generator=g), torch.randint(0, 10, (100,), generator=g))
    cfg = TrainConfig(epochs=epochs)
    accels = {"before (channels_last=never)": Accel(channels_last="never"),
              "after (channels_last=auto)": Accel(channels_last="auto"),
              "after, amp=bf16": Accel(channels_last="auto", amp="bf16")}

    def run(a):
        return lambda: train_classifier(lambda: MCNN(10, 1, 1.0), train, val, cfg, seed=0, accel=a)
    return summary(interleaved({k: run(a) for k, a in accels.items()}, reps, 1, warmup=1), next(iter(accels)))


def profile_table(fn, n: int = 3) -> str:
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a short run (3 repetitions, 1 step each)")
    ap.add_argument("--reps", type=int, default=15, help="repetitions (median over them)")
    ap.add_argument("--steps", type=int, default=1, help="steps timed per variant per repetition")
    ap.add_argument("--families", default="", help="comma-separated subset (default: all, and gan)")
    ap.add_argument("--no-trainer", action="store_true", help="skip the train_classifier section")
    ap.add_argument("--out", default="results/bench/cpu_speed.md", help="report path")
    a = ap.parse_args()
    reps, k = (3, 1) if a.quick else (a.reps, a.steps)
    set_threads(1)
    wanted = set(a.families.split(",")) if a.families else None
    t_start = time.time()
    rows = []
    for fam, what, make, shape, classes in CLASSIFIERS:
        if wanted and fam not in wanted:
            continue
        med = summary(interleaved({v: ClassifierStep(make, shape, classes, v) for v in VARIANTS}, reps, k), "ref")
        rows.append((fam, what, med))
        print(fam, {v: f"{1e3 * t[0]:.1f} ms {t[1]:.2f}x" for v, t in med.items()}, flush=True)
    if not wanted or "gan" in wanted:
        med = summary(interleaved({v: GANStep(v) for v in VARIANTS}, reps, 1, warmup=1), "ref")
        rows.append(("wgan_gp", f"GMI WGAN-GP step, width {GAN_WIDTH}, 1x32x32, {N_CRITIC} critic steps + GP", med))
        print("wgan_gp", {v: f"{1e3 * t[0]:.1f} ms {t[1]:.2f}x" for v, t in med.items()}, flush=True)
    trainer = {} if a.no_trainer else trainer_epochs(reps, 1 if a.quick else 2)

    profiles = []  # the slowest family, and the slowest classifier when that is the GAN
    for row in sorted(rows, key=lambda r: -r[2]["ref"][0]):
        if profiles and (row[0] == "wgan_gp" or profiles[-1][0] != "wgan_gp"):
            break
        best = max(VARIANTS[1:], key=lambda v: row[2][v][1])
        if row[0] == "wgan_gp":
            pair = (GANStep("ref"), GANStep(best))
        else:
            spec = next(c for c in CLASSIFIERS if c[0] == row[0])
            pair = tuple(ClassifierStep(spec[2], spec[3], spec[4], v) for v in ("ref", best))
        profiles.append((row[0], best, profile_table(pair[0]), profile_table(pair[1])))

    mode = "--quick" if a.quick else f"--reps {reps} --steps {k}"
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else ["?"]
    L = ["# CPU speed: channels-last and bfloat16 per network family (issue 21)", "",
         f"Command: `bash results/bench/cpu_speed.sh` (= `python results/bench/cpu_speed.py {mode}`), "
         f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(t_start))}, {time.time() - t_start:.0f} s.", "",
         f"Machine: {cpu_model()}, {torch.get_num_threads()} intra-op thread (of "
         f"{__import__('os').cpu_count()} cores), load average at the end {' '.join(load)}; "
         f"torch {torch.__version__}, oneDNN (mkldnn) available: {torch.backends.mkldnn.is_available()}.",
         f"CPU flags: {lscpu_flags()}. `mi_bench.runtime.cpu_has_native_bf16()`: **{cpu_has_native_bf16()}**.", "",
         "**Read the ratios, not the times.** The machine is shared with other work, so absolute "
         "times vary between runs; every variant is timed side by side in this one process, "
         f"interleaved ({reps} repetitions of {k} step(s) each, the order rotated). Each cell: the "
         "median time per step, then the speed-up over the reference: the median over the "
         "repetitions of the paired ratio reference time / variant time (> 1 = faster), with its "
         "interquartile range in brackets. Reference = the plain PyTorch NCHW float32 step on the "
         f"same network, batch ({BATCH}) and initial weights; that is also mi-bench's step before "
         "issue 21 (the classifier step: SGD momentum 0.9, cross-entropy; the GAN step: Adam, "
         "as attacks/gmi.py).", "",
         "| family | step | NCHW fp32 (reference) | channels-last fp32 | NCHW bf16 autocast | channels-last bf16 |",
         "|---|---|---|---|---|---|"]
    def cell(t):
        return f"{1e3 * t[0]:.1f} ms, **{t[1]:.2f}x** [{t[2]:.2f}-{t[3]:.2f}]"
    for fam, what, med in rows:
        cells = [f"{1e3 * med['ref'][0]:.1f} ms"] + [cell(med[v]) for v in VARIANTS[1:]]
        L.append(f"| {fam} | {what} | " + " | ".join(cells) + " |")
    L += ["", "### channels_last=auto: this run against the table in code", "",
          "`mi_bench.cpu.CPU_CHANNELS_LAST` decides which families train channels-last under "
          "`channels_last=auto` on the CPU. Here a family counts as faster channels-last when the "
          "paired median speed-up of channels-last float32 is above 1.05x, slower below 0.95x.", "",
          "| family | channels-last fp32 speed-up | this run | table in code |", "|---|---|---|---|"]
    for fam, _, med in rows:
        r = med["cl"][1]
        verdict = "faster" if r > 1.05 else "slower" if r < 0.95 else "no difference"
        code = ("not applied (GAN priors stay NCHW)" if fam == "wgan_gp" else
                "channels-last" if CPU_CHANNELS_LAST.get(fam) else "NCHW")
        L.append(f"| {fam} | {r:.2f}x | {verdict} | {code} |")
    if trainer:
        L += ["", "### mi-bench's trainer (`train_classifier`), before and after", "",
              f"MCNN width 1, 500 synthetic 1x32x32 images, batch 64, {1 if a.quick else 2} epoch(s) "
              "with validation, interleaved as above; seconds per training run, paired speed-up over "
              "before.", "", "| trainer | seconds, speed-up [IQR] |", "|---|---|"]
        for name, t in trainer.items():
            L.append(f"| {name} | {t[0]:.2f} s, **{t[1]:.2f}x** [{t[2]:.2f}-{t[3]:.2f}] |")
    for fam, best, table_ref, table_best in profiles:
        L += ["", f"### Where the time goes: {fam}", "",
              "`torch.profiler`, 3 steps, top 10 operators by self CPU time, reference (NCHW fp32):", "",
              "```", table_ref.rstrip(), "```", "", f"and its fastest variant ({best}):", "",
              "```", table_best.rstrip(), "```"]
    L.append("")
    Path(a.out).write_text("\n".join(L))
    print("wrote", a.out)


if __name__ == "__main__":
    main()
