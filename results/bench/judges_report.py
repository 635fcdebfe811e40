"""Report of results/bench/judges.sh (issue 12): per-judge attack accuracy with 95% intervals,
consensus, diversity, margins over the calibration baselines, whether a defense separates from
no defense beyond the intervals, grids where the judges disagree, and - once people labelled
runs with `mi-bench label` - each judge's agreement with them.

Usage: python results/bench/judges_report.py DB ['none;bido[lambda_x=0.05,lambda_y=0.5]'] > results/bench/judges.md
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from mi_bench.results import ResultStore, baseline_margins, current, human_check, leaderboard, render
from mi_bench.stats import newcombe_interval

GRIDS = Path("results/bench/grids/judges")
LABELS = Path("results/bench/labels")  # copies of the human labels (<run folder>/labels.json)
LABEL_ATTACKS = ("gmi", "kedmi", "plgmi", "random", "pixel")


def pct(v, ci=None):
    if v is None:
        return "-"
    return f"{100 * v:.0f}" + (f" [{100 * ci[0]:.0f}, {100 * ci[1]:.0f}]" if ci else "")


def key(r):
    c = r["config"]
    return c["dataset"]["name"], c["dataset"]["protocol"], r["defense_label"], c["attack"]["name"]


def main(db: str, defenses: str = "") -> None:
    """``defenses``: the defense labels to keep, separated by ';' (the database may hold more)."""
    keep = set(filter(None, defenses.split(";")))
    records = sorted((r for r in ResultStore(db).records() if not keep or r["defense_label"] in keep),
                     key=lambda r: r["created_at"])
    # one run per dataset/defense/attack: target seed 0, its latest (re-)scoring
    latest = {key(r): r for r in current(records) if r["config"]["seed"] == 0}
    judges = ["eval", "resnet", "robust"]
    out = [f"# Judges, baselines and the human check (issue 12)\n",
           f"Command: `bash results/bench/judges.sh` -> `{db}`; this report: "
           f"`python results/bench/judges_report.py {db}`.\n",
           "## Per run (95% Wilson intervals over the reconstructions)\n",
           "| dataset | protocol | defense | attack | n | " + " | ".join(f"{j} %" for j in judges)
           + " | consensus % | rejected (e/r/a) % | collapsed | run |",
           "|" + "---|" * (9 + len(judges) - 1)]
    disagree = []
    for k, r in sorted(latest.items()):
        m = r["metrics"]
        jd = m.get("judges") or {}
        accs = [jd[j] for j in judges if j in jd]
        out.append(f"| {' | '.join(k)} | {m['n_reconstructions']} | "
                   + " | ".join(pct(jd[j]["acc"], jd[j]["acc_ci"]) if j in jd else "-" for j in judges)
                   + f" | {pct(m.get('consensus_acc'), m.get('consensus_acc_ci'))} | "
                   + "/".join(f"{100 * jd[j]['rejected']:.0f}" for j in judges if j in jd)
                   + f" | {m.get('collapsed_classes', '-')} | {r['run_id']} |")
        # judges disagree beyond noise: two judges' intervals do not overlap
        if accs and max(a["acc_ci"][0] for a in accs) > min(a["acc_ci"][1] for a in accs):
            disagree.append(r)
    out += ["", "## Where the judges disagree (non-overlapping intervals)\n"]
    GRIDS.mkdir(parents=True, exist_ok=True)
    for r in disagree:
        name = "-".join(key(r)).replace("[", "_").replace("]", "").replace(",", "_").replace("=", "")
        if r.get("grid") and Path(r["grid"]).is_file():
            shutil.copy(r["grid"], GRIDS / f"{name}.png")
            out.append(f"- {' / '.join(key(r))}: ![]({(GRIDS / f'{name}.png').relative_to('results/bench')})")
        else:
            out.append(f"- {' / '.join(key(r))}: grid missing ({r.get('grid')})")
    if not disagree:
        out.append("none")

    out += ["", "## Does a defense separate from none beyond the intervals?\n",
            "Difference bido-hsic - none per judge, Newcombe 95% interval; 'yes' when it excludes 0.\n",
            "| dataset | protocol | attack | judge | none % | bido-hsic % | difference | separates |",
            "|---|---|---|---|---|---|---|---|"]
    for (ds, proto, dfn, atk), r in sorted(latest.items()):
        if not dfn.startswith("none"):
            continue
        other = next((o for (d2, p2, f2, a2), o in latest.items()
                      if (d2, p2, a2) == (ds, proto, atk) and f2.startswith("bido")), None)
        if other is None:
            continue
        for j in judges:
            a, b = (r["metrics"].get("judges") or {}).get(j), (other["metrics"].get("judges") or {}).get(j)
            if not a or not b:
                continue
            na, nb = r["metrics"]["n_reconstructions"], other["metrics"]["n_reconstructions"]
            d, lo, hi = newcombe_interval(round(b["acc"] * nb), nb, round(a["acc"] * na), na)
            out.append(f"| {ds} | {proto} | {atk} | {j} | {pct(a['acc'])} | {pct(b['acc'])} | "
                       f"{100 * d:+.0f} [{100 * lo:+.0f}, {100 * hi:+.0f}] | {'yes' if lo > 0 or hi < 0 else 'no'} |")

    out += ["", "## PLG-MI under the robust judge\n"]
    for k, r in sorted(latest.items()):
        if k[3] == "plgmi":
            jd = r["metrics"].get("judges") or {}
            out.append(f"- {' / '.join(k)}: eval {pct(r['metrics']['attack_acc'], r['metrics']['attack_acc_ci'])}, "
                       f"robust {pct(jd.get('robust', {}).get('acc'), jd.get('robust', {}).get('acc_ci'))}, "
                       f"consensus {pct(r['metrics'].get('consensus_acc'), r['metrics'].get('consensus_acc_ci'))}")

    out += ["", "## Human check\n"]
    rows = []

    def human_row(name: str, runs: list[dict]) -> None:
        h = human_check(runs)
        if h and h["n_labelled"]:
            best = max(h["judges"], key=lambda j: h["judges"][j]["agreement"] or 0)
            rows.append(f"| {name} | {h['n_labelled']} ({h['n_unsure']} unsure) | "
                        f"{pct(h['acc'], h['acc_ci'])} | "
                        + " | ".join(f"{pct(h['judges'][j]['agreement'])} / {pct(h['judges'][j]['fpr'])}"
                                     if j in h["judges"] else "-" for j in judges) + f" | {best} |")

    labelled = [r for r in current(records) if human_check([r])]
    # the labels themselves are data: keep a copy beside the report (run folders are not in git)
    LABELS.mkdir(parents=True, exist_ok=True)
    for r in labelled:
        shutil.copyfile(Path(r["run_dir"]) / "labels.json", LABELS / f"{r['run_id']}.labels.json")
    for r in sorted(labelled, key=key):
        human_row(f"{' / '.join(key(r))} (seed {r['config']['seed']}, {r['run_id']})", [r])
    if len(labelled) > 1:
        human_row("**all labelled runs, pooled**", labelled)
    if rows:
        out += ["Agreement with the person / false-positive rate against the person, per judge (%); `unsure` labels are left out of both. The labels: `results/bench/labels/<run_id>.labels.json`.\n",
                "| run | labelled | human acc % | " + " | ".join(judges) + " | closest judge |",
                "|" + "---|" * (4 + len(judges))] + rows
    else:
        out.append("No labels yet. Label 50 reconstructions of one run per attack (MNIST, no defense):\n")
        for atk in LABEL_ATTACKS:
            r = next((r for k, r in latest.items() if k[0] == "mnist" and k[2] == "none" and k[3] == atk), None)
            if r:
                data = os.environ.get("MI_BENCH_DATA", "../shared/data")
                out.append(f"    mi-bench label {r['run_id']} --db {db} --data-root {data} --no-browser --port 8765   # {atk}")
        out.append("\nthen per run: `GET http://127.0.0.1:8765/api/sheets.png?start=0&count=10` (and start=10, "
                   "20, ...) to see items 0-49 with their references, and "
                   "`POST /api/label {\"position\": p, \"label\": \"same\"|\"different\"|\"unsure\"}` for each; "
                   "re-run this report.")

    out += ["", "## Leaderboard\n", render(leaderboard(records), "markdown", baseline_margins(records))]
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results/fidelity/fidelity.sqlite",
         sys.argv[2] if len(sys.argv) > 2 else "")
