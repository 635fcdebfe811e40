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

Data functions (plain dicts/lists, no formatting; renderers build on them):

* :func:`leaderboard` - one entry per configuration without its seed. Every metric is the mean
  over seeds with a 95% interval: over two or more seeds the Student-t interval of the per-seed
  values (``mi_bench.stats.mean_interval``), for one run the run's own 95% Wilson interval
  (accuracies; ``<metric>_ci``). Also each judge's accuracy (``attack_acc_<judge>``), the
  consensus, diversity, and - where people labelled the runs (``mi-bench label``) -
  human-judged accuracy and each judge's false-positive rate against it (:func:`human_check`).
  Each entry also names its runs (``run_ids``, by seed; ``group_hash``), the reasons of metrics
  that failed (``failed_reasons``) or are absent by design (``absent_reasons``;
  :func:`missing_metrics`), and ``variant``: how it differs from entries with the same defense
  label (``attack.restarts=3``), else empty.
* :func:`current` - the records minus those re-scored by another record (``rescored_from``,
  ``mi-bench rescore``): the leaderboard, :func:`baseline_margins` and :func:`defense_effects`
  use it, so a run and its re-scored version are never counted twice (the re-scored one wins).
* :func:`select` - entries (of any of these functions) of given datasets, attacks, defenses,
  presets; :func:`sections` groups entries under dataset / protocol / attack / preset headings.
* :func:`baseline_margins` - per real attack, its margin over the ``random`` and ``pixel``
  calibration baselines under each judge, on the same targets (seeds matched), flagged when it
  does not beat ``pixel`` under the robust judge.
* :func:`defense_effects` - every defended entry against two undefended ones of the same
  dataset, protocol, attack, preset, evaluator and attack settings: the *published* baseline
  (``none`` trained with its own recipe, ``recipe`` empty) and the *matched* baseline (``none``
  whose target was trained exactly like the defended target: same ``target`` section, e.g.
  ``defense=none recipe=bido``): the change in attack accuracy against each, with a Welch 95%
  interval over target seeds, marking a defense whose effect disappears against the matched
  baseline. :func:`render_effects` prints it as a markdown table.

Renderers: :func:`render` (json, csv, markdown, latex, a plain html table), the terminal
leaderboard (``mi_bench.terminal``) and the self-contained HTML report (``mi_bench.report``).
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

from mi_bench.stats import mean_interval, newcombe_interval, welch_interval, wilson_interval

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
    """Records from a SQLite database, a JSON-lines file (one record a line; gzipped when it ends
    in ``.gz``) or a folder of run folders holding ``record.json``; ordered by creation time."""
    import gzip

    from mi_bench.runs import iter_record_files, read_record

    path = Path(path)
    gzipped = path.suffix == ".gz"
    if path.is_dir():
        recs = [read_record(p) for p in iter_record_files(path)]
    elif not path.is_file():
        raise ResultsError(f"no results at {path}: pass a results database, a .jsonl records file "
                           "or a folder of run folders")
    elif Path(path.stem if gzipped else path.name).suffix in (".jsonl", ".json"):
        try:
            text = gzip.decompress(path.read_bytes()).decode() if gzipped else path.read_text()
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise ResultsError(f"{path} is not a readable gzipped records file ({exc}): export it "
                               "again with mi-bench db export") from None
        recs = []
        for i, line in enumerate(text.splitlines(), 1):
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


def superseded(records: Iterable[dict[str, Any]]) -> set[str]:
    """Run ids re-scored by a record of ``records`` (its ``rescored_from``; ``mi-bench rescore``)."""
    return {r["rescored_from"] for r in records if r.get("rescored_from")}


def current(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``records`` without those re-scored by another record among them: a run and its
    re-scored version hold the same reconstructions, so the leaderboard, the margins and the
    defense effects count them once, with the re-scored numbers. (Two re-scorings of one run
    with different judge settings are two configurations, each shown as a variant.)"""
    gone = superseded(records)
    return [r for r in records if r["run_id"] not in gone] if gone else records


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
        rows.append(row)
        configs.append(cfg)
    _flag_sample_counts(rows)
    _mark_variants(rows, configs)
    rows.sort(key=lambda r: (r["dataset"], r["protocol"], r["attack"], r["defense"], r["preset"]))
    return rows


# mi-bench < 0.2 recorded the Inception weights missing offline as a failure; they are absent by design
_LEGACY_ABSENT = "FileNotFoundError: Inception-v3 FID weights not on disk"


def missing_metrics(metrics: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """A run's metrics that are None: (failed, absent by design), each ``{metric: reason}``.
    Records from before ``metric_absent`` existed stored missing Inception weights as an error;
    those count as absent (the reason says so)."""
    failed = dict(metrics.get("metric_errors") or {})
    absent = dict(metrics.get("metric_absent") or {})
    for k, why in list(failed.items()):
        if str(why).startswith(_LEGACY_ABSENT):
            absent.setdefault(k, f"{why} (recorded as an error by an older mi-bench)")
            del failed[k]
    return failed, absent


def select(items: list[dict[str, Any]], *, dataset: Iterable[str] = (), attack: Iterable[str] = (),
           defense: Iterable[str] = (), preset: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Leaderboard rows (or :func:`defense_effects` / :func:`baseline_margins` entries) whose
    dataset, attack and preset are among the given ones, and whose defense is one of ``defense``
    by label (``bido[lambda_x=0.1]``) or by name (``bido``: every strength). Empty = any."""
    want = {"dataset": set(dataset), "attack": set(attack), "preset": set(preset)}
    defenses = set(defense)
    out = []
    for it in items:
        if any(v and it.get(k) not in v for k, v in want.items()):
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
    the robust judge has a lower bound <= 0; None when that comparison is impossible. Records
    re-scored by another one are left out (:func:`current`)."""
    records = current(records)

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
    fmt = ".3g" if m in SMALL_VALUED else ".2f"
    s = f"{v:{fmt}}"
    if ci and ci[0] is not None:
        s += f" [{ci[0]:{fmt}}, {ci[1]:{fmt}}]"
    return s


SMALL_VALUED = ("kid_eval", "kid_inception", "lpips_nn")  # shown with 3 significant digits


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
        ("knn_dist", False, "KNN dist"), ("lpips_nn", False, "LPIPS-NN"),
        ("fid_eval", False, "FID (E feats)"), ("kid_eval", False, "KID (E feats)"),
        ("fid_inception", False, "FID (Inception)"), ("kid_inception", False, "KID (Inception)"),
        ("collapsed_classes", False, "collapsed classes"), ("dp_epsilon", None, "DP ε spent"),
    ]
    if any(r.get("human") for r in rows):
        cols += [("human_acc", None, "human acc %"), ("human_fpr", None, "judge FPR vs human %")]
    return cols


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


def headers(rows: list[dict[str, Any]]) -> list[str]:
    return [h for _, _, h in columns(rows)]


PROTOCOL_NOTE = (
    "Accuracies in %, mean over seeds with its 95% interval in brackets (Student-t over 2+ seeds; "
    "one seed: the run's Wilson interval over its reconstructions). Attack acc: top-1 of the "
    "evaluation model over the whole domain (all 10 digits; for faces the private identities), "
    "of a different architecture and seed from the target (a 'none' class "
    "rejects blank/junk images) on every kept reconstruction. Other judges (mi_bench.judges): "
    "resnet = ResNet with crop/affine augmentation, robust = PGD-L2 adversarially trained; "
    "consensus = every judge names the attacked class. Pixel-NN acc (diagnostic): the nearest "
    "evaluator-training image in pixel space has the attacked class; far below attack acc means "
    "reconstructions fool the classifiers without looking like the class. KNN dist: squared L2 "
    "in evaluator features to the nearest private training image of the same class. LPIPS-NN: "
    "LPIPS to the nearest private training image of the same class (a perceptual judge of a "
    "different family). FID (E feats): Frechet distance on evaluator features vs private training "
    "images (not comparable with Inception FID); KID: unbiased kernel distance on the same "
    "features (0 = same distribution). Collapsed classes: classes whose reconstructions are near-copies "
    "(diversity below a quarter of real images'). Human acc: share labelled 'same class' by "
    "people (mi-bench label); judge FPR: share of reconstructions people called 'different' "
    "that the judge credited. Full protocol and configs in each record."
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
                elif key == "defense" and r.get("variant"):
                    cells.append(f"{v} ({r['variant']})")
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


# -- defense effect vs published and matched baselines -----------------------------------------

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


def _compare(defended: list[float], base: list[float]) -> dict[str, Any]:
    if not defended or not base:
        return {"delta": None, "delta_ci": None}
    diff, lo, hi = welch_interval(defended, base)
    return {"delta": diff, "delta_ci": None if lo is None else [lo, hi]}


def _verdict(pub: dict[str, Any] | None, mat: dict[str, Any] | None) -> str:
    """``holds`` / ``vanishes vs matched`` / ``only vs matched`` / ``raises vs matched`` /
    ``no effect`` / ``n/a: ...``. An effect is a drop in attack accuracy whose 95% interval lies
    below 0; ``raises vs matched``: the interval against the matched baseline lies above 0 (the
    defended target leaks more than the same recipe without the defense)."""
    if pub is None or mat is None:
        return "n/a: " + ("no published baseline" if pub is None else "no matched baseline")
    if pub["delta_ci"] is None or mat["delta_ci"] is None:
        return "n/a: needs >= 2 target seeds on each side"
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
    (difference of means, Welch 95% interval; negative = the defense lowers the metric).

    Baselines are looked up among entries with ``defense.name == "none"`` and the same config
    apart from the defense, the recipe, the ``target`` section and the seed: the published one
    has ``recipe == ""`` (with several, the one with the most seeds), the matched one has the
    defended entry's exact ``target`` section (the same optimiser, lr, schedule, epochs, batch,
    sampler and drop-last). When the defense trains with the baseline's recipe the two are the
    same entry (``matched_is_published``). ``verdict``: see :func:`_verdict`. Records re-scored
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
    "baseline only, so the recipe, not the defense, explains the drop; *raises vs matched* = above "
    "0 against the matched baseline: the defended target leaks more."
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


def effects_rows(effects: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the defense-effect table (the verdicts ``vanishes vs matched`` and ``raises vs matched`` in bold)."""
    headers = ["dataset", "protocol", "attack", "preset", "defense", "seeds", "attack acc %",
               "published baseline", "Δ vs published (pp)", "matched baseline",
               "Δ vs matched (pp)", "verdict"]
    body = []
    for r in effects:
        def base(kind: str) -> str:
            b = r.get(kind)
            if b is None:
                return "none found"
            same = " (= published)" if kind == "matched" and r["matched_is_published"] else ""
            return f"{b['defense']}{same}: {_pct(b['value'])} (seeds {','.join(map(str, b['seeds']))})"
        verdict = r["verdict"]
        body.append([r["dataset"], r["protocol"], r["attack"], r["preset"], r["defense"],
                     ",".join(map(str, r["seeds"])), _pct(r["value"]), base("published"),
                     _delta(r.get("published")), base("matched"), _delta(r.get("matched")),
                     f"**{verdict}**" if verdict in ("vanishes vs matched", "raises vs matched") else verdict])
    return headers, body


def render_effects(effects: list[dict[str, Any]]) -> str:
    """The output of :func:`defense_effects` as a markdown table with its note."""
    return "\n".join(_md_table(*effects_rows(effects))) + f"\n\n{EFFECTS_NOTE}\n"


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


def render(rows: list[dict[str, Any]], fmt: str, margins: list[dict[str, Any]] | None = None,
           effects: list[dict[str, Any]] | None = None) -> str:
    """``rows`` (:func:`leaderboard`) as json/csv/markdown/latex/html; the markdown output also
    renders ``margins`` (:func:`baseline_margins`) and ``effects`` (:func:`defense_effects`)."""
    if fmt == "json":
        return json.dumps(rows, indent=2)
    cols = columns(rows)
    head = [h for _, _, h in cols]
    body = table_rows(rows)
    note = protocol_note(rows)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        flat = [k for k, _, _ in cols if k not in ("human_acc", "human_fpr")]
        stats = [k for k, p, _ in cols if p is not None]
        w.writerow(flat + [k + "_ci_low" for k in stats] + [k + "_ci_high" for k in stats]
                   + ["n_reconstructions", "compare_by"])
        for r in rows:
            ci = [r.get(k + "_ci") or [None, None] for k in stats]
            w.writerow([",".join(map(str, r[c])) if c == "seeds" else r.get(c) for c in flat]
                       + [c[0] for c in ci] + [c[1] for c in ci]
                       + [",".join(map(str, r.get("n_reconstructions", []))), r.get("compare_by")])
        return buf.getvalue()
    if fmt == "markdown":
        lines = _md_table(head, body)
        text = "\n".join(lines) + f"\n\n{note}\n"
        if effects:
            text += "\n## Defense effect vs baselines\n\n" + render_effects(effects)
        if margins:
            mh, mb = margin_rows(margins)
            text += "\n## Margins over calibration baselines\n\n" + "\n".join(_md_table(mh, mb)) + f"\n\n{MARGIN_NOTE}\n"
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
        return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>\n<p>{note}</p>\n"
    raise ValueError(f"unknown format {fmt!r}")
