"""Process-wide runtime policy: threads, device, seeding, logging and progress bars.

Streams: a command's result (summary table, listing, leaderboard, ``--json``) goes to stdout;
logs, progress bars (rich, and tqdm's for weight downloads) and errors go to stderr, so
``mi-bench run ... > result.txt`` captures the table and nothing else.

Threads: on small CPUs torch's default (one intra-op thread per core) is often much slower
than one thread for the small convolutions used here, especially when anything else runs on
the machine. mi-bench therefore sets the intra-op thread count explicitly from the config key
``threads`` (default 1; measured in results/threads.md) and always one inter-op thread.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
)

console = Console(stderr=True)  # logs, progress bars, errors


def stdout_console() -> Console:
    """Console for a command's result (tables) on stdout. When stdout is not a terminal
    (``mi-bench run > result.txt``) tables get 200 columns ($COLUMNS overrides) instead of
    rich's 80, so wide tables are not truncated."""
    c = Console()
    return c if c.is_terminal or os.environ.get("COLUMNS") else Console(width=200)
_INTEROP_SET = False


def set_threads(n: int) -> None:
    global _INTEROP_SET
    torch.set_num_threads(max(1, n))
    if not _INTEROP_SET:
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already started parallel work; harmless
            pass
        _INTEROP_SET = True


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda requested but no CUDA device is available: use device=cpu")
    return dev


def setup_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    if any(getattr(h, "_mi_bench", False) for h in root.handlers):
        root.setLevel(level)
        return
    handler = RichHandler(console=console, show_path=False, rich_tracebacks=False)
    handler._mi_bench = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    root.setLevel(level)


class Bars:
    """Thin wrapper over rich.progress: ``with bars.task("GAN", total=n) as t: t.advance()``.

    Disabled (no output, same API) when ``enabled`` is False; tests and ``--quiet`` use that.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._progress: Progress | None = None

    def __enter__(self) -> "Bars":
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                console=console, transient=False,
            )
            self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    @contextmanager
    def task(self, description: str, total: int) -> Iterator["_Task"]:
        t = _Task(self._progress, description, total)
        try:
            yield t
        finally:
            t.close()


class _Task:
    def __init__(self, progress: Progress | None, description: str, total: int) -> None:
        self._p = progress
        self._id = progress.add_task(description, total=total, info="") if progress else None

    def advance(self, n: int = 1, **info: Any) -> None:
        if self._p is None:
            return
        text = " ".join(f"{k}={_fmt(v)}" for k, v in info.items())
        self._p.update(self._id, advance=n, info=text)

    def close(self) -> None:
        if self._p is not None:
            self._p.refresh()


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


NULL_BARS = Bars(enabled=False)

