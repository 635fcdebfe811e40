"""Result records and their SQLite index.

Each run writes its whole record (full resolved config, protocol, artifact hashes, metrics,
per-stage wall times, versions, machine; ``mi_bench.record``) as ``record.json`` in its run
folder (``mi_bench.runs``): the JSON files are the source of truth. The SQLite database indexes
them: one row per run, indexed columns for querying plus the record as JSON. ``mi-bench db
rebuild`` recreates the database from the JSON files, row for row. Records are read through
:func:`mi_bench.record.upgrade_record`, so older records reach the analysis in today's schema.

Many writers: the database runs in WAL mode with a busy timeout, inserts are idempotent (keyed by
run id), so parallel workers on one host neither lose nor duplicate a row. SQLite's locking is
not reliable over a network file system (NFS, Lustre): on a cluster, workers write only their
JSON records and the submitting host indexes them (``mi-bench sweep --status`` /
``mi-bench db rebuild``); never point several hosts at one database file.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable

from mi_bench.errors import ResultsError



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

    def records(self, *, upgrade: bool = True) -> list[dict[str, Any]]:
        """Every record, oldest first; ``upgrade``: in today's schema
        (:func:`mi_bench.record.upgrade_record`), else as stored."""
        from mi_bench.record import upgrade_record

        rows = self._query("SELECT record FROM runs ORDER BY created_at, run_id")
        return [upgrade_record(json.loads(r[0])) if upgrade else json.loads(r[0]) for r in rows]

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


def load_records(path: str | Path, *, upgrade: bool = True) -> list[dict[str, Any]]:
    """Records from a SQLite database, a JSON-lines file (one record a line; gzipped when it ends
    in ``.gz``) or a folder of run folders holding ``record.json``; ordered by creation time.
    ``upgrade``: in today's schema (:func:`mi_bench.record.upgrade_record`); False = as stored
    (``mi-bench db export``)."""
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
        recs = ResultStore(path).records(upgrade=upgrade)
    if upgrade:
        from mi_bench.record import upgrade_record

        recs = [upgrade_record(r) for r in recs]
        # human labels exported beside a records file (labels/<run_id>.labels.json, as
        # results/bench/ keeps them): the run folders they came from are not in the repository
        copies = path.parent / "labels" if path.is_file() else None
        if copies is not None and copies.is_dir():
            for r in recs:
                copy = copies / f"{r['run_id']}.labels.json"
                if copy.is_file():
                    r["labels_copy"] = str(copy)
    return sorted(recs, key=lambda r: (r["created_at"], r["run_id"]))


def records_to_export(records: list[dict[str, Any]], output: str | Path, *, merge: bool = False,
                      replace: bool = False) -> list[dict[str, Any]]:
    """What ``mi-bench db export`` writes over ``output``: the database's ``records``. A records
    file already at ``output`` that holds records the database lacks (by ``run_id``; a database
    rebuilt on a new machine, or one holding only new cells) is an error, so an export cannot drop
    committed results unseen; ``merge`` keeps those records beside the database's (except where
    the database has a run of the same ``config_hash``: the new run replaces the old), ``replace``
    drops them."""
    if merge and replace:
        raise ResultsError("db export: pass --merge or --replace, not both")
    output = Path(output)
    if replace or not output.exists():
        return records
    held = {r["run_id"] for r in records}
    lost = [r for r in load_records(output, upgrade=False) if r.get("run_id") not in held]
    if not lost:
        return records
    if not merge:
        raise ResultsError(f"{output} holds {len(lost)} record(s) the database does not (e.g. run "
                           f"{lost[0].get('run_id')}): pass --merge to keep them beside the "
                           "database's, or --replace to drop them")
    configs = {r.get("config_hash") for r in records}
    kept = [r for r in lost if r.get("config_hash") not in configs]
    return sorted(records + kept, key=lambda r: (r["created_at"], r["run_id"]))


def dump_jsonl(records: list[dict[str, Any]]) -> str:
    """Records as JSON lines, one record a line (``mi-bench db export``)."""
    return "".join(json.dumps(r, default=str) + "\n" for r in records)


def preflight(cfg: Any, *, index: bool = True) -> None:
    """Everything a run needs to store its work, checked before any training and without
    creating anything: the results database opens and takes writes (or, when it does not exist
    yet, its folder could be written; only when ``index``), the results folder and the artifact
    cache are writable with room to spare. Raises ResultsError / ArtifactError with one line.
    Also removes temporary files that killed runs left in the results folder and the cache."""
    from mi_bench.artifacts import resolve_cache_dir
    from mi_bench.errors import ArtifactError
    from mi_bench.fsutil import check_writable, sweep_tmp
    from mi_bench.errors import NotWritable

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
