"""How the cells of a sweep are run: a registry of launchers (``mi_bench.launchers``
entry points add more), as DomainBed's ``command_launchers``.

* ``local``: the cells one after another in this process;
* ``workers``: each cell in a fresh worker process (``python -m mi_bench.sweep``), at most N at a
  time (``mi-bench sweep --workers N`` selects it); a crash of one cell fails only that cell.
  Threads are split between workers (``threads = cores // N`` unless ``threads=`` is given) and,
  when cells run on CUDA, each worker slot gets one GPU through ``CUDA_VISIBLE_DEVICES``. Cells
  that need an artifact another running cell is building are started last (they would only wait
  for its lock);
* ``slurm``: one submitit job array per distinct ``slurm`` config section (usually one), with that
  section's partition, time, GPUs, CPUs, memory and array parallelism. Each task is
  checkpointable: on preemption or time-out submitit requeues it and it resumes from the
  artifacts cached so far. Workers write only their ``record.json`` (SQLite must not be shared
  across hosts); ``--wait`` or ``--status`` on the submitting host indexes them.

Shared artifacts are trained once however the cells are launched: the artifact cache holds a
lock per artifact (``mi_bench.artifacts``), and the grid is ordered so that one cell per shared
artifact (an evaluator, a GMI prior) comes first (:func:`mi_bench.sweep.cells.order_cells`).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, ClassVar, Sequence

from mi_bench.config import to_dict
from mi_bench.errors import LaunchError
from mi_bench.registry import LAUNCHERS
from mi_bench.runtime import Bars
from mi_bench.sweep.cells import Cell, order_cells, pick_next
from mi_bench.sweep.state import SweepState, index_done, now
from mi_bench.sweep.worker import EXIT_BUSY, EXIT_DONE, report_cell, run_cell

log = logging.getLogger(__name__)



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
                results[h] = finished(state, cell, rc, time.perf_counter() - t0, len(results) + 1, total)
    except KeyboardInterrupt:
        for h, (proc, _slot, fh, _t0) in running.items():
            proc.terminate()
            proc.wait()
            fh.close()
        raise
    return results


def finished(state: SweepState, cell: Cell, rc: int, seconds: float, k: int, total: int) -> str:
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
                    finished_at=now())
        status = "failed"
    report_cell(state, cell, status, seconds, k, total)
    return status


def _exit_surely_on_preemption(sig: int) -> None:
    """Make submitit's preemption handler end the process.

    The handler checkpoints, requeues and then raises SystemExit from inside the signal handler.
    If the signal lands while a finaliser (``__del__``) runs, Python prints "Exception ignored"
    and the preempted job runs on to the end under the same attempt. Here the SystemExit ends the
    process at once with its code (the cell's OS lock goes with it; its state stays "running",
    which the requeued job counts as an attempt)."""
    import signal

    handler = signal.getsignal(sig)
    if not callable(handler):
        return

    def checkpoint_then_exit(signum: int, frame: Any) -> None:
        try:
            handler(signum, frame)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
            for h in logging.getLogger().handlers:
                h.flush()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code & 0xFF)

    signal.signal(sig, checkpoint_then_exit)


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
            _exit_surely_on_preemption(env._usr_sig())
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
        before = {c.hash: state.read(c.hash) or {} for c in group}
        group_jobs = ex.map_array(task, [c.hash for c in group])
        for c, job in zip(group, group_jobs):
            paths = getattr(job, "paths", None)
            # a job may have started (and written "running") before this line runs: then it stays
            state.write(c.hash, expect=before[c.hash], status="queued", tokens=c.tokens, job_id=job.job_id,
                        log=str(paths.stdout) if paths else None, submitted_at=now())
        log.info("submitted %d cell(s) as job array %s (cluster %s, partition %s, %d min, %d GPU(s) "
                 "per cell, %d at once); logs under %s", len(group), group_jobs[0].job_id.split("_")[0],
                 sc.cluster, sc.partition or "default", sc.time_min, sc.gpus, sc.array_parallelism,
                 state.folder / "logs" / "slurm")
        jobs.extend(group_jobs)
    return jobs


# -- the registry --------------------------------------------------------------------------------

class Launcher:
    """Runs the cells of a sweep that are due (``cells``, in the order given) and returns
    ``{cell hash: done / failed / busy / skipped}``, or None when the cells were handed to a
    scheduler and not waited for. Subclasses register with ``@LAUNCHERS.register("name")``."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""

    def launch(self, state: SweepState, cells: list[Cell], *, workers: int, force: bool, wait: bool,
               quiet: bool, needs: dict[str, set]) -> dict[str, str] | None:
        raise NotImplementedError


@LAUNCHERS.register("local")
class LocalLauncher(Launcher):
    summary = "the cells one after another in this process"

    def launch(self, state, cells, *, workers, force, wait, quiet, needs):
        results: dict[str, str] = {}
        for k, c in enumerate(cells, 1):
            log.info("[%d/%d] %s", k, len(cells), c.label)
            t0 = time.perf_counter()
            with Bars(not quiet, c.cfg.progress_interval_s) as bars:
                results[c.hash] = run_cell(state.folder, c.hash, bars=bars, force=force)
            report_cell(state, c, results[c.hash], time.perf_counter() - t0, k, len(cells))
        return results


@LAUNCHERS.register("workers")
class WorkersLauncher(Launcher):
    summary = "each cell in its own worker process, --workers N at a time (mi-bench sweep --workers N)"

    def launch(self, state, cells, *, workers, force, wait, quiet, needs):
        return launch_local(state, cells, workers, needs=needs, force=force)


@LAUNCHERS.register("slurm")
class SlurmLauncher(Launcher):
    summary = "one submitit job array per slurm.* section; --wait waits and indexes the records"

    def launch(self, state, cells, *, workers, force, wait, quiet, needs):
        try:
            jobs = launch_slurm(state, cells, force=force)
        except Exception as exc:  # noqa: BLE001 - sbatch missing, submission refused, ...
            from mi_bench.sweep.worker import failure_line

            raise LaunchError(f"Slurm submission failed: {failure_line(exc)}") from None
        if not wait:
            return None
        for job in jobs:
            try:
                job.result()
            except Exception as exc:  # noqa: BLE001 - the job itself died (the cell state says more)
                log.debug("job %s: %s", job.job_id, exc)
        from mi_bench.results.store import ResultStore

        db = cells[0].cfg.results_db
        index_done(state, cells, db)
        indexed = ResultStore(db).config_hashes()
        results = {c.hash: state.status(c.hash, indexed)[0] for c in cells}
        for k, c in enumerate(cells, 1):
            report_cell(state, c, results[c.hash], (state.read(c.hash) or {}).get("seconds") or 0, k, len(cells))
        return results
