"""Result records, their SQLite index, and the leaderboard built from them.

Each run writes its whole record (full resolved config, protocol, artifact hashes, metrics,
per-stage wall times, versions, machine) as ``record.json`` in its run folder
(``mi_bench.runs``): the JSON files are the source of truth. The SQLite database indexes them:
one row per run, indexed columns for querying plus the record as JSON. ``mi-bench db rebuild``
recreates the database from the JSON files, row for row.

Many writers: the database runs in WAL mode with a busy timeout, inserts are idempotent (keyed by
run id), so parallel workers on one host neither lose nor duplicate a row. SQLite's locking is
not reliable over a network file system (NFS, Lustre): on a cluster, workers write only their
JSON records and the submitting host indexes them (``mi-bench sweep --status`` /
``mi-bench db rebuild``); never point several hosts at one database file.

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
import time
from pathlib import Path
from typing import Any, Iterable

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

BUSY_TIMEOUT_S = 120.0  # how long a writer waits for another one before giving up

METRIC_COLUMNS = ("target_acc", "eval_acc", "attack_acc", "attack_acc_top5",
                  "attack_acc_pixel_nn", "knn_dist", "lpips_nn", "fid_eval", "kid_eval",
                  "fid_inception", "kid_inception")


class ResultsError(RuntimeError):
    """The results database or a record cannot be used; the message names the file and the fix."""


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


def _row(record: dict[str, Any]) -> tuple:
    m = record["metrics"]
    cfg = record["config"]
    return (record["run_id"], record["created_at"], record["config_hash"], record["group_hash"],
            cfg["dataset"]["name"], cfg["dataset"]["protocol"], record["defense_label"],
            cfg["attack"]["name"], cfg["preset"], cfg["seed"], m.get("target_acc"),
            m.get("attack_acc"), json.dumps(record, default=str))


class ResultStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _bad(self, exc: Exception) -> ResultsError:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "locked" in msg or "busy" in msg:
            return ResultsError(f"results_db {self.path} stayed locked for {BUSY_TIMEOUT_S:.0f}s ({msg}); "
                                "is it on a network file system? Keep it on a local disk")
        if "unable to open" in msg or "readonly" in msg or "read-only" in msg:
            return ResultsError(f"cannot open results_db {self.path} for writing ({msg}): "
                                "choose a writable path with results_db=...")
        return ResultsError(
            f"results_db {self.path} is not a usable SQLite database ({msg}): move it aside, "
            f"or recreate it from the run records with 'mi-bench db rebuild --db {self.path}'"
        )

    def _connect(self, write: bool = True) -> sqlite3.Connection:
        """A connection with a busy timeout. Writers also switch the database to WAL and create
        the schema; readers change nothing in the file."""
        if self.path.is_dir():
            raise ResultsError(f"results_db {self.path} is a folder; it must be a database file path")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ResultsError(f"cannot create the folder of results_db {self.path} "
                               f"({exc.strerror or exc}): choose a writable path") from None
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            con = None
            try:
                con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S)
                con.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
                if not write:
                    con.execute("SELECT count(*) FROM sqlite_master").fetchone()  # is it a database?
                    return con
                if con.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    con.execute("PRAGMA journal_mode = WAL")
                con.executescript(SCHEMA)
                return con
            except sqlite3.OperationalError as exc:
                if con is not None:
                    con.close()
                # creating the schema/WAL of a new file can race with other new writers
                if "locked" in str(exc) and time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                raise self._bad(exc) from None
            except sqlite3.DatabaseError as exc:
                if con is not None:
                    con.close()
                raise self._bad(exc) from None

    def check(self) -> None:
        """Open (creating it if needed) and check the database can be written; before any work."""
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            con.execute("SELECT count(*) FROM runs").fetchone()
            con.rollback()
        except sqlite3.DatabaseError as exc:
            raise self._bad(exc) from None
        finally:
            con.close()

    def append(self, record: dict[str, Any]) -> None:
        """Index one record (again: a no-op; run ids are unique)."""
        self.extend([record])

    def extend(self, records: Iterable[dict[str, Any]]) -> int:
        """Index records in one transaction; returns how many were new."""
        rows = [_row(r) for r in records]
        con = self._connect()
        try:
            with con:
                before = con.total_changes
                con.executemany("INSERT OR IGNORE INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
                return con.total_changes - before
        except sqlite3.DatabaseError as exc:
            raise self._bad(exc) from None
        finally:
            con.close()

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        if not self.path.is_file():
            return []
        con = self._connect(write=False)
        try:
            return con.execute(sql, args).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):  # an empty database file
                return []
            raise self._bad(exc) from None
        except sqlite3.DatabaseError as exc:
            raise self._bad(exc) from None
        finally:
            con.close()

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(r[0]) for r in self._query("SELECT record FROM runs ORDER BY created_at, run_id")]

    def rows(self) -> list[tuple]:
        """Every row, every column, ordered by run id (to compare databases)."""
        return self._query("SELECT * FROM runs ORDER BY run_id")

    def config_hashes(self) -> set[str]:
        return {r[0] for r in self._query("SELECT DISTINCT config_hash FROM runs")}

    def has_config(self, config_hash: str) -> bool:
        return bool(self._query("SELECT 1 FROM runs WHERE config_hash=? LIMIT 1", (config_hash,)))

    def rebuild(self, runs_root: str | Path) -> tuple[int, Path | None]:
        """Replace the index with the ``record.json`` files under ``runs_root``.

        A database that cannot be opened is moved aside first (``<db>.corrupt-<time>``); returns
        (records indexed, where a broken database was moved)."""
        from mi_bench.runs import iter_record_files, read_record

        records = [read_record(p) for p in iter_record_files(runs_root)]
        moved = None
        try:
            self.check()
        except ResultsError:
            if not self.path.is_file():
                raise
            stamp = time.strftime("%Y%m%dT%H%M%S")
            moved = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
            self.path.replace(moved)
            for side in ("-wal", "-shm"):
                Path(f"{self.path}{side}").unlink(missing_ok=True)
        con = self._connect()
        try:
            with con:
                con.execute("DELETE FROM runs")
                con.executemany("INSERT OR IGNORE INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                                [_row(r) for r in records])
        except sqlite3.DatabaseError as exc:
            raise self._bad(exc) from None
        finally:
            con.close()
        return len(records), moved

    def sync(self, runs_root: str | Path) -> int:
        """Index the ``record.json`` files under ``runs_root`` not indexed yet; returns how many."""
        from mi_bench.runs import iter_record_files, read_record

        if not Path(runs_root).is_dir():
            return 0
        known = {r[0] for r in self._query("SELECT run_id FROM runs")}
        new = []
        for p in iter_record_files(runs_root):
            if p.parent.name not in known:
                rec = read_record(p)
                if rec["run_id"] not in known:
                    new.append(rec)
        return self.extend(new) if new else 0


def load_records(path: str | Path) -> list[dict[str, Any]]:
    """Records from a SQLite database, a JSON-lines file (one record a line) or a folder of run
    folders holding ``record.json``; ordered by creation time."""
    from mi_bench.runs import iter_record_files, read_record

    path = Path(path)
    if path.is_dir():
        recs = [read_record(p) for p in iter_record_files(path)]
    elif not path.is_file():
        raise ResultsError(f"no results at {path}: pass a results database, a .jsonl records file "
                           "or a folder of run folders")
    elif path.suffix in (".jsonl", ".json"):
        recs = []
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    recs.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ResultsError(f"{path}:{i} is not a JSON record ({exc})") from None
    else:
        recs = ResultStore(path).records()
    return sorted(recs, key=lambda r: (r["created_at"], r["run_id"]))


def dump_jsonl(records: list[dict[str, Any]]) -> str:
    """Records as JSON lines, one record a line (``mi-bench db export``)."""
    return "".join(json.dumps(r, default=str) + "\n" for r in records)


def preflight(cfg: Any, *, index: bool = True) -> None:
    """Everything a run needs to store its work, checked before any training and without
    creating anything: the results database opens and takes writes (or, when it does not exist
    yet, its folder could be written; only when ``index``), the results folder and the artifact
    cache are writable with room to spare. Raises ResultsError / ArtifactError with one line.
    Also removes temporary files that killed runs left in the results folder and the cache."""
    from mi_bench.artifacts import ArtifactError, resolve_cache_dir
    from mi_bench.fsutil import NotWritable, check_writable, sweep_tmp

    try:
        check_writable(Path(cfg.results_dir), f"results_dir={cfg.results_dir}")
    except NotWritable as exc:
        raise ResultsError(str(exc)) from None
    cache = resolve_cache_dir(cfg.cache_dir)
    try:
        check_writable(cache, "the artifact cache (cache_dir= / MI_BENCH_CACHE)")
    except NotWritable as exc:
        raise ArtifactError(str(exc)) from None
    if index:
        db = Path(cfg.results_db)
        if db.exists():
            ResultStore(db).check()
        else:
            try:
                check_writable(db.parent, f"the folder of results_db={cfg.results_db}")
            except NotWritable as exc:
                raise ResultsError(str(exc)) from None
    sweep_tmp(Path(cfg.results_dir), depth=2)  # a killed run's temporary files
    sweep_tmp(cache, depth=3)


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
        text = "\n".join(lines) + f"\n\n{note}\n"
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
        return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>\n<p>{note}</p>\n"
    raise ValueError(f"unknown format {fmt!r}")
