"""FID, KID and lpips_nn against the number of reconstructions (issue 10).

One undefended GMI run on digits (preset quick, 80 reconstructions per class = 400), then the
metrics of stratified random subsets of 25, 100 and 400 of those reconstructions (20 draws for
25 and 100; 400 is the whole set). Beside them, the same metrics for *held-out real private
images* (the private test split, same classes, never trained on) against the private training
set: their true distance is 0, so whatever FID reports for them is sample-size bias, and KID
should stay near 0 at every size. All distances are to the private training images, as in
``mi_bench.metrics.score_inversion``.

Metrics that need pretrained weights (Inception FID/KID, lpips_nn) are computed when the weights
are on disk or can be downloaded; otherwise the table says n/a and why (e.g. offline).

Usage (from the repository root):
    MI_BENCH_CACHE=/tmp/mi-bench-bench-cache python results/bench/fid_samples.py
    python results/bench/fid_samples.py --smoke     # seconds: smoke preset, tiny sizes, /tmp output
Writes results/bench/fid_samples.md (table, command, run id) and fid_samples.json (every draw);
the run's record goes to results/bench/fid_samples.sqlite and its grid and reconstructions to
results/bench/grids/<run_id>/. A second invocation reuses the stored run (same config hash).

Expected time on the 2-core development CPU, one torch thread, quiet machine: the run ~8 min
cold (target 12 s, evaluator 16 s, WGAN-GP prior ~65 s, inversion of 400 x 2 restarts ~7 min,
16x the 28 s of the default 25) or ~7 min with a warm cache; the metrics ~10 s offline, plus
~3 min with Inception weights (about 900 images through Inception-v3 at 299x299) and ~10 s
with the AlexNet LPIPS backbone. About 10-12 minutes in all.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mi_bench import perceptual as P
from mi_bench.config import compose, config_hash, to_dict
from mi_bench.data import load_splits, resolve_data_root
from mi_bench.metrics import embed
from mi_bench.pipeline import Runner
from mi_bench.record import versions
from mi_bench.results import ResultStore
from mi_bench.runs import load_reconstructions
from mi_bench.runtime import Bars, set_threads, setup_logging

REPO = Path(__file__).resolve().parents[2]


def args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny check of the script (numbers meaningless)")
    p.add_argument("--draws", type=int, default=20, help="random subsets per size below the full set")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args()


def _rel(path: str) -> str:
    """``path`` relative to the repository when it lies inside it."""
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p)


def stratified(n_cls: int, per_class_total: list[int], k: int, g: torch.Generator) -> list[torch.Tensor]:
    """k random indices (without replacement) within each class."""
    return [torch.randperm(t, generator=g)[:min(k, t)] for t in per_class_total]


def summary(vals: list[float | None]) -> dict:
    v = [x for x in vals if x is not None]
    if not v:
        return {"mean": None, "sd": None}
    return {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)) if len(v) > 1 else None}


def main() -> None:
    a = args()
    setup_logging("INFO")
    set_threads(1)
    out_dir = Path("/tmp/mi-bench-fid-samples-smoke") if a.smoke else REPO / "results" / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    per_class = 8 if a.smoke else 80
    sizes = (15, 25, 40) if a.smoke else (25, 100, 400)
    draws = 3 if a.smoke else a.draws
    tokens = ["dataset=digits", f"preset={'smoke' if a.smoke else 'quick'}", "attack=gmi", "defense=none",
              f"attack.samples_per_class={per_class}", f"results_db={out_dir / 'fid_samples.sqlite'}",
              f"results_dir={out_dir / 'grids'}"]
    cfg = compose(tokens)
    chash = config_hash(to_dict(cfg))
    t0 = time.perf_counter()
    old = [r for r in ResultStore(cfg.results_db).records() if r["config_hash"] == chash]
    if old:
        rec = old[-1]
        logging.info("reusing run %s from %s", rec["run_id"], cfg.results_db)
    else:
        from mi_bench.pipeline import run

        with Bars(enabled=not a.quiet) as bars:
            rec = run(cfg, bars)
    run_seconds = time.perf_counter() - t0

    t1 = time.perf_counter()
    images, classes = load_reconstructions(rec["run_dir"])  # (classes, samples, C, H, W)
    splits = load_splits(cfg.dataset, resolve_data_root(cfg.data_root))
    evaluator = Runner(cfg).stages(splits).judges()["eval"].model  # the evaluation model (cached by the run)
    size = splits.image_shape[-1]
    x_tr, y_tr = splits.private_train
    x_te, y_te = splits.private_test
    n_cls, n_s = images.shape[:2]
    recon = images.reshape(n_cls * n_s, *images.shape[2:])
    recon_y = torch.tensor(classes).repeat_interleave(n_s)
    test_idx = [torch.nonzero(y_te == c).flatten() for c in classes]
    test = torch.cat([x_te[i] for i in test_idx])
    test_y = torch.cat([y_te[i] for i in test_idx])
    test_counts = [len(i) for i in test_idx]

    feats = {"eval": {"recon": embed(evaluator, recon, size).double().numpy(),
                      "test": embed(evaluator, test, size).double().numpy(),
                      "train": embed(evaluator, x_tr, size).double().numpy()}}
    absent: dict[str, str] = {}
    try:
        inc, path = P.inception_model(cfg.device)
        feats["inception"] = {k: P.inception_features(inc, x) for k, x in
                              (("recon", recon), ("test", test), ("train", x_tr))}
        weights = {"inception": P.weights_info(path)}
    except P.WeightsUnavailable as exc:
        absent["fid_inception"] = absent["kid_inception"] = str(exc)
        weights = {}
    lp = {}
    try:
        lpm, path = P.lpips_model(cfg.eval.lpips_net, cfg.device)
        lp = {"recon": P.lpips_nn(lpm, recon, recon_y, x_tr, y_tr, min_size=cfg.eval.lpips_min_size),
              "test": P.lpips_nn(lpm, test, test_y, x_tr, y_tr, min_size=cfg.eval.lpips_min_size)}
        weights["lpips"] = {**P.weights_info(path), "net": cfg.eval.lpips_net}
    except P.WeightsUnavailable as exc:
        absent["lpips_nn"] = str(exc)

    g = torch.Generator().manual_seed(0)
    results = []
    for source, counts in (("GMI reconstructions", [n_s] * n_cls), ("held-out private images (test split)", test_counts)):
        key = "recon" if source.startswith("GMI") else "test"
        for n in sizes:
            k = n // n_cls
            full = all(k >= t for t in counts)
            reps = 1 if full else draws
            per_draw = []
            for _ in range(reps):
                offs = np.cumsum([0] + counts[:-1])
                idx = torch.cat([o + i for o, i in zip(offs, stratified(n_cls, counts, k, g))]).numpy()
                d: dict[str, float | None] = {"n": int(len(idx))}
                groups = (recon_y if key == "recon" else test_y)[idx]
                for space, fs in feats.items():
                    sub, ref = fs[key][idx], fs["train"]
                    d[f"fid_{space}"] = P.frechet(sub, ref)
                    d[f"kid_{space}"], d[f"kid_{space}_se"] = P.kid(
                        sub, ref, x_groups=groups, subsets=cfg.eval.kid_subsets,
                        subset_size=cfg.eval.kid_subset_size)
                d["lpips_nn"] = float(lp[key][idx].mean()) if lp else None
                per_draw.append(d)
            results.append({"source": source, "n_requested": n, "n": per_draw[0]["n"], "draws": reps,
                            "per_draw": per_draw})
    metrics_seconds = time.perf_counter() - t1

    cols = [("fid_eval", "FID (E feats)"), ("kid_eval", "KID (E feats)"), ("fid_inception", "FID (Inception)"),
            ("kid_inception", "KID (Inception)"), ("lpips_nn", f"LPIPS-NN ({cfg.eval.lpips_net})")]
    cmd = "MI_BENCH_CACHE=/tmp/mi-bench-bench-cache python results/bench/fid_samples.py" + (" --smoke" if a.smoke else "")
    lines = ["# FID, KID and lpips_nn against the number of reconstructions", "",
             f"Command: `{cmd}`  ",
             f"Run {rec['run_id']} (`{' '.join(tokens[:5])}`; grid `{_rel(rec['grid'])}`), "
             f"{n_cls * n_s} reconstructions; distances to the {len(x_tr)} private training images. "
             f"Run {run_seconds:.0f} s ({'reused' if old else 'computed'}), metrics {metrics_seconds:.0f} s; "
             f"torch {versions()['torch']}, device {cfg.device}, 1 thread.", "",
             "Each cell: mean ± sd over random stratified subsets (the draws column; 1 = the whole set). "
             "KID cells add the mean jackknife SE of one estimate in brackets. Held-out private images "
             "come from the same distribution as the training images, so their true FID and KID are 0: "
             "what FID shows for them is its small-sample bias.", "",
             "| images | n | draws | " + " | ".join(h for _, h in cols) + " |",
             "|---|---|---|" + "---|" * len(cols)]
    for r in results:
        cells = []
        for k, _ in cols:
            if k in absent:
                cells.append("n/a")
                continue
            s = summary([d.get(k) for d in r["per_draw"]])
            if s["mean"] is None:
                cells.append("n/a")
                continue
            fmt = ".2f" if k.startswith("fid") else ".3g"
            c = f"{s['mean']:{fmt}}" + (f" ± {s['sd']:{fmt}}" if s["sd"] is not None else "")
            if k.startswith("kid"):
                c += f" [{np.mean([d[k + '_se'] for d in r['per_draw']]):.2g}]"
            cells.append(c)
        lines.append(f"| {r['source']} | {r['n']} | {r['draws']} | " + " | ".join(cells) + " |")
    if absent:
        lines += ["", "n/a:"] + [f"- `{k}`: {v}" for k, v in absent.items()]
    text = "\n".join(lines) + "\n"
    (out_dir / "fid_samples.md").write_text(text)
    (out_dir / "fid_samples.json").write_text(json.dumps(
        {"command": cmd, "run_id": rec["run_id"], "tokens": tokens, "absent": absent, "weights": weights,
         "run_seconds": run_seconds, "metrics_seconds": metrics_seconds, "results": results}, indent=1))
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
