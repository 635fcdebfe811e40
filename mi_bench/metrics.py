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
  (formulas in its docstring; the protocol stored with each record: :func:`perceptual_protocol`).
* ``attack_acc_pixel_nn`` (mi-bench diagnostic, not from the literature): the class of each
  reconstruction's nearest neighbour *in pixel space* among the evaluator's training images
  (all classes), compared with the attacked class. It does not share the classifiers' features,
  so reconstructions that fool both CNNs without looking like the class (blobs, textures)
  score high on ``attack_acc`` and low here. Look at the grids when the two disagree.
* A metric that fails is ``None`` plus its reason in ``metric_errors`` - never 0 - and a warning
  with its traceback in the log (under ``MI_BENCH_STRICT_METRICS=1``, which the test suite sets,
  it raises: :func:`mi_bench.errors.metric_failure`); a metric
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
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn import functional as F

from mi_bench.data import DataSplits
from mi_bench.errors import WeightsUnavailable, metric_failure
from mi_bench.interfaces import Inversion
from mi_bench.params import param
from mi_bench.perceptual import (
    frechet, inception_features, inception_model, inception_weights, kid, lpips_model, lpips_nn,
    real_inception_features, weights_info,
)
from mi_bench.stats import wilson_interval

log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    fid_inception: bool = param(
        True, help="Inception-v3 FID and KID (pytorch-fid weights, fetched into the torch hub cache "
        "when missing unless eval.download=false or MI_BENCH_OFFLINE=1)")
    download: bool = param(
        True, help="fetch missing Inception / LPIPS backbone weights (MI_BENCH_OFFLINE=1 also forbids it)")
    kid_subsets: int = param(100, ge=1, le=10000, help="KID: random subsets averaged when a set exceeds kid_subset_size")
    kid_subset_size: int = param(1000, ge=3, help="KID: largest set used at once (reference code: 1000)")
    lpips: bool = param(True, help="compute lpips_nn (LPIPS to the nearest same-class private image)")
    lpips_net: str = param("alex", choices=("alex", "vgg"), help="LPIPS backbone")
    lpips_min_size: int = param(
        64, ge=32, le=512, help="images smaller than this are upsampled (bilinear) before LPIPS "
        "(LPIPS was calibrated on 64x64 patches; AlexNet fails below 31 px)")
    lpips_candidates: int = param(
        0, ge=0, help="0 = exact nearest-neighbour search; K > 0 = LPIPS only to the K nearest "
        "same-class images in pixel L2 (faster; an upper bound)")
    grid_real: int = param(4, ge=0, le=16, help="real private images per class in the image grid")
    grid_samples: int = param(10, ge=1, le=100, help="reconstructions per class shown in the image grid "
                              "(all are saved in the run folder)")
    prior_kid_samples: int = param(1000, ge=0, neutral_default=True, help="prior samples for the prior's KID "
                                   "vs held-out public images (mi_bench.prior_quality); 0 = not measured")


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
def embed(model: torch.nn.Module, x: torch.Tensor, size: int, batch: int = 512) -> torch.Tensor:
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
    feats = embed(evaluator, flat, size)
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
        errors["attack_acc_pixel_nn"] = metric_failure(exc, "attack_acc_pixel_nn")
    x_tr, y_tr = splits.private_train
    real_feats = embed(evaluator, x_tr, size)
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
        errors["knn_dist"] = metric_failure(exc, "knn_dist")
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


# -- distribution and perceptual metrics (formulas: mi_bench.perceptual) -------------------------

@dataclass
class PerceptualScores:
    values: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    absent: dict[str, str] = field(default_factory=dict)
    weights: dict[str, dict[str, str]] = field(default_factory=dict)

    def fail(self, keys: tuple[str, ...], exc: BaseException) -> None:
        """None for ``keys``; absent by design for unavailable weights, an error otherwise (logged
        with its traceback; raised under ``MI_BENCH_STRICT_METRICS``: :func:`metric_failure`)."""
        reason = None if isinstance(exc, WeightsUnavailable) else metric_failure(exc, "/".join(keys))
        for k in keys:
            self.values[k] = None
            if isinstance(exc, WeightsUnavailable):
                self.absent[k] = str(exc)
            else:
                self.errors[k] = reason

    def check_se(self, key: str, groups: torch.Tensor) -> None:
        """A KID standard error that cannot be estimated is None with the reason, never NaN."""
        if not math.isnan(self.values[key]):
            return
        self.values[key] = None
        self.absent[key] = (f"the jackknife needs at least 3 reconstructions per class (got "
                            f"{int(torch.bincount(groups).min())}): raise the attack's samples_per_class")

    def disabled(self, keys: tuple[str, ...], why: str) -> None:
        for k in keys:
            self.values[k] = None
            self.absent[k] = why


def _default_options():
    return EvalConfig()


def score_perceptual(recon: torch.Tensor, recon_classes: torch.Tensor, eval_feats: torch.Tensor,
                     real_eval_feats: torch.Tensor, private_train: tuple[torch.Tensor, torch.Tensor], *,
                     options: Any = None, inception: bool = True, device: torch.device | str = "cpu",
                     store: Any = None) -> PerceptualScores:
    """FID/KID on evaluator features, FID/KID on Inception features and ``lpips_nn``.

    ``recon`` (N, C, H, W) in [0, 1] with private class indices ``recon_classes`` (N,);
    ``eval_feats`` / ``real_eval_feats``: the evaluator's penultimate features of ``recon`` and
    of the private training images ``private_train = (x, y)``. ``options``: an ``EvalConfig``
    (None = defaults). Never raises for a metric: each is a number, or None with its reason in
    ``errors`` (failed) or ``absent`` (disabled, or weights unavailable offline).
    """
    opt = options if options is not None else _default_options()
    device = torch.device(device)
    x_tr, y_tr = private_train
    s = PerceptualScores()
    a, b = eval_feats.double().numpy(), real_eval_feats.double().numpy()
    try:
        s.values["fid_eval"] = frechet(a, b)
    except Exception as exc:  # noqa: BLE001 - reported, never silently 0
        s.fail(("fid_eval",), exc)
    try:
        s.values["kid_eval"], s.values["kid_eval_se"] = kid(
            a, b, x_groups=recon_classes, subsets=opt.kid_subsets, subset_size=opt.kid_subset_size)
        s.check_se("kid_eval_se", recon_classes)
    except Exception as exc:  # noqa: BLE001
        s.fail(("kid_eval", "kid_eval_se"), exc)

    inc_keys = ("fid_inception", "kid_inception", "kid_inception_se")
    if not (inception and opt.fid_inception):
        s.disabled(inc_keys, "disabled (eval.fid_inception=false)")
    else:
        try:
            model, path = inception_model(device, opt.download)
            s.weights["inception"] = weights_info(path)
            fa = inception_features(model, recon)
            fb = real_inception_features(model, x_tr, s.weights["inception"]["sha256"], store)
        except Exception as exc:  # noqa: BLE001
            s.fail(inc_keys, exc)
        else:
            try:
                s.values["fid_inception"] = frechet(fa, fb)
            except Exception as exc:  # noqa: BLE001
                s.fail(("fid_inception",), exc)
            try:
                s.values["kid_inception"], s.values["kid_inception_se"] = kid(
                    fa, fb, x_groups=recon_classes, subsets=opt.kid_subsets,
                    subset_size=opt.kid_subset_size, device=device)
                s.check_se("kid_inception_se", recon_classes)
            except Exception as exc:  # noqa: BLE001
                s.fail(("kid_inception", "kid_inception_se"), exc)

    if not opt.lpips:
        s.disabled(("lpips_nn",), "disabled (eval.lpips=false)")
    else:
        try:
            model, path = lpips_model(opt.lpips_net, device, opt.download)
            s.weights["lpips"] = {**weights_info(path), "net": opt.lpips_net, "linear_layers": "lpips v0.1 (bundled)"}
            d = lpips_nn(model, recon, recon_classes, x_tr, y_tr, min_size=opt.lpips_min_size,
                         candidates=opt.lpips_candidates)
            s.values["lpips_nn"] = float(d.mean())
        except Exception as exc:  # noqa: BLE001
            s.fail(("lpips_nn",), exc)
    return s


def perceptual_protocol(options: Any = None) -> dict[str, str]:
    """What each metric here is, with the settings in force (stored in every record)."""
    opt = options if options is not None else _default_options()
    kid_text = (f"unbiased MMD^2, kernel (x.y/d+1)^3 (Binkowski et al. 2018), reconstructions as a "
                f"class-stratified sample (class pairs weighted by class shares); sets larger than "
                f"{opt.kid_subset_size} averaged over {opt.kid_subsets} random subsets of that size; "
                "SE: two-sample delete-one jackknife (conservative over subsets); 0 in expectation "
                "for one distribution at any sample size - compare runs with different n by KID, not FID")
    inc = (f"pytorch-fid InceptionV3 (TF FID weights {inception_weights().file}, 2048-d pool); images "
           "in [0,1] clamped, grayscale repeated to 3 channels, bilinear resize to 299x299, scaled to "
           "[-1,1] (pytorch-fid resize_input/normalize_input); weights from the torch hub cache, "
           "downloaded when missing unless eval.download=false or MI_BENCH_OFFLINE=1 (then null, "
           "reason in metric_absent)")
    return {
        "fid_eval": "Frechet distance (pytorch-fid calculate_frechet_distance) on evaluator penultimate "
                    "features: all reconstructions vs all private training images; biased by sample size",
        "kid_eval": "KID on evaluator penultimate features, same two sets: " + kid_text,
        "fid_inception": "Frechet distance on Inception features, same two sets; " + inc,
        "kid_inception": "KID on the same Inception features: " + kid_text,
        "lpips_nn": f"mean over reconstructions of the LPIPS distance (lpips package v0.1, net "
                    f"{opt.lpips_net}) to the nearest private training image of the attacked class; "
                    f"grayscale repeated to 3 channels, [0,1] scaled to [-1,1], images under "
                    f"{opt.lpips_min_size}px upsampled (bilinear) to {opt.lpips_min_size}px; "
                    + ("exact search over all same-class images" if not opt.lpips_candidates else
                       f"search limited to the {opt.lpips_candidates} nearest same-class images in "
                       "pixel L2 (upper bound)")
                    + "; backbone weights handled like Inception's",
    }
