"""A sweep from its overrides to its finished cells: what ``mi-bench sweep`` does, without the
printing (``mi_bench.cli`` parses and prints; ``mi_bench.tables`` lays out the tables).

:func:`run_sweep` checks that results can be stored, records the manifest, decides which cells
are due (not done; failed ones only with ``retry_failed``; every one with ``force``) and hands
them to a launcher (``mi_bench.sweep.launchers``). :func:`status` and :func:`dry_run` describe a
sweep without running anything.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from mi_bench.fsutil import sweep_tmp
from mi_bench.registry import LAUNCHERS
from mi_bench.results.store import ResultStore, preflight
from mi_bench.sweep.cells import Cell, cached_artifacts, order_cells, plan_cells
from mi_bench.sweep.state import SweepState, index_done

log = logging.getLogger(__name__)


@dataclass
class SweepOutcome:
    state: SweepState
    todo: list[Cell]
    results: dict[str, str] | None  # None: handed to a scheduler, not waited for
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> list[str]:
        return [h for h, s in (self.results or {}).items() if s == "failed"]


def artifact_needs(cells: list[Cell]) -> dict[str, set]:
    """``{cell hash: artifacts it would train}`` (those not in the cache yet)."""
    plans = plan_cells(cells)
    cached = cached_artifacts(cells, plans)
    return {h: {a for a in p.values() if a not in cached} for h, p in plans.items()}


def run_sweep(cells: list[Cell], overrides: list[str] | tuple[str, ...], *, launcher: str = "local",
              workers: int = 1, force: bool = False, retry_failed: bool = False, wait: bool = False,
              quiet: bool = False) -> SweepOutcome:
    """Run the due cells of a sweep with the named launcher. User errors (an unusable results
    path, an unknown launcher, a refused submission) raise before any cell runs."""
    impl = LAUNCHERS.get(launcher)()
    state = SweepState.for_cells(cells)
    cfg0 = cells[0].cfg
    preflight(cfg0)  # the results database and folders work, before any training
    indexed = ResultStore(cfg0.results_db).config_hashes()
    sweep_tmp(state.folder, depth=2)  # state files a killed launcher or worker left half-written
    state.write_manifest(cells, list(overrides))
    todo, skipped = [], {"done": 0, "failed": 0, "running": 0}
    for c in cells:
        status, _ = state.status(c.hash, indexed)
        if force or status in ("pending", "interrupted") or (status == "failed" and retry_failed):
            todo.append(c)
        elif status in ("queued", "running"):
            skipped["running"] += 1
        else:
            skipped[status] += 1
    log.info("sweep %s: %d cells; %d to run, %d done, %d failed (skipped%s), %d running elsewhere",
             state.sweep_id, len(cells), len(todo), skipped["done"], skipped["failed"],
             "" if not skipped["failed"] else "; --retry-failed runs them", skipped["running"])
    if not todo:
        return SweepOutcome(state, todo, {}, skipped)
    needs = artifact_needs(todo) if launcher == "workers" else {}
    results = impl.launch(state, todo, workers=workers, force=force, wait=wait, quiet=quiet, needs=needs)
    if results is None:
        log.info("'mi-bench sweep %s --status' shows progress and indexes finished records", " ".join(overrides))
    return SweepOutcome(state, todo, results, skipped)


def status(cells: list[Cell]) -> tuple[SweepState, list[tuple[str, Cell, dict[str, Any]]]]:
    """Where each cell stands (``done`` / ``running`` / ``queued`` / ``failed`` /
    ``interrupted`` / ``pending``, and its state file), after indexing the records of done cells
    that the database does not hold yet (Slurm workers write none)."""
    state = SweepState.for_cells(cells)
    store = ResultStore(cells[0].cfg.results_db)
    added = index_done(state, cells, store.path) if state.folder.is_dir() else 0
    if added:
        log.info("indexed %d finished record(s) into %s", added, store.path)
    indexed = store.config_hashes()
    rows = []
    for c in cells:
        st, info = state.status(c.hash, indexed)
        rows.append((st, c, info))
    return state, rows


@dataclass
class DryRun:
    state: SweepState
    rows: list[tuple[int, str, Cell, list[tuple[str, str, str]]]]  # (#, status, cell, [(stage, key, what)])
    runs: int  # cells without a record
    trained: Counter  # artifacts the sweep would train, by kind


def dry_run(cells: list[Cell]) -> DryRun:
    """The cells in launch order, which have records, and for each its artifacts: ``TRAIN`` (this
    cell trains it), ``from #k`` (an earlier cell does), ``cached`` or ``-`` (a cell with a record)."""
    state = SweepState.for_cells(cells)
    store = ResultStore(cells[0].cfg.results_db)
    indexed = store.config_hashes() if store.path.is_file() else set()
    plans = plan_cells(cells)
    cached = cached_artifacts(cells, plans)
    needs = {h: {a for a in p.values() if a not in cached} for h, p in plans.items()}
    trained_by: dict = {}
    rows = []
    for i, c in enumerate(order_cells(cells, needs), 1):
        st, _ = state.status(c.hash, indexed)
        parts = []
        for stage, a in plans[c.hash].items():
            if a in cached:
                parts.append((stage, a[1], "cached"))
            elif st == "done":
                parts.append((stage, a[1], "-"))
            elif a in trained_by:
                parts.append((stage, a[1], f"from cell #{trained_by[a]}"))
            else:
                trained_by[a] = i
                parts.append((stage, a[1], "TRAIN"))
        rows.append((i, "has record" if st == "done" else st, c, parts))
    runs = sum(1 for c in cells if state.status(c.hash, indexed)[0] != "done")
    return DryRun(state, rows, runs, Counter(a[0] for a in trained_by))
