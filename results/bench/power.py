"""Power analysis of the committed benchmarks (issue 24): how far attack accuracy moves from one
target seed to the next, and how many target seeds detect a 10- or a 20-point change.

For each records file ``results/bench/<name>.records.jsonl[.gz]``, each dataset / protocol /
attack / preset and each judge (``eval``: the evaluation model; ``resnet``, ``robust``; the
``consensus`` of all judges):

* **unpaired**: the seed-to-seed standard deviation of the attack accuracy, pooled over every
  configuration of that attack with two or more seeds (each around its own mean, as
  :func:`mi_bench.stats.pooled_sd`), with its 95% chi-square interval; the target seeds per arm
  that detect a 10- and a 20-point change with 80% power at the 5% level, two-sided
  (:func:`mi_bench.stats.seeds_needed`; in brackets at the upper end of the sd's interval), and
  the minimum detectable effect of the sweep's default 3 seeds a side;
* **paired**: the same from the standard deviation of the per-seed differences between each
  defended entry and its matched baseline on the same target seeds (the leaderboard's
  defense-effect comparisons, :func:`mi_bench.results.defense_effects`), pooled over the
  comparisons; the pairs needed, and the MDE of 3 pairs.

Records files whose configurations ran one seed each have no measurable spread; they are listed.

    python results/bench/power.py                 # writes results/bench/power.md
    python results/bench/power.py -o -            # prints it

Reads only the committed records (no datasets, no training); a few seconds.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from scipy import stats as st

from mi_bench.results import current, defense_effects, load_records
from mi_bench.results.leaderboard import judge_names
from mi_bench.stats import min_detectable_effect, pooled_sd, seeds_needed

BENCH = Path(__file__).resolve().parent
CHANGES = (0.10, 0.20)  # the changes to detect: 10 and 20 points
DEFAULT_SEEDS = 3  # mi-bench sweep without seed= / seeds=


def metric_of(judge: str) -> str:
    return {"eval": "attack_acc", "consensus": "consensus_acc"}.get(judge, f"attack_acc_{judge}")


def records_files() -> list[Path]:
    return sorted(BENCH.glob("*.records.jsonl")) + sorted(BENCH.glob("*.records.jsonl.gz"))


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _key(cfg: dict) -> tuple:
    return (cfg["dataset"]["name"], cfg["dataset"]["protocol"], cfg["attack"]["name"], cfg["preset"])


def unpaired_spread(recs: list[dict], metric: str) -> dict[tuple, list[list[float]]]:
    """``{(dataset, protocol, attack, preset): [per-seed values of one configuration, ...]}``,
    the latest run of each seed (as the leaderboard counts them)."""
    groups: dict[str, dict[int, dict]] = {}
    for r in sorted(recs, key=lambda r: r["created_at"]):
        groups.setdefault(r["group_hash"], {})[r["config"]["seed"]] = r
    out: dict[tuple, list[list[float]]] = {}
    for by_seed in groups.values():
        vals = [r["metrics"].get(metric) for r in by_seed.values()]
        vals = [float(v) for v in vals if _finite(v)]
        if vals:
            out.setdefault(_key(next(iter(by_seed.values()))["config"]), []).append(vals)
    return out


def paired_spread(recs: list[dict], metric: str) -> dict[tuple, list[list[float]]]:
    """``{key: [per-seed differences (defended - matched baseline) of one comparison, ...]}``."""
    out: dict[tuple, list[list[float]]] = {}
    for row in defense_effects(recs, metric=metric):
        m = row.get("matched")
        if m and m.get("design") == "paired":
            key = (row["dataset"], row["protocol"], row["attack"], row["preset"])
            out.setdefault(key, []).append(m["differences"])
    return out


def sd_interval(sd: float, df: int) -> tuple[float, float]:
    """95% chi-square interval of a standard deviation estimated with ``df`` degrees of freedom."""
    return sd * math.sqrt(df / st.chi2.ppf(0.975, df)), sd * math.sqrt(df / st.chi2.ppf(0.025, df))


def _n_cell(delta: float, sd: float, hi: float, paired: bool) -> str:
    n, n_hi = seeds_needed(delta, sd, paired=paired), seeds_needed(delta, hi, paired=paired)
    return f"{n} ({n_hi})"


def _spread_cells(sd: float, df: int, paired: bool) -> list[str]:
    """sd [95%], seeds for 10 and 20 points, MDE of 3 seeds (or pairs); a zero sd (every seed
    scored the same, e.g. at 100%) sets no seed count: the next configuration may not be at the
    ceiling."""
    if sd == 0:
        return ["0 (every seed equal)", "-", "-", "-"]
    lo, hi = sd_interval(sd, df)
    return [f"{_pp(sd)} [{_pp(lo)}, {_pp(hi)}]", *[_n_cell(d, sd, hi, paired) for d in CHANGES],
            _pp(min_detectable_effect(sd, DEFAULT_SEEDS, paired=paired))]


def _pp(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def analyse(path: Path) -> list[tuple[str, list[list[str]], list[dict]]]:
    """Per judge: ``(judge, table rows, facts for the summary)``."""
    recs = current(load_records(path))
    judges = [j for j in judge_names(recs) or ["eval"]]
    if any(_finite(r["metrics"].get("consensus_acc")) for r in recs):
        judges.append("consensus")
    out = []
    for judge in judges:
        metric = metric_of(judge)
        unp, par = unpaired_spread(recs, metric), paired_spread(recs, metric)
        rows, facts = [], []
        for key in sorted(set(unp) | set(par)):
            sd, df = pooled_sd(unp.get(key, []))
            psd, pdf = pooled_sd(par.get(key, []))
            if sd is None and psd is None:
                continue
            multi = [g for g in unp.get(key, []) if len(g) >= 2]
            cells = [*key]
            fact = {"key": key, "judge": judge, "sd": sd, "psd": psd}
            if sd is not None:
                cells += [f"{len(multi)} × {'/'.join(sorted({str(len(g)) for g in multi}))}",
                          *_spread_cells(sd, df, False)]
                if sd > 0:
                    fact["n10"] = seeds_needed(0.10, sd)
                    fact["mde3"] = min_detectable_effect(sd, DEFAULT_SEEDS)
            else:
                cells += ["-"] * 5
            if psd is not None:
                cells += [f"{len(par[key])}", *_spread_cells(psd, pdf, True)]
                if psd > 0:
                    fact["p10"] = seeds_needed(0.10, psd, paired=True)
                    fact["pmde3"] = min_detectable_effect(psd, DEFAULT_SEEDS, paired=True)
            else:
                cells += ["-"] * 5
            rows.append(cells)
            facts.append(fact)
        if rows:
            out.append((judge, rows, facts))
    return out


HEAD = ["dataset", "protocol", "attack", "preset",
        "configs × seeds", "sd (pp) [95%]", "seeds for 10 pp", "seeds for 20 pp", "MDE, 3 seeds (pp)",
        "paired comparisons", "sd of paired diff (pp) [95%]", "pairs for 10 pp", "pairs for 20 pp",
        "MDE, 3 pairs (pp)"]


JUDGE_TITLE = {"eval": "evaluation model (attack acc)", "resnet": "resnet judge", "robust": "robust judge",
               "consensus": "consensus of the judges"}


def render() -> str:
    tables, facts, single = [], [], []
    for path in records_files():
        parts = analyse(path)
        if not parts:
            single.append(path.name)
        for judge, rows, f in parts:
            name = path.name.split(".records")[0]
            tables += [f"### {name}: {JUDGE_TITLE.get(judge, judge)}", "",
                       "| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD),
                       *["| " + " | ".join(c) + " |" for c in rows], ""]
            facts += f
    lines = [
        "# Power: how many target seeds detect a change",
        "",
        ("Generated by `python results/bench/power.py` from the committed records "
         "(`results/bench/*.records.jsonl[.gz]`); issue 24. Attack accuracy in points (pp), per "
         "judge (`eval`: the evaluation model; `resnet`, `robust`: the other judges; `consensus`: "
         "every judge agrees)."),
        "",
        ("**Unpaired** (Welch's test across independent runs): *sd* is the seed-to-seed standard "
         "deviation of one configuration's attack accuracy, pooled over the configurations of that "
         "attack with 2+ seeds (*configs × seeds*), with its 95% chi-square interval. *Seeds for "
         "10 / 20 pp*: target seeds per arm (defended and baseline) for a two-sided t test at the "
         "5% level to detect a 10- or 20-point change with 80% power (`mi_bench.stats.seeds_needed`: "
         "exact, from the noncentral t; in brackets at the upper end of the sd's interval). *MDE, 3 "
         "seeds*: the smallest change that 3 seeds a side (the sweep's default) detect with 80% "
         "power (`mi_bench.stats.min_detectable_effect`)."),
        "",
        ("**Paired** (by target seed: the defended and the baseline target of one seed share the "
         "seed of target training, of the prior and of the inversion): the same from the standard "
         "deviation of the per-seed differences between each defended entry and its matched "
         "baseline (the leaderboard's defense-effect comparisons; *paired comparisons*: how many). "
         "Pairing helps when a seed moves both arms alike: then the paired sd is well below "
         "√2 × the unpaired one."),
        "",
    ]
    lines += summary(facts, single) + ["## Tables", ""] + tables
    return "\n".join(lines).rstrip("\n") + "\n"


def summary(facts: list[dict], single: list[str]) -> list[str]:
    out = ["## Reading it", ""]
    with_n = [f for f in facts if "n10" in f]
    if with_n:
        over = [f for f in with_n if f["n10"] > DEFAULT_SEEDS]
        out.append(f"- Unpaired, {len(over)} of {len(with_n)} attack/judge rows need more than the "
                   f"sweep's default {DEFAULT_SEEDS} seeds for a 10-point change (median "
                   f"{_count(_median([f['n10'] for f in with_n]))}, most {max(f['n10'] for f in with_n)}); "
                   f"3 seeds a side detect a change of {_pp(_median([f['mde3'] for f in with_n]))} "
                   f"points at the median row ({_pp(min(f['mde3'] for f in with_n))} to "
                   f"{_pp(max(f['mde3'] for f in with_n))}).")
    paired = [f for f in facts if "p10" in f and "n10" in f]
    if paired:
        helps = [f for f in paired if f["psd"] < math.sqrt(2) * f["sd"]]
        cross = [crossover(f["sd"], f["psd"]) for f in helps] or [None]
        out.append(f"- Paired, on the {len(paired)} rows with both designs: {len(helps)} have a "
                   f"paired-difference sd below √2 × the unpaired sd (a seed moves both arms alike, "
                   f"and that cancels in the difference). For a 10-point change the median row "
                   f"needs {_count(_median([f['p10'] for f in paired]))} pairs against "
                   f"{_count(_median([f['n10'] for f in paired]))} seeds a side unpaired (most "
                   f"{max(f['p10'] for f in paired)} against {max(f['n10'] for f in paired)}). With "
                   f"3 seeds the paired t has 2 degrees of freedom against up to 4 for Welch's, so "
                   f"there 3 pairs detect {_pp(_median([f['pmde3'] for f in paired]))} points at the "
                   f"median row against {_pp(_median([f['mde3'] for f in paired]))} unpaired. "
                   f"Where pairing helps, its MDE drops below the unpaired one from "
                   f"{_count(_median([c for c in cross if c]))} seeds on at the median row "
                   f"({min(c for c in cross if c)} to {max(c for c in cross if c)}).")
        out.append("- The pooled spreads count each configuration (or comparison) as independent; "
                   "comparisons that share a baseline are not, so the intervals of the paired sd "
                   "are somewhat too narrow. Rows from one configuration of 3 seeds (1 × 3) have "
                   "2 degrees of freedom: their bracketed counts show how little they pin down.")
    out.append("- A leaderboard verdict of *no effect* carries its MDE (the defense-effect table): "
               "it rules out changes of about that size, not smaller ones. Use `mi-bench sweep ... "
               "seeds=N` with N from the tables above for the change that matters; the sd of a new "
               "attack, dataset or preset is not known until two or more seeds of it ran.")
    if single:
        out.append(f"- No measurable spread (every configuration ran one seed): {', '.join(single)}. "
                   "In particular no LFW (faces) configuration has two seeds yet, so its seeds "
                   "needed are unknown; measure it with seeds=5 or more.")
    return out + [""]


def crossover(sd: float, psd: float, most: int = 200) -> int | None:
    """The fewest seeds from which pairing detects smaller changes than Welch's test would
    (paired MDE with ``psd`` below the unpaired MDE with ``sd``); None within ``most``."""
    for n in range(2, most + 1):
        if min_detectable_effect(psd, n, paired=True) < min_detectable_effect(sd, n):
            return n
    return None


def _median(vals: list):
    s = sorted(vals)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def _count(v: float) -> str:
    """A median count: 10, or 10.5 between two."""
    return f"{v:g}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", default=str(BENCH / "power.md"), help="file to write, '-' = stdout")
    args = ap.parse_args(argv)
    text = render()
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
