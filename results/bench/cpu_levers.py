"""Issue 21, "other levers": each measured side by side in one process against mi-bench's CPU
step of today, kept only if it wins. Writes results/bench/cpu_levers.md.

Steps (from ``cpu_speed.py``, batch 64, 1 thread): the classifier training step of MCNN (digits
target), VGG16-BN width 0.25 (LFW target) and IR-18 width 0.5 (LFW evaluator), in mi-bench's
float32 CPU layout (channels-last, ``channels_last=auto``); GMI's WGAN-GP prior step (NCHW).

Levers:

* ``foreach``: ``torch.optim.SGD/Adam(foreach=True)`` (one multi-tensor kernel per update instead
  of a loop over parameters; torch's CPU default is the loop);
* ``fused``: ``fused=True`` (one fused kernel; CPU support is recent);
* ``mkldnn off``: ``torch.backends.mkldnn.flags(enabled=False)`` (the native convolutions, to
  check that oneDNN, on by default, is the faster path);
* ``compile``: ``torch.compile(model)`` (inductor, default mode) for the classifier step; its
  compile time is counted against one run's steps: the break-even step count is
  compile seconds / seconds saved per step. Not for the GAN step: the gradient penalty's double
  backward is not supported by compiled graphs.

Each repetition times every variant once (order rotated); the table gives the median time per
step and the median paired ratio base / variant (> 1 = faster).

Usage: python results/bench/cpu_levers.py [--reps N] [--out PATH]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_speed import BATCH, CLASSIFIERS, GANStep, _fmt, cpu_model, lscpu_flags  # noqa: E402

from mi_bench import __version__  # noqa: E402
from mi_bench.runtime import set_threads  # noqa: E402

FAMILIES = ("mcnn", "vgg16_bn", "ir18")


def _opt_kw(lever: str) -> dict[str, bool]:
    """The optimiser keyword a lever sets (none for the others)."""
    return {lever: True} if lever in ("foreach", "fused") else {}


class Step:
    """One classifier step in mi-bench's CPU float32 layout, with one lever."""

    def __init__(self, make, shape, classes, lever: str):
        torch.manual_seed(0)
        self.lever = lever
        self.model = make().to(memory_format=torch.channels_last).train()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4,
                                   **_opt_kw(lever))
        g = torch.Generator().manual_seed(1)
        self.x = _fmt(torch.rand(BATCH, *shape, generator=g), True)
        self.y = torch.randint(0, classes, (BATCH,), generator=g)
        self.net = self.model
        self.compile_s = 0.0
        if lever == "compile":
            self.net = torch.compile(self.model)
            t0 = time.perf_counter()
            self._step()  # compiles forward and backward
            self.compile_s = time.perf_counter() - t0

    def _step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.net(self.x), self.y)
        loss.backward()
        self.opt.step()

    def __call__(self) -> None:
        if self.lever == "mkldnn_off":
            with torch.backends.mkldnn.flags(enabled=False):
                self._step()
        else:
            self._step()


class GanLever(GANStep):
    def __init__(self, lever: str):
        super().__init__("ref")
        self.lever = lever
        kw = _opt_kw(lever)
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=2e-4, betas=(0.5, 0.999), **kw)
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=2e-4, betas=(0.5, 0.999), **kw)

    def __call__(self) -> None:
        if self.lever == "mkldnn_off":
            with torch.backends.mkldnn.flags(enabled=False):
                super().__call__()
        else:
            super().__call__()


def bench(steps: dict[str, object], reps: int) -> dict[str, list[float]]:
    names = list(steps)
    for s in steps.values():  # warm-up
        s()
        s()
    times: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(reps):
        for n in names[rep % len(names):] + names[:rep % len(names)]:
            t0 = time.perf_counter()
            steps[n]()
            times[n].append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=12)
    ap.add_argument("--gan-reps", type=int, default=6)
    ap.add_argument("--out", default="results/bench/cpu_levers.md")
    a = ap.parse_args()
    set_threads(1)
    started = time.time()
    rows, notes = [], []
    for fam, what, make, shape, classes in CLASSIFIERS:
        if fam not in FAMILIES:
            continue
        steps: dict[str, object] = {}
        compile_s = None
        for lever in ("base", "foreach", "fused", "mkldnn_off", "compile"):
            try:
                steps[lever] = Step(make, shape, classes, lever)
                if lever == "compile":
                    compile_s = steps[lever].compile_s
            except Exception as exc:  # noqa: BLE001 - a lever this torch/CPU does not offer
                notes.append(f"{fam} {lever}: n/a ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
        t = bench(steps, a.reps)
        rows.append((fam, what, t, compile_s))
        print(fam, {k: round(statistics.median(v) * 1000, 1) for k, v in t.items()}, flush=True)
    gan: dict[str, object] = {}
    for lever in ("base", "foreach", "fused", "mkldnn_off"):
        try:
            gan[lever] = GanLever(lever)
        except Exception as exc:  # noqa: BLE001
            notes.append(f"wgan_gp {lever}: n/a ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
    t = bench(gan, a.gan_reps)
    rows.append(("wgan_gp", "GMI WGAN-GP step, width 32, 1x32x32, 5 critic steps + GP (NCHW)", t, None))
    print("wgan_gp", {k: round(statistics.median(v) * 1000, 1) for k, v in t.items()}, flush=True)
    wall = time.time() - started

    levers = ("foreach", "fused", "mkldnn_off", "compile")
    lines = [
        "# CPU levers beyond channels-last and bf16 (issue 21)", "",
        f"Command: `python results/bench/cpu_levers.py --reps {a.reps} --gan-reps {a.gan_reps}`, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {wall:.0f} s. mi-bench {__version__}, "
        f"torch {torch.__version__}, {cpu_model()} ({platform.machine()}), flags {lscpu_flags()}, 1 thread, "
        f"load average at the end {Path('/proc/loadavg').read_text().split()[0]}.", "",
        "Base = mi-bench's float32 CPU step today (classifiers channels-last, SGD momentum 0.9 wd 1e-4 "
        "with torch's default per-parameter loop; the WGAN-GP step NCHW with Adam). Each cell: median "
        "ms per step, then the median paired speed-up base / lever (> 1 = faster). Read the ratios.", "",
        "| step | base | " + " | ".join(levers) + " |",
        "|---|---:|" + "---:|" * len(levers),
    ]
    kept = []
    for fam, what, t, compile_s in rows:
        base = t["base"]
        cells = [f"{statistics.median(base) * 1000:.1f} ms"]
        for lv in levers:
            if lv not in t:
                cells.append("n/a")
                continue
            ratio = statistics.median(b / v for b, v in zip(base, t[lv]))
            extra = ""
            if lv == "compile" and compile_s is not None:
                saved = statistics.median(base) - statistics.median(t[lv])
                extra = f", compile {compile_s:.0f} s" + (
                    f", pays off after {compile_s / saved:,.0f} steps" if saved > 0 else ", never pays off")
            cells.append(f"{statistics.median(t[lv]) * 1000:.1f} ms, **{ratio:.2f}x**{extra}")
            if ratio > 1.05 and lv != "mkldnn_off":
                kept.append(f"{fam} {lv} {ratio:.2f}x")
        lines.append(f"| {what} | " + " | ".join(cells) + " |")
    lines += ["", "Levers above 1.05x: " + (", ".join(kept) if kept else "none") + ".", ""]
    if notes:
        lines += ["Not available here:", ""] + [f"- {n}" for n in notes] + [""]
    Path(a.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
