"""Old vs new code on the CPU, interleaved in one process (issue 7: the CPU must not get slower).

    python results/bench/cpu_ab.py [--base 57a9ace] [--rounds 3] [--out results/bench/cpu_ab.md]

The base revision's ``mi_bench`` (with its attacks, defenses and configs) is extracted from git
into a temporary folder and imported under the name ``mi_bench_base``, next to the working
tree's ``mi_bench``. Each stage of the `quick` preset on the default dataset (digits) runs with
both, alternately (old, new, old, new, ...), for ``--rounds`` rounds at reduced length (target 4
epochs, GMI prior 60 generator steps, inversion 60 iterations, KED-MI/PLG-MI priors 40 steps),
one torch thread. The table gives the median seconds of each and new/old; a load change on the
machine hits both alike. About 4 minutes at 3 rounds on an idle 2-core machine.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def extract_base(rev: str, into: Path) -> None:
    """``git archive rev`` -> ``into/mi_bench_base`` laid out like the installed package."""
    src = into / "src"
    src.mkdir(parents=True)
    tar = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=tar, check=True)
    pkg = into / "mi_bench_base"
    subprocess.run(["cp", "-r", str(src / "mi_bench"), str(pkg)], check=True)
    for sub in ("attacks", "defenses", "configs"):
        subprocess.run(["cp", "-r", str(src / sub), str(pkg / sub)], check=True)
    for f in pkg.rglob("*.py"):
        f.write_text(re.sub(r"\bmi_bench\b", "mi_bench_base", f.read_text()))


def stages(m: str) -> dict:
    """Callables running each stage with package ``m`` (``mi_bench`` or ``mi_bench_base``)."""
    cfgmod = importlib.import_module(f"{m}.config")
    data = importlib.import_module(f"{m}.data")
    try:  # mi-bench >= 0.2: the stages module; before: the pipeline's private helpers
        st = importlib.import_module(f"{m}.stages")
        target_factory, make_defense = st.target_factory, st.make_defense
    except ModuleNotFoundError:
        pipe = importlib.import_module(f"{m}.pipeline")
        target_factory, make_defense = pipe._target_factory, pipe._make_defense
    train = importlib.import_module(f"{m}.train")
    reg = importlib.import_module(f"{m}.registry")
    runtime = importlib.import_module(f"{m}.runtime")
    import torch

    def cfg(*tok):
        return cfgmod.compose(["preset=quick", *tok])

    base = cfg()
    splits = data.load_splits(base.dataset, REPO)
    dev = torch.device("cpu")

    def target(option, epochs=4):
        c = cfg(f"defense={option}", f"target.epochs={epochs}")
        return lambda: train.train_classifier(target_factory(c, splits), splits.private_train,
                                              splits.private_val, c.target, seed=0,
                                              defense=make_defense(c, splits), device=dev)

    def evaluator():
        c = cfg("evaluator.epochs=3")
        e = c.evaluator
        make = lambda: importlib.import_module(f"{m}.models").build_model(  # noqa: E731
            e.model, num_classes=splits.num_domain_classes, in_channels=1, width=e.width)
        return train.train_classifier(make, splits.eval_train, splits.eval_val, e, seed=1000, device=dev)

    tgt = target("none", 2)().model.eval()
    for p in tgt.parameters():
        p.requires_grad_(False)

    def attack(name, *tok):
        c = cfg(f"attack={name}", *tok)
        cls = reg.ATTACKS.get(name)
        return cls(c.attack, image_shape=splits.image_shape, num_classes=splits.num_private_classes, device=dev)

    def prior(name, steps):
        a = attack(name, f"attack.gan_steps={steps}")
        t = tgt if cls_prior(name) else None
        return lambda: a.train_prior(splits.public[0], t, seed=0, progress=runtime.NULL_BARS)

    def cls_prior(name):
        return reg.ATTACKS.get(name).requirements.prior == "per_target"

    gmi_prior = prior("gmi", 5)()

    def invert():
        a = attack("gmi", "attack.iterations=60")
        return a.invert(tgt, gmi_prior, list(range(splits.num_private_classes)), seed=0,
                        progress=runtime.NULL_BARS)

    return {
        "target none (4 epochs)": target("none"),
        "target bido (4 epochs)": target("bido"),
        "target qad (2 epochs)": target("qad", 2),
        "target desmil (2 epochs)": target("desmil", 2),
        "evaluator (3 epochs)": evaluator,
        "GMI prior (60 steps)": prior("gmi", 60),
        "GMI inversion (60 iterations)": invert,
        "KED-MI prior (40 steps)": prior("kedmi", 40),
        "PLG-MI prior (40 steps)": prior("plgmi", 40),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="57a9ace", help="git revision before issue 7")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--only", default="", help="run only stages whose name contains this")
    p.add_argument("--out", type=Path, default=REPO / "results" / "bench" / "cpu_ab.md")
    a = p.parse_args()
    import torch

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="mi-bench-ab-"))
    extract_base(a.base, tmp)
    sys.path.insert(0, str(tmp))
    old, new = stages("mi_bench_base"), stages("mi_bench")
    names = [n for n in new if a.only in n]
    times: dict[str, dict[str, list[float]]] = {n: {"old": [], "new": []} for n in names}
    load0 = os.getloadavg()
    for r in range(a.rounds):
        for n in names:
            for which, fns in (("old", old), ("new", new)) if r % 2 == 0 else (("new", new), ("old", old)):
                torch.manual_seed(0)
                t = time.perf_counter()
                fns[n]()
                times[n][which].append(time.perf_counter() - t)
        print(f"round {r + 1}/{a.rounds} done", file=sys.stderr, flush=True)
    load1 = os.getloadavg()
    rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    lines = ["# CPU: old vs new code, interleaved in one process (issue 7)", "",
             f"`python results/bench/cpu_ab.py --base {a.base} --rounds {a.rounds}`: base {a.base} vs "
             f"working tree at {rev}; `quick` preset stages on digits at reduced length, one torch thread; "
             f"{os.cpu_count()} cores, load average {load0[0]:.2f} before / {load1[0]:.2f} after.", "",
             "| stage | old s (median) | new s (median) | new / old |", "|---|---|---|---|"]
    for n in names:
        o, w = statistics.median(times[n]["old"]), statistics.median(times[n]["new"])
        lines.append(f"| {n} | {o:.2f} | {w:.2f} | {w / o:.3f} |")
    text = "\n".join(lines) + "\n"
    a.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
