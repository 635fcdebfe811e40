"""Content-addressed artifact cache and safe checkpoint loading.

An artifact (trained target, evaluation model, attack prior) lives at
``<cache>/<kind>/<key>/`` as ``tensors.safetensors`` plus ``meta.json``. The key hashes
everything that determines the artifact (its config section, the data split's content hash,
upstream artifact keys, the stage's code version) and nothing else. Writes are atomic (temporary
file in the same folder, fsync, rename; ``meta.json`` - which holds the SHA-256 of the tensor
file - is written last, so a half-written artifact is never seen as present). Loading verifies
the checksum and never executes code: safetensors, or ``torch.load(weights_only=True)`` for
user-supplied ``.pt`` files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)

TENSORS = "tensors.safetensors"
META = "meta.json"


class ArtifactError(RuntimeError):
    """A checkpoint or cached artifact cannot be used; the message names the file and the fix."""


def resolve_cache_dir(configured: str) -> Path:
    env = os.environ.get("MI_BENCH_CACHE", "")
    return Path(configured or env or Path.home() / ".cache" / "mi-bench").expanduser()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
        _atomic_write(d / TENSORS, lambda p: save_file(flat, p))
        digest = sha256_file(d / TENSORS)
        full = {**meta, "kind": kind, "key": key, "sha256": digest}
        _atomic_write(d / META, lambda p: Path(p).write_text(json.dumps(full, indent=2, default=str)))
        return digest

    def load(self, kind: str, key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        d = self.dir(kind, key)
        try:
            meta = json.loads((d / META).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ArtifactError(
                f"cached {kind} {key} has an unreadable {META} ({exc}): delete {d} and re-run to rebuild it"
            ) from None
        digest = sha256_file(d / TENSORS)
        if digest != meta.get("sha256"):
            raise ArtifactError(
                f"cached {kind} {key} is corrupt (checksum mismatch in {d / TENSORS}): "
                f"delete {d} and re-run to rebuild it"
            )
        return _load_safetensors(d / TENSORS), meta


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ArtifactError(
            f"{path} is not a valid safetensors file ({exc}); delete it and re-run, or supply "
            "a checkpoint saved with safetensors or torch.save(state_dict)"
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
