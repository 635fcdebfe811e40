"""Result records in SQLite and the leaderboard built from them.

Each run appends one row: indexed columns for querying plus the whole record as JSON (full
resolved config, protocol, artifact hashes, metrics, per-stage wall times, versions, machine).

Data functions (plain dicts/lists, no formatting; renderers build on them):

* :func:`leaderboard` - one entry per configuration without its seed. Every metric is the mean
  over seeds with a 95% interval: over two or more seeds the Student-t interval of the per-seed
  values (``mi_bench.stats.mean_interval``), for one run the run's own 95% Wilson interval
  (accuracies; ``<metric>_ci``). Also each judge's accuracy (``attack_acc_<judge>``), the
  consensus, diversity, and - where people labelled the runs (``mi-bench label``) -
  human-judged accuracy and each judge's false-positive rate against it (:func:`human_check`).
* :func:`baseline_margins` - per real attack, its margin over the ``random`` and ``pixel``
  calibration baselines under each judge, on the same targets (seeds matched), flagged when it
  does not beat ``pixel`` under the robust judge.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sqlite3
from pathlib import Path
from typing import Any

from mi_bench.stats import mean_interval, newcombe_interval, wilson_interval

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    group_hash TEXT NOT NULL,
    dataset TEXT, protocol TEXT, defense TEXT, attack TEXT, preset TEXT, seed INTEGER,
    target_acc REAL, attack_acc REAL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_config ON runs(config_hash);
"""

METRIC_COLUMNS = ("target_acc", "eval_acc", "attack_acc", "attack_acc_top5",
                  "attack_acc_pixel_nn", "knn_dist", "fid_eval", "fid_inception")
JUDGE_COLUMNS = ("consensus_acc", "diversity_ratio", "collapsed_classes")
BASELINES = ("random", "pixel")
# shares of a run's n_reconstructions: one run's interval is their Wilson interval
SHARES_OF_RECONSTRUCTIONS = ("attack_acc", "attack_acc_top5", "attack_acc_pixel_nn", "consensus_acc")


def json_safe(obj: Any) -> Any:
    """Records are strict JSON: non-finite floats (e.g. DP-SGD's epsilon = inf without noise)
    become the strings "inf", "-inf", "nan"."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


class ResultStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path)
        con.executescript(SCHEMA)
        return con

    def append(self, record: dict[str, Any]) -> None:
        m = record["metrics"]
        cfg = record["config"]
        with self._connect() as con:
            con.execute(
                "INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (record["run_id"], record["created_at"], record["config_hash"], record["group_hash"],
                 cfg["dataset"]["name"], cfg["dataset"]["protocol"], record["defense_label"],
                 cfg["attack"]["name"], cfg["preset"], cfg["seed"], m.get("target_acc"),
                 m.get("attack_acc"), json.dumps(record, default=str)),
            )
        con.close()

    def records(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        con = self._connect()
        try:
            rows = con.execute("SELECT record FROM runs ORDER BY created_at").fetchall()
        finally:
            con.close()
        return [json.loads(r[0]) for r in rows]

    def has_config(self, config_hash: str) -> bool:
        if not self.path.is_file():
            return False
        con = self._connect()
        try:
            return con.execute("SELECT 1 FROM runs WHERE config_hash=? LIMIT 1", (config_hash,)).fetchone() is not None
        finally:
            con.close()


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
    for accuracies), else the single run's own interval (``<m>_ci``, or the Wilson interval of
    a share of its reconstructions) when it has one."""
    vals = _finite([r["metrics"].get(m) for r in recs])
    if len(vals) >= 2:
        _, lo, hi = mean_interval(vals)
        if m.endswith("_acc") or m.startswith("attack_acc"):  # a proportion: the interval stays in [0, 1]
            lo, hi = max(0.0, lo), min(1.0, hi)
        return [lo, hi]
    if len(vals) == 1:
        rec = next(r for r in recs if r["metrics"].get(m) is not None)
        ci = rec["metrics"].get(m + "_ci")
        n = rec["metrics"].get("n_reconstructions")
        if not ci and m in SHARES_OF_RECONSTRUCTIONS and n:  # records without a stored interval
            ci = wilson_interval(int(round(vals[0] * n)), n)
        return list(ci) if ci else None
    return None


def judge_names(records: list[dict[str, Any]]) -> list[str]:
    """Judges seen in ``records``, eval first (older records have none besides the evaluator)."""
    names: list[str] = []
    for r in records:
        for j in r["metrics"].get("judges") or {}:
            if j not in names:
                names.append(j)
    return sorted(names, key=lambda j: (j != "eval", names.index(j)))


def _acc_key(judge: str) -> str:
    return "attack_acc" if judge == "eval" else f"attack_acc_{judge}"


def leaderboard(records: list[dict[str, Any]], *, labels: bool = True) -> list[dict[str, Any]]:
    """One entry per (config without seed): every metric's mean over seeds (the latest run of
    each seed), its standard error (``_se``) and 95% interval (``_ci``); judges, consensus,
    diversity; with ``labels``, the human check of labelled runs (reads ``labels.json`` in the
    run folders)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(r["group_hash"], []).append(r)
    rows = []
    for runs in groups.values():
        # one value per seed: a repeated run of the same seed replaces the earlier one
        recs = list({r["config"]["seed"]: r for r in sorted(runs, key=lambda r: r["created_at"])}.values())
        first = recs[0]
        cfg = first["config"]
        judges = judge_names(recs)
        row: dict[str, Any] = {
            "dataset": cfg["dataset"]["name"], "protocol": cfg["dataset"]["protocol"],
            "defense": first["defense_label"], "attack": cfg["attack"]["name"],
            "preset": cfg["preset"], "seeds": sorted({r["config"]["seed"] for r in recs}),
            "runs": len(runs), "judges": judges,
            "n_reconstructions": sorted({r["metrics"].get("n_reconstructions") for r in recs
                                         if r["metrics"].get("n_reconstructions")}),
        }
        metrics = [*METRIC_COLUMNS, *[_acc_key(j) for j in judges if j != "eval"], *JUDGE_COLUMNS]
        for m in metrics:
            row[m], row[m + "_se"] = _mean_se([r["metrics"].get(m) for r in recs])
            row[m + "_ci"] = _interval(recs, m)
        row["failed_metrics"] = sorted({k for r in recs for k in r["metrics"].get("metric_errors", {})})
        row["absent_metrics"] = sorted({k for r in recs for k in r["metrics"].get("metric_absent", {})})
        eps = first.get("defense_report", {}).get("epsilon")
        row["dp_epsilon"] = None if eps is None else eps
        row["human"] = human_check(runs) if labels else None
        rows.append(row)
    rows.sort(key=lambda r: (r["dataset"], r["protocol"], r["attack"], r["defense"], r["preset"]))
    return rows


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
    the robust judge has a lower bound <= 0; None when that comparison is impossible."""
    def key(r):
        cfg = r["config"]
        return (cfg["dataset"]["name"], cfg["dataset"]["protocol"], cfg["preset"],
                (r.get("artifacts", {}).get("target") or {}).get("key"))

    latest: dict[tuple, dict[str, dict[str, Any]]] = {}
    for r in sorted(records, key=lambda r: r["created_at"]):
        if r["config"]["attack"]["name"] in BASELINES:
            latest.setdefault(key(r), {})[r["config"]["attack"]["name"]] = r
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r["config"]["attack"]["name"] not in BASELINES:
            groups.setdefault(r["group_hash"], []).append(r)
    out = []
    for recs in groups.values():
        first = recs[0]
        cfg = first["config"]
        judges = judge_names(recs) or ["eval"]
        entry: dict[str, Any] = {
            "dataset": cfg["dataset"]["name"], "protocol": cfg["dataset"]["protocol"],
            "defense": first["defense_label"], "attack": cfg["attack"]["name"], "preset": cfg["preset"],
            "seeds": sorted({r["config"]["seed"] for r in recs}), "judges": judges, "margins": {},
        }
        for base in BASELINES:
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


# -- rendering -----------------------------------------------------------------------------------

def _pct_cell(v: float | None, ci: list[float] | None) -> str:
    s = f"{100 * v:.1f}"
    if ci and ci[0] is not None:
        s += f" [{100 * ci[0]:.0f}, {100 * ci[1]:.0f}]"
    return s


def _cell(row: dict[str, Any], m: str, pct: bool) -> str:
    v = row.get(m)
    if v is None:
        if m in row.get("failed_metrics", []):
            return "failed"
        return "n/a" if m in row.get("absent_metrics", []) else "-"
    ci = row.get(m + "_ci")
    if pct:
        return _pct_cell(v, ci)
    s = f"{v:.2f}"
    if ci and ci[0] is not None:
        s += f" [{ci[0]:.2f}, {ci[1]:.2f}]"
    return s


def _human_cells(row: dict[str, Any], judges: list[str]) -> list[str]:
    h = row.get("human")
    if not h or not h["n_labelled"]:
        return ["-", "-"]
    fpr = ", ".join(f"{j} {100 * h['judges'][j]['fpr']:.0f}" for j in judges
                    if j in h["judges"] and h["judges"][j]["fpr"] is not None)
    return [f"{_pct_cell(h['acc'], h['acc_ci'])} (n={h['n_labelled']})", fpr or "-"]


def columns(rows: list[dict[str, Any]]) -> list[tuple[str, bool | None, str]]:
    """``(key, is_percentage (None = text), header)`` of the leaderboard table for ``rows``."""
    judges = []
    for r in rows:
        judges += [j for j in r.get("judges", []) if j != "eval" and j not in judges]
    cols: list[tuple[str, bool | None, str]] = [
        ("dataset", None, "dataset"), ("protocol", None, "protocol"), ("defense", None, "defense"),
        ("attack", None, "attack"), ("preset", None, "preset"), ("seeds", None, "seeds"),
        ("target_acc", True, "target acc %"), ("attack_acc", True, "attack acc % (eval)"),
        *[(f"attack_acc_{j}", True, f"{j} judge %") for j in judges],
        *([("consensus_acc", True, "consensus %")] if judges else []),
        ("attack_acc_top5", True, "top-5 %"), ("attack_acc_pixel_nn", True, "pixel-NN acc %"),
        ("knn_dist", False, "KNN dist"), ("fid_eval", False, "FID (E feats)"),
        ("fid_inception", False, "FID (Inception)"),
        ("collapsed_classes", False, "collapsed classes"), ("dp_epsilon", None, "DP ε spent"),
    ]
    if any(r.get("human") for r in rows):
        cols += [("human_acc", None, "human acc %"), ("human_fpr", None, "judge FPR vs human %")]
    return cols


def headers(rows: list[dict[str, Any]]) -> list[str]:
    return [h for _, _, h in columns(rows)]


PROTOCOL_NOTE = (
    "Accuracies in %, mean over seeds with its 95% interval in brackets (Student-t over 2+ seeds; "
    "one seed: the run's Wilson interval over its reconstructions). Attack acc: top-1 of the "
    "10-class evaluation model (different architecture and seed from the target; a 'none' class "
    "rejects blank/junk images) on every kept reconstruction. Other judges (mi_bench.judges): "
    "resnet = ResNet with crop/affine augmentation, robust = PGD-L2 adversarially trained; "
    "consensus = every judge names the attacked class. Pixel-NN acc (diagnostic): the nearest "
    "evaluator-training image in pixel space has the attacked class; far below attack acc means "
    "reconstructions fool the classifiers without looking like the class. KNN dist: squared L2 "
    "in evaluator features to the nearest private training image of the same class. FID (E "
    "feats): Frechet distance on evaluator features vs private training images (not comparable "
    "with Inception FID). Collapsed classes: classes whose reconstructions are near-copies "
    "(diversity below a quarter of real images'). Human acc: share labelled 'same class' by "
    "people (mi-bench label); judge FPR: share of reconstructions people called 'different' "
    "that the judge credited. Full protocol and configs in each record."
)


def table_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    out = []
    cols = columns(rows)
    judges = [k.removeprefix("attack_acc_") for k, _, _ in cols if k.startswith("attack_acc_")
              and k not in ("attack_acc_top5", "attack_acc_pixel_nn")]
    for r in rows:
        cells = []
        for key, pct, _ in cols:
            if key == "human_acc":
                cells.append(_human_cells(r, ["eval", *judges])[0])
            elif key == "human_fpr":
                cells.append(_human_cells(r, ["eval", *judges])[1])
            elif pct is None:
                v = r.get(key)
                if key == "seeds":
                    cells.append(",".join(map(str, v)))
                elif key == "dp_epsilon":
                    cells.append("-" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v)))
                else:
                    cells.append(str(v))
            elif key == "collapsed_classes" and r.get(key) is not None:
                cells.append(f"{r[key]:.1f}" if len(r["seeds"]) > 1 else str(int(r[key])))
            else:
                cells.append(_cell(r, key, pct))
        out.append(cells)
    return out


def margin_rows(margins: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the baseline-margin table (points, 95% interval)."""
    judges: list[str] = []
    for e in margins:
        judges += [j for j in e["judges"] if j not in judges]
    head = ["dataset", "protocol", "defense", "attack", "preset", "seeds",
            *[f"vs {b}: {j}" for b in BASELINES for j in judges], "flag"]
    body = []
    for e in margins:
        cells = [e["dataset"], e["protocol"], e["defense"], e["attack"], e["preset"],
                 ",".join(map(str, e["seeds"]))]
        for b in BASELINES:
            for j in judges:
                m = e["margins"].get(b, {}).get(j)
                cells.append("-" if m is None else
                             f"{100 * m['margin']:+.0f} [{100 * m['ci'][0]:+.0f}, {100 * m['ci'][1]:+.0f}]")
        cells.append(e["flag"] or "-")
        body.append(cells)
    return head, body


MARGIN_NOTE = (
    "Margin = attack accuracy minus the calibration baseline's under each judge, in points, on "
    "the same targets (seeds matched), 95% interval in brackets. random: best of N samples of "
    "GMI's public prior by target logit; pixel: gradient inversion in pixel space from random "
    "public images with GMI's iteration budget. Flagged: no margin over pixel beyond the "
    "interval under the robust judge."
)


def _md_table(head: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(c) + " |" for c in body]


def render(rows: list[dict[str, Any]], fmt: str, margins: list[dict[str, Any]] | None = None) -> str:
    """``rows`` (:func:`leaderboard`) as json/csv/markdown/latex/html; markdown also renders
    ``margins`` (:func:`baseline_margins`) when given."""
    if fmt == "json":
        return json.dumps(rows, indent=2)
    cols = columns(rows)
    head = [h for _, _, h in cols]
    body = table_rows(rows)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        flat = [k for k, _, _ in cols if k not in ("human_acc", "human_fpr")]
        stats = [k for k, p, _ in cols if p is not None]
        w.writerow(flat + [k + "_ci_low" for k in stats] + [k + "_ci_high" for k in stats])
        for r in rows:
            ci = [r.get(k + "_ci") or [None, None] for k in stats]
            w.writerow([",".join(map(str, r[c])) if c == "seeds" else r.get(c) for c in flat]
                       + [c[0] for c in ci] + [c[1] for c in ci])
        return buf.getvalue()
    if fmt == "markdown":
        lines = _md_table(head, body)
        text = "\n".join(lines) + f"\n\n{PROTOCOL_NOTE}\n"
        if margins:
            mh, mb = margin_rows(margins)
            text += "\n### Margins over calibration baselines\n\n" + "\n".join(_md_table(mh, mb)) + f"\n\n{MARGIN_NOTE}\n"
        return text
    if fmt == "latex":
        esc = lambda s: s.replace("%", r"\%").replace("_", r"\_").replace("±", r"$\pm$")  # noqa: E731
        lines = [r"\begin{tabular}{" + "l" * 6 + "r" * (len(head) - 6) + "}", r"\toprule",
                 " & ".join(esc(h) for h in head) + r" \\", r"\midrule"]
        lines += [" & ".join(esc(c) for c in cells) + r" \\" for cells in body]
        lines += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines) + "\n"
    if fmt == "html":
        th = "".join(f"<th>{h}</th>" for h in head)
        trs = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>" for cells in body)
        return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>\n<p>{PROTOCOL_NOTE}</p>\n"
    raise ValueError(f"unknown format {fmt!r}")
