"""Process-wide runtime policy: threads, device, seeding, logging and progress bars.

Streams: a command's result (summary table, listing, leaderboard, ``--json``) goes to stdout;
logs, progress bars (rich, and tqdm's for weight downloads) and errors go to stderr, so
``mi-bench run ... > result.txt`` captures the table and nothing else. When stderr is not a
terminal (``2> log``, a Slurm job, a sweep worker) there are no bars: every running stage logs
one line every ``progress_interval_s`` seconds (30) and one when it ends (:class:`Bars`), and
each log record is one plain line with date and time (:func:`setup_logging`).

Threads: on small CPUs torch's default (one intra-op thread per core) is often much slower
than one thread for the small convolutions used here, especially when anything else runs on
the machine. mi-bench therefore sets the intra-op thread count explicitly from the config key
``threads`` (default 1; measured in results/threads.md) and always one inter-op thread.

Accelerators (README "GPU"): :func:`configure_device` turns on cuDNN autotuning and TF32 for
matmuls and convolutions on CUDA (config key ``tf32``) and returns those settings for the
record. :class:`Accel` carries the per-run performance options of the training loops: ``amp``
(``bf16`` autocast, off by default), ``compile`` (``torch.compile`` mode; ``reduce-overhead`` =
CUDA graphs) and how often losses are read back to the host. On an accelerator, losses are
accumulated on the device and read every :data:`SYNC_EVERY` steps (progress bars, the NaN check)
and at the end of an epoch or loop, so the host never waits for the GPU on every step; on the
CPU a read costs nothing and happens every step, as before. Data: :func:`to_device` moves a
dataset to the device once when it fits, :func:`upload` sends a whole epoch's index batches
in one copy, so batches are gathered on the device.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterator

import torch
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
)

from mi_bench.cpu import CHANNELS_LAST_CHOICES, bf16_runs, cpu_has_native_bf16, train_memory_format

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
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when available, else the CPU), with the
    CUDA index filled in (:func:`canonical`)."""
    if name == "auto":
        return canonical("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda requested but no CUDA device is available: use device=cpu")
    return canonical(dev)


def canonical(device: torch.device | str) -> torch.device:
    """``cuda`` -> ``cuda:<current>``, so it compares equal to a tensor's ``.device``."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


SYNC_EVERY = 50  # host reads of losses on accelerators: every this many steps (CPU: every step)
INVERSION_CHUNK = 512  # latents per forward/backward pass of an inversion (memory bound; 0 = all)
AMP_CHOICES = ("off", "bf16")
COMPILE_CHOICES = ("off", "default", "reduce-overhead", "max-autotune")
_log = logging.getLogger(__name__)


def configure_device(device: torch.device, tf32: bool = True) -> dict[str, Any]:
    """Process-wide backend settings for ``device``; returns what was set (for the record).

    CUDA: ``cudnn.benchmark`` (autotuned convolution algorithms; the shapes here are fixed per
    loop, and the algorithm chosen by timing may differ between runs, so CUDA runs are not
    bit-reproducible) and TF32 for float32 CUDA matmuls and cuDNN convolutions when ``tf32``,
    off otherwise (the CUDA flags only: CPU matmuls keep full float32). CPU: nothing to set."""
    if device.type != "cuda":
        return {}
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    return {"cudnn_benchmark": True, "tf32_matmul": tf32, "tf32_conv": tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision()}


@dataclass(frozen=True)
class Accel:
    """Performance options of the training loops (trainer, GAN priors, inversions).

    ``amp``: ``bf16`` runs forward passes and losses under ``torch.autocast(bfloat16)``
    (classifier and GAN *training* only; inversion and scoring stay float32; the HSIC terms
    always run in float32, :mod:`mi_bench.hsic`). ``compile``: ``torch.compile`` mode for the
    trained networks (``off``, ``default``, ``reduce-overhead`` = CUDA graphs,
    ``max-autotune``). ``sync_every``: host reads of losses every N steps; 0 (default) = every
    :data:`SYNC_EVERY` steps on accelerators and every step on the CPU, where a read is free."""

    amp: str = "off"
    compile: str = "off"
    sync_every: int = 0
    graph: bool = False  # whole-step CUDA graph where a loop supports it (GMI prior); CUDA only
    channels_last: str = "never"  # classifier training layout: auto (per family, CPU) / always / never
    inversion_chunk: int = INVERSION_CHUNK  # latents per forward/backward pass of an inversion; 0 = all

    @classmethod
    def from_config(cls, cfg: Any) -> "Accel":
        """The options of a run config (``amp``, ``compile``, ``cuda_graph``, ``channels_last``,
        ``inversion_chunk``)."""
        return cls(amp=cfg.amp, compile=cfg.compile, graph=cfg.cuda_graph,
                   channels_last=cfg.channels_last, inversion_chunk=cfg.inversion_chunk)

    def graphed(self, device: torch.device | str) -> bool:
        """Whether loops that support it capture their whole step as a CUDA graph on ``device``."""
        return self.graph and torch.device(device).type == "cuda"

    def __post_init__(self) -> None:
        if self.amp not in AMP_CHOICES:
            raise ValueError(f"amp={self.amp!r}: use one of {', '.join(AMP_CHOICES)}")
        if self.compile not in COMPILE_CHOICES:
            raise ValueError(f"compile={self.compile!r}: use one of {', '.join(COMPILE_CHOICES)}")
        if self.channels_last not in CHANNELS_LAST_CHOICES:
            raise ValueError(f"channels_last={self.channels_last!r}: use one of "
                             f"{', '.join(CHANNELS_LAST_CHOICES)}")
        if self.inversion_chunk < 0:
            raise ValueError(f"inversion_chunk={self.inversion_chunk}: use 0 (all latents at once) or a "
                             "positive number of latents")
        if self.sync_every < 0:
            raise ValueError(f"sync_every={self.sync_every}: use 0 (default) or a positive step count")

    def every(self, device: torch.device | str) -> int:
        """Steps between host reads on ``device``."""
        if self.sync_every:
            return self.sync_every
        return 1 if torch.device(device).type == "cpu" else SYNC_EVERY

    def autocast(self, device: torch.device | str) -> ContextManager[Any]:
        """``torch.autocast(bfloat16)`` under ``amp=bf16``, else a no-op context. On a CPU
        without native bfloat16 (:func:`cpu_has_native_bf16`) a no-op, with one warning."""
        if self.amp_on(device):
            return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
        return nullcontext()

    def amp_on(self, device: torch.device | str) -> bool:
        """``amp=bf16`` and, on the CPU, native bfloat16 (else float32, warned once)."""
        return self.amp == "bf16" and bf16_runs(device)

    def memory_format(self, model: str, device: torch.device | str) -> torch.memory_format:
        """The layout the classifier ``model`` (registered name) trains in (:mod:`mi_bench.cpu`;
        ``cpu_has_native_bf16`` is re-exported here)."""
        return train_memory_format(self.channels_last, model, device)

    def latent_chunks(self, n: int) -> list[slice]:
        """The slices of ``n`` latents an inversion runs forward and backward one at a time,
        accumulating the gradient before its one optimiser step (memory bounded by the chunk,
        not by the number of latents; 0 = one slice). For a loss that is a sum over latents the
        step is the full-batch step, up to float rounding."""
        size = self.inversion_chunk or max(n, 1)
        return [slice(i, min(i + size, n)) for i in range(0, n, size)] or [slice(0, 0)]

    def compiled(self, module: torch.nn.Module) -> Callable[..., Any]:
        """``torch.compile(module, mode=...)`` (same parameters), or ``module`` when off."""
        if self.compile == "off":
            return module
        return torch.compile(module, mode=self.compile)

    def record(self, device: torch.device | str) -> dict[str, Any]:
        """The options as stored in a record's ``machine`` section."""
        out = {"amp": self.amp, "compile": self.compile, "host_read_every": self.every(device),
               "inversion_chunk": self.inversion_chunk}
        if self.graph:
            out["cuda_graph"] = self.graphed(device)
        if self.amp == "bf16" and not self.amp_on(device):
            out["amp_effective"] = "off"  # a CPU without native bfloat16: ran float32
        return out


NO_ACCEL = Accel()


def to_host(t: torch.Tensor) -> Any:
    """``t.tolist()``: the one place the training loops read values back to the host (one wait
    for the device per call; tests count the calls)."""
    return t.tolist()


def host_float(t: torch.Tensor | float) -> float:
    """A scalar tensor (or float) as a float."""
    return float(to_host(t.detach())) if isinstance(t, torch.Tensor) else float(t)


def host_floats(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with its scalar tensors read in one transfer (stacked as float64: exact for
    float32 and float64 values); other values pass through."""
    keys = [k for k, v in values.items() if isinstance(v, torch.Tensor)]
    out = dict(values)
    if not keys:
        return out
    devices = {values[k].device for k in keys}
    if len(devices) > 1:  # not expected: read them one by one
        out.update({k: host_float(values[k]) for k in keys})
        return out
    stacked = torch.stack([values[k].detach().reshape(()).to(torch.float64) for k in keys])
    out.update(zip(keys, to_host(stacked)))
    return out


class FiniteCheck:
    """NaN/inf guard without a host read per step: ``add(loss, step)`` sums detached losses on
    their device and reads the sum every ``every`` adds (and at :meth:`flush`); a non-finite
    sum raises ``FloatingPointError(message(value, where))``, ``where`` = ``"step 17"`` (one
    step summed, always so on the CPU) or ``"steps 10-17"`` (``unit`` names the step)."""

    def __init__(self, every: int, message: Callable[[float, str], str], unit: str = "step") -> None:
        self.every = max(1, every)
        self.message = message
        self.unit = unit
        self._sum: torch.Tensor | None = None
        self._first = self._last = 0
        self._n = 0

    def add(self, loss: torch.Tensor, step: int) -> None:
        v = loss.detach()
        if self._sum is None:
            self._sum, self._first = v, step
        else:
            self._sum = self._sum + v
        self._last = step
        self._n += 1
        if self._n >= self.every:
            self.flush()

    def flush(self) -> None:
        if self._sum is None:
            return
        value = host_float(self._sum)
        u = self.unit
        where = f"{u} {self._last}" if self._first == self._last else f"{u}s {self._first}-{self._last}"
        self._sum, self._n = None, 0
        if not math.isfinite(value):
            raise FloatingPointError(self.message(value, where))


def to_device(x: torch.Tensor, device: torch.device, max_fraction: float = 0.25) -> torch.Tensor:
    """``x`` on ``device`` when it fits (at most ``max_fraction`` of the free accelerator
    memory), else ``x`` itself (batches are then copied per step). CPU: ``x`` unchanged."""
    device = canonical(device)
    if device.type == "cpu" or x.device == device:
        return x
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if x.numel() * x.element_size() > max_fraction * free:
            _log.info("%.0f MB of data kept on the host (more than %.0f%% of the free GPU memory)",
                      x.numel() * x.element_size() / 2**20, 100 * max_fraction)
            return x
    return x.to(device)


def upload(batches: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """A list of (index or mask) tensors moved to ``device`` in one copy (pinned, asynchronous
    on CUDA), split back into the same batches. CPU: the list unchanged."""
    device = canonical(device)
    if device.type == "cpu" or not batches:
        return batches
    flat = torch.cat(batches)
    if device.type == "cuda":
        flat = flat.pin_memory().to(device, non_blocking=True)
    else:
        flat = flat.to(device)
    return list(flat.split([len(b) for b in batches]))


def gather(x: torch.Tensor, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x[idx]`` on ``device``: indexed there when ``x`` already is, else indexed on the host
    and copied (pinned, asynchronous on CUDA)."""
    device = canonical(device)
    if x.device == device:
        return x[idx.to(device)] if idx.device != device else x[idx]
    out = x[idx.cpu()]
    if device.type == "cuda":
        return out.pin_memory().to(device, non_blocking=True)
    return out.to(device)


def interactive() -> bool:
    """Whether stderr takes live progress bars: a terminal that rich can redraw (not a dumb
    one, not ``TTY_COMPATIBLE=0``), or Jupyter. A file or a pipe (``2> log``, a Slurm job, a
    sweep worker, a test runner) is not, even under ``FORCE_COLOR``."""
    if console.is_jupyter:
        return True
    isatty = getattr(console.file, "isatty", None)
    try:
        tty = bool(isatty is not None and isatty())
    except ValueError:  # closed stream
        return False
    return tty and console.is_terminal and not console.is_dumb_terminal


class _StderrHandler(logging.StreamHandler):
    """Writes to the current ``sys.stderr``, which a test runner may swap after set-up."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # StreamHandler.__init__ assigns it
        pass


LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"  # stderr not a terminal: one line a record


def setup_logging(level: str = "INFO") -> None:
    """Log records to stderr: through rich on a terminal; one plain line each otherwise
    (:data:`LOG_FORMAT`, date and time to the millisecond), since rich wraps messages at 80
    columns in a file and shows the time only when it changed."""
    root = logging.getLogger()
    if any(getattr(h, "_mi_bench", False) for h in root.handlers):
        root.setLevel(level)
        return
    handler: logging.Handler
    if interactive():
        handler = RichHandler(console=console, show_path=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler._mi_bench = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)


PROGRESS_INTERVAL = 30.0  # seconds between progress lines (config key progress_interval_s)
progress_log = logging.getLogger("mi_bench.progress")


class Bars:
    """Progress of the long loops: ``with bars.task("GAN", total=n) as t: t.advance(1, loss=l)``.

    One API, three modes:

    * bars, when stderr is a terminal (:func:`interactive`): rich progress bars redrawn in
      place (shown between ``__enter__`` and ``__exit__``).
    * lines, when it is not (``2> log``, a Slurm job, a sweep worker): no bars; each running
      task logs one line through the ``mi_bench.progress`` logger every ``interval_s`` seconds
      and one when it ends, e.g. ``GMI inversion: 120/300 (40%), 4.1 steps/s, ETA 43.9s,
      elapsed 29.3s, loss=170.2 ce=1.7``: the stage (the task's description), step / total,
      the mean rate since the task began, the ETA at that rate, and the latest values given
      to ``advance``. A daemon timer thread per task writes the lines on time, also while no
      ``advance`` comes for longer than the interval (an epoch of a big dataset). Tensors are
      read only on the loop's own thread: by the ``advance`` about two steps before a line is
      due (or the first one after it, if the thread has not written it yet) and at the end,
      so the host waits for an accelerator about once per interval; the thread writes the
      values last read. The end line says ``done``, or ``stopped`` when the loop raised (the
      error follows). :meth:`stage` gives a stage without steps the same lines.
    * off: ``enabled=False`` (``--quiet``, tests, :data:`NULL_BARS`): nothing.

    ``live`` forces bars (True) or lines (False) instead of detecting; ``clock`` and ``timer``
    (the thread) are for tests.
    """

    def __init__(self, enabled: bool = True, interval_s: float = PROGRESS_INTERVAL, *,
                 live: bool | None = None, clock: Callable[[], float] = time.monotonic,
                 timer: bool = True) -> None:
        if not (isinstance(interval_s, (int, float)) and interval_s > 0):
            raise ValueError(f"progress interval {interval_s!r}: use a positive number of seconds "
                             "(progress_interval_s=30)")
        self.enabled = enabled
        self.interval_s = float(interval_s)
        self.live = bool(enabled and (interactive() if live is None else live))
        self._clock = clock
        self._timer = timer
        self._progress: Progress | None = None

    @property
    def lines(self) -> bool:
        """Whether tasks log progress lines (enabled, stderr not a terminal)."""
        return self.enabled and not self.live

    def __enter__(self) -> "Bars":
        if self.live:
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
    def task(self, description: str, total: int | None) -> Iterator["_Task | _LineTask"]:
        """``advance(n, **info)``: info values may be tensors; they are read (in one transfer)
        at most every :data:`INFO_INTERVAL` seconds by bars, every ``interval_s`` by lines, and
        at the end, never when off, so a loop may pass its losses every step without a host
        wait. ``total=None``: a stage of unknown length."""
        t: _Task | _LineTask
        if self.lines:
            t = _LineTask(description, total, self.interval_s, self._clock, self._timer)
        else:
            t = _Task(self._progress, description, total)
        ok = False
        try:
            yield t
            ok = True
        finally:
            t.close(ok)

    @contextmanager
    def stage(self, description: str) -> Iterator[None]:
        """A long stage without steps (decoding data, extracting features): in the lines mode
        a line every ``interval_s`` while it runs and one when it ends; nothing otherwise (the
        bars look as they always did)."""
        if not self.lines:
            yield
            return
        with self.task(description, None):
            yield


INFO_INTERVAL = 0.25  # seconds between progress-bar updates (and reads of their values)


class _Task:
    def __init__(self, progress: Progress | None, description: str, total: int | None) -> None:
        self._p = progress
        self._id = progress.add_task(description, total=total, info="") if progress else None
        self._steps = 0
        self._info: dict[str, Any] = {}
        self._due = 0.0  # the first advance is shown at once

    def advance(self, n: int = 1, **info: Any) -> None:
        if self._p is None:
            return
        self._steps += n
        if info:
            self._info = info
        now = time.monotonic()
        if now >= self._due:
            self._due = now + INFO_INTERVAL
            self._show()

    def _show(self) -> None:
        text = " ".join(f"{k}={_fmt(v)}" for k, v in host_floats(self._info).items())
        self._p.update(self._id, advance=self._steps, info=text)  # type: ignore[union-attr]
        self._steps = 0

    def close(self, ok: bool = True) -> None:
        if self._p is not None:
            self._show()
            self._p.refresh()


class _LineTask:
    """A task of :class:`Bars` in the lines mode (see there)."""

    def __init__(self, description: str, total: int | None, interval: float,
                 clock: Callable[[], float], timer: bool) -> None:
        self.description, self.total, self.interval = description, total, interval
        self.steps = 0
        self._clock = clock
        self._t0 = clock()
        self._due = self._t0 + interval
        self._info: dict[str, Any] = {}  # as given to advance (tensors unread)
        self._read: dict[str, Any] = {}  # as last read on the loop's thread
        self._fresh = False  # read since the last line
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if timer:
            self._thread = threading.Thread(target=self._beat, name=f"progress: {description}",
                                            daemon=True)
            self._thread.start()

    def advance(self, n: int = 1, **info: Any) -> None:
        self.steps += n
        if info:
            self._info = info
        now = self._clock()
        if now >= self._due:
            self._line(now, read=True)
        elif not self._fresh and self.steps > 0 and now >= self._due - 2 * (now - self._t0) / self.steps:
            # a line is due within about two steps: read the values now, for the timer thread
            # (at most once a line; steps longer than half the interval: the first after it)
            self._read, self._fresh = host_floats(self._info), True

    def close(self, ok: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        # after a failure, tensors stay unread (the error may be the device's)
        self._line(self._clock(), read=ok, end="done" if ok else "stopped")

    def _beat(self) -> None:
        """The timer thread: a line when one is due and no advance wrote it."""
        while not self._stop.wait(max(self._due - self._clock(), 0.001)):
            now = self._clock()
            if now >= self._due:
                self._line(now, read=False)

    def _line(self, now: float, *, read: bool, end: str | None = None) -> None:
        with self._lock:
            if end is None and now < self._due:  # the other thread wrote it meanwhile
                return
            self._due = now + self.interval
            progress_log.info("%s", self._text(now, self._values(read), end))
            self._fresh = False

    def _values(self, read: bool) -> dict[str, Any]:
        if read:
            self._read = host_floats(self._info)
            return self._read
        return {k: self._read[k] if isinstance(v, torch.Tensor) else v
                for k, v in self._info.items() if not isinstance(v, torch.Tensor) or k in self._read}

    def _text(self, now: float, values: dict[str, Any], end: str | None) -> str:
        elapsed, done, total = now - self._t0, self.steps, self.total
        rate = done / elapsed if done and elapsed > 0 else None
        rate_s = "? steps/s" if rate is None else (
            f"{rate:.3g} steps/s" if rate >= 1 else f"{1 / rate:.3g} s/step")
        count = f"{done}/{total}" if total is not None else f"{done} steps"
        if end == "done" and total is None and not done:
            parts = [f"done in {_dur(elapsed)}"]
        elif end == "done":
            parts = [f"done, {count} in {_dur(elapsed)}"] + ([rate_s] if done else [])
        elif end == "stopped":
            parts = [f"stopped at {count} after {_dur(elapsed)}"]
        elif total is None:
            parts = ["running"] + ([count, rate_s] if done else []) + [f"elapsed {_dur(elapsed)}"]
        else:
            eta = "?" if rate is None else _dur(max(total - done, 0) / rate)
            pct = f" ({100 * done / total:.0f}%)" if total else ""
            parts = [count + pct, rate_s, f"ETA {eta}", f"elapsed {_dur(elapsed)}"]
        if values:
            parts.append(" ".join(f"{k}={_fmt(v)}" for k, v in values.items()))
        return f"{self.description}: " + ", ".join(parts)


def _dur(seconds: float) -> str:
    """``12.3s``, ``4m05s``, ``2h07m``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    s = round(seconds)
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


NULL_BARS = Bars(enabled=False)
