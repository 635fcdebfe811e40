"""File-system helpers shared by the artifact cache, run folders, records and sweeps.

* :func:`atomic_write` - write to a temporary file in the target's folder, fsync, rename. A
  reader never sees a half-written file. The temporary file is named
  ``.<name>.<host>-<pid>.<random>.tmp`` so that a later process can tell whose it is.
* :func:`sweep_tmp` - remove the temporary files a killed process left behind: those written by
  a process of this host that no longer runs, and any older than a day (another host's, whose
  process cannot be checked).
* :func:`check_writable` - before any work: can we create files in a folder, and is there room.

No heavy imports here (the 8-writer test starts many processes that only write records).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from mi_bench.errors import NotWritable  # noqa: F401 - raised here; importable from here too

log = logging.getLogger(__name__)

HOST = socket.gethostname().replace("-", "_").replace(".", "_")
TMP_SUFFIX = ".tmp"
STALE_TMP_SECONDS = 24 * 3600
MIN_FREE_BYTES = 100 * 1024 * 1024  # refuse to start a run with less free space than this


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _read_umask()  # mkstemp creates files 0600; finished files get the usual 0666 & ~umask


def atomic_write(path: Path, write: Callable[[str], Any]) -> None:
    """Call ``write(tmp_path)``, fsync the file, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{HOST}-{os.getpid()}.",
                               suffix=TMP_SUFFIX)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, default=str)
    atomic_write(path, lambda p: Path(p).write_text(text))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def is_stale_tmp(path: Path, *, now: float | None = None) -> bool:
    """A temporary file of :func:`atomic_write` whose writer is gone (or that is over a day old)."""
    name = path.name
    if not (name.startswith(".") and name.endswith(TMP_SUFFIX)):
        return False
    try:
        age = (now or time.time()) - path.stat().st_mtime
    except FileNotFoundError:
        return False
    if age > STALE_TMP_SECONDS:
        return True
    # .<name>.<host>-<pid>.<random>.tmp
    parts = name[: -len(TMP_SUFFIX)].split(".")
    for part in reversed(parts[:-1]):
        host, sep, pid = part.rpartition("-")
        if sep and pid.isdigit():
            return host == HOST and not _pid_alive(int(pid))
    return False


def sweep_tmp(folder: Path, *, depth: int = 1, everything: bool = False) -> list[Path]:
    """Remove stale temporary files in ``folder`` and (``depth`` > 1) its subfolders.

    ``everything=True`` removes every temporary file, stale or not; only for a folder the caller
    holds a lock on (an artifact being rebuilt)."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    patterns = ["/".join(["*"] * d + [f".*{TMP_SUFFIX}"]) for d in range(depth)]
    now = time.time()
    for pattern in patterns:
        for p in folder.glob(pattern):
            if p.is_file() and (everything or is_stale_tmp(p, now=now)):
                try:
                    p.unlink()
                    removed.append(p)
                except FileNotFoundError:
                    pass
    if removed:
        log.info("removed %d temporary file(s) left by a killed process under %s", len(removed), folder)
    return removed


def check_writable(folder: Path, what: str, *, min_free: int = MIN_FREE_BYTES) -> None:
    """Could files be written in ``folder`` (which need not exist yet), and is there room?

    Checks the nearest existing folder on its path - a probe file is written and deleted there,
    nothing is left behind - and its file system's free space. Raises :class:`NotWritable` with
    one line naming ``what`` (e.g. ``results_dir=runs``)."""
    folder = Path(folder).absolute()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NotWritable(f"cannot write to {what} ({folder}): {existing} is a file, not a folder; "
                          "choose another path")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=f".probe.{HOST}-{os.getpid()}.", suffix=TMP_SUFFIX)
        try:
            os.write(fd, b"x")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise NotWritable(f"cannot write to {what} ({existing}): {exc.strerror or exc}; "
                          "choose a writable folder") from None
    free = shutil.disk_usage(existing).free
    if free < min_free:
        raise NotWritable(
            f"only {free / 2**20:.0f} MB free on the file system of {what} ({existing}); mi-bench needs "
            f"at least {min_free / 2**20:.0f} MB to start a run: free some space or point it elsewhere"
        )


def write_error_line(exc: BaseException) -> str:
    """One line for an OSError raised while writing (full disk, read-only file system, ...)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left while writing {exc.filename or 'a file'}: free some space and re-run"
    if isinstance(exc, OSError) and exc.filename:
        return f"cannot write {exc.filename}: {exc.strerror or exc}"
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
