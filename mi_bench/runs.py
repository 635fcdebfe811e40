"""Per-run output folders: ``<results_dir>/<run_id>/``.

Everything a run writes besides its database row lives in one folder named by its run id:

* ``grid.png``                  reconstructions next to real private images (``mi_bench.viz``);
* ``reconstructions.safetensors`` the kept reconstructions as uint8 (``images``: classes x
                                samples x C x H x W) and the attacked class indices (``classes``),
                                so judges, human labelling and reports can look at them later
                                without re-running the attack.

Writes are atomic (``mi_bench.artifacts``), so a killed run never leaves a half-written file.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mi_bench.artifacts import ArtifactError, _atomic_write

RECONSTRUCTIONS = "reconstructions.safetensors"
GRID = "grid.png"


def run_dir(results_dir: str | Path, run_id: str) -> Path:
    return Path(results_dir) / run_id


def save_reconstructions(folder: Path, images: torch.Tensor, classes: list[int]) -> Path:
    """Store ``images`` (classes x samples x C x H x W in [0, 1]) as uint8 with their classes."""
    path = Path(folder) / RECONSTRUCTIONS
    tensors = {
        "images": (images.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).contiguous(),
        "classes": torch.tensor(list(classes), dtype=torch.int64),
    }
    _atomic_write(path, lambda p: save_file(tensors, p))
    return path


def load_reconstructions(folder: Path) -> tuple[torch.Tensor, list[int]]:
    """The reconstructions of a run folder as float images in [0, 1] and their classes."""
    path = Path(folder) / RECONSTRUCTIONS
    if not path.is_file():
        raise ArtifactError(f"{path} does not exist: the run's reconstructions were not saved "
                            "(runs before mi-bench 0.2 kept only the grid); re-run it")
    try:
        t = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - corrupt file of any kind
        raise ArtifactError(f"{path} is not a readable safetensors file ({exc}); re-run the run") from None
    return t["images"].float() / 255.0, [int(c) for c in t["classes"].tolist()]
