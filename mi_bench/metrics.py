"""Scoring of reconstructions, identical for every attack (methods.md section 4).

Protocol (stored with every result as ``metrics_protocol``):
* ``attack_acc`` / ``attack_acc_top5``: the evaluation model E (trained on the whole domain,
  all classes) classifies every kept reconstruction; a success is E's top-1 (top-5) equal to
  the attacked class's original label. Averaged over classes and samples. ``per_class`` holds
  the top-1 accuracy of each attacked class.
* ``knn_dist``: for each reconstruction, the minimum over the private *training* images of the
  same class of the squared L2 distance between E's penultimate features; averaged.
* ``fid_eval``, ``kid_eval`` (+ ``kid_eval_se``), ``fid_inception``, ``kid_inception`` (+ SE),
  ``lpips_nn``: distribution and perceptual metrics, computed in :mod:`mi_bench.perceptual`
  (protocol in its docstring and in :func:`mi_bench.perceptual.protocol`).
* ``attack_acc_pixel_nn`` (mi-bench diagnostic, not from the literature): the class of each
  reconstruction's nearest neighbour *in pixel space* among the evaluator's training images
  (all classes), compared with the attacked class. It does not share the classifiers' features,
  so reconstructions that fool both CNNs without looking like the class (blobs, textures)
  score high on ``attack_acc`` and low here. Look at the grids when the two disagree.
* A metric that fails is ``None`` plus its reason in ``metric_errors`` - never 0; a metric
  absent by design (weights unavailable offline, disabled by config) is ``None`` plus its
  reason in ``metric_absent``, so tables can say ``n/a`` rather than ``failed``.
* ``attack_acc_ci``: the 95% Wilson interval of ``attack_acc`` over the ``n_reconstructions``
  scored (``mi_bench.stats``).

The evaluator is the ``eval`` judge of ``mi_bench.judges``: it has a reject option (an output
after the domain classes, "none"); a rejected reconstruction is a failure and is recorded as
prediction -1 in ``evaluator_predictions``. The other judges, ``consensus_acc`` and per-class
diversity are scored by ``mi_bench.judges.score_judges`` and ``mi_bench.diversity``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch.nn import functional as F

from mi_bench.data import DataSplits
from mi_bench.interfaces import Inversion
from mi_bench.perceptual import frechet, protocol as perceptual_protocol, score_perceptual  # noqa: F401
from mi_bench.stats import wilson_interval

log = logging.getLogger(__name__)

def metrics_protocol(options: Any = None) -> dict[str, str]:
    """The metric protocol stored with each record, with the run's perceptual settings."""
    return {**METRICS_PROTOCOL, **perceptual_protocol(options)}


METRICS_PROTOCOL = {
    "attack_acc": "top-1 of the all-class evaluation model == attacked class, mean over classes x samples",
    "attack_acc_ci": "95% Wilson score interval of attack_acc over the scored reconstructions",
    "attack_acc_top5": "attacked class within the evaluator's top-5, mean over classes x samples",
    "knn_dist": "mean over reconstructions of min squared L2 (evaluator penultimate features) "
    "to private training images of the same class",
    "attack_acc_pixel_nn": "diagnostic: class of the nearest evaluator-training image in pixel "
    "space (all classes) == attacked class",
}


@torch.no_grad()
def _embed(model: torch.nn.Module, x: torch.Tensor, size: int, batch: int = 512) -> torch.Tensor:
    model.eval()
    dev = next(model.parameters()).device
    out = []
    for xb in x.split(batch):
        xb = xb.to(dev)
        if xb.shape[-1] != size:
            xb = F.interpolate(xb, size=(size, size), mode="bilinear", align_corners=False)
        out.append(model.embed(xb).float().cpu())
    return torch.cat(out)


def pixel_nn_accuracy(images: torch.Tensor, labels: torch.Tensor,
                      reference: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Share of ``images`` whose nearest reference image (L2 in pixel space) has ``labels``' class."""
    xr, yr = reference
    if images.shape[-1] != xr.shape[-1]:
        images = F.interpolate(images, size=xr.shape[-2:], mode="bilinear", align_corners=False)
    ref = xr.flatten(1)
    nearest = torch.cat([torch.cdist(chunk.flatten(1), ref).argmin(1) for chunk in images.split(256)])
    return float((yr[nearest] == labels).float().mean())


def _none_as_minus_one(pred: torch.Tensor, num_domain_classes: int) -> torch.Tensor:
    """An evaluator with a reject option ("none", the output after the domain classes) -> -1."""
    return torch.where(pred >= num_domain_classes, torch.full_like(pred, -1), pred)


def score_inversion(
    inversion: Inversion, evaluator: torch.nn.Module, splits: DataSplits, *,
    inception: bool = True, device: torch.device | str = "cpu", options: Any = None, store: Any = None,
) -> dict[str, Any]:
    """All metrics of one inversion. Returns a flat dict; failures in ``metric_errors``.

    ``options``: the run's ``EvalConfig`` (None = defaults); ``inception=False`` turns the
    Inception metrics off whatever ``options`` says; ``store``: an ``ArtifactStore`` caching
    Inception features of the private set."""
    images = inversion.images
    n_cls, n_s = images.shape[:2]
    flat = images.reshape(n_cls * n_s, *images.shape[2:])
    size = splits.image_shape[-1]
    true_domain = torch.tensor(
        [splits.private_classes[c] for c in inversion.classes]
    ).repeat_interleave(n_s)
    feats = _embed(evaluator, flat, size)
    with torch.no_grad():
        logits = evaluator.head(feats.to(next(evaluator.parameters()).device)).cpu()
    top1 = logits.argmax(1) == true_domain
    k = min(5, logits.shape[1])
    top5 = (logits.topk(k, dim=1).indices == true_domain[:, None]).any(1)
    per_class = top1.view(n_cls, n_s).float().mean(1)
    out: dict[str, Any] = {
        "attack_acc": float(top1.float().mean()),
        "attack_acc_ci": list(wilson_interval(int(top1.sum()), int(top1.numel()))),
        "attack_acc_top5": float(top5.float().mean()),
        "per_class": {int(c): float(a) for c, a in zip(inversion.classes, per_class)},
        "evaluator_predictions": _none_as_minus_one(logits.argmax(1), splits.num_domain_classes)
        .view(n_cls, n_s).tolist(),
        "n_reconstructions": int(n_cls * n_s),
    }
    errors: dict[str, str] = {}
    absent: dict[str, str] = {}
    try:
        out["attack_acc_pixel_nn"] = pixel_nn_accuracy(flat, true_domain, splits.eval_train)
    except Exception as exc:  # noqa: BLE001 - reported, never silently 0
        out["attack_acc_pixel_nn"] = None
        errors["attack_acc_pixel_nn"] = f"{type(exc).__name__}: {exc}"
    x_tr, y_tr = splits.private_train
    real_feats = _embed(evaluator, x_tr, size)
    try:
        dists = []
        for i, c in enumerate(inversion.classes):
            ref = real_feats[y_tr == c]
            if len(ref) == 0:
                raise ValueError(f"no private training images of class {c}")
            d = torch.cdist(feats[i * n_s:(i + 1) * n_s], ref).pow(2).min(1).values
            dists.append(d)
        out["knn_dist"] = float(torch.cat(dists).mean())
    except Exception as exc:  # noqa: BLE001 - reported, never silently 0
        out["knn_dist"] = None
        errors["knn_dist"] = f"{type(exc).__name__}: {exc}"
    per = score_perceptual(flat, torch.tensor(inversion.classes).repeat_interleave(n_s), feats,
                           real_feats, splits.private_train, options=options, inception=inception,
                           device=device, store=store)
    out.update(per.values)
    errors.update(per.errors)
    absent.update(per.absent)
    out["perceptual_weights"] = per.weights
    out["metric_errors"] = errors
    out["metric_absent"] = absent
    return out
