"""Where a sweep stands: ``<results_dir>/../sweeps/<sweep id>/`` (the id hashes the cells' config
hashes, so the same command finds the same folder):

* ``manifest.json``      the cells (config hash and override tokens);
* ``cells/<hash>.json``  one state file per cell, written atomically by whoever runs it:
                         ``queued`` (submitted to Slurm), ``running`` (host, pid, job id, log),
                         ``done`` (run id, record path) or ``failed`` (its config, the error
                         line and the traceback);
* ``cells/<hash>.state.lock`` held while a state file is read, merged and written;
* ``cells/<hash>.lock``  held while the cell runs (an OS lock: free again if its process dies,
                         so a ``running`` cell whose lock is free was interrupted);
* ``logs/<hash>.log``    a local worker's output; Slurm logs are under ``logs/slurm/``.

A cell whose record is in the results database is done and skipped; a failed cell is skipped
until ``--retry-failed``; an interrupted one runs again.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any, Sequence

from filelock import FileLock, Timeout

from mi_bench.config import stable_hash
from mi_bench.fsutil import HOST, atomic_write_json
from mi_bench.sweep.cells import Cell

log = logging.getLogger(__name__)



def now() -> str:
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
            "sweep_id": self.sweep_id, "created_at": now(), "overrides": list(overrides),
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

    def write(self, h: str, *, expect: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into the cell's state; returns the state now on disk.

        The read-merge-write holds the cell's state lock, so a launcher and a worker writing at
        once cannot drop each other's fields. With ``expect`` (the state as read earlier, ``{}`` for
        none) the write is skipped if the state has changed since: a launcher marks a cell
        ``queued`` only if its job has not already started and written ``running``."""
        p = self.folder / "cells" / f"{h}.state.lock"
        p.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(p)):
            cur = self.read(h) or {}
            if expect is not None and cur != expect:
                return cur
            state = {**cur, **fields, "updated_at": now()}
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
