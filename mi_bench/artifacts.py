"""Content-addressed artifact cache and safe checkpoint loading.

An artifact (trained target, evaluation model, attack prior) lives at
``<cache>/<kind>/<key>/`` as ``tensors.safetensors`` plus ``meta.json``. The key hashes
everything that determines the artifact (its config section, the data split's content hash,
upstream artifact keys, the stage's code version) and nothing else. Writes are atomic (temporary
file in the same folder, fsync, rename; ``meta.json`` - which holds the SHA-256 of the tensor
file - is written last, so a half-written artifact is never seen as present). Loading verifies
the checksum and never executes code: safetensors, or ``torch.load(weights_only=True)`` for
user-supplied ``.pt`` files.

Many processes, one cache (:meth:`ArtifactStore.load_or_build`): building an artifact holds a
per-artifact lock, ``<cache>/<kind>/<key>.lock`` (``filelock``: an OS lock, ``flock``, which the
kernel releases when its process dies, so a killed process never leaves a stale lock). Cells of
a sweep that need the same target, evaluator or prior therefore train it once; the others wait
for the lock, then load it. The lock needs a file system with working ``flock`` (local disks,
NFSv4, Lustre mounted with ``-o flock``, GPFS).

The cache is derived data: a cached artifact that cannot be read or fails its checksum is moved
aside to ``<key>.corrupt-<UTC time>`` (kept for inspection) and rebuilt, with a warning.
Temporary files of a killed writer are removed when the artifact is next built, and at the start
of every run (:func:`mi_bench.fsutil.sweep_tmp`). A user-supplied checkpoint is never "rebuilt":
a bad one is refused with an error.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch
from filelock import FileLock, Timeout
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mi_bench.errors import (
    ArtifactCorrupt, ArtifactError,
)
from mi_bench.fsutil import atomic_write, sweep_tmp

log = logging.getLogger(__name__)

TENSORS = "tensors.safetensors"
META = "meta.json"


def resolve_cache_dir(configured: str) -> Path:
    env = os.environ.get("MI_BENCH_CACHE", "")
    return Path(configured or env or Path.home() / ".cache" / "mi-bench").expanduser()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_atomic_write = atomic_write  # kept for existing imports


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def dir(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def exists(self, kind: str, key: str) -> bool:
        d = self.dir(kind, key)
        return (d / META).is_file() and (d / TENSORS).is_file()

    def save(self, kind: str, key: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> str:
        """Store an artifact atomically; returns the SHA-256 of its tensor file."""
        d = self.dir(kind, key)
        flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        atomic_write(d / TENSORS, lambda p: save_file(flat, p))
        digest = sha256_file(d / TENSORS)
        full = {**meta, "kind": kind, "key": key, "sha256": digest}
        atomic_write(d / META, lambda p: Path(p).write_text(json.dumps(full, indent=2, default=str)))
        return digest

    def load(self, kind: str, key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Load and verify a cached artifact; :class:`ArtifactCorrupt` when it is unusable."""
        d = self.dir(kind, key)
        try:
            meta = json.loads((d / META).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ArtifactCorrupt(f"cached {kind} {key} has an unreadable {META} ({exc})") from None
        try:
            digest = sha256_file(d / TENSORS)
        except OSError as exc:
            raise ArtifactCorrupt(f"cached {kind} {key}: cannot read {d / TENSORS} ({exc})") from None
        if digest != meta.get("sha256"):
            raise ArtifactCorrupt(f"cached {kind} {key} is corrupt (checksum mismatch in {d / TENSORS})")
        try:
            return load_file(str(d / TENSORS)), meta
        except (SafetensorError, OSError, ValueError) as exc:
            raise ArtifactCorrupt(f"cached {kind} {key}: {d / TENSORS} is not a valid safetensors file ({exc})") from None

    # -- many processes ---------------------------------------------------------------------
    def lock(self, kind: str, key: str) -> FileLock:
        """The per-artifact lock (an OS lock: released by the kernel when its holder dies)."""
        path = self.root / kind / f"{key}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(path))

    def quarantine(self, kind: str, key: str, reason: str) -> Path | None:
        """Move an unusable cached artifact aside to ``<key>.corrupt-<time>``; returns its new path."""
        d = self.dir(kind, key)
        if not d.exists():
            return None
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        dest = d.with_name(f"{key}.corrupt-{stamp}")
        try:
            os.replace(d, dest)
        except OSError as exc:
            raise ArtifactError(
                f"{reason}; it could not be moved aside ({exc.strerror or exc}): delete {d} and re-run"
            ) from None
        log.warning("%s: moved it aside to %s and rebuilding it", reason, dest)
        return dest

    def load_or_build(
        self, kind: str, key: str,
        build: Callable[[], tuple[dict[str, torch.Tensor], dict[str, Any]]],
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any], bool]:
        """Load the artifact, or build and save it once however many processes ask at once.

        ``build()`` returns ``(tensors, meta)``. Returns ``(tensors, meta, cached)``; ``meta``
        holds ``sha256``. Corrupt cached copies are quarantined and rebuilt."""
        if self.exists(kind, key):  # fast path, no lock: complete artifacts never change
            try:
                tensors, meta = self.load(kind, key)
                return tensors, meta, True
            except ArtifactCorrupt:
                pass  # handled under the lock below
        lock = self.lock(kind, key)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.info("%s %s is being built by another process; waiting for it (lock %s)",
                     kind, key, lock.lock_file)
            t0 = time.perf_counter()
            lock.acquire()
            log.info("%s %s: waited %.0fs", kind, key, time.perf_counter() - t0)
        try:
            if self.exists(kind, key):
                try:
                    tensors, meta = self.load(kind, key)
                    return tensors, meta, True
                except ArtifactCorrupt as exc:
                    self.quarantine(kind, key, str(exc))
            sweep_tmp(self.dir(kind, key), everything=True)  # we hold the lock: all are stale
            tensors, meta = build()
            meta = {**meta, "sha256": self.save(kind, key, tensors, meta)}
            return tensors, meta, False
        finally:
            lock.release()


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ArtifactError(
            f"{path} is not a valid safetensors file ({exc}); supply a checkpoint saved with "
            "safetensors or torch.save(state_dict)"
        ) from None


def load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a user-supplied state dict without ever executing code.

    ``.safetensors`` files are parsed by safetensors; anything else goes through
    ``torch.load(weights_only=True)``, which refuses pickles that reference code.
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"checkpoint {path} does not exist: check target_checkpoint=...")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArtifactError(
            f"refusing to load {path}: it is not a plain tensor checkpoint ({first}). mi-bench "
            "never unpickles code; re-save it as a state dict (torch.save(model.state_dict())) "
            "or as .safetensors"
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ArtifactError(f"{path} does not hold a state dict of tensors: re-save model.state_dict()")
    return obj
