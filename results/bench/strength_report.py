"""Report of results/bench/strength.sh (issue 23): how much each attack leaks from an undefended
target, per setting (dataset, protocol, preset): every judge's accuracy over the target seeds,
the human labels of the seed-0 runs, the margins over the calibration baselines, LOMMA's paired
change on GMI and KED-MI, the prior's KID, the wall time of every stage, and the issue's goals
checked against those numbers (met or missed, with the number reached).

Usage: python results/bench/strength_report.py results/bench/strength.records.jsonl.gz > results/bench/strength.md
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from mi_bench.record import attack_label
from mi_bench.results import baseline_margins, current, leaderboard
from mi_bench.results.leaderboard import acc_key as judge_key
from mi_bench.results.store import load_records
from mi_bench.stats import mean_interval, paired_interval

JUDGES = ("eval", "resnet", "robust", "consensus")
CALIBRATION = ("random", "pixel")
STAGES = ("target", "evaluator", "judge-resnet", "judge-robust", "aux", "prior", "prior_quality", "inversion", "scoring")
# aux: the per-target artifact (LOMMA: p_reg and the 3 distilled surrogates); prior_quality: KID + grid
# issue 23's goals: (setting, what, threshold)
LFW_ACC, LFW_MARGIN, LFW_HUMAN, MNIST_HUMAN, SPREAD = 0.60, 0.30, 0.50, 0.60, 0.10


def acc_key(judge: str) -> str:
    """The metric of a judge column; ``consensus`` is a column too."""
    return "consensus_acc" if judge == "consensus" else judge_key(judge)


def pct(v: float | None, lo: float | None = None, hi: float | None = None, sign: bool = False) -> str:
    if v is None:
        return "-"
    s = f"{100 * v:+.1f}" if sign else f"{100 * v:.1f}"
    if lo is not None and hi is not None:
        s += f" [{100 * lo:.0f}, {100 * hi:.0f}]" if not sign else f" [{100 * lo:+.1f}, {100 * hi:+.1f}]"
    return s


def setting(r: dict[str, Any]) -> tuple[str, str, str]:
    c = r["config"]
    return c["dataset"]["name"], c["dataset"]["protocol"], c["preset"]


def by_seed(recs: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """The latest record of each target seed."""
    return {r["config"]["seed"]: r for r in sorted(recs, key=lambda r: r["created_at"])}


def lomma_effects(recs: list[dict[str, Any]]) -> list[str]:
    """LOMMA on vs off for each attack with a LOMMA variant, paired by target seed, per judge."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in recs:
        groups[attack_label(r["config"]["attack"])].append(r)
    lines = []
    for label in sorted(groups):
        if not label.endswith("[lomma]"):
            continue
        base = label.removesuffix("[lomma]")
        on, off = by_seed(groups[label]), by_seed(groups.get(base, []))
        seeds = sorted(set(on) & set(off))
        if not seeds:
            continue
        cells = []
        for j in JUDGES:
            a = [on[s]["metrics"].get(acc_key(j)) for s in seeds]
            b = [off[s]["metrics"].get(acc_key(j)) for s in seeds]
            if any(v is None for v in a + b):
                cells.append("-")
                continue
            cells.append(pct(*paired_interval(a, b), sign=True))
        lines.append(f"| {base} | {','.join(map(str, seeds))} | " + " | ".join(cells) + " |")
    return lines


ROOT = Path(__file__).resolve().parents[2]
GRIDS = Path("results/bench/grids/strength")  # the seed-0 grids, copied in by strength.sh


def grid_name(key: tuple[str, str, str], attack: str) -> str:
    ds, _, preset = key
    return f"{ds}-{preset}-{attack.replace('[', '-').replace(']', '')}"


def copy_grids(path: str) -> None:
    """Copy each setting's seed-0 reconstruction grid and prior grid from the run folders into
    results/bench/grids/strength/ (run folders are not in the repository). A prior shared by
    several attacks (GMI's by gmi, its LOMMA variant and random) is copied once, under the first
    of their names."""
    import shutil

    records = [r for r in current(load_records(Path(path))) if r["defense_label"] == "none" and r["seed"] == 0]
    named = sorted((grid_name(setting(r), attack_label(r["config"]["attack"])), r) for r in records)
    (ROOT / GRIDS).mkdir(parents=True, exist_ok=True)
    priors = set()
    for name, r in named:
        run = Path(r.get("run_dir") or "")
        if (run / "grid.png").is_file():
            shutil.copyfile(run / "grid.png", ROOT / GRIDS / f"{name}.png")
        prior = (setting(r), (r["artifacts"].get("prior") or {}).get("key"))
        if (run / "prior_grid.png").is_file() and prior not in priors:
            priors.add(prior)
            shutil.copyfile(run / "prior_grid.png", ROOT / GRIDS / f"{name}-prior.png")


def kid_of(recs: list[dict[str, Any]]) -> str:
    vals = [(r.get("protocol", {}).get("prior_quality") or {}).get("kid") for r in recs]
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    m, lo, hi = mean_interval(vals)
    return f"{m:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None else "")


def timing_source(r: dict[str, Any], by_id: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The record whose stage times and wall time stand for ``r``: for a re-scored run (its
    ``rescored_from``, followed back), the run that trained and inverted; the re-scoring's own
    record holds only its scoring time."""
    seen = set()
    while r.get("rescored_from") in by_id and r["run_id"] not in seen:
        seen.add(r["run_id"])
        r = by_id[r["rescored_from"]]
    return r


def main(path: str) -> None:
    everything = load_records(Path(path))
    by_id = {r["run_id"]: r for r in everything}
    records = [r for r in current(everything) if r["defense_label"] == "none"]
    out = ["# Attack strength on undefended targets (issue 23)", "",
           "Generated by `bash results/bench/strength.sh` (records: results/bench/strength.records.jsonl.gz;",
           "this file: `python results/bench/strength_report.py results/bench/strength.records.jsonl.gz`).",
           "Accuracies in %: mean over target seeds with a Student-t 95% interval (one seed: the value alone).",
           "Judges: eval = the evaluation model (another architecture and seed than the target's, with a reject",
           "class); resnet = ResNet (digits/MNIST: crop/affine augmentation; LFW: face-sized, ResNet-20 without it);",
           "robust = PGD-L2 adversarially trained (digits/MNIST: Madry's network, radius 1.5; LFW: IR-18, radius 0.5;",
           "results/bench/face_judges_lfw-cpu.md);",
           "consensus = every judge names the attacked class. Human: share of the labelled seed-0",
           "reconstructions a person called the attacked class, of those labelled same or different (`mi-bench",
           "label`, blind to the judges; Wilson 95%); the goal counts `unsure` as not accepted.", ""]
    if not records:
        out.append("No records yet: run `bash results/bench/strength.sh`.")
        print("\n".join(out))
        return
    first = min(records, key=lambda r: r["created_at"])
    last = max(records, key=lambda r: r["created_at"])
    out += [(f"{len(records)} runs, {first['created_at'][:16]} to {last['created_at'][:16]} UTC; mi-bench "
            f"{first['versions']['mi_bench']}, torch {first['versions']['torch']}, {first['machine']['cpu_count']} "
            f"CPUs, {first['machine']['threads']} thread(s) per run."), ""]
    rows = leaderboard(records)
    margins = {(m["dataset"], m["protocol"], m["preset"], m["attack"]): m for m in baseline_margins(records)}
    per_setting: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        per_setting[setting(r)].append(r)
    for key in sorted(per_setting):
        ds, proto, preset = key
        recs = per_setting[key]
        srows = [row for row in rows if (row["dataset"], row["protocol"], row["preset"]) == key]
        out += [f"## {ds} ({proto}, preset {preset})", "",
                "| attack | seeds | target acc | " + " | ".join(JUDGES) + " | human (seed 0) | prior KID | grid (seed 0) |",
                "|---|---|---|" + "---|" * len(JUDGES) + "---|---|---|"]
        by_attack: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in recs:
            by_attack[attack_label(r["config"]["attack"])].append(r)
        grids = {}
        for a, rs in by_attack.items():
            copied = GRIDS / f"{grid_name(key, a)}.png"
            grids[a] = str(copied) if (ROOT / copied).is_file() else (by_seed(rs).get(0) or {}).get("grid") or "-"
        for row in srows:
            cells = [pct(row.get(acc_key(j)), *(row.get(acc_key(j) + "_ci") or (None, None))) for j in JUDGES]
            h = row.get("human")
            human = (f"{pct(h['acc'], *h['acc_ci'])} (n={h['n_labelled']}, {h.get('n_unsure', 0)} unsure)"
                     if h and h.get("acc") is not None else "-")
            out.append(f"| {row['attack']} | {','.join(map(str, row['seeds']))} | "
                       f"{pct(row.get('target_acc'))} | " + " | ".join(cells) +
                       f" | {human} | {kid_of(by_attack[row['attack']])} | {grids.get(row['attack'], '-')} |")
        mrows = []
        for row in srows:
            m = margins.get((ds, proto, preset, row["attack"]))
            if not m:
                continue
            for base in CALIBRATION:
                per = m["margins"].get(base, {})
                if not per:
                    continue
                cells = [pct(per[j]["margin"], *per[j]["ci"], sign=True) if j in per else "-" for j in JUDGES[:3]]
                mrows.append(f"| {row['attack']} | {base} | " + " | ".join(cells) + " |")
        out += ["", ("Margin over the calibration baselines (attack minus baseline on the same target, "
                "percentage points; paired over seeds, Newcombe for one seed):"), ""]
        out += (["| attack | baseline | " + " | ".join(JUDGES[:3]) + " |", "|---|---|" + "---|" * 3, *mrows]
                if mrows else [f"none: no calibration baseline ({', '.join(CALIBRATION)}) ran on this setting"])
        lom = lomma_effects(recs)
        if lom:
            out += ["", "LOMMA's change (LOMMA on minus off, same target seeds; paired Student-t 95%, points):", "",
                    "| attack | seeds | " + " | ".join(JUDGES) + " |", "|---|---|" + "---|" * len(JUDGES), *lom]
        out += ["", ("Wall time per stage, seconds (mean over the cells that trained it; a cached artifact costs "
                "nothing; a re-scored run counts with the times of the run it re-scores):"), "", "| attack | " + " | ".join(STAGES) + " | cell wall |", "|---|" + "---|" * (len(STAGES) + 1)]
        for row in srows:
            arecs = [timing_source(r, by_id) for r in by_attack[row["attack"]]]
            cells = []
            for st in STAGES:
                vals = [r["stage_seconds"][st] for r in arecs
                        if st in r.get("stage_seconds", {}) and (st in ("prior_quality", "inversion", "scoring")
                                                                 or st in r.get("trained", []))]
                cells.append(f"{sum(vals) / len(vals):.0f}" if vals else "-")
            walls = [r["wall_seconds"] for r in arecs]
            out.append(f"| {row['attack']} | " + " | ".join(cells) + f" | {sum(walls) / len(walls):.0f} |")
        out += ["", *goals(key, srows, margins), ""]
    print("\n".join(out))


def goals(key: tuple[str, str, str], srows: list[dict[str, Any]], margins: dict) -> list[str]:
    """The issue's goals for this setting, checked against the numbers above."""
    real = [r for r in srows if r["attack"].split("[")[0] not in CALIBRATION and r.get("attack_acc_robust") is not None]
    if not real:
        return []
    best = max(real, key=lambda r: r["attack_acc_robust"])
    ds = key[0]
    lines = [f"Goals (issue 23), strongest attack by the robust judge: **{best['attack']}**"]

    def check(ok: bool, text: str) -> str:
        return f"- {'met' if ok else 'MISSED'}: {text}"

    ci = best.get("attack_acc_robust_ci")
    if ci and None not in ci and len(best["seeds"]) >= 2:  # one seed: ci is its Wilson interval
        half = (ci[1] - ci[0]) / 2
        lines.append(check(half <= SPREAD, f"seed spread of the robust judge +-{100 * half:.1f} points "
                                           f"(95% interval over {len(best['seeds'])} seeds; goal +-10)"))
    else:
        lines.append(f"- not checked: the seed spread needs 2+ seeds ({len(best['seeds'])} ran)")
    h = best.get("human")
    if ds == "lfw":
        for j in ("eval", "robust"):
            v = best.get(acc_key(j))
            lines.append(check(v is not None and v >= LFW_ACC, f"{j} judge {pct(v)}% (goal >= 60%)"))
        m = margins.get((*key[:2], key[2], best["attack"]), {}).get("margins", {}).get("random", {})
        for j in JUDGES[:3]:
            v = m.get(j, {}).get("margin")
            if v is None:
                lines.append(f"- not checked: margin over random on {j} (no `random` run on these seeds)")
                continue
            lines.append(check(v >= LFW_MARGIN, f"margin over random on {j}: {pct(v, sign=True)} "
                                                "points (goal >= +30)"))
    goal_h = {"lfw": LFW_HUMAN, "mnist": MNIST_HUMAN}.get(ds)
    if goal_h is not None:
        if h and h.get("acc") is not None:
            # an `unsure` is not an acceptance: the goal is checked on every label given
            n_all = h["n_labelled"] + h.get("n_unsure", 0)
            strict = h["acc"] * h["n_labelled"] / n_all
            lines.append(check(strict >= goal_h, f"a person accepts {pct(strict)}% of {n_all} labelled "
                                                 f"reconstructions, unsure counted as not accepted "
                                                 f"({pct(h['acc'])}% of the {h['n_labelled']} labelled "
                                                 f"same or different; goal >= {100 * goal_h:.0f}%)"))
        else:
            lines.append(f"- not checked: no human labels of {best['attack']}'s seed-0 run")
    return lines


if __name__ == "__main__":
    args = sys.argv[1:]
    grids_only = args[:1] == ["--copy-grids"]
    if grids_only:
        args = args[1:]
    if len(args) != 1:
        raise SystemExit("usage: python results/bench/strength_report.py [--copy-grids] RECORDS.jsonl "
                         "> results/bench/strength.md")
    copy_grids(args[0]) if grids_only else main(args[0])
