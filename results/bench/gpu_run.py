"""The paper-scale MNIST table on one GPU, inside a time budget (issue 7). Run by gpu.sh.

    python results/bench/gpu_run.py OUT_DIR [--budget 480] [--lanes 4] [--smoke]

Jobs (each a process of its own; the artifact cache's locks make them safe to overlap):
* stages trained once and cached: the four MNIST `paper` targets (none, bido-hsic, bido-coco,
  mid), the evaluator, GMI's shared prior (paper: 10,700 generator steps), KED-MI's and
  PLG-MI's per-target priors for none and bido-hsic (paper: 10,700 and 30,000 generator steps);
* prior steps: given (``--gmi-steps`` etc.), or ``auto`` (0, the default on a GPU): a
  calibration (about 20 s, alone, before the jobs) times each prior's generator step at paper
  width and caps the steps so that the prior, slowed ``--share`` times by the jobs beside it,
  ends in time for its runs; never more than the published count. Caps are stated in the
  table and in each record's config;
* then the runs: GMI against the four targets, KED-MI and PLG-MI against none and bido-hsic -
  everything loaded from the cache: inversion, scoring, the record.
Up to ``--lanes`` jobs share the GPU at once, longest first (GMI's prior, the evaluator and the
targets start together), so stage times are measured *under that sharing* (the table says so;
``gpu.sh profile`` measures step rates alone). A job that cannot finish before the budget ends
is stopped and reported as cut off; jobs not started are reported as skipped. Writes, in
OUT_DIR: ``gpu.md`` (the table, stage times per step, the published orderings checked),
``gpu.records.jsonl`` (the full records), ``gpu_jobs.log`` (each job's wall time and log tail)
and ``gpu_grids.tar.gz`` (the reconstruction grids).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
PAPER_GMI_STEPS, PAPER_KEDMI_STEPS, PAPER_PLGMI_STEPS = 10700, 10700, 30000
DEFENSES = ("none", "bido-hsic", "bido-coco", "mid")
KP_DEFENSES = ("none", "bido-hsic")  # KED-MI / PLG-MI targets


def judge_tokens() -> list[str]:
    """Where runs have several judges (mi_bench.judges): ``GPU_JUDGES`` of them, default the
    evaluator alone (the adversarially trained judge takes minutes at paper size); ``all`` =
    the config's default."""
    import dataclasses

    from mi_bench.config import RunConfig

    if "judges" not in {f.name for f in dataclasses.fields(RunConfig)}:
        return []
    wanted = os.environ.get("GPU_JUDGES", "eval")
    return [] if wanted == "all" else [f"judges=[{wanted}]"]


def tokens(defense: str, attack: str, a: argparse.Namespace) -> list[str]:
    t = [*judge_tokens(), f"defense={defense}", f"attack={attack}", "dataset=mnist", f"seed={a.seed}",
         f"cache_dir={a.work / 'cache'}", f"results_db={a.work / 'gpu.sqlite'}",
         f"results_dir={a.work / 'runs'}", "eval.download=false"]
    if a.smoke:
        t += ["preset=smoke", "device=cpu", "threads=1"]
    else:
        t += ["preset=paper", "device=cuda", "threads=1"]
        if os.environ.get("GPU_CUDA_GRAPH", "1") == "1":  # the GMI prior's step as one CUDA graph
            t.append("cuda_graph=true")
    steps = {"gmi": a.gmi_steps, "kedmi": a.kedmi_steps, "plgmi": a.plgmi_steps}[attack]
    if steps:
        t.append(f"attack.gan_steps={steps}")
    return t


def plan(a: argparse.Namespace) -> list[dict]:
    """Jobs with their dependencies, in priority order (longest critical path first)."""
    jobs = [{"name": "prior gmi", "stage": "prior", "tokens": tokens("none", "gmi", a), "after": []},
            {"name": "evaluator", "stage": "evaluator", "tokens": tokens("none", "gmi", a), "after": []}]
    jobs += [{"name": f"target {d}", "stage": "target", "tokens": tokens(d, "gmi", a), "after": []}
             for d in ("bido-hsic", "none", "bido-coco", "mid")]
    for atk in ("kedmi", "plgmi"):
        jobs += [{"name": f"prior {atk} {d}", "stage": "prior", "tokens": tokens(d, atk, a),
                  "after": [f"target {d}"]} for d in KP_DEFENSES]
    jobs += [{"name": f"run gmi {d}", "stage": "run", "tokens": tokens(d, "gmi", a),
              "after": ["prior gmi", "evaluator", f"target {d}"]} for d in DEFENSES]
    for atk in ("kedmi", "plgmi"):
        jobs += [{"name": f"run {atk} {d}", "stage": "run", "tokens": tokens(d, atk, a),
                  "after": [f"prior {atk} {d}", "evaluator"]} for d in KP_DEFENSES]
    return jobs


# -- one job (a process of its own) -----------------------------------------------------------

def job_main(spec: dict) -> None:
    from mi_bench.config import compose
    from mi_bench.data import load_splits, resolve_data_root
    from mi_bench.pipeline import Runner
    from mi_bench.stages import artifact_plan
    from mi_bench.registry import ATTACKS
    from mi_bench.runtime import setup_logging

    setup_logging("INFO")
    cfg = compose(spec["tokens"])
    t0 = time.perf_counter()
    out = {"job": spec["name"]}
    if spec["stage"] == "run":
        from mi_bench.pipeline import run

        rec = run(cfg)
        out.update(run_id=rec["run_id"], stage_seconds=rec["stage_seconds"])
    else:
        runner = Runner(cfg, index=False)
        splits = load_splits(cfg.dataset, resolve_data_root(cfg.data_root), cache_dir=runner.store.root)
        r = runner.stages(splits)
        if spec["stage"] == "target":
            r.target()
        elif spec["stage"] == "evaluator":  # the evaluator (and any other judges of the run)
            r.judges()
        else:  # prior: a shared prior needs only the target's key, a per-target one the target
            cls = ATTACKS.get(cfg.attack.name)
            attack = cls(cfg.attack, image_shape=splits.image_shape,
                         num_classes=splits.num_private_classes, device=runner.device)
            attack.accel = runner.accel
            target = None
            if cls.requirements.prior == "per_target":
                target = r.target()
                for p in target.parameters():
                    p.requires_grad_(False)
            else:
                r.artifacts["target"] = {"key": artifact_plan(cfg, splits)["target"][1]}
            r.prior(attack, target)
        out.update(stage_seconds=r.times, trained=r.trained, artifacts=r.artifacts)
    out["seconds"] = round(time.perf_counter() - t0, 2)
    print("JOB-RESULT " + json.dumps(out, default=str), flush=True)


# -- scheduler --------------------------------------------------------------------------------

def schedule(a: argparse.Namespace) -> dict[str, dict]:
    jobs = plan(a)
    logs = a.work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    deadline = start + a.budget
    state = {j["name"]: {"status": "waiting", **j} for j in jobs}
    running: dict[str, subprocess.Popen] = {}
    while True:
        now = time.monotonic()
        for name, proc in list(running.items()):
            st = state[name]
            if proc.poll() is not None:
                st["end"] = now - start
                st["status"] = "done" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
                del running[name]
            elif now > deadline:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                st["end"], st["status"] = now - start, "cut off at the time budget"
                del running[name]
        failed = {n for n, s in state.items() if s["status"].startswith(("failed", "cut", "skipped"))}
        for name, st in state.items():  # a job whose dependency failed cannot run
            if st["status"] == "waiting" and failed & set(st["after"]):
                st["status"] = "skipped (a dependency did not finish)"
        waiting = [s for s in state.values() if s["status"] == "waiting"]
        if not waiting and not running:
            break
        if now > deadline:
            for s in waiting:
                s["status"] = "skipped (time budget spent)"
            continue
        for st in waiting:
            if len(running) >= a.lanes:
                break
            if all(state[d]["status"] == "done" for d in st["after"]):
                log = open(logs / (st["name"].replace(" ", "_") + ".log"), "w")
                cmd = [sys.executable, str(HERE), "--job", json.dumps({k: st[k] for k in ("name", "stage", "tokens")})]
                running[st["name"]] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                       env={**os.environ, "COLUMNS": "120"})
                st["status"], st["start"] = "running", time.monotonic() - start
                print(f"[{st['start']:6.1f} s] start {st['name']}", flush=True)
        time.sleep(0.5)
    for name, st in state.items():
        text = (logs / (name.replace(" ", "_") + ".log")).read_text() if (logs / (name.replace(" ", "_") + ".log")).exists() else ""
        st["log_tail"] = "\n".join(text.splitlines()[-15:])
        for line in text.splitlines():
            if line.startswith("JOB-RESULT "):
                st["result"] = json.loads(line[len("JOB-RESULT "):])
        print(f"{name}: {st['status']}" + (f" ({st['end'] - st['start']:.1f} s)" if "end" in st else ""), flush=True)
    return state


# -- report -----------------------------------------------------------------------------------

def _fmt_ci(m: dict) -> str:
    acc, ci = m.get("attack_acc"), m.get("attack_acc_ci") or [None, None]
    if acc is None:
        return "n/a"
    return f"{100 * acc:.1f}% [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def report(a: argparse.Namespace, state: dict[str, dict]) -> str:
    from mi_bench.runs import iter_record_files, read_record

    records = [read_record(p) for p in iter_record_files(a.work / "runs")] if (a.work / "runs").exists() else []
    with open(a.out / "gpu.records.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(r, sort_keys=True) + "\n")
    by_id = {r["run_id"]: r for r in records}
    by: dict[tuple[str, str], dict] = {}  # (attack, defense option) -> record
    for name, st in state.items():
        rid = st.get("result", {}).get("run_id")
        if st["stage"] == "run" and rid in by_id:
            _, atk, option = name.split(" ", 2)
            by[(atk, option)] = by_id[rid]
    machine = records[0]["machine"] if records else {}
    lines = ["# Paper-scale MNIST on one GPU (issue 7): `bash results/bench/gpu.sh`", ""]
    if "gpu" not in machine:  # no record finished: name the GPU from torch
        import torch

        if torch.cuda.is_available():
            machine = {**machine, "gpu": torch.cuda.get_device_name(0)}
    lines.append(f"GPU: **{machine.get('gpu', 'none (CPU smoke run)')}** "
                 f"({machine.get('gpu_memory_gib', '-')} GiB, capability {machine.get('gpu_capability', '-')}, "
                 f"CUDA {machine.get('cuda', '-')}, cuDNN {machine.get('cudnn', '-')}); backend "
                 f"{machine.get('backend', {})}; {machine.get('accel', {})}; torch "
                 f"{records[0]['versions']['torch'] if records else '-'}. Preset `{'smoke' if a.smoke else 'paper'}`, "
                 f"seed {a.seed}, {a.lanes} jobs sharing the GPU at once (stage times below are measured "
                 f"under that sharing; `gpu.sh profile` measures step rates alone), budget {a.budget:.0f} s.")
    caps = []
    for atk, steps, paper in (("GMI", a.gmi_steps, PAPER_GMI_STEPS), ("KED-MI", a.kedmi_steps, PAPER_KEDMI_STEPS),
                              ("PLG-MI", a.plgmi_steps, PAPER_PLGMI_STEPS)):
        if steps and not a.smoke:
            caps.append(f"{atk} prior capped at {steps:,} of the published {paper:,} generator steps"
                        if steps < paper else f"{atk} prior at {steps:,} generator steps (published {paper:,})")
    if caps:
        lines += ["", "Prior steps: " + "; ".join(caps) + "."]
    if a.calibration:
        lines += ["", "Calibration (alone, before the jobs; sets the caps with an assumed slow-down of "
                  f"{a.share}x from sharing): " + ", ".join(f"{k} {v:.2f} ms per generator step"
                                                             for k, v in a.calibration.items()) + "."]
    lines += ["", "| attack | defense | label | target acc | attack acc [95% CI] | top-5 | KNN dist | prior steps | run id (grid) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for (atk, option), r in by.items():
        m = r["metrics"]
        knn = m.get("knn_dist")
        top5 = m.get("attack_acc_top5")
        lines.append(f"| {atk} | {option} | {r['defense_label']} | {100 * m['target_acc']:.2f}% | {_fmt_ci(m)} | "
                     f"{'-' if top5 is None else f'{100 * top5:.0f}%'} | {'-' if knn is None else f'{knn:.1f}'} | "
                     f"{r['config']['attack']['gan_steps']:,} | {r['run_id']} |")
    lines += ["", "## Stage times (per step, under the sharing above)", "",
              "| job | status | start s | wall s | per step |", "|---|---|---|---|---|"]
    for name, st in state.items():
        res = st.get("result", {})
        wall = f"{st['end'] - st['start']:.1f}" if "end" in st and "start" in st else "-"
        start = f"{st['start']:.0f}" if "start" in st else "-"
        lines.append(f"| {name} | {st['status']} | {start} | {wall} | {_per_step(a, st, res)} |")
    lines += ["", "## Published orderings", ""] + _orderings(by)
    lines += ["", "Jobs' logs (tails): `gpu_jobs.log`. Grids: `gpu_grids.tar.gz` (one folder per run id)."]
    return "\n".join(lines) + "\n"


def _per_step(a: argparse.Namespace, st: dict, res: dict) -> str:
    from mi_bench.config import compose

    secs = res.get("stage_seconds", {})
    cfg = compose(st["tokens"])
    if st["stage"] == "prior" and "prior" in secs and "prior" in res.get("trained", []):
        return f"{1000 * secs['prior'] / cfg.attack.gan_steps:.1f} ms per generator step ({cfg.attack.gan_steps:,} steps)"
    if st["stage"] in ("target", "evaluator") and st["stage"] in secs:
        kind = st["stage"]
        key = res.get("artifacts", {}).get(kind, {}).get("key")
        meta = a.work / "cache" / kind / str(key) / "meta.json"
        if meta.is_file():
            hist = json.loads(meta.read_text())["history"]
            rest = hist[1:] or hist  # epoch 1 includes cuDNN autotuning
            sec = sum(h["seconds"] for h in rest) / len(rest)
            steps = sum(h["batches"] for h in rest) / len(rest)
            return (f"{sec:.2f} s per epoch ({steps:.0f} steps, {1000 * sec / steps:.2f} ms per step, "
                    f"validation included; epoch 1: {hist[0]['seconds']:.2f} s)")
    if st["stage"] == "run" and "inversion" in secs:
        return (f"inversion {1000 * secs['inversion'] / cfg.attack.iterations:.1f} ms per iteration "
                f"({cfg.attack.iterations:,}); scoring {secs.get('scoring', 0):.1f} s")
    return "-"


def _orderings(by: dict) -> list[str]:
    acc = {k: r["metrics"]["attack_acc"] for k, r in by.items()}
    tacc = {k: r["metrics"]["target_acc"] for k, r in by.items()}
    out = []
    for atk, defenses in (("gmi", ("bido-hsic", "bido-coco", "mid")), ("kedmi", ("bido-hsic",))):
        base = acc.get((atk, "none"))
        for d in defenses:
            v = acc.get((atk, d))
            if base is None or v is None:
                continue
            drop = 100 * (tacc[(atk, "none")] - tacc[(atk, d)])
            out.append(f"- {atk}: {d} attack acc {100 * v:.1f}% vs none {100 * base:.1f}% "
                       f"({'lower' if v < base else 'NOT lower'}), target acc {drop:.2f} points below none "
                       "(published: lower attack accuracy at 1-2 points of target accuracy); intervals in the table")
    und = [acc.get((k, "none")) for k in ("plgmi", "kedmi", "gmi")]
    if None not in und:
        ok = und[0] > und[1] > und[2]
        out.append(f"- undefended: PLG-MI {100 * und[0]:.1f}% > KED-MI {100 * und[1]:.1f}% > GMI "
                   f"{100 * und[2]:.1f}%: {'holds' if ok else 'does NOT hold'} (published: holds)")
    return out or ["- not enough finished runs to check"]


def calibrate(a: argparse.Namespace) -> dict[str, float]:
    """ms per generator step of each prior at paper width, alone (two ``train_prior`` calls of
    W and W + N steps; the difference excludes set-up and cuDNN autotuning)."""
    import torch

    from mi_bench.config import compose
    from mi_bench.data import load_splits, resolve_data_root
    from mi_bench.models import build_model
    from mi_bench.registry import ATTACKS
    from mi_bench.runtime import NULL_BARS, configure_device, resolve_device, set_threads

    set_threads(1)  # as the jobs (threads=1); torch's default oversubscribes a busy CPU
    preset = "smoke" if a.smoke else "paper"
    dev = resolve_device("cpu" if a.smoke else "cuda")
    configure_device(dev)
    base = compose([f"preset={preset}", "dataset=mnist"])
    splits = load_splits(base.dataset, resolve_data_root(""))
    pub = splits.public[0]
    target = build_model("mcnn", num_classes=splits.num_private_classes, in_channels=1,
                         width=base.target.width).to(dev).eval()
    for p in target.parameters():
        p.requires_grad_(False)
    rates = {}
    for name, (w, n) in {"gmi": (5, 40), "kedmi": (3, 20), "plgmi": (3, 20)}.items():
        cfg = compose([f"preset={preset}", "dataset=mnist", f"attack={name}"])
        cls = ATTACKS.get(name)
        times = []
        # a first call of W steps is thrown away: it carries the cuDNN autotuning of this
        # network's shapes (the first H200 run timed W then W + N and read GMI at 28 ms per step,
        # half its rate alone, and PLG-MI at 0)
        for steps in (w, w, w + n):
            cfg.attack.gan_steps = steps
            atk = cls(cfg.attack, image_shape=splits.image_shape, num_classes=splits.num_private_classes, device=dev)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            atk.train_prior(pub, target if cls.requirements.prior == "per_target" else None, seed=0,
                            progress=NULL_BARS)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        # the difference of the last two calls excludes set-up; where set-up varies more than
        # the n steps take, the longer call's mean per step bounds it from below
        rates[name] = 1000 * max((times[2] - times[1]) / n, 0.5 * times[2] / (w + n))
        print(f"calibration: {name} prior {rates[name]:.2f} ms per generator step (alone)", flush=True)
    del target
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return rates


def auto_caps(a: argparse.Namespace, rates: dict[str, float]) -> None:
    """Generator steps that fit: GMI's prior starts at once and leaves ``reserve`` seconds for
    its four runs; the per-target priors start after their target (``lead`` s) and leave the
    same reserve. Each is slowed ``a.share`` times by the jobs beside it; rounded down to 100."""
    reserve, lead = 120.0, 90.0
    for name, paper, start in (("gmi", PAPER_GMI_STEPS, 0.0), ("kedmi", PAPER_KEDMI_STEPS, lead),
                               ("plgmi", PAPER_PLGMI_STEPS, lead)):
        attr = f"{name}_steps"
        if getattr(a, attr):
            continue  # given
        fit = (a.budget - reserve - start) / (a.share * rates[name] / 1000)
        setattr(a, attr, int(max(100, min(paper, fit // 100 * 100))))
    a.calibration = rates


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--job":
        return job_main(json.loads(sys.argv[2]))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--work", type=Path, default=Path(os.environ.get("GPU_WORK", "/tmp/mi-bench-gpu")))
    p.add_argument("--budget", type=float, default=480.0, help="seconds for all jobs")
    p.add_argument("--lanes", type=int, default=5, help="jobs sharing the GPU at once")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gmi-steps", type=int, default=0, help="generator steps; 0 = auto (calibrated)")
    p.add_argument("--kedmi-steps", type=int, default=0, help="generator steps; 0 = auto (calibrated)")
    p.add_argument("--plgmi-steps", type=int, default=0, help="generator steps; 0 = auto (calibrated)")
    p.add_argument("--share", type=float, default=2.5,
                   help="assumed slow-down of a prior by the jobs sharing the GPU (auto caps)")
    p.add_argument("--smoke", action="store_true", help="preset=smoke on the CPU (checks the script)")
    a = p.parse_args()
    a.calibration = {}
    a.out.mkdir(parents=True, exist_ok=True)
    a.work.mkdir(parents=True, exist_ok=True)
    if a.smoke:  # the smoke preset's own steps; the calibration runs only to check it works
        a.gmi_steps = a.kedmi_steps = a.plgmi_steps = 0
        a.calibration = calibrate(a)
    elif not (a.gmi_steps and a.kedmi_steps and a.plgmi_steps):
        t = time.monotonic()
        auto_caps(a, calibrate(a))
        a.budget -= time.monotonic() - t  # the calibration came out of the budget
        print(f"steps: gmi {a.gmi_steps}, kedmi {a.kedmi_steps}, plgmi {a.plgmi_steps}; "
              f"{a.budget:.0f} s left for the jobs", flush=True)
    state = schedule(a)
    (a.out / "gpu.md").write_text(report(a, state))
    with open(a.out / "gpu_jobs.log", "w") as f:
        for name, st in state.items():
            f.write(f"== {name}: {st['status']}\n{st.get('log_tail', '')}\n\n")
    grids = sorted((a.work / "runs").rglob("grid.png")) if (a.work / "runs").exists() else []
    with tarfile.open(a.out / "gpu_grids.tar.gz", "w:gz") as tar:
        for g in grids:
            tar.add(g, arcname=f"{g.parent.name}/grid.png")
    print((a.out / "gpu.md").read_text())


if __name__ == "__main__":
    main()
