"""Per-run output folders: ``<results_dir>/<run_id>/``.

Everything a run writes lives in one folder named by its run id:

* ``record.json``               the run's full record (the same JSON the results database holds).
                                It is the source of truth: written first, atomically, so a run
                                whose work is done never loses its record; the SQLite database
                                is an index of these files (``mi-bench db rebuild``).
* ``grid.png``                  reconstructions next to real private images, each labelled with
                                every judge's prediction (:func:`write_grid`, ``mi_bench.viz``);
* ``reconstructions.safetensors`` the kept reconstructions as uint8 (``images``: classes x
                                samples x C x H x W) and the attacked class indices (``classes``),
                                so judges, human labelling, reports and ``mi-bench rescore``
                                can look at them later without re-running the attack. The
                                pipeline scores exactly these 8-bit images (:func:`quantize`).

Writes are atomic (``mi_bench.fsutil.atomic_write``), so a killed run never leaves a
half-written file; its temporary files are removed by the next run (``sweep_tmp``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from mi_bench.fsutil import atomic_write, atomic_write_json
from mi_bench.images import to_uint8

if TYPE_CHECKING:
    import torch

RECONSTRUCTIONS = "reconstructions.safetensors"
GRID = "grid.png"
RECORD = "record.json"


def run_dir(results_dir: str | Path, run_id: str) -> Path:
    return Path(results_dir) / run_id


def write_record(folder: Path, record: dict[str, Any]) -> Path:
    """Write ``record.json`` atomically in the run folder; returns its path."""
    path = Path(folder) / RECORD
    atomic_write_json(path, record)
    return path


def iter_record_files(root: str | Path) -> Iterator[Path]:
    """Every ``record.json`` under ``root`` (run folders at any depth), in path order."""
    root = Path(root)
    if (root / RECORD).is_file():
        yield root / RECORD
        return
    yield from sorted(root.rglob(RECORD))


def read_record(path: Path) -> dict[str, Any]:
    from mi_bench.errors import ResultsError

    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ResultsError(f"run record {path} is unreadable ({exc}); move it aside and re-run its cell") from None


def quantize(images: torch.Tensor) -> torch.Tensor:
    """``images`` as they are saved and read back (``to_uint8(x) / 255``, float32, on their
    device): the pipeline scores these, so a re-scored run sees exactly the images its first
    scoring saw."""
    return (to_uint8(images).float() / 255.0).to(images.device)


def save_reconstructions(folder: Path, images: torch.Tensor, classes: list[int]) -> Path:
    """Store ``images`` (classes x samples x C x H x W in [0, 1]) as uint8 with their classes."""
    import torch
    from safetensors.torch import save_file

    path = Path(folder) / RECONSTRUCTIONS
    tensors = {"images": to_uint8(images), "classes": torch.tensor(list(classes), dtype=torch.int64)}
    atomic_write(path, lambda p: save_file(tensors, p))
    return path


def copy_reconstructions(source: Path, folder: Path) -> Path:
    """Copy a run folder's ``reconstructions.safetensors`` (byte for byte, atomically) into ``folder``."""
    import shutil

    path = Path(folder) / RECONSTRUCTIONS
    atomic_write(path, lambda p: shutil.copyfile(Path(source) / RECONSTRUCTIONS, p))
    return path


def load_reconstructions(folder: Path) -> tuple[torch.Tensor, list[int]]:
    """The reconstructions of a run folder as float images in [0, 1] and their classes."""
    from safetensors.torch import load_file

    from mi_bench.errors import ArtifactError

    path = Path(folder) / RECONSTRUCTIONS
    if not path.is_file():
        raise ArtifactError(f"{path} does not exist: the run's reconstructions were not saved "
                            "(runs before mi-bench 0.2 kept only the grid); re-run it")
    try:
        t = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - corrupt file of any kind
        raise ArtifactError(f"{path} is not a readable safetensors file ({exc}); re-run the run") from None
    return t["images"].float() / 255.0, [int(c) for c in t["classes"].tolist()]


def write_grid(path: Path, cfg: Any, splits: Any, inversion: Any, metrics: dict[str, Any]) -> Path | None:
    """The run's ``grid.png``: real private images, then the first ``eval.grid_samples``
    reconstructions per class, each labelled with every judge's prediction (x = rejected) and
    framed green when all judges name the attacked class, orange when only some do, red when
    none does; the title states the attack, defense, dataset, protocol, preset, seed and scores."""
    from mi_bench.judges import NONE
    from mi_bench.record import defense_label
    from mi_bench.viz import save_grid

    x_tr, y_tr = splits.private_train
    real = [x_tr[y_tr == c][: cfg.eval.grid_real] for c in inversion.classes]
    n = min(cfg.eval.grid_samples, inversion.images.shape[1])
    judged = metrics["judges"]
    order = list(judged)
    preds = [[["x" if judged[j]["predictions"][i][k] == NONE else judged[j]["predictions"][i][k]
               for j in order] for k in range(n)] for i in range(len(inversion.classes))]
    state = []
    for i, c in enumerate(inversion.classes):
        row = []
        for k in range(n):
            hits = sum(judged[j]["predictions"][i][k] == splits.private_classes[c] for j in order)
            row.append(True if hits == len(order) else (False if hits == 0 else None))
        state.append(row)
    labels = [["/".join(map(str, p)) for p in row] for row in preds]
    collapsed = set((metrics.get("diversity") or {}).get("collapsed_classes", []))
    class_names = splits.info.get("class_names")  # face datasets: identity names
    names = [f"class {c} ({class_names[c] if class_names else f'digit {splits.private_classes[c]}'})\n"
             + "\n".join(f"{j} {judged[j]['per_class'][c]:.0%}" for j in order)
             + ("\nCOLLAPSED" if c in collapsed else "") for c in inversion.classes]
    title = (f"{cfg.attack.name} vs {defense_label(cfg.defense, cfg.recipe)} on {splits.name} "
             f"({splits.protocol}, preset {cfg.preset}, seed {cfg.seed}) - attack acc "
             f"{metrics['attack_acc']:.0%}, consensus {metrics['consensus_acc']:.0%}, target acc "
             f"{metrics['target_acc']:.1%}\nunder each image: {'/'.join(order)} predictions "
             f"(x = rejected); green: all judges agree with the attacked class, orange: some")
    return save_grid(path, inversion.images[:, :n], inversion.classes, real, state, labels, names, title)
