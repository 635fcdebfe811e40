"""Do the judges reject readable digits for their background texture? (issue 12 follow-up)

Scores, per judge: the share of real test images it rejects ("none") clean, with Gaussian noise
(sigma 0.05), with uniform speckle U(0, 0.1) and with smooth noise (4x4 grid upsampled, U(0, 0.1))
added; and on a run's saved reconstructions: the share rejected, accuracy (a rejection counts
wrong), accuracy over the domain classes only (the "none" output ignored), and the share of the
run's nearly blank reconstructions (class-1 row of the MNIST GMI run) it rejects.

    # the judges the run was scored with, read from a cache (read-only):
    python results/bench/judge_noise.py RUN_FOLDER --before --cache /tmp/mi-bench-bench-cache
    # the current code's judges for the run's config (trained into --cache when missing):
    python results/bench/judge_noise.py RUN_FOLDER --cache /tmp/h12b-cache [judge.noise_fraction=0 ...]

Run from the repository root with MI_BENCH_OFFLINE=1 and MI_BENCH_DATA (or the run's data_root)
pointing at the datasets. Prints a markdown table. Time: --before ~1 min; otherwise the judges'
training (MNIST quick: ~1-2 min each on one thread) plus ~1 min.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.nn import functional as F

from mi_bench.artifacts import ArtifactStore
from mi_bench.config import from_record
from mi_bench.data import load_splits, resolve_data_root
from mi_bench.judges import NONE, Judge
from mi_bench.models import build_model
from mi_bench.runs import load_reconstructions
from mi_bench.runtime import set_threads


def noisy_sets(x: torch.Tensor) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    smooth = F.interpolate(torch.rand(len(x), 1, 4, 4, generator=g), size=x.shape[-2:], mode="bilinear",
                           align_corners=False)
    return {"clean": x, "gauss 0.05": (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1),
            "uniform 0.1": (x + 0.1 * torch.rand(x.shape, generator=g)).clamp(0, 1),
            "smooth 0.1": (x + 0.1 * smooth).clamp(0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--cache", required=True, type=Path)
    ap.add_argument("--before", action="store_true", help="load the judges named in the run's record")
    ap.add_argument("--blank-class", type=int, default=1, help="attacked class whose row is nearly blank")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    set_threads(1)
    rec = json.loads((a.run / "record.json").read_text())
    cfg = from_record(rec["config"], a.overrides)
    splits = load_splits(cfg.dataset, resolve_data_root(cfg.data_root))
    images, classes = load_reconstructions(a.run)
    k = splits.num_domain_classes
    judges: dict[str, Judge] = {}
    if a.before:
        store = ArtifactStore(a.cache)
        for name, info in rec["protocol"]["judges"].items():
            tc = cfg.evaluator if name == "eval" else getattr(cfg.judge, name)
            m = build_model(tc.model, num_classes=k + 1, in_channels=splits.image_shape[0], width=tc.width)
            m.load_state_dict(store.load(info["artifact"], info["key"])[0])
            judges[name] = Judge(name, m.eval(), k, tc)
    else:
        from dataclasses import replace

        from mi_bench.pipeline import Runner

        judges = Runner(replace(cfg, cache_dir=str(a.cache), threads=1)).stages(splits).judges()
    xt = splits.eval_test[0]
    sets = noisy_sets(xt)
    flat = images.flatten(0, 1)
    n_s = images.shape[1]
    truth = torch.tensor([splits.private_classes[c] for c in classes]).repeat_interleave(n_s)
    blank = torch.tensor([c == a.blank_class for c in classes]).repeat_interleave(n_s)
    head = ["judge", *[f"rejects real {s}" for s in sets], "rejects recon", "recon acc",
            "recon acc ignoring none", f"rejects class-{a.blank_class} recon"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for name, j in judges.items():
        cells = [name]
        for x in sets.values():
            cells.append(f"{100 * float((j.predict(x) == NONE).float().mean()):.1f}%")
        with torch.no_grad():
            logits = j.model(flat)
        pred = j.predict(flat)
        cells += [f"{100 * float((pred == NONE).float().mean()):.0f}%",
                  f"{100 * float((pred == truth).float().mean()):.0f}%",
                  f"{100 * float((logits[:, :k].argmax(1) == truth).float().mean()):.0f}%",
                  f"{100 * float((pred[blank] == NONE).float().mean()):.0f}%" if blank.any() else "-"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
