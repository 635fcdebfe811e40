"""One training step of mi-bench's HSIC-based defenses next to the official BiDO step (issue 7).

Usage (about 2-3 minutes at the defaults, on an idle machine; run it ALONE for recorded numbers):

    python results/bench/bido_step.py OFFICIAL_BIDO_DIR [--threads 1] [--steps 20] [--rounds 5]

OFFICIAL_BIDO_DIR holds ``hsic.py`` and ``model.py`` of the public repository
AlanPeng0897/Defend_MI (folder ``BiDO/``), saved to a temporary folder outside the repository and
never committed. Writes ``results/bench/bido_step.md`` (``--out`` to change).

Every step is one forward, loss and backward plus an Adam step on the MNIST MCNN (width 1,
batch 64, 1x32x32, 5 classes), all on the same batch in one process. The official steps use the
official MCNN and ``hsic_objective`` / ``coco_objective`` (sigma 5, linear label kernel, lambdas
0.05 / 0.5 per layer, as ``anchor_bido_step.py``). mi-bench's steps use its trainer's taps and
each defense's ``compute_loss`` at its default (``bido-coco``: (1, 50)); "cdist kernel" rows
swap in the elementwise distance kernel mi-bench used before issue 7, for the before/after.
Variants are timed in interleaved rounds (each round times every variant for ``--steps`` steps)
and the table reports the median and the fastest round, so a load change on the machine hits
every variant alike; the load average before and after is printed with the table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

REPO = Path(__file__).resolve().parents[2]


def official_steps(folder: str, x, y):
    sys.path.insert(0, folder)
    import hsic as off  # noqa: PLC0415 - the official module, from the given folder

    src = Path(folder, "model.py").read_text()
    start, end = src.index("class MCNN(nn.Module)"), src.index("class MCNN_vib")
    ns = {"nn": nn, "torch": torch}
    exec(src[start:end], ns)  # only the MCNN class (the file imports modules we do not need)
    mcnn = ns["MCNN"]
    m = len(y)

    def make(measure):
        torch.manual_seed(0)
        model = mcnn(5)
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        h_target = torch.eye(5)[y].float()
        h_data = x.view(m, -1)

        def step():
            hiddens, out = model(x)
            loss = nn.functional.cross_entropy(out, y)
            if measure:
                f = off.hsic_objective if measure == "HSIC" else off.coco_objective
                for h in hiddens:
                    hx, hy = f(h.view(m, -1), h_target=h_target, h_data=h_data, sigma=5.0, ktype="linear")
                    loss = loss + 0.05 * hx - 0.5 * hy
            opt.zero_grad()
            loss.backward()
            opt.step()
        return step

    return {"official CE only": make(None), "official BiDO-HSIC": make("HSIC"),
            "official BiDO-COCO": make("COCO")}


def mibench_step(defense, x, y):
    from mi_bench.interfaces import TrainBatch
    from mi_bench.models import build_model
    from mi_bench.train import Taps

    torch.manual_seed(0)
    model = defense.build_model(build_model("mcnn", num_classes=5, in_channels=1, width=1.0))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    model, opt = defense.configure(model, opt, n_train=1000, batch_size=len(y), epochs=1,
                                   generator=torch.Generator().manual_seed(0))
    taps = Taps(model, defense.tap_layers(model))

    def forward(xb):
        taps.outputs = {}
        return model(xb), taps.outputs

    def step():
        def closure():
            logits, tapped = forward(x)
            return defense.compute_loss(TrainBatch(x=x, y=y, logits=logits, taps=tapped, model=model,
                                                   epoch=0, step=0, forward=forward))
        defense.optimizer_step(model, opt, closure)
    return step


def cdist_sq_distances(z):
    """mi-bench's kernel distances before issue 7 (elementwise)."""
    z = z.reshape(z.shape[0], -1)
    return torch.cdist(z, z, compute_mode="donot_use_mm_for_euclid_dist").pow(2)


class swapped_kernel:
    """Use the pre-issue-7 distances inside ``mi_bench.hsic`` while a step runs."""

    def __init__(self, step):
        self.step = step

    def __call__(self):
        import mi_bench.hsic as h

        keep = h.sq_distances
        h.sq_distances = cdist_sq_distances
        try:
            self.step()
        finally:
            h.sq_distances = keep


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("official_dir")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default=str(REPO / "results" / "bench" / "bido_step.md"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)

    from mi_bench.defenses.bido import BiDO, BiDOConfig
    from mi_bench.defenses.desmil import DESMIL, DESMILConfig
    from mi_bench.defenses.none import NoDefense
    from mi_bench.defenses.qad import QAD, QADConfig

    torch.manual_seed(0)
    x, y = torch.rand(64, 1, 32, 32), torch.randint(0, 5, (64,))
    kw = {"num_classes": 5, "input_shape": (1, 32, 32)}
    steps = official_steps(a.official_dir, x, y)
    ours = {
        "mi-bench none (CE only)": NoDefense(None, **kw),
        "mi-bench BiDO-HSIC (0.05, 0.5)": BiDO(BiDOConfig(name="bido"), **kw),
        "mi-bench BiDO-COCO (1, 50)": BiDO(BiDOConfig(name="bido", measure="coco", lambda_x=1.0, lambda_y=50.0), **kw),
        "mi-bench QAD-style (default)": QAD(QADConfig(name="qad"), **kw),
        "mi-bench DESMIL-style (default, reweighting)": DESMIL(DESMILConfig(name="desmil"), **kw),
        "mi-bench DESMIL-style (beta_dec 1, direct HSIC)": DESMIL(DESMILConfig(name="desmil", beta_dec=1.0), **kw),
    }
    for name, d in ours.items():
        steps[name] = mibench_step(d, x, y)
    steps["mi-bench BiDO-HSIC, cdist kernel (before)"] = swapped_kernel(
        mibench_step(BiDO(BiDOConfig(name="bido"), **kw), x, y))
    steps["mi-bench QAD-style, cdist kernel (before)"] = swapped_kernel(
        mibench_step(QAD(QADConfig(name="qad"), **kw), x, y))

    load0 = os.getloadavg()
    for fn in steps.values():  # warm-up
        for _ in range(3):
            fn()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for r in range(a.rounds):
        for name, fn in steps.items():
            t = time.perf_counter()
            for _ in range(a.steps):
                fn()
            times[name].append((time.perf_counter() - t) / a.steps * 1000)
        print(f"round {r + 1}/{a.rounds} done", file=sys.stderr)
    load1 = os.getloadavg()

    ref = statistics.median(times["official BiDO-HSIC"])
    lines = [
        "# One training step: mi-bench's HSIC-based defenses vs the official BiDO step",
        "",
        f"`python results/bench/bido_step.py OFFICIAL_BIDO_DIR --threads {a.threads} --steps {a.steps} "
        f"--rounds {a.rounds}`: MNIST MCNN, batch 64, {a.threads} torch thread(s), one process, "
        "variants interleaved per round (script docstring). Machine: "
        f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"load average {load0[0]:.2f} before / {load1[0]:.2f} after.",
        "",
        "| step | median ms | fastest ms | median / official BiDO-HSIC |",
        "|---|---|---|---|",
    ]
    for name, ts in times.items():
        med = statistics.median(ts)
        lines.append(f"| {name} | {med:.1f} | {min(ts):.1f} | {med / ref:.2f} |")
    text = "\n".join(lines) + "\n"
    Path(a.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
