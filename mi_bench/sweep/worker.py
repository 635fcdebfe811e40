"""Running one cell of a sweep, in this process or in a worker process
(``python -m mi_bench.sweep <sweep folder> <cell hash> [key=value ...] [--force]``).

:func:`run_cell` never raises for a failure of the run itself: the error line and traceback go
to the cell's state file and the sweep goes on. Each finished cell prints one summary line on
stdout (:func:`report_cell`): the sweep's output.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

from filelock import Timeout

from mi_bench.config import compose, to_dict
from mi_bench.errors import USER_ERRORS
from mi_bench.fsutil import HOST, write_error_line
from mi_bench.sweep.cells import Cell
from mi_bench.sweep.state import SweepState, now

log = logging.getLogger(__name__)



EXIT_DONE, EXIT_FAILED, EXIT_BUSY = 0, 1, 3


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
                    log=log_file, started_at=now(), attempts=int(prev.get("attempts", 0)) + 1,
                    error=None, traceback=None)
        t0 = time.perf_counter()
        try:
            rec = run(cfg, bars or Bars(interval_s=cfg.progress_interval_s), index=index)
        except (KeyboardInterrupt, SystemExit):
            raise  # the state stays "running" with a free lock: status says "interrupted"
        except BaseException as exc:  # noqa: BLE001 - every failure is recorded, the sweep goes on
            state.write(h, status="failed", error=failure_line(exc), error_type=type(exc).__name__,
                        traceback=traceback.format_exc(), config=to_dict(cfg), finished_at=now(),
                        seconds=round(time.perf_counter() - t0, 1))
            log.debug("cell %s failed:\n%s", h, traceback.format_exc())
            return "failed"
        if rec["config_hash"] != h:
            log.warning("cell %s ran as config %s (configs changed since the sweep was planned)",
                        h, rec["config_hash"])
        m = rec["metrics"]
        state.write(h, status="done", run_id=rec["run_id"], record=str(Path(rec["run_dir"]) / RECORD),
                    finished_at=now(), seconds=rec["wall_seconds"],
                    summary={**{k: m.get(k) for k in SUMMARY_METRICS},
                             "absent": sorted(m.get("metric_absent", {}))})
        return "done"
    finally:
        lock.release()


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


def main(argv: list[str]) -> int:
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
