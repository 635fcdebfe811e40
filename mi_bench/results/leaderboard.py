"""The leaderboard: records grouped into one entry per configuration without its seed.

Plain dicts and lists, no formatting (``mi_bench.results.render`` and ``.terminal`` print them):

* :func:`leaderboard` - every metric is the mean over seeds with a 95% interval: over two or more
  seeds the Student-t interval of the per-seed values (``mi_bench.stats.mean_interval``), for one
  run the run's own 95% Wilson interval (accuracies; ``<metric>_ci``). Also each judge's accuracy
  (``attack_acc_<judge>``), the consensus, diversity, and - where people labelled the runs
  (``mi-bench label``) - human-judged accuracy and each judge's false-positive rate against it
  (:func:`human_check`). Each entry names its runs (``run_ids``, by seed; ``group_hash``), the
  reasons of metrics that failed (``failed_reasons``) or are absent by design
  (``absent_reasons``; :func:`missing_metrics`), and ``variant``: how it differs from entries
  with the same defense label (``attack.restarts=3``), else empty.
  ``health``: ``{column: [reason, ...]}``, the cells computed with a target, evaluator or judge
  that failed its health check in any of the entry's runs (``mi_bench.health``; computed for
  records that predate the verdict); renderers mark those cells and say why.
* :func:`current` - the records minus those re-scored by another record (``rescored_from``,
  ``mi-bench rescore``): the leaderboard, the baseline margins and the defense effects use it,
  so a run and its re-scored version are never counted twice (the re-scored one wins).
* :func:`select` - entries (of any analysis here) of given datasets, attacks, defenses, presets;
  :func:`sections` groups entries under dataset / protocol / attack / preset headings.
"""

from __future__ import annotations

import json
import math
from typing import Any, Iterable

from mi_bench.health import group_marks
from mi_bench.record import attack_label
from mi_bench.stats import mean_interval, wilson_interval



METRIC_COLUMNS = ("target_acc", "eval_acc", "attack_acc", "attack_acc_top5",
                  "attack_acc_pixel_nn", "knn_dist", "lpips_nn", "fid_eval", "kid_eval",
                  "fid_inception", "kid_inception")


JUDGE_COLUMNS = ("consensus_acc", "diversity_ratio", "collapsed_classes")




def _finite(values: list[Any]) -> list[float]:
    return [float(v) for v in values
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


def _mean_se(values: list[Any]) -> tuple[float | None, float | None]:
    vals = _finite(values)
    if not vals:
        return None, None
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)
    return mean, math.sqrt(var / len(vals))


def _interval(recs: list[dict[str, Any]], m: str) -> list[float] | None:
    """95% interval of a metric of a group: Student-t over seeds (2+ values; clipped to [0, 1]
    for accuracies), else the single run's own interval (``<m>_ci``; filled in for records that
    did not store it by :func:`mi_bench.record.upgrade_record`) when it has one."""
    vals = _finite([r["metrics"].get(m) for r in recs])
    if len(vals) >= 2:
        _, lo, hi = mean_interval(vals)
        if m.endswith("_acc") or m.startswith("attack_acc"):  # a proportion: the interval stays in [0, 1]
            lo, hi = max(0.0, lo), min(1.0, hi)
        return [lo, hi]
    if len(vals) == 1:
        rec = next(r for r in recs if r["metrics"].get(m) is not None)
        ci = rec["metrics"].get(m + "_ci")
        return list(ci) if ci else None
    return None


def superseded(records: Iterable[dict[str, Any]]) -> set[str]:
    """Run ids re-scored by a record of ``records`` (its ``rescored_from``; ``mi-bench rescore``)."""
    return {r["rescored_from"] for r in records if r.get("rescored_from")}


def current(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``records`` in today's schema (:func:`mi_bench.record.upgrade_record`) without those
    re-scored by another record among them: a run and its re-scored version hold the same
    reconstructions, so the leaderboard, the margins and the defense effects count them once,
    with the re-scored numbers. (Two re-scorings of one run with different judge settings are two
    configurations, each shown as a variant.)"""
    from mi_bench.record import upgrade_record

    gone = superseded(records)
    return [upgrade_record(r) for r in records if r["run_id"] not in gone]


def judge_names(records: list[dict[str, Any]]) -> list[str]:
    """Judges seen in ``records``, eval first (older records have none besides the evaluator)."""
    names: list[str] = []
    for r in records:
        for j in r["metrics"].get("judges") or {}:
            if j not in names:
                names.append(j)
    return sorted(names, key=lambda j: (j != "eval", names.index(j)))


def acc_key(judge: str) -> str:
    return "attack_acc" if judge == "eval" else f"attack_acc_{judge}"


def leaderboard(records: list[dict[str, Any]], *, labels: bool = True) -> list[dict[str, Any]]:
    """One entry per (config without seed): every metric's mean over seeds (the latest run of
    each seed), its standard error (``_se``) and 95% interval (``_ci``); judges, consensus,
    diversity; with ``labels``, the human check of labelled runs (reads ``labels.json`` in the
    run folders). A record re-scored by another one is left out (:func:`current`)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in current(records):
        groups.setdefault(r["group_hash"], []).append(r)
    rows = []
    configs = []
    for runs in groups.values():
        # one value per seed: a repeated run of the same seed replaces the earlier one
        recs = list({r["config"]["seed"]: r for r in sorted(runs, key=lambda r: r["created_at"])}.values())
        first = recs[0]
        cfg = first["config"]
        judges = judge_names(recs)
        row: dict[str, Any] = {
            "dataset": cfg["dataset"]["name"], "protocol": cfg["dataset"]["protocol"],
            "defense": first["defense_label"], "attack": attack_label(cfg["attack"]),
            "preset": cfg["preset"], "seeds": sorted({r["config"]["seed"] for r in recs}),
            "runs": len(runs), "judges": judges,
            "n_reconstructions": sorted({r["metrics"].get("n_reconstructions") for r in recs
                                         if r["metrics"].get("n_reconstructions")}),
        }
        metrics = [*METRIC_COLUMNS, *[acc_key(j) for j in judges if j != "eval"], *JUDGE_COLUMNS]
        for m in metrics:
            row[m], row[m + "_se"] = _mean_se([r["metrics"].get(m) for r in recs])
            row[m + "_ci"] = _interval(recs, m)
        row["failed_reasons"], row["absent_reasons"] = {}, {}
        for r in recs:
            failed, absent = missing_metrics(r["metrics"])
            for k, why in failed.items():
                row["failed_reasons"].setdefault(k, why)
            for k, why in absent.items():
                row["absent_reasons"].setdefault(k, why)
        row["failed_metrics"] = sorted(row["failed_reasons"])
        row["absent_metrics"] = sorted(row["absent_reasons"])
        row["group_hash"] = first["group_hash"]
        row["run_ids"] = [r["run_id"] for r in sorted(recs, key=lambda r: r["config"]["seed"])]
        eps = first.get("defense_report", {}).get("epsilon")
        row["dp_epsilon"] = None if eps is None else eps
        row["human"] = human_check(runs) if labels else None
        # cells computed with a classifier whose health check failed, and why (mi_bench.health)
        row["health"] = group_marks(recs)
        rows.append(row)
        configs.append(cfg)
    _flag_sample_counts(rows)
    _mark_variants(rows, configs)
    rows.sort(key=lambda r: (r["dataset"], r["protocol"], r["attack"], r["defense"], r["preset"]))
    return rows


def missing_metrics(metrics: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """A run's metrics that are None: (failed, absent by design), each ``{metric: reason}``.
    (Older records' missing Inception weights, stored as an error, are absent after
    :func:`mi_bench.record.upgrade_record`.)"""
    return dict(metrics.get("metric_errors") or {}), dict(metrics.get("metric_absent") or {})


def select(items: list[dict[str, Any]], *, dataset: Iterable[str] = (), attack: Iterable[str] = (),
           defense: Iterable[str] = (), preset: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Leaderboard rows (or :func:`defense_effects` / :func:`baseline_margins` entries) whose
    dataset, attack and preset are among the given ones, and whose defense is one of ``defense``
    by label (``bido[lambda_x=0.1]``) or by name (``bido``: every strength). Empty = any."""
    want = {"dataset": set(dataset), "preset": set(preset)}
    defenses, attacks = set(defense), set(attack)
    out = []
    for it in items:
        if any(v and it.get(k) not in v for k, v in want.items()):
            continue
        if attacks and not {it.get("attack"), str(it.get("attack")).split("[")[0]} & attacks:
            continue
        if defenses and not {it.get("defense"), str(it.get("defense")).split("[")[0]} & defenses:
            continue
        out.append(it)
    return out


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = json.dumps(v, default=str)
    return out


def _mark_variants(rows: list[dict[str, Any]], configs: list[dict[str, Any]], most: int = 4) -> None:
    """Entries of one dataset/protocol/attack/preset with the same defense label but different
    configs (e.g. ``attack.restarts``) get ``variant``: the differing keys and their values
    (``attack.restarts=3``; ``unset`` = the key is not in that record's config), so tables can
    tell them apart; keys that do not change results (``NON_SEMANTIC``) only when nothing else
    differs (records hashed by an older mi-bench). Others get ``""``."""
    from mi_bench.config import NON_SEMANTIC

    same: dict[tuple, list[int]] = {}
    for i, r in enumerate(rows):
        r["variant"] = ""
        same.setdefault((r["dataset"], r["protocol"], r["attack"], r["preset"], r["defense"]), []).append(i)
    for idx in same.values():
        if len(idx) < 2:
            continue
        flats = [{k: v for k, v in _flat(configs[i]).items() if k != "seed"} for i in idx]
        keys = sorted(k for k in set().union(*flats) if len({f.get(k) for f in flats}) > 1)
        keys = [k for k in keys if k.split(".")[0] not in NON_SEMANTIC] or keys
        for i, f in zip(idx, flats):
            parts = [f"{k}={json.loads(f[k]) if k in f else 'unset'}" for k in keys[:most]]
            rows[i]["variant"] = ", ".join(parts) + (f", +{len(keys) - most} more" if len(keys) > most else "")


def _flag_sample_counts(rows: list[dict[str, Any]]) -> None:
    """FID is biased by the number of images; KID is not. Rows of one dataset and protocol whose
    reconstruction counts differ are flagged ``compare_by = "kid"`` (else ``"fid"``)."""
    counts: dict[tuple[str, str], set[int]] = {}
    for r in rows:
        counts.setdefault((r["dataset"], r["protocol"]), set()).update(r["n_reconstructions"])
    for r in rows:
        r["compare_by"] = "kid" if len(counts[(r["dataset"], r["protocol"])]) > 1 else "fid"


def human_check(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Pooled over the runs' human labels (``unsure`` left out): human-judged accuracy (share
    labelled ``same``, 95% Wilson interval) and, per judge, its false-positive rate (credited
    the attacked class where the person said ``different``) and agreement with the person.
    ``None`` when no run of ``records`` has labels."""
    from mi_bench.labelling import load_labels

    pairs: list[tuple[bool, dict[str, bool]]] = []
    unsure = 0
    runs = []
    for r in records:
        folder = r.get("run_dir")
        labels = load_labels(folder) if folder else {}
        if not labels and r.get("labels_copy"):  # exported beside the records (results/bench/labels)
            labels = load_labels("", file=r["labels_copy"])
        judged = r["metrics"].get("judges") or {}
        if not labels or not judged:
            continue
        runs.append(r["run_id"])
        classes = r["protocol"]["attacked_classes"]
        truth = [r["protocol"]["data"]["private_classes"][c] for c in classes]
        for index, entry in labels.items():
            if entry["label"] == "unsure":
                unsure += 1
                continue
            verdicts = {}
            for j, res in judged.items():
                n_s = len(res["predictions"][0])
                ci, si = divmod(index, n_s)
                verdicts[j] = res["predictions"][ci][si] == truth[ci]
            pairs.append((entry["label"] == "same", verdicts))
    if not runs:
        return None
    n = len(pairs)
    same = sum(h for h, _ in pairs)
    out: dict[str, Any] = {"runs": runs, "n_labelled": n, "n_unsure": unsure,
                           "acc": same / n if n else None,
                           "acc_ci": list(wilson_interval(same, n)) if n else None, "judges": {}}
    for j in sorted({j for _, v in pairs for j in v}):
        different = [v[j] for h, v in pairs if not h and j in v]
        agree = [v[j] == h for h, v in pairs if j in v]
        out["judges"][j] = {
            "fpr": sum(different) / len(different) if different else None,
            "n_different": len(different),
            "agreement": sum(agree) / len(agree) if agree else None,
        }
    return out


def sections(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str, str], list[dict[str, Any]]]:
    """Rows grouped by (dataset, protocol, attack, preset), in leaderboard order: the headings
    of the terminal leaderboard and of the HTML report."""
    out: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault((r["dataset"], r["protocol"], r["attack"], r["preset"]), []).append(r)
    return out


def section_title(key: tuple[str, str, str, str]) -> str:
    dataset, protocol, attack, preset = key
    return f"{attack} on {dataset} ({protocol}, preset {preset})"
