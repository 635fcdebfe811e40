"""Issue 23: judges that can judge faces. Trains the extra judges (``resnet``, ``robust``) of one
dataset/preset under candidate recipes and reports each one's real test accuracy (a rejection
counts wrong) against the evaluator's, and the robust judge's PGD accuracy, exactly as a run's
health checks compute them (``mi_bench.judges.health``). The judges are cached artifacts like a
run's, so a recipe adopted in the preset is not trained again by the next run.

Usage:
    python results/bench/face_judges.py --name lfw-cpu \\
        --variant "shipped:" \\
        --variant "sgd:judge.resnet.optimizer=sgd judge.resnet.lr=0.01 ..." \\
        dataset=lfw preset=cpu

Each ``--variant NAME:TOKENS`` is a set of overrides added to the shared ones. Writes
``results/bench/face_judges_<name>.md`` (table, command, versions, machine, wall time per judge)
and ``results/bench/face_judges_<name>.records.json`` (the same as data: each judge's config and health).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import time
from pathlib import Path

import torch

from mi_bench import __version__
from mi_bench.config import compose, to_dict
from mi_bench.pipeline import Runner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", required=True, help="the benchmark's name (file names)")
    ap.add_argument("--variant", action="append", required=True, metavar="NAME:TOKENS",
                    help="a recipe: its name, a colon, its overrides (space-separated)")
    ap.add_argument("overrides", nargs="*", help="shared overrides, as for mi-bench run")
    a = ap.parse_args()
    variants = []
    for v in a.variant:
        name, sep, tokens = v.partition(":")
        if not sep or not name:
            ap.error(f"--variant {v!r}: write NAME:TOKENS, e.g. 'sgd:judge.resnet.optimizer=sgd'")
        variants.append((name, shlex.split(tokens)))
    rows, records = [], []
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for vname, tokens in variants:
        cfg = compose([*a.overrides, *tokens])
        runner = Runner(cfg, index=False)
        splits, _ = runner.load_splits()
        stages = runner.stages(splits)
        t0 = time.perf_counter()
        judges = stages.judges()
        wall = time.perf_counter() - t0
        ev = judges["eval"].info.get("test_acc")
        for jname, judge in judges.items():
            info = judge.info
            kind = info["artifact"]  # the judge's cache kind, also its stage name (Stages.judges)
            seconds, trained = stages.times.get(kind), kind in stages.trained
            tcfg = judge.cfg
            row = {"variant": vname, "judge": jname, "model": getattr(tcfg, "model", cfg.evaluator.model),
                   "test_acc": info.get("test_acc"), "eval_test_acc": ev,
                   "ratio_to_eval": (info["test_acc"] / ev) if ev and info.get("test_acc") is not None else None,
                   "robust_acc": info.get("robust_acc"), "robust_acc_attack": info.get("robust_acc_attack"),
                   "reject_rate_junk": info.get("reject_rate_junk"), "seconds": seconds, "trained": trained,
                   "key": info.get("key")}
            rows.append(row)
            records.append({**row, "tokens": [*a.overrides, *tokens], "started": started,
                            "env": {"mi_bench": __version__, "torch": torch.__version__,
                                    "machine": platform.machine(), "cpu": platform.processor(),
                                    "threads": cfg.threads, "cpus": os.cpu_count()},
                            "config": to_dict(tcfg) if tcfg is not None else to_dict(cfg.evaluator),
                            "health": info})
            print(json.dumps({k: row[k] for k in ("variant", "judge", "model", "test_acc", "robust_acc", "seconds")}),
                  flush=True)
        print(f"variant {vname}: judges in {wall:.0f} s", flush=True)

    def pct(x):
        return "" if x is None else f"{100 * x:.1f}"

    lines = [f"# Face-sized judges: {a.name} (issue 23)", "",
             f"Command: `python results/bench/face_judges.py --name {a.name} "
             + " ".join(f"--variant {shlex.quote(v)}" for v in a.variant) + f" {' '.join(a.overrides)}` "
             f"(started {started}; mi-bench {__version__}, torch {torch.__version__}, "
             f"{platform.machine()} {platform.processor() or ''}, threads {cfg.threads}, "
             f"load average {Path('/proc/loadavg').read_text().split()[0]} at the end).", "",
             "Each judge's accuracy on the real private test images (a 'none' prediction counts wrong), "
             "the evaluator's for comparison, the ratio (goal: 0.80 or more), and for an adversarially "
             "trained judge its accuracy under the PGD attack its health check runs. Seconds: training "
             "wall time (blank: loaded from the cache, trained by an earlier run).", "",
             "| variant | judge | model | test acc | / eval | PGD acc | junk rejected | seconds |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = "" if r["ratio_to_eval"] is None else f"{r['ratio_to_eval']:.2f}"
        secs = f"{r['seconds']:.0f}" if r["trained"] and r["seconds"] is not None else ""
        lines.append(f"| {r['variant']} | {r['judge']} | {r['model']} | {pct(r['test_acc'])} | {ratio} | "
                     f"{pct(r['robust_acc'])} | {pct(r['reject_rate_junk'])} | {secs} |")
    out = Path(f"results/bench/face_judges_{a.name}.md")
    out.write_text("\n".join(lines) + "\n")
    Path(f"results/bench/face_judges_{a.name}.records.json").write_text(json.dumps(records, indent=1, default=str) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
