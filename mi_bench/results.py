"""Result records in SQLite and the leaderboard built from them.

Each run appends one row: indexed columns for querying plus the whole record as JSON (full
resolved config, protocol, artifact hashes, metrics, per-stage wall times, versions, machine).
A leaderboard entry groups runs that differ only in their seed and reports mean +- standard
error over seeds, with the protocol next to the numbers.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sqlite3
from pathlib import Path
from typing import Any

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
                  "attack_acc_pixel_nn", "knn_dist", "lpips_nn", "fid_eval", "kid_eval",
                  "fid_inception", "kid_inception")


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
        row["n_reconstructions"] = sorted({r["metrics"].get("n_reconstructions") for r in recs} - {None})
        rows.append(row)
    _flag_sample_counts(rows)
    rows.sort(key=lambda r: (r["dataset"], r["protocol"], r["attack"], r["defense"], r["preset"]))
    return rows


def _flag_sample_counts(rows: list[dict[str, Any]]) -> None:
    """FID is biased by the number of images; KID is not. Rows of one dataset and protocol whose
    reconstruction counts differ are flagged ``compare_by = "kid"`` (else ``"fid"``)."""
    counts: dict[tuple[str, str], set[int]] = {}
    for r in rows:
        counts.setdefault((r["dataset"], r["protocol"]), set()).update(r["n_reconstructions"])
    for r in rows:
        r["compare_by"] = "kid" if len(counts[(r["dataset"], r["protocol"])]) > 1 else "fid"


def _cell(row: dict[str, Any], m: str, pct: bool) -> str:
    v, se = row[m], row[m + "_se"]
    if v is None:
        if m in row.get("failed_metrics", []):
            return "failed"
        return "n/a" if m in row.get("absent_metrics", []) else "-"
    scale = 100 if pct else 1
    fmt = ".1f" if pct else (".3g" if m in SMALL_VALUED else ".2f")
    s = f"{v * scale:{fmt}}"
    if se is not None:
        s += f" ± {se * scale:{fmt}}"
    return s


SMALL_VALUED = ("kid_eval", "kid_inception", "lpips_nn")  # shown with 3 significant digits


COLUMNS = [("dataset", None), ("protocol", None), ("defense", None), ("attack", None),
           ("preset", None), ("seeds", None), ("target_acc", True), ("attack_acc", True),
           ("attack_acc_top5", True), ("attack_acc_pixel_nn", True), ("knn_dist", False),
           ("lpips_nn", False), ("fid_eval", False), ("kid_eval", False), ("fid_inception", False),
           ("kid_inception", False), ("dp_epsilon", None)]
HEADERS = ["dataset", "protocol", "defense", "attack", "preset", "seeds", "target acc %",
           "attack acc %", "top-5 %", "pixel-NN acc %", "KNN dist", "LPIPS-NN", "FID (E feats)",
           "KID (E feats)", "FID (Inception)", "KID (Inception)", "DP ε spent"]

PROTOCOL_NOTE = (
    "Accuracies in %, mean ± standard error over seeds. Attack acc: top-1 of a 10-class "
    "evaluation model (different architecture and seed from the target) on every kept "
    "reconstruction. Pixel-NN acc (diagnostic): the nearest evaluator-training image in pixel "
    "space has the attacked class; far below attack acc means reconstructions fool the "
    "classifiers without looking like the class. KNN dist: squared L2 in evaluator features to "
    "the nearest private training "
    "image of the same class. LPIPS-NN: LPIPS to the nearest private training image of the same "
    "class (a perceptual judge of a different family). FID (E feats): Frechet distance on evaluator "
    "features vs private training images (not comparable with Inception FID); KID: unbiased kernel "
    "distance on the same features (0 = same distribution). Full protocol and configs in each record."
)

KID_NOTE = (
    "Reconstruction counts differ between rows of one dataset/protocol ({counts}): FID is biased "
    "by the number of images, so compare those rows by KID, not FID (rows flagged compare_by=kid)."
)


def protocol_note(rows: list[dict[str, Any]]) -> str:
    """The table's caption: the protocol, plus the KID note when sample counts differ."""
    flagged = sorted({n for r in rows if r.get("compare_by") == "kid" for n in r["n_reconstructions"]})
    return PROTOCOL_NOTE + (" " + KID_NOTE.format(counts=", ".join(map(str, flagged))) if flagged else "")


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


def render(rows: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=2)
    body = table_rows(rows)
    note = protocol_note(rows)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        flat_cols = [c for c, _ in COLUMNS]
        w.writerow(flat_cols + [c + "_se" for c, p in COLUMNS if p is not None] + ["n_reconstructions", "compare_by"])
        for r in rows:
            w.writerow([",".join(map(str, r[c])) if c == "seeds" else r[c] for c in flat_cols]
                       + [r[c + "_se"] for c, p in COLUMNS if p is not None]
                       + [",".join(map(str, r.get("n_reconstructions", []))), r.get("compare_by")])
        return buf.getvalue()
    if fmt == "markdown":
        lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines) + f"\n\n{note}\n"
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
        return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>\n<p>{note}</p>\n"
    raise ValueError(f"unknown format {fmt!r}")
