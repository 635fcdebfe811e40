"""Sweeps: the cells of a grid, where each stands, and how they run.

* :mod:`~mi_bench.sweep.cells` - the cartesian product of override values (``@sweep`` = a field's
  documented range), each cell composed and validated before any work, and the artifacts each
  would train;
* :mod:`~mi_bench.sweep.state` - the sweep's folder: manifest, one state file and lock per cell;
* :mod:`~mi_bench.sweep.worker` - one cell run and recorded (also as ``python -m mi_bench.sweep``);
* :mod:`~mi_bench.sweep.launchers` - the launcher registry: ``local``, ``workers``, ``slurm``;
* :mod:`~mi_bench.sweep.run` - a whole sweep: what is due, launched; its status; a dry run.
"""

from mi_bench.sweep.cells import DEFAULT_SEEDS, Cell, expand, make_cells, order_cells, pick_next, plan_cells
from mi_bench.sweep.launchers import CellTask, Launcher, finished, launch_local, launch_slurm, visible_gpus
from mi_bench.sweep.run import SweepOutcome, artifact_needs, dry_run, run_sweep, status
from mi_bench.sweep.state import SweepState, index_done
from mi_bench.sweep.worker import (
    EXIT_BUSY, EXIT_DONE, EXIT_FAILED, SUMMARY_METRICS, cell_summary_line, failure_line, report_cell, run_cell,
)

__all__ = [
    "DEFAULT_SEEDS", "Cell", "expand", "make_cells", "order_cells", "pick_next", "plan_cells",
    "CellTask", "Launcher", "finished", "launch_local", "launch_slurm", "visible_gpus",
    "SweepOutcome", "artifact_needs", "dry_run", "run_sweep", "status",
    "SweepState", "index_done",
    "EXIT_BUSY", "EXIT_DONE", "EXIT_FAILED", "SUMMARY_METRICS", "cell_summary_line", "failure_line",
    "report_cell", "run_cell",
]
