"""Pretrained initialisation from a local weights file, checked by SHA-256.

``<section>.pretrained=/path/file`` with ``<section>.pretrained_sha256=<hex>`` (``target`` or
``evaluator``) initialises a model from that file before training: ImageNet VGG16-BN
(torchvision's ``vgg16_bn-6c64b313.pth``), face.evoLVe IR-50/IR-152 backbones (MS1M), the
official KED-MI/BiDO checkpoints, or mi-bench's own. The file is never unpickled as code
(``mi_bench.artifacts.load_checkpoint``); a model may translate foreign key names with an
``adapt_pretrained(state)`` method. Tensors whose name and shape match are loaded, the rest keep
their random initialisation and are counted in the report (a new classification head always
is). A missing expected hash, a hash mismatch, or a file that shares no tensor with the model is
refused. Without ``pretrained`` the model trains from scratch; the record says which.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from mi_bench.artifacts import load_checkpoint, sha256_file
from mi_bench.errors import ArtifactError

log = logging.getLogger(__name__)


def load_pretrained(model: nn.Module, path: str, expected_sha256: str, *, what: str = "model") -> dict[str, Any]:
    """Load matching tensors of ``path`` into ``model``; returns (and sets ``model.init_report``)
    what was loaded. ``what`` names the config section in error messages (``target``)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ArtifactError(f"{what}.pretrained={path}: no such file; fix the path, or set "
                            f"{what}.pretrained='' to train from scratch")
    actual = sha256_file(p)
    if not expected_sha256:
        raise ArtifactError(f"{what}.pretrained={path} has no expected hash: check the file against "
                            f"its publisher and set {what}.pretrained_sha256={actual}")
    if actual.lower() != expected_sha256.strip().lower():
        raise ArtifactError(f"{what}.pretrained={path} has SHA-256 {actual}, not the expected "
                            f"{what}.pretrained_sha256={expected_sha256}: refusing to load it "
                            "(wrong or corrupt file)")
    state = load_checkpoint(p)
    adapt = getattr(model, "adapt_pretrained", None)
    if callable(adapt):
        state = adapt(state)
    own = model.state_dict()
    loaded = {k: v for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    if not loaded:
        raise ArtifactError(f"{what}.pretrained={path} shares no tensor (name and shape) with "
                            f"{type(model).__name__}: it is not a checkpoint of this architecture "
                            "and width")
    model.load_state_dict(loaded, strict=False)
    fresh = sorted(set(own) - set(loaded))
    report = {"path": str(p), "sha256": actual, "loaded_tensors": len(loaded),
              "ignored_file_tensors": len(state) - len(loaded), "fresh_tensors": len(fresh),
              "fresh_examples": fresh[:8]}
    model.init_report = report  # type: ignore[assignment]
    log.info("%s: initialised from %s (%d tensors; %d left at random init)", what, p, len(loaded), len(fresh))
    return report


def init_statement(section: Any) -> str:
    """One line for the record: how a classifier of this config section is initialised."""
    if getattr(section, "pretrain", "") == "public":
        start = (f"{section.pretrained} (sha256 {section.pretrained_sha256}), then " if section.pretrained
                 else "")
        return (f"pretrained: {start}trained on the public classes with >= {section.pretrain_min_images} "
                "images (artifact 'pretrain'), every layer but the head copied, then trained")
    if getattr(section, "pretrained", ""):
        return f"pretrained: {section.pretrained} (sha256 {section.pretrained_sha256}), then trained"
    return "from scratch (random initialisation)"
