"""Issue 21: the README's quickstart (`mi-bench run defense=bido attack=gmi`) on an empty cache,
before and after the CPU levers, one after the other on this machine (run it alone).

* before: `channels_last=never` (NCHW float32 everywhere: mi-bench's step before issue 21);
* after: the defaults (`channels_last=auto`, `inversion_chunk` 512, float32);
* after, `amp=bf16` (where the CPU has native bfloat16; a cache key, off by default).

Each run gets a fresh cache, results database and run folder under a temporary directory; the
table gives the wall time and each stage's seconds from the record (`stage_seconds`), and the
target, evaluator and attack accuracy (the same seed: before and after should agree up to
float rounding; bf16 changes the numbers). Writes results/bench/quickstart_speed.md.

Usage: python results/bench/quickstart_speed.py [--variants before,after,bf16] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

VARIANTS = {"before": ["channels_last=never"], "after": [], "bf16": ["amp=bf16"]}
QUICKSTART = ["defense=bido", "attack=gmi"]


def run(extra: list[str], root: Path) -> dict:
    toks = [*QUICKSTART, *extra, f"cache_dir={root / 'cache'}", f"results_db={root / 'r.sqlite'}",
            f"results_dir={root / 'runs'}"]
    t0 = time.perf_counter()
    out = subprocess.run(["mi-bench", "run", *toks, "--json", "--quiet"], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    rec = json.loads(out.stdout)
    return {"wall": wall, "stages": rec.get("stage_seconds", {}), "metrics": rec["metrics"], "tokens": toks,
            "load": Path("/proc/loadavg").read_text().split()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", default="before,after,bf16")
    ap.add_argument("--out", default="results/bench/quickstart_speed.md")
    a = ap.parse_args()
    names = a.variants.split(",")
    got = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            got[name] = run(VARIANTS[name], Path(tmp) / name)
            print(name, round(got[name]["wall"], 1), flush=True)
    stages = [s for s in got[names[0]]["stages"]]
    lines = ["# The quickstart before and after the CPU levers (issue 21)", "",
             f"Command: `python results/bench/quickstart_speed.py --variants {a.variants}`, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; each run `mi-bench run "
             f"{' '.join(QUICKSTART)} <variant> --json --quiet` on its own empty cache, one after the other. "
             "Load average (1 min) after each run in the last row.", "",
             "| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    base = got[names[0]]["wall"]
    lines.append("| overrides | " + " | ".join(" ".join(VARIANTS[n]) or "(defaults)" for n in names) + " |")
    lines.append("| **wall** | " + " | ".join(
        f"**{got[n]['wall']:.0f} s** ({base / got[n]['wall']:.2f}x)" for n in names) + " |")
    for st in stages:
        lines.append(f"| {st} | " + " | ".join(f"{got[n]['stages'].get(st, float('nan')):.1f} s" for n in names) + " |")
    for m in ("target_acc", "eval_acc", "attack_acc"):
        lines.append(f"| {m} | " + " | ".join(
            "failed" if got[n]["metrics"].get(m) is None else f"{got[n]['metrics'][m]:.3f}" for n in names) + " |")
    lines.append("| load after | " + " | ".join(got[n]["load"] for n in names) + " |")
    Path(a.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
