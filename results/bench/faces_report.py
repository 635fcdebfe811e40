"""Summarise the face benchmark database (results/bench/faces.sh) as Markdown: per run the
target and evaluation accuracy, attack accuracy per judge with its interval and the consensus,
top-5, KNN distance, FID/KID on evaluator features and Inception FID, per-stage wall time, and
the grid (reconstructions beside real images of the same people). The grids of the run folders
(ignored by git; 62 people, ~5.6 MB each) are cut to their first 12 people and copied to
results/bench/grids/faces/<attack>-<defense>.png.

    python results/bench/faces_report.py results/local/faces.sqlite > results/bench/faces.md

A run re-scored with `mi-bench rescore` (for example to redraw its grid) is shown with the
re-scored numbers and the original run's stage times and wall time.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

from mi_bench.results import ResultStore, current

GRIDS = Path("results/bench/grids/faces")
ROWS = 12  # people kept in the repository's copy of each grid
DPI, TITLE_IN, ROW_IN = 110, 0.5, 1.25  # mi_bench.viz.save_grid's layout


def grid_copy(r: dict) -> str:
    """The run's grid cut to its first ROWS people (palette PNG), beside this report."""
    src = Path(r.get("grid") or "")
    if not src.is_file():
        return "(grid not on disk)"
    GRIDS.mkdir(parents=True, exist_ok=True)
    name = f"{r['config']['attack']['name']}-{r['config']['defense']['name']}.png"
    with Image.open(src) as im:
        h = min(im.height, int(DPI * (TITLE_IN + (ROWS + 0.55) * ROW_IN)))  # + headers and labels
        im.convert("RGB").crop((0, 0, im.width, h)).quantize(colors=256).save(GRIDS / name, optimize=True)
    return f"grids/faces/{name}"


def pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def num(m: dict, k: str) -> str:
    if m.get(k) is not None:
        return f"{m[k]:.2f}"
    return "n/a" if k in m.get("metric_absent", {}) else "failed"


def main(db: str) -> None:
    recs = sorted(ResultStore(db).records(), key=lambda r: r["created_at"])
    print(f"# Face benchmark ({db})\n")
    if not recs:
        print("no records")
        return
    d = recs[0]["protocol"]["data"]
    print(f"Dataset {d['dataset']}: {d['private_rule']}. Public: {d['public_rule']}. Counts "
          f"{d['counts']}. Evaluation: {d['evaluation_domain']}. Preprocessing: "
          f"{d['preprocessing']['private']}. Chance = {100 / len(d['private_classes']):.1f}%.\n")
    by_id = {r["run_id"]: r for r in recs}
    order = ["gmi", "kedmi", "plgmi", "random", "pixel"]

    def root(r: dict) -> dict:
        """The run a record was re-scored from, followed back to the run that trained it (a run
        may be re-scored more than once)."""
        while r.get("rescored_from") in by_id:
            r = by_id[r["rescored_from"]]
        return r

    runs = sorted(current(recs), key=lambda r: (order.index(r["config"]["attack"]["name"])
                                                if r["config"]["attack"]["name"] in order else 99,
                                                r["config"]["defense"]["name"] != "none"))
    print("| attack | defense | preset | target acc | eval acc | attack acc (eval) [95% CI] | resnet | robust | "
          "consensus | top-5 | pixel-NN | KNN dist | FID (E) | KID (E) | FID (Inception) | n | stage seconds | wall | grid |")
    print("|" + "---|" * 19)
    for r in runs:
        m, c = r["metrics"], r["config"]
        orig = root(r)
        ci = m.get("attack_acc_ci") or [None, None]
        stages = " ".join(f"{k}={v:.0f}" for k, v in orig["stage_seconds"].items())
        jd = m.get("judges") or {}
        judge = lambda j: (f"{pct(jd[j]['acc'])} [{pct(jd[j]['acc_ci'][0])}, {pct(jd[j]['acc_ci'][1])}]"  # noqa: E731
                           if j in jd else "-")
        print(f"| {c['attack']['name']} | {r['defense_label']} | {c['preset']} | {pct(m['target_acc'])} | "
              f"{pct(m['eval_acc'])} | {pct(m['attack_acc'])} [{pct(ci[0])}, {pct(ci[1])}] | {judge('resnet')} | "
              f"{judge('robust')} | {pct(m.get('consensus_acc'))} | "
              f"{pct(m['attack_acc_top5'])} | {pct(m.get('attack_acc_pixel_nn'))} | {num(m, 'knn_dist')} | "
              f"{num(m, 'fid_eval')} | {num(m, 'kid_eval')} | {num(m, 'fid_inception')} | {m['n_reconstructions']} | "
              f"{stages} | {orig['wall_seconds'] / 60:.1f} min | ![grid]({grid_copy(r)}) |")
    print("\nTrained in each run (the rest came from the cache):")
    for r in runs:
        orig = root(r)
        again = f" (re-scored as {r['run_id']})" if orig is not r else ""
        print(f"- {orig['run_id']}{again} {r['config']['attack']['name']} vs {r['defense_label']}: "
              f"{', '.join(orig['trained']) or 'nothing'}; {orig['machine'].get('device')}, "
              f"{orig['machine'].get('threads')} thread(s)")

if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results/bench/faces.sqlite")
