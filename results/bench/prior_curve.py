"""Issue 23: the prior's KID against its training steps and wall time on this CPU, one training
run per curve. Writes results/bench/prior_curve_<name>.md and a grid of samples per checkpoint
(results/bench/grids/prior_curve/<name>_<steps>.png).

The attack's own ``train_prior`` runs once for the largest step count; at each checkpoint the
generator's current weights are taken from the training loop (the loop's local ``gen``/``g``:
this script reads them from the frame that reports progress, so nothing in mi-bench changes for
it) and scored exactly as a run scores its prior (``mi_bench.prior_quality.prior_quality``: KID
of ``eval.prior_kid_samples`` samples against held-out public-class images, evaluator features,
with its jackknife standard error). Scoring draws from its own generator under ``fork_rng``, so
the training's random stream and trajectory are those of an unobserved run: the prior at step k
is the prior a run with ``gan_steps=k`` trains (for recipes without a step-count schedule, as
GMI, KED-MI and PLG-MI here). Wall time counts training only (scoring excluded).

The knee: the fewest steps whose KID is within two standard errors (its own and the best's,
combined) of the best KID on the curve.

Usage: python results/bench/prior_curve.py --name digits-gmi --steps 50,100,200,300,600,1000 \\
           dataset=digits preset=quick attack=gmi
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

from mi_bench import __version__
from mi_bench.api import prefixed
from mi_bench.config import compose
from mi_bench.pipeline import Runner
from mi_bench.prior_quality import prior_quality, write_prior_grid
from mi_bench.runtime import NULL_BARS
from mi_bench.stages import make_attack

GEN_NAMES = ("gen", "g", "G", "generator")


class Checkpoints:
    """A progress object (``task``/``advance``) that scores the prior at the given steps."""

    def __init__(self, steps: list[int], score, gan_steps: int) -> None:
        self.steps, self.score, self.gan_steps = sorted(steps), score, gan_steps
        self.done, self.train_s, self.rows = 0, 0.0, []

    def __getattr__(self, name):
        return getattr(NULL_BARS, name)

    def task(self, description, total=None):
        clock = self
        # progress units per generator step (KED-MI reports its discriminator steps: n_critic each)
        per = (total or clock.gan_steps) / clock.gan_steps

        class _Task:
            def __enter__(self):
                clock.t0 = time.perf_counter()
                return self

            def __exit__(self, *exc):
                return False

            def advance(self, n=1, **info):
                clock.done += n
                if clock.steps and clock.done >= clock.steps[0] * per:
                    clock.train_s += time.perf_counter() - clock.t0
                    frame = sys._getframe(1)
                    gen = next((frame.f_locals[k] for k in GEN_NAMES
                                if isinstance(frame.f_locals.get(k), torch.nn.Module)), None)
                    if not isinstance(gen, torch.nn.Module):
                        raise SystemExit(f"error: no generator among {GEN_NAMES} in {frame.f_code.co_name}'s "
                                         "locals; this script reads the training loop's generator")
                    step = clock.steps.pop(0)
                    clock.rows.append({"steps": step, "train_s": clock.train_s,
                                       **clock.score(step, prefixed("G", gen), info)})
                    clock.t0 = time.perf_counter()

        return _Task()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", required=True, help="the curve's name (file names)")
    ap.add_argument("--steps", required=True, help="comma-separated checkpoints, e.g. 50,100,300")
    ap.add_argument("overrides", nargs="*", help="as for mi-bench run")
    a = ap.parse_args()
    steps = sorted({int(s) for s in a.steps.split(",")})
    cfg = compose([*a.overrides, f"attack.gan_steps={steps[-1]}"])
    runner = Runner(cfg, index=False)
    splits, _ = runner.load_splits()
    stages = runner.stages(splits)
    target = stages.target()
    evaluator = stages.judges()["eval"].model
    attack = make_attack(cfg, splits, runner.device)
    attack.accel = runner.accel
    for p in target.parameters():
        p.requires_grad_(False)
    grids = Path("results/bench/grids/prior_curve")
    grids.mkdir(parents=True, exist_ok=True)
    n = cfg.eval.prior_kid_samples

    def score(step: int, prior: dict, info: dict) -> dict:
        pq, samples = prior_quality(attack, prior, evaluator, splits, n=n, seed=cfg.seed,
                                    collapse_ratio=cfg.judge.collapse_ratio)
        grid = None
        if samples is not None:
            grid = write_prior_grid(grids / f"{a.name}_{step}.png", samples)
        print(f"{step:>6} steps: KID {pq.get('kid')} (se {pq.get('kid_se')})", flush=True)
        return {"kid": pq.get("kid"), "kid_se": pq.get("kid_se"), "diversity": pq.get("diversity_ratio"),
                "error": pq.get("error"), "grid": str(grid) if grid else None}

    clock = Checkpoints(steps, score, cfg.attack.gan_steps)
    per_target = type(attack).requirements.prior == "per_target"
    started = time.time()
    attack.train_prior(splits.public[0], target if per_target else None, seed=cfg.seed, progress=clock)
    wall = time.time() - started
    rows = clock.rows
    ok = [r for r in rows if r["kid"] is not None]
    best = min(ok, key=lambda r: r["kid"]) if ok else None
    knee = None
    if best:
        for r in ok:
            se = math.hypot(r["kid_se"] or 0.0, best["kid_se"] or 0.0)
            if r["kid"] - best["kid"] <= 2 * se:
                knee = r
                break
    lines = [f"# Prior KID against training steps: {a.name} (issue 23)", "",
             f"Command: `python results/bench/prior_curve.py --name {a.name} --steps {a.steps} "
             f"{' '.join(a.overrides)}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {wall:.0f} s "
             f"in all; mi-bench {__version__}, torch {torch.__version__}, threads {cfg.threads}, load average "
             f"{Path('/proc/loadavg').read_text().split()[0]} at the end).", "",
             f"One `train_prior` of {steps[-1]} steps (attack {cfg.attack.name}, preset {cfg.preset}, dataset "
             f"{cfg.dataset.name}); at each checkpoint the prior is scored as a run scores it: KID of {n} samples "
             "against held-out public-class images on the evaluator's features, +- its jackknife standard error "
             "(lower is better; 0 = indistinguishable). Wall = training seconds up to the checkpoint.", "",
             "| steps | training wall | KID | +- se | per-class diversity | grid |", "|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        kid = "failed: " + str(r["error"]) if r["kid"] is None else f"{r['kid']:.4f}"
        se = "" if r["kid_se"] is None else f"{r['kid_se']:.4f}"
        div = "" if r["diversity"] is None else f"{r['diversity']:.2f}"
        lines.append(f"| {r['steps']:,} | {r['train_s']:.0f} s | {kid} | {se} | {div} | "
                     f"{Path(r['grid']).name if r['grid'] else ''} |")
    lines += ["", f"Preset's `gan_steps` for this config: {compose(a.overrides).attack.gan_steps:,}. "
              + (f"Best KID at {best['steps']:,} steps; the knee (fewest steps within 2 se of the best): "
                 f"**{knee['steps']:,} steps, {knee['train_s']:.0f} s of training**." if knee else "No KID computed.")]
    out = Path(f"results/bench/prior_curve_{a.name}.md")
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
