"""``mi-bench rescore``: score stored runs again from their saved reconstructions.

A run folder keeps its reconstructions (``reconstructions.safetensors``, uint8). Re-scoring reads
them and runs today's scoring code (``mi_bench.scoring.Scorer``: ``score_inversion``, ``score_judges``,
diversity) with the judges of the run's config, as it was recorded plus the given scoring
overrides and the schema defaults of fields added since. Judges are trained, or loaded from the
cache, as in a run; the target, the prior and the inversion are never re-run. Each re-scored run
gets a new record (new run id, own run folder with a copy of the reconstructions, a new grid,
``rescored_from: <old run id>``), written like a run's: ``record.json`` first, then the index.

Inputs are run ids (looked up in the results database), run folders (holding ``record.json``),
or ``--all`` (every record of the database not already re-scored by another one). Overrides may
set only what scoring depends on (:data:`SCORING_KEYS`) and where/how it runs
(:data:`WHERE_KEYS`). Every input is checked - record, reconstructions, config, dataset - before
any work starts.

Limits: the reconstructions are 8-bit (runs of this version score the same 8-bit images, so a
re-scoring with nothing changed reproduces them; older runs scored float images, which can
differ by rounding); only the kept reconstructions exist, so ``attack.n_keep`` and every setting
of the attack stay as run; the target accuracy is recomputed only when the target is still in
the cache (else the old value is kept and the record says so).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mi_bench.artifacts import resolve_cache_dir
from mi_bench.config import RunConfig, from_record, stable_hash, to_dict
from mi_bench.data import DataSplits, load_splits, resolve_data_root
from mi_bench.errors import DataUnavailable, ResultsError
from mi_bench.results import ResultStore, superseded
from mi_bench.runs import RECORD, RECONSTRUCTIONS, load_reconstructions, read_record

log = logging.getLogger(__name__)

SCORING_KEYS = ("judges", "judge.*", "eval.*", "evaluator.*", "eval_seed", "health.*")
WHERE_KEYS = ("threads", "device", "compile", "tf32", "cache_dir", "data_root", "results_db", "results_dir",
              "progress_interval_s")


@dataclass
class Job:
    """One run to re-score: its record, run folder and the config it is scored with."""

    source: dict[str, Any]
    folder: Path
    cfg: RunConfig


def _from_folder(folder: Path) -> dict[str, Any]:
    if not (folder / RECORD).is_file():
        raise ResultsError(f"{folder} is not a run folder (no {RECORD}): pass a run folder or a run id")
    return read_record(folder / RECORD)


def find_runs(items: list[str], db: str | Path, *, all_runs: bool = False) -> list[tuple[dict[str, Any], Path]]:
    """``(record, run folder)`` of each item (a run folder, or a run id of ``db``) and, with
    ``all_runs``, of every record of ``db`` not re-scored by another record there."""
    out: list[tuple[dict[str, Any], Path]] = []
    db = Path(db)
    by_id: dict[str, dict[str, Any]] | None = None

    def database() -> dict[str, dict[str, Any]]:
        nonlocal by_id
        if by_id is None:
            if not db.is_file():
                raise ResultsError(f"no results database at {db}: pass --db PATH, or run folders instead of run ids")
            by_id = {r["run_id"]: r for r in ResultStore(db).records()}
        return by_id

    def folder_of(rec: dict[str, Any]) -> Path:
        folder = Path(rec.get("run_dir") or "")
        if not rec.get("run_dir") or not folder.is_dir():
            raise ResultsError(f"run {rec['run_id']}: its run folder {rec.get('run_dir')} does not exist; "
                               "pass the folder holding its record.json and reconstructions instead")
        return folder

    for item in items:
        path = Path(item)
        if path.is_dir():
            out.append((_from_folder(path), path))
            continue
        recs = database()
        if item not in recs:
            raise ResultsError(f"no run '{item}' in {db}, and no run folder of that name: list run ids "
                               "with 'mi-bench leaderboard --format json', or pass a run folder")
        out.append((recs[item], folder_of(recs[item])))
    if all_runs:
        recs = database()
        gone = superseded(list(recs.values()))
        out += [(r, folder_of(r)) for r in recs.values() if r["run_id"] not in gone]
    if not out:
        raise ResultsError("nothing to re-score: pass run ids or run folders, or --all with --db")
    seen: set[str] = set()
    unique = []
    for rec, folder in out:
        if rec["run_id"] not in seen:
            seen.add(rec["run_id"])
            unique.append((rec, folder))
    return unique


def plan(runs: list[tuple[dict[str, Any], Path]], overrides: list[str], *, db: str | Path,
         results_dir: str | Path | None = None) -> tuple[list[Job], dict[str, DataSplits]]:
    """Check every run before any work: its reconstructions are readable, its config composes
    with the overrides, its dataset loads. Returns the jobs and the loaded splits (by job's
    data key). New records go to ``db`` and to ``results_dir`` (default: beside the old run
    folder), unless the overrides say ``results_db=`` / ``results_dir=``."""
    jobs: list[Job] = []
    splits: dict[str, DataSplits] = {}
    for rec, folder in runs:
        origin = f"the record of run {rec.get('run_id')}"
        images, classes = load_reconstructions(folder)  # ArtifactError: missing or unreadable
        where = [f"results_db={db}", f"results_dir={results_dir or folder.parent}"]
        cfg = from_record(rec.get("config"), [*where, *overrides], origin=origin,
                          allowed=SCORING_KEYS + WHERE_KEYS)
        key = data_key(cfg)
        if key not in splits:
            try:
                splits[key] = load_splits(cfg.dataset, resolve_data_root(cfg.data_root),
                                          cache_dir=resolve_cache_dir(cfg.cache_dir))
            except DataUnavailable as exc:
                raise DataUnavailable(f"run {rec.get('run_id')}: its dataset cannot be loaded - {exc}") from None
        splits[key].check_classes(classes, f"{folder / RECONSTRUCTIONS}: recorded classes ")
        del images
        jobs.append(Job(rec, folder, cfg))
    return jobs, splits


def data_key(cfg: RunConfig) -> str:
    return stable_hash({"dataset": to_dict(cfg.dataset), "root": str(resolve_data_root(cfg.data_root)),
                        "cache": str(resolve_cache_dir(cfg.cache_dir))})


def rescore_all(jobs: list[Job], splits: dict[str, DataSplits], bars: Any = None) -> list[dict[str, Any]]:
    """Re-score each job (``Runner.rescore``); returns the new records."""
    from mi_bench.pipeline import Runner
    from mi_bench.runtime import NULL_BARS

    out = []
    for k, job in enumerate(jobs, 1):
        log.info("[%d/%d] re-scoring run %s (%s)", k, len(jobs), job.source.get("run_id"), job.folder)
        runner = Runner(job.cfg, bars or NULL_BARS)
        out.append(runner.rescore(job.source, job.folder, splits[data_key(job.cfg)]))
    return out
