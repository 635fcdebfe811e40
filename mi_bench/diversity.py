"""Per-class diversity of reconstructions, next to the same quantity for real private images.

For each attacked class: the mean pairwise L2 distance between its reconstructions' penultimate
features in one judge (``judge.diversity_judge``, default ``eval``), and the same over real
private *training* images of that class (the first ``real_cap``); also both in pixel space
(judge-free). The mean is over distinct pairs (the diagonal excluded), so it does not depend on
how many images are compared.

Rule (stated with every result): a class is **collapsed** - recovered as one repeated image or
as near-copies - when ``ratio = recon / real < judge.collapse_ratio`` (default 0.25) in the
judge's features. Real images of one class are far apart in every judge's features; twenty
copies of one blob are not.

Perceptual distances (LPIPS): the pipeline passes LPIPS (``mi_bench.perceptual``, with the run's
``eval.lpips*`` options) as ``pairwise=``; other modules can register more with
:func:`register_pairwise` (``fn(images (n, C, H, W) in [0, 1]) -> (n, n) distances``, raising
:class:`DistanceUnavailable` with the reason when, e.g., its weights are not on disk). Every
registered distance is reported per class as ``<name>_recon`` / ``<name>_real`` (real images
capped at ``extra_real_cap``); when none is registered, or one is unavailable,
``diversity_<name>`` is recorded in ``metric_absent`` with the reason.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch
from mi_bench.errors import (
    DistanceUnavailable,
)

log = logging.getLogger(__name__)

PairwiseFn = Callable[[torch.Tensor], torch.Tensor]
PAIRWISE: dict[str, PairwiseFn] = {}

DIVERSITY_PROTOCOL = {
    "diversity": "per class: mean pairwise L2 distance (distinct pairs) between its "
                 "reconstructions in the diversity judge's penultimate features and in pixels, "
                 "next to the same over real private training images of the class; collapsed "
                 "when recon/real < collapse_ratio in judge features",
    "diversity_ratio": "mean over attacked classes of recon/real (judge features)",
    "collapsed_classes": "number of attacked classes flagged collapsed",
}


def register_pairwise(name: str, fn: PairwiseFn) -> None:
    """Register an extra pairwise distance (e.g. ``"lpips"``) used by :func:`diversity`."""
    PAIRWISE[name] = fn


def mean_offdiagonal(d: torch.Tensor) -> float:
    n = d.shape[0]
    if n < 2:
        raise ValueError(f"needs at least 2 images to compare (got {n})")
    return float((d.sum() - d.diagonal().sum()) / (n * (n - 1)))


def mean_pairwise_l2(x: torch.Tensor) -> float:
    x = x.flatten(1).double()
    return mean_offdiagonal(torch.cdist(x, x))


def diversity(images: torch.Tensor, classes: list[int], real_by_class: list[torch.Tensor],
              embed: Callable[[torch.Tensor], torch.Tensor], *, judge: str, collapse_ratio: float,
              real_cap: int = 200, extra_real_cap: int = 50,
              pairwise: dict[str, PairwiseFn] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """Diversity report (``diversity``, ``diversity_ratio``, ``collapsed_classes``) and the
    ``metric_absent`` entries of unavailable extra distances. Raises ``ValueError`` when a
    class has fewer than 2 reconstructions or real images (the caller records the failure).
    ``pairwise``: extra distances for this call only (the pipeline's LPIPS, built from the run's
    ``eval`` options), next to the registered ones."""
    per_class: dict[int, dict[str, Any]] = {}
    absent: dict[str, str] = {}
    extra = {**PAIRWISE, **(pairwise or {})}
    if not extra:
        absent["diversity_lpips"] = ("no perceptual distance registered (a module providing LPIPS "
                                     "registers one with mi_bench.diversity.register_pairwise)")
    for i, c in enumerate(classes):
        rec, real = images[i], real_by_class[i][:real_cap]
        d_rec, d_real = mean_pairwise_l2(embed(rec)), mean_pairwise_l2(embed(real))
        ratio = d_rec / d_real if d_real > 0 else float("inf")
        entry: dict[str, Any] = {
            "recon": d_rec, "real": d_real, "ratio": ratio,
            "pixel_recon": mean_pairwise_l2(rec), "pixel_real": mean_pairwise_l2(real),
            "collapsed": ratio < collapse_ratio,
        }
        for name, fn in list(extra.items()):
            try:
                entry[f"{name}_recon"] = mean_offdiagonal(fn(rec))
                entry[f"{name}_real"] = mean_offdiagonal(fn(real[:extra_real_cap]))
            except DistanceUnavailable as exc:
                absent[f"diversity_{name}"] = str(exc)
                extra.pop(name)
        per_class[int(c)] = entry
    collapsed = [c for c, e in per_class.items() if e["collapsed"]]
    report = {
        "diversity": {
            "space": f"penultimate features of the {judge} judge (L2); pixels (L2)",
            "rule": f"collapsed when recon/real < {collapse_ratio} in the {judge} judge's features",
            "per_class": per_class, "collapsed_classes": collapsed,
        },
        "diversity_ratio": sum(e["ratio"] for e in per_class.values()) / len(per_class),
        "collapsed_classes": len(collapsed),
    }
    return report, absent
