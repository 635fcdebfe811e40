"""Is PLG-MI's 100% on MNIST disjoint_classes an evaluator artefact?

Re-creates the PLG-MI reconstructions of the run in results/bench/fooling.records.jsonl (stronger cGAN,
MNIST quick, disjoint_classes, undefended target) from the artifact cache, and scores them with
(a) the quick evaluator that run used (SCNN, 600 images/class, 8 epochs) and (b) an SCNN trained
on the full MNIST training split (54,000 images after the validation carve-out) for 3 epochs.
Usage: MI_BENCH_CACHE=/tmp/mi-bench-bench-cache python results/bench/evaluator_check.py
Writes results/bench/evaluator_check.md.
"""

import dataclasses
import json
import time
from pathlib import Path

import torch

from mi_bench.artifacts import ArtifactStore, resolve_cache_dir
from mi_bench.config import compose
from mi_bench.data import load_splits, resolve_data_root
from mi_bench.metrics import score_inversion
from mi_bench.models import build_model
from mi_bench.registry import ATTACKS
from mi_bench.results import load_records
from mi_bench.runtime import NULL_BARS, set_threads
from mi_bench.train import accuracy, train_classifier

set_threads(2)
rec = [r for r in load_records("results/bench/fooling.records.jsonl")
       if r["config"]["dataset"]["name"] == "mnist" and r["config"]["attack"]["name"] == "plgmi"
       and r["config"]["attack"]["gan_steps"] == 600][0]
tokens = ["dataset=mnist", "preset=quick", "attack=plgmi", "attack.gen_width=16", "attack.disc_width=16",
          "attack.gan_steps=600"]
cfg = compose(tokens)
store = ArtifactStore(resolve_cache_dir(""))
splits = load_splits(cfg.dataset, resolve_data_root(cfg.data_root or "../shared/data"))
target = build_model("mcnn", num_classes=5, in_channels=1, width=1.0)
target.load_state_dict(store.load("target", rec["artifacts"]["target"]["key"])[0])
target.eval()
quick_eval = build_model("scnn", num_classes=10, in_channels=1, width=1.0)
quick_eval.load_state_dict(store.load("evaluator", rec["artifacts"]["evaluator"]["key"])[0])
quick_eval.eval()
prior = store.load("prior-plgmi", rec["artifacts"]["prior"]["key"])[0]
atk = ATTACKS.get("plgmi")(cfg.attack, image_shape=splits.image_shape, num_classes=5, device=torch.device("cpu"))
inv = atk.invert(target, prior, list(range(5)), seed=0, progress=NULL_BARS)

full_cfg = dataclasses.replace(cfg.dataset, max_train_per_class=0, max_test_per_class=0)
full = load_splits(full_cfg, resolve_data_root(cfg.data_root or "../shared/data"))
t0 = time.perf_counter()
strong = train_classifier(lambda: build_model("scnn", num_classes=10, in_channels=1, width=1.0),
                          full.eval_train, full.eval_val,
                          dataclasses.replace(cfg.evaluator, epochs=3), seed=cfg.eval_seed).model
secs = time.perf_counter() - t0
rows = []
for name, ev, sp in (("quick evaluator (600/class, 8 epochs)", quick_eval, splits),
                     ("full-MNIST evaluator (54k images, 3 epochs)", strong, full)):
    m = score_inversion(inv, ev, sp, inception=False)
    rows.append((name, accuracy(ev, *full.eval_test), m["attack_acc"], m["per_class"], m["evaluator_predictions"]))
lines = ["# Evaluator check: PLG-MI on MNIST disjoint_classes (stronger cGAN, undefended target)", "",
         "Command: `MI_BENCH_CACHE=/tmp/mi-bench-bench-cache python results/bench/evaluator_check.py`",
         f"Reconstructions re-created from run {rec['run_id']} (grid {rec['grid']}); "
         f"full-MNIST evaluator trained in {secs:.0f} s on 2 threads.", "",
         "| evaluator | its MNIST test acc | attack acc | per class | predictions (rows = attacked 0-4) |",
         "|---|---|---|---|---|"]
for name, acc, a, pc, preds in rows:
    lines.append(f"| {name} | {100 * acc:.2f} | {100 * a:.0f} | {json.dumps({k: round(v, 2) for k, v in pc.items()})} | {preds} |")
Path("results/bench/evaluator_check.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
