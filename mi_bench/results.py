"""Result records in SQLite and the leaderboard built from them.

Each run appends one row: indexed columns for querying plus the whole record as JSON (full
resolved config, protocol, artifact hashes, metrics, per-stage wall times, versions, machine).
A leaderboard entry groups runs that differ only in their seed and reports mean +- standard
error over seeds, with the protocol next to the numbers.

:func:`defense_effects` compares every defended entry with two undefended ones of the same
dataset, protocol, attack, preset, evaluator and attack settings: the *published* baseline
(``none`` trained with its own recipe, ``recipe`` empty) and the *matched* baseline (``none``
whose target was trained exactly like the defended target: same ``target`` section, e.g.
``defense=none recipe=bido``). It reports the change in attack accuracy against each, with a
Welch 95% interval over target seeds, and marks a defense whose effect disappears against the
matched baseline. :func:`render_effects` prints it as a markdown table.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sqlite3
from pathlib import Path
from typing import Any

from mi_bench.stats import mean_interval, welch_interval

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


def _mean_se(values: list[float]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None, None
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)
    return mean, math.sqrt(var / len(vals))


def leaderboard(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (config without seed): mean and standard error of each metric over seeds."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(r["group_hash"], []).append(r)
    rows = []
    for recs in groups.values():
        first = recs[0]
        cfg = first["config"]
        row: dict[str, Any] = {
            "dataset": cfg["dataset"]["name"], "protocol": cfg["dataset"]["protocol"],
            "defense": first["defense_label"], "attack": cfg["attack"]["name"],
            "preset": cfg["preset"], "seeds": sorted({r["config"]["seed"] for r in recs}),
            "runs": len(recs),
        }
        for m in METRIC_COLUMNS:
            row[m], row[m + "_se"] = _mean_se([r["metrics"].get(m) for r in recs])
        row["failed_metrics"] = sorted({k for r in recs for k in r["metrics"].get("metric_errors", {})})
        row["absent_metrics"] = sorted({k for r in recs for k in r["metrics"].get("metric_absent", {})})
        eps = first.get("defense_report", {}).get("epsilon")
        row["dp_epsilon"] = None if eps is None else eps
        rows.append(row)
    rows.sort(key=lambda r: (r["dataset"], r["protocol"], r["attack"], r["defense"], r["preset"]))
    return rows


def _cell(row: dict[str, Any], m: str, pct: bool) -> str:
    v, se = row[m], row[m + "_se"]
    if v is None:
        if m in row.get("failed_metrics", []):
            return "failed"
        return "n/a" if m in row.get("absent_metrics", []) else "-"
    scale = 100 if pct else 1
    s = f"{v * scale:.1f}" if pct else f"{v:.2f}"
    if se is not None:
        s += f" ± {se * scale:.1f}" if pct else f" ± {se:.2f}"
    return s


COLUMNS = [("dataset", None), ("protocol", None), ("defense", None), ("attack", None),
           ("preset", None), ("seeds", None), ("target_acc", True), ("attack_acc", True),
           ("attack_acc_top5", True), ("attack_acc_pixel_nn", True), ("knn_dist", False), ("fid_eval", False),
           ("fid_inception", False), ("dp_epsilon", None)]
HEADERS = ["dataset", "protocol", "defense", "attack", "preset", "seeds", "target acc %",
           "attack acc %", "top-5 %", "pixel-NN acc %", "KNN dist", "FID (E feats)", "FID (Inception)", "DP ε spent"]

PROTOCOL_NOTE = (
    "Accuracies in %, mean ± standard error over seeds. Attack acc: top-1 of a 10-class "
    "evaluation model (different architecture and seed from the target) on every kept "
    "reconstruction. Pixel-NN acc (diagnostic): the nearest evaluator-training image in pixel "
    "space has the attacked class; far below attack acc means reconstructions fool the "
    "classifiers without looking like the class. KNN dist: squared L2 in evaluator features to "
    "the nearest private training "
    "image of the same class. FID (E feats): Frechet distance on evaluator features vs private "
    "training images (not comparable with Inception FID). Full protocol and configs in each record."
)


def table_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    out = []
    for r in rows:
        cells = []
        for key, pct in COLUMNS:
            if pct is None:
                v = r[key]
                if key == "seeds":
                    cells.append(",".join(map(str, v)))
                elif key == "dp_epsilon":
                    cells.append("-" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v)))
                else:
                    cells.append(str(v))
            else:
                cells.append(_cell(r, key, pct))
        out.append(cells)
    return out


# -- defense effect vs published and matched baselines -----------------------------------------

BASELINE_DEFENSE = "none"
# config fields a baseline may differ in from the defended entry (besides the non-semantic ones)
_EFFECT_FREE = ("seed", "defense", "recipe", "target", "threads", "device", "data_root",
                "cache_dir", "results_db", "results_dir")


def _context(cfg: dict[str, Any]) -> str:
    """What must be equal between a defended entry and its baselines: everything but the
    defense, the target's training recipe, the seed and where/how fast it ran."""
    blob = json.dumps({k: v for k, v in cfg.items() if k not in _EFFECT_FREE}, sort_keys=True,
                      default=str)
    return blob


def _values(recs: list[dict[str, Any]], metric: str) -> list[float]:
    out = []
    for r in recs:
        v = r["metrics"].get(metric)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out.append(float(v))
    return out


def _compare(defended: list[float], base: list[float]) -> dict[str, Any]:
    if not defended or not base:
        return {"delta": None, "delta_ci": None}
    diff, lo, hi = welch_interval(defended, base)
    return {"delta": diff, "delta_ci": None if lo is None else [lo, hi]}


def _verdict(pub: dict[str, Any] | None, mat: dict[str, Any] | None) -> str:
    """``holds`` / ``vanishes vs matched`` / ``only vs matched`` / ``no effect`` / ``n/a: ...``.
    An effect is a drop in attack accuracy whose 95% interval lies below 0."""
    if pub is None or mat is None:
        return "n/a: " + ("no published baseline" if pub is None else "no matched baseline")
    if pub["delta_ci"] is None or mat["delta_ci"] is None:
        return "n/a: needs >= 2 target seeds on each side"
    drop_pub, drop_mat = pub["delta_ci"][1] < 0, mat["delta_ci"][1] < 0
    if drop_pub and drop_mat:
        return "holds"
    if drop_pub:
        return "vanishes vs matched"
    return "only vs matched" if drop_mat else "no effect"


def defense_effects(records: list[dict[str, Any]], metric: str = "attack_acc") -> list[dict[str, Any]]:
    """For each defended leaderboard entry: ``metric`` (mean and Student-t 95% interval over
    target seeds) and its change against the published and the matched undefended baseline
    (difference of means, Welch 95% interval; negative = the defense lowers the metric).

    Baselines are looked up among entries with ``defense.name == "none"`` and the same config
    apart from the defense, the recipe, the ``target`` section and the seed: the published one
    has ``recipe == ""`` (with several, the one with the most seeds), the matched one has the
    defended entry's exact ``target`` section (the same optimiser, lr, schedule, epochs, batch,
    sampler and drop-last). When the defense trains with the baseline's recipe the two are the
    same entry (``matched_is_published``). ``verdict``: see :func:`_verdict`.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
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
            "attack": cfg["attack"]["name"], "preset": cfg["preset"], "defense": e["label"],
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
                           **_compare(e["values"], base["values"])}
            row[kind] = comps[kind]
        row["matched_is_published"] = matched_b is not None and matched_b is published
        row["verdict"] = _verdict(comps.get("published"), comps.get("matched"))
        out.append(row)
    out.sort(key=lambda r: (r["dataset"], r["protocol"], r["attack"], r["preset"], r["defense"]))
    return out


EFFECTS_NOTE = (
    "Change in attack accuracy (percentage points, defended minus undefended; negative = the "
    "defense lowers it), mean over target seeds with a Welch 95% interval (unequal variances). "
    "Published baseline: `none` trained with its own recipe. Matched baseline: `none` trained "
    "with the defense's recipe (identical `target` section: optimiser, lr, schedule, epochs, "
    "batch, sampler, drop-last), e.g. `defense=none recipe=bido`. Verdict: *holds* = the "
    "interval lies below 0 against both; *vanishes vs matched* = below 0 against the published "
    "baseline only, so the recipe, not the defense, explains the drop."
)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _delta(c: dict[str, Any] | None) -> str:
    if not c or c.get("delta") is None:
        return "-"
    s = f"{100 * c['delta']:+.1f}"
    if c["delta_ci"]:
        s += f" [{100 * c['delta_ci'][0]:+.1f}, {100 * c['delta_ci'][1]:+.1f}]"
    return s


def render_effects(effects: list[dict[str, Any]]) -> str:
    """The output of :func:`defense_effects` as a markdown table with its note."""
    headers = ["dataset", "protocol", "attack", "preset", "defense", "seeds", "attack acc %",
               "published baseline", "Δ vs published (pp)", "matched baseline",
               "Δ vs matched (pp)", "verdict"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for r in effects:
        def base(kind: str) -> str:
            b = r.get(kind)
            if b is None:
                return "none found"
            same = " (= published)" if kind == "matched" and r["matched_is_published"] else ""
            return f"{b['defense']}{same}: {_pct(b['value'])} (seeds {','.join(map(str, b['seeds']))})"
        verdict = r["verdict"]
        cells = [r["dataset"], r["protocol"], r["attack"], r["preset"], r["defense"],
                 ",".join(map(str, r["seeds"])), _pct(r["value"]), base("published"),
                 _delta(r.get("published")), base("matched"), _delta(r.get("matched")),
                 f"**{verdict}**" if verdict == "vanishes vs matched" else verdict]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\n{EFFECTS_NOTE}\n"


def render(rows: list[dict[str, Any]], fmt: str,
           effects: list[dict[str, Any]] | None = None) -> str:
    """``rows`` (see :func:`leaderboard`) in ``fmt``; with ``effects`` (see
    :func:`defense_effects`) the markdown output adds the "defense effect vs baselines" table."""
    if fmt == "json":
        return json.dumps(rows, indent=2)
    body = table_rows(rows)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        flat_cols = [c for c, _ in COLUMNS]
        w.writerow(flat_cols + [c + "_se" for c, p in COLUMNS if p is not None])
        for r in rows:
            w.writerow([",".join(map(str, r[c])) if c == "seeds" else r[c] for c in flat_cols]
                       + [r[c + "_se"] for c, p in COLUMNS if p is not None])
        return buf.getvalue()
    if fmt == "markdown":
        lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        text = "\n".join(lines) + f"\n\n{PROTOCOL_NOTE}\n"
        if effects:
            text += "\n## Defense effect vs baselines\n\n" + render_effects(effects)
        return text
    if fmt == "latex":
        esc = lambda s: s.replace("%", r"\%").replace("_", r"\_").replace("±", r"$\pm$")  # noqa: E731
        lines = [r"\begin{tabular}{" + "l" * 6 + "r" * (len(HEADERS) - 6) + "}", r"\toprule",
                 " & ".join(esc(h) for h in HEADERS) + r" \\", r"\midrule"]
        lines += [" & ".join(esc(c) for c in cells) + r" \\" for cells in body]
        lines += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines) + "\n"
    if fmt == "html":
        th = "".join(f"<th>{h}</th>" for h in HEADERS)
        trs = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>" for cells in body)
        return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>\n<p>{PROTOCOL_NOTE}</p>\n"
    raise ValueError(f"unknown format {fmt!r}")
