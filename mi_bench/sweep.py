"""Sweeps: the cells of a grid, where each stands, and how they run.

A sweep is the cartesian product of comma-separated override values
(``defense=none,bido attack=gmi,kedmi seed=0,1,2``). Each combination is a *cell*, identified by
its config hash (what it computes; threads, device and paths left out). When no ``seed=`` is
given the sweep runs seeds 0, 1 and 2: a comparison with a matched baseline needs at least three.

Where a sweep stands lives in ``<results_dir>/../sweeps/<sweep id>/`` (the id hashes the cells'
config hashes, so the same command finds the same folder):

* ``manifest.json``      the cells (config hash and override tokens);
* ``cells/<hash>.json``  one state file per cell, written atomically by whoever runs it:
                         ``queued`` (submitted to Slurm), ``running`` (host, pid, job id, log),
                         ``done`` (run id, record path) or ``failed`` (its config, the error
                         line and the traceback);
* ``cells/<hash>.lock``  held while the cell runs (an OS lock: free again if its process dies,
                         so a ``running`` cell whose lock is free was interrupted);
* ``logs/<hash>.log``    a local worker's output; Slurm logs are under ``logs/slurm/``.

A cell whose record is in the results database is done and skipped; a failed cell is skipped
until ``--retry-failed``; an interrupted one runs again.

Launchers:

* ``local``, 1 worker: the cells run one after another in this process.
* ``local``, N workers: each cell runs in a fresh worker process (``python -m mi_bench.sweep``),
  at most N at a time; a crash of one cell fails only that cell. Threads are split between
  workers (``threads = cores // N`` unless ``threads=`` is given) and, when cells run on CUDA,
  each worker slot gets one GPU through ``CUDA_VISIBLE_DEVICES``. Cells that need an artifact
  another running cell is building are started last (they would only wait for its lock).
* ``slurm``: one submitit job array per distinct ``slurm`` config section (usually one), with
  that section's partition, time, GPUs, CPUs, memory and array parallelism. Each task is
  checkpointable: on preemption or time-out submitit requeues it and it resumes from the
  artifacts cached so far. Workers write only their ``record.json`` (SQLite must not be shared
  across hosts); ``--wait`` or ``--status`` on the submitting host indexes them.

Shared artifacts are trained once however the cells are launched: the artifact cache holds a
lock per artifact (``mi_bench.artifacts``), and the grid is ordered so that one cell per shared
artifact (an evaluator, a GMI prior) comes first.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
import os
import subprocess
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from filelock import FileLock, Timeout

from mi_bench.config import RunConfig, compose, config_hash, stable_hash, to_dict
from mi_bench.errors import USER_ERRORS, ConfigError
from mi_bench.fsutil import HOST, atomic_write_json, write_error_line

log = logging.getLogger(__name__)

DEFAULT_SEEDS = "0,1,2"
SHARED_PATHS = ("results_db", "results_dir", "cache_dir", "data_root")
EXIT_DONE, EXIT_FAILED, EXIT_BUSY = 0, 1, 3



# -- cells -------------------------------------------------------------------------------------

@dataclass
class Cell:
    tokens: list[str]
    cfg: RunConfig
    hash: str

    @property
    def label(self) -> str:
        """The cell's overrides, without those that only say where or how fast it runs."""
        from mi_bench.config import NON_SEMANTIC

        return " ".join(t for t in self.tokens if t.split("=", 1)[0] not in NON_SEMANTIC)


def _expand(token: str) -> list[str]:
    key, _, value = token.partition("=")
    if not value or value.startswith("[") or "," not in value:
        return [token]
    return [f"{key}={v}" for v in value.split(",")]


def expand(overrides: Sequence[str]) -> list[list[str]]:
    """The cartesian product of comma-separated values; ``seed=0,1,2`` when no seed is given."""
    tokens = list(overrides)
    if not any(t.partition("=")[0] == "seed" for t in tokens):
        tokens.append(f"seed={DEFAULT_SEEDS}")
    return [list(c) for c in itertools.product(*[_expand(t) for t in tokens])]


def make_cells(overrides: Sequence[str]) -> list[Cell]:
    """Compose and validate every cell before any work (ConfigError on the first bad one)."""
    cells: list[Cell] = []
    seen: dict[str, Cell] = {}
    for tokens in expand(overrides):
        cfg = compose(tokens)
        h = config_hash(to_dict(cfg))
        if h in seen:
            log.warning("cells '%s' and '%s' compute the same thing (they differ only in threads, "
                        "device or paths): running it once", seen[h].label, " ".join(tokens))
            continue
        cell = Cell(tokens, cfg, h)
        seen[h] = cell
        cells.append(cell)
    for key in SHARED_PATHS:
        values = {getattr(c.cfg, key) for c in cells}
        if len(values) > 1:
            raise ConfigError(f"{key} differs between cells ({', '.join(sorted(map(str, values)))}): "
                              "one sweep writes to one place; run a sweep per value")
    return cells


# -- state -------------------------------------------------------------------------------------

def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class SweepState:
    """The manifest and per-cell state files of one sweep (see the module docstring)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    @classmethod
    def for_cells(cls, cells: list[Cell]) -> "SweepState":
        sweep_id = stable_hash(sorted(c.hash for c in cells), n=12)
        return cls(Path(cells[0].cfg.results_dir).parent / "sweeps" / sweep_id)

    @property
    def sweep_id(self) -> str:
        return self.folder.name

    def cell_file(self, h: str) -> Path:
        return self.folder / "cells" / f"{h}.json"

    def log_path(self, h: str) -> Path:
        return self.folder / "logs" / f"{h}.log"

    def lock(self, h: str) -> FileLock:
        p = self.folder / "cells" / f"{h}.lock"
        p.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(p))

    def write_manifest(self, cells: list[Cell], overrides: Sequence[str]) -> None:
        atomic_write_json(self.folder / "manifest.json", {
            "sweep_id": self.sweep_id, "created_at": _now(), "overrides": list(overrides),
            "cells": [{"hash": c.hash, "tokens": c.tokens} for c in cells],
        })

    def manifest_tokens(self, h: str) -> list[str]:
        manifest = json.loads((self.folder / "manifest.json").read_text())
        for c in manifest["cells"]:
            if c["hash"] == h:
                return list(c["tokens"])
        raise KeyError(f"cell {h} is not in {self.folder / 'manifest.json'}")

    def read(self, h: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.cell_file(h).read_text())
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError) as exc:
            log.warning("unreadable cell state %s (%s): treating the cell as pending", self.cell_file(h), exc)
            return None

    def write(self, h: str, **fields: Any) -> dict[str, Any]:
        state = {**(self.read(h) or {}), **fields, "updated_at": _now()}
        atomic_write_json(self.cell_file(h), state)
        return state

    def _lock_free(self, h: str) -> bool:
        lock = self.lock(h)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return False
        lock.release()
        return True

    def status(self, h: str, indexed: set[str]) -> tuple[str, dict[str, Any]]:
        """done / running / queued / failed / interrupted / pending, and the cell's state."""
        st = self.read(h) or {}
        if h in indexed:
            return "done", st
        s = st.get("status")
        if s == "done" and Path(st.get("record", "")).is_file():
            return "done", st
        if s == "running":
            # the lock is an OS lock: free means its process is gone. Another host's lock cannot
            # be trusted on every network file system, so its state is taken as written.
            if st.get("host") == HOST and self._lock_free(h):
                return "interrupted", st
            return "running", st
        if s in ("queued", "failed"):
            return s, st
        return "pending", st


# -- running one cell --------------------------------------------------------------------------

def failure_line(exc: BaseException) -> str:
    """One line saying why a run failed (no traceback)."""
    if isinstance(exc, FloatingPointError):
        return f"training diverged: {exc}"
    if isinstance(exc, OSError):
        return write_error_line(exc)
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    if isinstance(exc, USER_ERRORS + (ValueError,)) and first:
        return first
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def run_cell(folder: Path, h: str, *, bars: Any = None, index: bool = True, force: bool = False,
             extra_tokens: Sequence[str] = (), job_id: str | None = None, log_file: str | None = None) -> str:
    """Run one cell of a sweep and record its state; returns done / failed / busy / skipped.

    Never raises for a failure of the run itself (the error goes to the cell's state file)."""
    from mi_bench.pipeline import run
    from mi_bench.results import ResultStore
    from mi_bench.runs import RECORD
    from mi_bench.runtime import Bars

    state = SweepState(folder)
    tokens = state.manifest_tokens(h)
    lock = state.lock(h)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.warning("cell %s (%s) is running in another process: left to it", h, " ".join(tokens))
        return "busy"
    cfg = None
    try:
        prev = state.read(h) or {}
        if not force and prev.get("status") == "done" and Path(prev.get("record", "")).is_file():
            return "skipped"
        cfg = compose([*tokens, *extra_tokens])
        if not force and index and ResultStore(cfg.results_db).has_config(h):
            state.write(h, status="done", note="record found in the results database")
            return "skipped"
        state.write(h, status="running", tokens=tokens, host=HOST, pid=os.getpid(), job_id=job_id,
                    log=log_file, started_at=_now(), attempts=int(prev.get("attempts", 0)) + 1,
                    error=None, traceback=None)
        t0 = time.perf_counter()
        try:
            rec = run(cfg, bars or Bars(interval_s=cfg.progress_interval_s), index=index)
        except (KeyboardInterrupt, SystemExit):
            raise  # the state stays "running" with a free lock: status says "interrupted"
        except BaseException as exc:  # noqa: BLE001 - every failure is recorded, the sweep goes on
            state.write(h, status="failed", error=failure_line(exc), error_type=type(exc).__name__,
                        traceback=traceback.format_exc(), config=to_dict(cfg), finished_at=_now(),
                        seconds=round(time.perf_counter() - t0, 1))
            log.debug("cell %s failed:\n%s", h, traceback.format_exc())
            return "failed"
        if rec["config_hash"] != h:
            log.warning("cell %s ran as config %s (configs changed since the sweep was planned)",
                        h, rec["config_hash"])
        m = rec["metrics"]
        state.write(h, status="done", run_id=rec["run_id"], record=str(Path(rec["run_dir"]) / RECORD),
                    finished_at=_now(), seconds=rec["wall_seconds"],
                    summary={**{k: m.get(k) for k in SUMMARY_METRICS},
                             "absent": sorted(m.get("metric_absent", {}))})
        return "done"
    finally:
        lock.release()


# -- planning: which artifacts each cell trains --------------------------------------------------

def plan_cells(cells: list[Cell]) -> dict[str, dict[str, tuple[str, str]]]:
    """``{cell hash: {stage: (kind, key)}}`` without training (datasets are loaded once each)."""
    from mi_bench.artifacts import resolve_cache_dir
    from mi_bench.data import load_splits, resolve_data_root
    from mi_bench.stages import artifact_plan

    splits_cache: dict[str, Any] = {}
    plans = {}
    for c in cells:
        dkey = stable_hash([to_dict(c.cfg.dataset), c.cfg.data_root])
        if dkey not in splits_cache:
            splits_cache[dkey] = load_splits(c.cfg.dataset, resolve_data_root(c.cfg.data_root),
                                             cache_dir=resolve_cache_dir(c.cfg.cache_dir))
        plans[c.hash] = artifact_plan(c.cfg, splits_cache[dkey])
    return plans


def cached_artifacts(cells: list[Cell], plans: dict[str, dict[str, tuple[str, str]]]) -> set[tuple[str, str]]:
    from mi_bench.artifacts import ArtifactStore, resolve_cache_dir

    store = ArtifactStore(resolve_cache_dir(cells[0].cfg.cache_dir))
    return {a for p in plans.values() for a in p.values() if store.exists(*a)}


def order_cells(cells: list[Cell], needs: dict[str, set]) -> list[Cell]:
    """One cell per artifact that several cells need (not cached yet) first, then the rest;
    otherwise the grid's order."""
    count = Counter(a for c in cells for a in needs.get(c.hash, ()))
    shared = {a for a, n in count.items() if n > 1}
    covered: set = set()
    first, rest = [], []
    for c in cells:
        new = (needs.get(c.hash, set()) & shared) - covered
        if new:
            first.append(c)
            covered |= new
        else:
            rest.append(c)
    return first + rest


def pick_next(pending: list[Cell], needs: dict[str, set], building: set) -> Cell:
    """The first pending cell that needs the fewest artifacts other running cells are building."""
    best = min(range(len(pending)), key=lambda i: (len(needs.get(pending[i].hash, set()) & building), i))
    return pending.pop(best)


# -- launchers ---------------------------------------------------------------------------------

def _user_set(tokens: Sequence[str], key: str) -> bool:
    return any(t.partition("=")[0] == key for t in tokens)


def visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001
        return []


def launch_local(state: SweepState, cells: list[Cell], workers: int, *, needs: dict[str, set],
                 force: bool = False, poll_s: float = 0.2) -> dict[str, str]:
    """Run ``cells`` in at most ``workers`` worker processes; returns {hash: done/failed/...}."""
    cores = os.cpu_count() or 1
    threads = max(1, cores // workers)
    uses_cuda = any(c.cfg.device != "cpu" for c in cells)
    gpus = visible_gpus() if uses_cuda else []
    if uses_cuda and gpus and workers > len(gpus):
        log.warning("%d workers share %d GPU(s)", workers, len(gpus))
    pending = order_cells(cells, needs)
    slots = list(range(workers))
    running: dict[str, tuple[subprocess.Popen, int, Any, float]] = {}
    building: set = set()
    results: dict[str, str] = {}
    total = len(cells)
    try:
        while pending or running:
            while slots and pending:
                cell = pick_next(pending, needs, building)
                slot = slots.pop(0)
                extra = []
                env = dict(os.environ)
                if not _user_set(cell.tokens, "threads"):
                    extra.append(f"threads={threads}")
                env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(
                    cell.cfg.threads if _user_set(cell.tokens, "threads") else threads)
                if gpus and cell.cfg.device != "cpu":
                    env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
                    if cell.cfg.device.startswith("cuda:"):
                        extra.append("device=cuda")
                logp = state.log_path(cell.hash)
                logp.parent.mkdir(parents=True, exist_ok=True)
                fh = open(logp, "ab")
                cmd = [sys.executable, "-m", "mi_bench.sweep", str(state.folder), cell.hash, *extra]
                if force:
                    cmd.append("--force")
                proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
                running[cell.hash] = (proc, slot, fh, time.perf_counter())
                building |= needs.get(cell.hash, set())
                log.info("[start] %s (worker %d%s, log %s)", cell.label, slot,
                         f", GPU {env['CUDA_VISIBLE_DEVICES']}" if "CUDA_VISIBLE_DEVICES" in env and gpus else "",
                         logp)
            time.sleep(poll_s)
            for h in list(running):
                proc, slot, fh, t0 = running[h]
                rc = proc.poll()
                if rc is None:
                    continue
                fh.close()
                del running[h]
                slots.append(slot)
                building -= needs.get(h, set())
                cell = next(c for c in cells if c.hash == h)
                results[h] = _finished(state, cell, rc, time.perf_counter() - t0, len(results) + 1, total)
    except KeyboardInterrupt:
        for h, (proc, _slot, fh, _t0) in running.items():
            proc.terminate()
            proc.wait()
            fh.close()
        raise
    return results


def _finished(state: SweepState, cell: Cell, rc: int, seconds: float, k: int, total: int) -> str:
    st = state.read(cell.hash) or {}
    if rc == EXIT_BUSY:
        status = "busy"
    elif rc == EXIT_DONE and st.get("status") == "done":
        status = "done"
    elif st.get("status") == "failed":
        status = "failed"
    else:  # the worker died without recording why (killed, out of memory, segfault)
        why = f"signal {-rc}" if rc < 0 else f"exit status {rc}"
        state.write(cell.hash, status="failed", error=f"worker process ended with {why} before "
                    f"recording a result; see {state.log_path(cell.hash)}", config=to_dict(cell.cfg),
                    finished_at=_now())
        status = "failed"
    report_cell(state, cell, status, seconds, k, total)
    return status


SUMMARY_METRICS = ("target_acc", "attack_acc", "knn_dist", "lpips_nn", "kid_eval")


def cell_summary_line(k: int, total: int, label: str, summary: dict[str, Any], run_id: str,
                      seconds: float) -> str:
    """The stdout line of a finished cell: its overrides and headline numbers."""
    def f(key: str, fmt: str) -> str:
        v = summary.get(key)
        if v is None:
            return "n/a" if key in summary.get("absent", []) else "failed"
        return format(v, fmt)
    return (f"[{k}/{total}] {label}: target acc {f('target_acc', '.3f')}, attack acc "
            f"{f('attack_acc', '.3f')}, KNN {f('knn_dist', '.3g')}, LPIPS-NN {f('lpips_nn', '.3g')}, "
            f"KID(E) {f('kid_eval', '.3g')}, run {run_id} ({seconds:.1f}s)")


def report_cell(state: SweepState, cell: Cell, status: str, seconds: float, k: int, total: int) -> None:
    """A finished cell: its summary line on stdout (the sweep's output), anything else logged."""
    import click

    st = state.read(cell.hash) or {}
    if status == "failed":
        log.error("[%d/%d] failed: %s: %s", k, total, cell.label, st.get("error"))
    elif status == "done":
        click.echo(cell_summary_line(k, total, cell.label, st.get("summary") or {},
                                     st.get("run_id", "?"), seconds))
    else:
        log.info("[%d/%d] %s: %s", k, total, status, cell.label)


class CellTask:
    """The callable a Slurm job array runs: one cell per task (checkpointable: requeued on
    preemption or time-out, it runs the cell again from the artifacts cached so far)."""

    def __init__(self, folder: str, extra_tokens: list[str], force: bool) -> None:
        self.folder = folder
        self.extra_tokens = extra_tokens
        self.force = force

    def __call__(self, h: str) -> str:
        import submitit

        from mi_bench.runtime import setup_logging

        setup_logging("INFO")
        try:
            env = submitit.JobEnvironment()
            job_id, logf = env.job_id, str(env.paths.stdout)
        except RuntimeError:  # debug executor: no job environment
            job_id, logf = None, None
        return run_cell(Path(self.folder), h, index=False, force=self.force,
                        extra_tokens=self.extra_tokens, job_id=job_id, log_file=logf)

    def checkpoint(self, h: str) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self, h)


def _slurm_executor(state: SweepState, sc: Any) -> Any:
    import submitit

    ex = submitit.AutoExecutor(folder=state.folder / "logs" / "slurm", cluster=sc.cluster,
                               slurm_max_num_timeout=sc.max_requeues,
                               local_max_num_timeout=sc.max_requeues)
    params: dict[str, Any] = {
        "name": f"mi-bench-{state.sweep_id}", "timeout_min": int(sc.time_min),
        "cpus_per_task": int(sc.cpus), "gpus_per_node": int(sc.gpus),
        "slurm_array_parallelism": int(sc.array_parallelism),
    }
    if sc.mem_gb:
        params["mem_gb"] = float(sc.mem_gb)
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(sc, key):
            params[f"slurm_{key}"] = getattr(sc, key)
    ex.update_parameters(**params)
    return ex


def launch_slurm(state: SweepState, cells: list[Cell], *, force: bool = False) -> list[Any]:
    """Submit the cells as job arrays (one per distinct ``slurm`` section); returns the jobs."""
    groups: dict[str, list[Cell]] = {}
    for c in cells:
        groups.setdefault(json.dumps(to_dict(c.cfg.slurm), sort_keys=True), []).append(c)
    jobs = []
    for group in groups.values():
        sc = group[0].cfg.slurm
        ex = _slurm_executor(state, sc)
        extra = [] if any(_user_set(c.tokens, "threads") for c in group) else [f"threads={sc.cpus}"]
        task = CellTask(str(state.folder), extra, force)
        group_jobs = ex.map_array(task, [c.hash for c in group])
        for c, job in zip(group, group_jobs):
            paths = getattr(job, "paths", None)
            state.write(c.hash, status="queued", tokens=c.tokens, job_id=job.job_id,
                        log=str(paths.stdout) if paths else None, submitted_at=_now())
        log.info("submitted %d cell(s) as job array %s (cluster %s, partition %s, %d min, %d GPU(s) "
                 "per cell, %d at once); logs under %s", len(group), group_jobs[0].job_id.split("_")[0],
                 sc.cluster, sc.partition or "default", sc.time_min, sc.gpus, sc.array_parallelism,
                 state.folder / "logs" / "slurm")
        jobs.extend(group_jobs)
    return jobs


def index_done(state: SweepState, cells: list[Cell], db: str) -> int:
    """Index the records of done cells that the database does not hold yet (Slurm workers do
    not write the database); returns how many were added."""
    from mi_bench.results import ResultStore
    from mi_bench.runs import read_record

    store = ResultStore(db)
    indexed = store.config_hashes()
    new = []
    for c in cells:
        st = state.read(c.hash) or {}
        if c.hash not in indexed and st.get("status") == "done" and Path(st.get("record", "")).is_file():
            new.append(read_record(Path(st["record"])))
    return store.extend(new) if new else 0


# -- worker entry point: python -m mi_bench.sweep <sweep folder> <cell hash> [key=value ...] ------

def _worker_main(argv: list[str]) -> int:
    from mi_bench.runtime import setup_logging

    setup_logging("INFO")
    force = "--force" in argv
    args = [a for a in argv if a != "--force"]
    folder, h, extra = Path(args[0]), args[1], args[2:]
    status = run_cell(folder, h, force=force, extra_tokens=extra,
                      log_file=str(SweepState(folder).log_path(h)))
    if status == "failed":
        st = SweepState(folder).read(h) or {}
        log.error("cell %s failed: %s", h, st.get("error"))
        return EXIT_FAILED
    return EXIT_BUSY if status == "busy" else EXIT_DONE


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
