"""Synthetic run records (and run folders) for the leaderboard and report tests: no training."""

from __future__ import annotations

import json
from pathlib import Path

import torch

INCEPTION_ABSENT = ("Inception-v3 FID weights (pytorch-fid) not on disk and downloads are off "
                    "(MI_BENCH_OFFLINE=1); put pt_inception.pth (from "
                    "https://github.com/mseitzer/pytorch-fid/releases) into /cache to enable it")


def record(run_id: str, *, seed: int = 0, defense: str = "none", label: str | None = None,
           attack: str = "gmi", dataset: str = "digits", protocol: str = "disjoint_samples",
           preset: str = "quick", attack_acc: float = 0.8, target_acc: float = 0.97,
           judges: dict[str, list[list[int]]] | None = None, run_dir: Path | None = None,
           created: str | None = None, extra: dict | None = None) -> dict:
    """A record shaped like the pipeline's: 5 private classes (labels 0-4) attacked, 2 samples
    each unless ``judges`` says otherwise; per-judge predictions give the judge accuracies."""
    judges = judges or {"eval": [[c, c] for c in range(5)]}
    n_cls, n_s = len(judges["eval"]), len(judges["eval"][0])
    n = n_cls * n_s
    metrics = {"target_acc": target_acc, "eval_acc": 0.98, "attack_acc": attack_acc,
               "attack_acc_top5": 1.0, "n_reconstructions": n, "knn_dist": 219.4567 + seed,
               "fid_eval": 101.25 + seed, "kid_eval": 0.01234, "fid_inception": None,
               "kid_inception": None, "lpips_nn": 0.4321, "attack_acc_pixel_nn": 0.5,
               "metric_errors": {}, "metric_absent": {"fid_inception": INCEPTION_ABSENT,
                                                      "kid_inception": INCEPTION_ABSENT}}
    res = {}
    for j, preds in judges.items():
        ok = sum(p == c for c, row in enumerate(preds) for p in row)
        res[j] = {"acc": ok / n, "acc_ci": [max(0.0, ok / n - 0.2), min(1.0, ok / n + 0.2)],
                  "predictions": preds}
        if j != "eval":
            metrics[f"attack_acc_{j}"] = ok / n
    if len(judges) > 1:
        agree = sum(all(judges[j][c][s] == c for j in judges) for c in range(n_cls) for s in range(n_s))
        metrics["consensus_acc"] = agree / n
    metrics["judges"] = res
    metrics.update(extra or {})
    group = f"{dataset}-{protocol}-{attack}-{preset}-{label or defense}"
    return {
        "run_id": run_id, "created_at": created or f"2026-01-01T00:00:{seed:02d}",
        "config_hash": f"{group}-{seed}", "group_hash": group, "defense_label": label or defense,
        "seed": seed,
        "config": {"dataset": {"name": dataset, "protocol": protocol}, "attack": {"name": attack},
                   "defense": {"name": defense}, "target": {"model": "mcnn"}, "preset": preset,
                   "seed": seed, "data_root": ""},
        "protocol": {"data": {"private_classes": list(range(n_cls)), "num_domain_classes": 10},
                     "attacked_classes": list(range(n_cls))},
        "metrics": metrics, "run_dir": str(run_dir) if run_dir else None,
    }


def save_run(folder: Path, rec: dict, seed: int = 0) -> dict:
    """Write the run folder of ``rec``: reconstructions (random, classes x samples) and record."""
    from mi_bench.runs import save_reconstructions, write_record

    n_cls = len(rec["protocol"]["attacked_classes"])
    n_s = len(rec["metrics"]["judges"]["eval"]["predictions"][0])
    g = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    save_reconstructions(folder, torch.rand(n_cls, n_s, 1, 32, 32, generator=g), list(range(n_cls)))
    rec["run_dir"] = str(folder)
    write_record(folder, rec)
    return rec


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path
