"""Summarise the face benchmark database (results/bench/faces.sh) as Markdown: per run the
target and evaluation accuracy, attack accuracy with its interval, top-5, KNN distance, FID on
evaluator features and Inception FID, per-stage wall time, and the grid (reconstructions beside
real images of the same people).

    python results/bench/faces_report.py results/bench/faces.sqlite > results/bench/faces.md
"""

from __future__ import annotations

import sys

from mi_bench.results import ResultStore


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
    print("| attack | defense | preset | target acc | eval acc | attack acc [95% CI] | top-5 | "
          "pixel-NN | KNN dist | FID (E) | FID (Inception) | n | stage seconds | wall | grid |")
    print("|" + "---|" * 15)
    for r in recs:
        m, c = r["metrics"], r["config"]
        ci = m.get("attack_acc_ci") or [None, None]
        stages = " ".join(f"{k}={v:.0f}" for k, v in r["stage_seconds"].items())
        print(f"| {c['attack']['name']} | {r['defense_label']} | {c['preset']} | {pct(m['target_acc'])} | "
              f"{pct(m['eval_acc'])} | {pct(m['attack_acc'])} [{pct(ci[0])}, {pct(ci[1])}] | "
              f"{pct(m['attack_acc_top5'])} | {pct(m.get('attack_acc_pixel_nn'))} | {num(m, 'knn_dist')} | "
              f"{num(m, 'fid_eval')} | {num(m, 'fid_inception')} | {m['n_reconstructions']} | {stages} | "
              f"{r['wall_seconds'] / 60:.1f} min | {r.get('grid') or ''} |")
    print("\nTrained in each run (the rest came from the cache):")
    for r in recs:
        print(f"- {r['run_id']} {r['config']['attack']['name']} vs {r['defense_label']}: "
              f"{', '.join(r['trained']) or 'nothing'}; {r['machine'].get('device')}, "
              f"{r['machine'].get('threads')} thread(s)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results/bench/faces.sqlite")
