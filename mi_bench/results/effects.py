"""Comparisons between leaderboard entries: defense effects and margins over calibration baselines.

* :func:`baseline_margins` - per real attack, its margin over the calibration baselines (the
  attacks whose class sets ``calibration``: ``random``, ``pixel``) under each judge, on the same
  targets (seeds matched), flagged when it does not beat ``pixel`` under the robust judge.
* :func:`defense_effects` - every defended entry against two undefended ones of the same dataset,
  protocol, attack, preset, evaluator and attack settings: the *published* baseline (``none``
  trained with its own recipe, ``recipe`` empty) and the *matched* baseline (``none`` whose target
  was trained exactly like the defended target: same ``target`` section, e.g. ``defense=none
  recipe=bido``): the change in attack accuracy against each, with a 95% interval over target
  seeds, and a :func:`verdict`. Where the two entries ran the same target seeds (two or more),
  the design is *paired by target seed*: the interval is the Student-t interval of the per-seed
  differences (:func:`paired_seeds`; the same seed trains both targets and the prior, and starts
  the inversion, so what the seed does to both cancels). Otherwise it is Welch's interval over the
  two sets of seeds (unpaired). Each comparison also carries its minimum detectable effect
  (``mde``: the smallest change its seeds detect with 80% power at the 5% level,
  :func:`mi_bench.stats.min_detectable_effect`, from the spread observed), so a "no effect"
  verdict says how large an effect it rules out.
"""

from __future__ import annotations

import json
import math
from typing import Any

from mi_bench.record import attack_label
from mi_bench.results.leaderboard import current, judge_names
from mi_bench.stats import (
    mean_interval, min_detectable_effect, newcombe_interval, paired_interval, pooled_sd, sample_sd,
    welch_interval,
)



def calibration_attacks() -> tuple[str, ...]:
    """The registered calibration baselines (attack classes with ``calibration > 0``: ``random``,
    ``pixel``), in the order of their columns in the margin tables."""
    from mi_bench.registry import ATTACKS

    ranked = sorted((cls.calibration, name) for name, cls in ATTACKS.items() if getattr(cls, "calibration", 0))
    return tuple(name for _, name in ranked)


def _counts(rec: dict[str, Any], judge: str) -> tuple[int, int] | None:
    res = (rec["metrics"].get("judges") or {}).get(judge)
    if res is None:
        if judge != "eval" or rec["metrics"].get("attack_acc") is None:
            return None
        n = rec["metrics"]["n_reconstructions"]
        return int(round(rec["metrics"]["attack_acc"] * n)), n
    n = sum(len(row) for row in res["predictions"])
    return int(round(res["acc"] * n)), n


def baseline_margins(records: list[dict[str, Any]], *, robust_judge: str = "robust") -> list[dict[str, Any]]:
    """Per leaderboard group of a real attack: its margin over each calibration baseline
    (``random``, ``pixel``) under each judge, on the same targets. A baseline run matches an
    attack run when both attacked the same target artifact (so the same dataset, protocol,
    defense, target config and seed) under the same preset; the latest baseline run per target
    is used. Margin (attack acc - baseline acc): over two or more matched seeds the mean of the
    paired differences with a Student-t 95% interval; for one, Newcombe's hybrid score interval.
    ``beats_pixel_robust`` is False (and ``flag`` says so) when the margin over ``pixel`` under
    the robust judge has a lower bound <= 0; None when that comparison is impossible. Records
    re-scored by another one are left out (:func:`current`)."""
    records = current(records)
    baselines = calibration_attacks()

    def key(r):
        cfg = r["config"]
        return (cfg["dataset"]["name"], cfg["dataset"]["protocol"], cfg["preset"],
                (r.get("artifacts", {}).get("target") or {}).get("key"))

    latest: dict[tuple, dict[str, dict[str, Any]]] = {}
    for r in sorted(records, key=lambda r: r["created_at"]):
        if r["config"]["attack"]["name"] in baselines:
            latest.setdefault(key(r), {})[r["config"]["attack"]["name"]] = r
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r["config"]["attack"]["name"] not in baselines:
            groups.setdefault(r["group_hash"], []).append(r)
    out = []
    for recs in groups.values():
        first = recs[0]
        cfg = first["config"]
        judges = judge_names(recs) or ["eval"]
        entry: dict[str, Any] = {
            "dataset": cfg["dataset"]["name"], "protocol": cfg["dataset"]["protocol"],
            "defense": first["defense_label"], "attack": attack_label(cfg["attack"]), "preset": cfg["preset"],
            "seeds": sorted({r["config"]["seed"] for r in recs}), "judges": judges, "margins": {},
        }
        for base in baselines:
            per_judge = {}
            for j in judges:
                pairs = []
                for r in recs:
                    b = latest.get(key(r), {}).get(base)
                    a_c, b_c = _counts(r, j), (_counts(b, j) if b else None)
                    if a_c and b_c:
                        pairs.append((a_c, b_c, r["config"]["seed"]))
                if not pairs:
                    continue
                if len(pairs) == 1:
                    (k1, n1), (k2, n2), _ = pairs[0]
                    d, lo, hi = newcombe_interval(k1, n1, k2, n2)
                    how = "Newcombe hybrid score (one seed)"
                else:
                    d, lo, hi = mean_interval([k1 / n1 - k2 / n2 for (k1, n1), (k2, n2), _ in pairs])
                    how = "Student-t over paired seeds"
                per_judge[j] = {"margin": d, "ci": [lo, hi], "seeds": sorted(p[2] for p in pairs),
                                "interval": how}
            if per_judge:
                entry["margins"][base] = per_judge
        robust = entry["margins"].get("pixel", {}).get(robust_judge)
        entry["beats_pixel_robust"] = None if robust is None else bool(robust["ci"][0] > 0)
        entry["flag"] = ("does not beat pixel under the robust judge"
                         if entry["beats_pixel_robust"] is False else "")
        out.append(entry)
    out.sort(key=lambda e: (e["dataset"], e["protocol"], e["attack"], e["defense"], e["preset"]))
    return out


BASELINE_DEFENSE = "none"


# config fields a baseline may differ in from the defended entry (besides the non-semantic ones)
_EFFECT_FREE = ("seed", "defense", "recipe", "target", "threads", "device", "data_root",
                "cache_dir", "results_db", "results_dir")


def _context(cfg: dict[str, Any]) -> str:
    """What must be equal between a defended entry and its baselines: everything but the
    defense, the target's training recipe, the seed and where/how fast it ran."""
    from mi_bench.config import semantic_config

    blob = json.dumps(semantic_config(cfg, drop=_EFFECT_FREE), sort_keys=True, default=str)
    return blob


def _values(recs: list[dict[str, Any]], metric: str) -> list[float]:
    out = []
    for r in recs:
        v = r["metrics"].get(metric)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out.append(float(v))
    return out


def _by_seed(recs: list[dict[str, Any]], metric: str) -> dict[int, float]:
    """``{target seed: metric}``, the latest run of each seed (as in the leaderboard)."""
    out: dict[int, float] = {}
    for r in sorted(recs, key=lambda r: r.get("created_at") or ""):
        v = _values([r], metric)
        if v:
            out[r["config"]["seed"]] = v[0]
    return out


def paired_seeds(defended: list[dict[str, Any]], base: list[dict[str, Any]],
                 metric: str = "attack_acc") -> list[tuple[int, float, float]]:
    """``[(seed, defended value, baseline value)]`` for each target seed both entries ran (the
    latest run of each seed), by seed. The entries already share everything but the defense,
    the recipe and the target section (:func:`defense_effects` matches them), so records of one
    seed share the prior where it does not depend on the target and the inversion's seed."""
    a, b = _by_seed(defended, metric), _by_seed(base, metric)
    return [(s, a[s], b[s]) for s in sorted(set(a) & set(b))]


PAIRED_MIN = 2  # pairs needed for a paired interval; with fewer, Welch's over all seeds


def design_label(c: dict[str, Any] | None) -> str:
    """``paired by target seed, 3 pairs`` / ``Welch, unpaired`` / ``-`` for a comparison."""
    if not c or c.get("design") is None or not c.get("delta_ci"):
        return "-"
    if c["design"] == "paired":
        return f"paired by target seed, {len(c['pairs'])} pairs"
    return "Welch, unpaired"


def _compare(defended: list[dict[str, Any]], base: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """Defended minus baseline: paired by target seed when they share two or more seeds, else
    Welch; with both intervals (``paired_ci``, ``welch_ci``), the pairs' seeds (and, paired, the
    per-seed ``differences``) and the MDE of the design used (None under two seeds a side)."""
    a, b = _values(defended, metric), _values(base, metric)
    if not a or not b:
        return {"delta": None, "delta_ci": None, "design": None, "pairs": [], "mde": None}
    wdiff, wlo, whi = welch_interval(a, b)
    pairs = paired_seeds(defended, base, metric)
    out: dict[str, Any] = {"welch_ci": None if wlo is None else [wlo, whi], "pairs": [p[0] for p in pairs],
                           "paired_ci": None}
    diffs = [x - y for _, x, y in pairs]
    sd = sample_sd(diffs) if len(pairs) >= PAIRED_MIN else None
    if sd:
        diff, lo, hi = (float(v) for v in paired_interval([p[1] for p in pairs], [p[2] for p in pairs]))
        out["paired_ci"] = [lo, hi]
        mde = min_detectable_effect(sd, len(pairs), paired=True)
        out.update(delta=diff, delta_ci=[lo, hi], design="paired", differences=diffs, sd=sd, mde=mde)
    else:
        if len(pairs) >= PAIRED_MIN:  # every pair differs by the same amount: a zero-width
            # interval would read as certainty from a handful of seeds; fall back to Welch
            out["paired_degenerate"] = f"all {len(pairs)} paired differences equal ({diffs[0]:+.4g}): no spread"
        sd, _ = pooled_sd([a, b])
        if sd == 0 and len(a) >= 2 and len(b) >= 2:  # no spread on either side: no interval
            out.update(delta=wdiff, delta_ci=None, design="welch", sd=sd, mde=None,
                       no_interval="no seed-to-seed spread to estimate an interval from")
            return out
        mde = None if not sd else min_detectable_effect(sd, len(a), n2=len(b))
        out.update(delta=wdiff, delta_ci=out["welch_ci"], design="welch", sd=sd, mde=mde)
    return out


def verdict(pub: dict[str, Any] | None, mat: dict[str, Any] | None) -> str:
    """``holds`` / ``vanishes vs matched`` / ``only vs matched`` / ``raises vs matched`` /
    ``no effect`` / ``n/a: ...``. An effect is a drop in attack accuracy whose 95% interval lies
    below 0; ``raises vs matched``: the interval against the matched baseline lies above 0 (the
    defended target leaks more than the same recipe without the defense)."""
    if pub is None or mat is None:
        return "n/a: " + ("no published baseline" if pub is None else "no matched baseline")
    if pub["delta_ci"] is None or mat["delta_ci"] is None:
        why = pub.get("no_interval") or mat.get("no_interval")
        return f"n/a: {why}" if why else "n/a: needs >= 2 target seeds on each side"
    drop_pub, drop_mat = pub["delta_ci"][1] < 0, mat["delta_ci"][1] < 0
    if drop_pub and drop_mat:
        return "holds"
    if drop_pub:
        return "vanishes vs matched"
    if drop_mat:
        return "only vs matched"
    return "raises vs matched" if mat["delta_ci"][0] > 0 else "no effect"


def defense_effects(records: list[dict[str, Any]], metric: str = "attack_acc") -> list[dict[str, Any]]:
    """For each defended leaderboard entry: ``metric`` (mean and Student-t 95% interval over
    target seeds) and its change against the published and the matched undefended baseline
    (negative = the defense lowers the metric): over the target seeds both ran, the mean per-seed
    difference with its Student-t 95% interval (``design == "paired"``, ``pairs``: the seeds);
    with fewer than two shared seeds the difference of means with Welch's 95% interval
    (``design == "welch"``). Each comparison keeps both intervals (``paired_ci``, ``welch_ci``),
    the spread used (``sd``: of the per-seed differences, or pooled over the two arms) and its
    minimum detectable effect at 80% power (``mde``).

    Baselines are looked up among entries with ``defense.name == "none"`` and the same config
    apart from the defense, the recipe, the ``target`` section and the seed: the published one
    has ``recipe == ""`` (with several, the one with the most seeds), the matched one has the
    defended entry's exact ``target`` section (the same optimiser, lr, schedule, epochs, batch,
    sampler and drop-last). When the defense trains with the baseline's recipe the two are the
    same entry (``matched_is_published``). ``verdict``: see :func:`verdict`. Records re-scored
    by another one are left out (:func:`current`).
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in current(records):
        groups.setdefault(r["group_hash"], []).append(r)
    entries = []
    for recs in groups.values():
        cfg = recs[0]["config"]
        entries.append({"recs": recs, "cfg": cfg, "context": _context(cfg),
                        "label": recs[0]["defense_label"],
                        "seeds": sorted({r["config"]["seed"] for r in recs}),
                        "values": _values(recs, metric)})
    baselines = [e for e in entries if e["cfg"]["defense"]["name"] == BASELINE_DEFENSE]
    out = []
    for e in entries:
        cfg = e["cfg"]
        if cfg["defense"]["name"] == BASELINE_DEFENSE:
            continue
        same = [b for b in baselines if b["context"] == e["context"]]
        published = max((b for b in same if not b["cfg"].get("recipe")),
                        key=lambda b: len(b["values"]), default=None)
        matched = [b for b in same if b["cfg"]["target"] == cfg["target"]]
        matched_b = published if published in matched else max(
            matched, key=lambda b: len(b["values"]), default=None)
        mean, lo, hi = mean_interval(e["values"]) if e["values"] else (None, None, None)
        row: dict[str, Any] = {
            "dataset": cfg["dataset"]["name"], "protocol": cfg["dataset"]["protocol"],
            "attack": attack_label(cfg["attack"]), "preset": cfg["preset"], "defense": e["label"],
            "metric": metric, "seeds": e["seeds"], "value": mean,
            "value_ci": None if lo is None else [lo, hi],
        }
        comps = {}
        for kind, base in (("published", published), ("matched", matched_b)):
            if base is None:
                row[kind] = None
                continue
            bmean, blo, bhi = mean_interval(base["values"]) if base["values"] else (None, None, None)
            comps[kind] = {"defense": base["label"], "seeds": base["seeds"], "value": bmean,
                           "value_ci": None if blo is None else [blo, bhi],
                           **_compare(e["recs"], base["recs"], metric)}
            row[kind] = comps[kind]
        row["matched_is_published"] = matched_b is not None and matched_b is published
        row["verdict"] = verdict(comps.get("published"), comps.get("matched"))
        out.append(row)
    out.sort(key=lambda r: (r["dataset"], r["protocol"], r["attack"], r["preset"], r["defense"]))
    return out
