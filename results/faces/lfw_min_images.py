"""Measurement behind LFW's default N (dataset.face.min_images): with the `cpu` recipe, train the
target at N = 20, 10, 30 and the evaluator at N = 20; report people, images per person, chance,
test accuracy and wall time. One thread. The public set is cut to 256 images (it plays no part
in classifier accuracy) so that only the private images are decoded.

    python results/faces/lfw_min_images.py [--data-root ../shared/data] [--budget-min 9.5]

Writes results/faces/lfw_min_images.json and lfw_min_images_table.md (README.md discusses them).
Took 12 minutes of wall time on one core of a busy 2-core machine (2026-11-26), with the target
at 30 epochs (the preset now says 60; pass --budget-min to cap the time).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from mi_bench.config import compose
from mi_bench.data import load_splits
from mi_bench.models import build_model
from mi_bench.train import accuracy, train_classifier

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-root", default=str(HERE.parents[2] / "shared" / "data"))
    ap.add_argument("--budget-min", type=float, default=9.5, help="skip what would not fit")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cache = Path(tempfile.mkdtemp(prefix="mi-bench-lfw-n-"))
    t_all = time.perf_counter()
    rows = []
    plan = [(20, "target"), (10, "target"), (30, "target"), (20, "evaluator")]
    for n, which in plan:
        elapsed = (time.perf_counter() - t_all) / 60
        if elapsed > args.budget_min:
            rows.append({"N": n, "model": which, "skipped": f"budget ({elapsed:.1f} min used)"})
            continue
        cfg = compose(["dataset=lfw", "preset=cpu", f"dataset.face.min_images={n}",
                       "dataset.face.public_size=256"])
        t0 = time.perf_counter()
        s = load_splits(cfg.dataset, Path(args.data_root), cache_dir=cache)
        t_data = time.perf_counter() - t0
        tcfg = cfg.target if which == "target" else cfg.evaluator
        k = s.num_private_classes
        seed = cfg.seed if which == "target" else cfg.eval_seed
        t0 = time.perf_counter()
        res = train_classifier(
            lambda: build_model(tcfg.model, num_classes=k, in_channels=3, width=tcfg.width),
            s.private_train, s.private_val, tcfg, seed=seed)
        t_train = time.perf_counter() - t0
        per = torch.bincount(s.private_train[1], minlength=k).float()
        row = {"N": n, "model": which, "arch": f"{tcfg.model} width {tcfg.width}",
               "people": k, "train": len(s.private_train[1]), "val": len(s.private_val[1]),
               "test": len(s.private_test[1]), "train_per_person_mean": round(float(per.mean()), 1),
               "train_per_person_min": int(per.min()), "chance": round(1 / k, 4),
               "test_acc": round(accuracy(res.model, *s.private_test), 4),
               "val_acc": round(res.val_acc, 4), "best_epoch": res.best_epoch,
               "epochs": tcfg.epochs, "train_seconds": round(t_train, 1),
               "data_seconds": round(t_data, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = {"command": "python results/faces/lfw_min_images.py", "threads": 1,
           "total_seconds": round(time.perf_counter() - t_all, 1), "rows": rows}
    (HERE / "lfw_min_images.json").write_text(json.dumps(out, indent=1))
    lines = ["| N | model | people | train / val / test | train per person (mean, min) | chance | "
             "test acc | best epoch | train time |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['N']} | {r['model']} | skipped: {r['skipped']} |||||||")
            continue
        lines.append(f"| {r['N']} | {r['model']} ({r['arch']}) | {r['people']} | {r['train']} / "
                     f"{r['val']} / {r['test']} | {r['train_per_person_mean']}, "
                     f"{r['train_per_person_min']} | {100 * r['chance']:.1f}% | "
                     f"{100 * r['test_acc']:.1f}% | {r['best_epoch']}/{r['epochs']} | "
                     f"{r['train_seconds'] / 60:.1f} min |")
    (HERE / "lfw_min_images_table.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
