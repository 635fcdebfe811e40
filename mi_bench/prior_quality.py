"""How good is an attack's prior? KID of its samples against held-out public images.

Measured after the prior is built (trained or loaded), it changes no artifact key, no config
hash and no draw of the inversion (the samples are drawn under ``torch.random.fork_rng`` from
their own generator, seeded by the run seed). Stored in the record as
``protocol["prior_quality"]``:

* ``kid`` / ``kid_std``: KID (Binkowski et al. 2018), the unbiased MMD^2 with the cubic
  polynomial kernel ``k(x, y) = (x.y / d + 1)^3`` on the evaluator's penultimate features (``d``
  their size), averaged over ``subsets`` random subsets of ``subset_size = min(n, n_reference,
  1000)`` images of each set, drawn without replacement; ``kid_std`` is the standard deviation
  over those subsets (torch-fidelity's ``kernel_inception_distance_std``; clean-fid's KID).
  ``kid_se``: the standard error of the estimate over both samples (two-sample jackknife,
  :func:`mi_bench.perceptual.kid`), the error bar to compare priors with.
  Unbiased at every sample size: 0 in expectation for two samples of one distribution (an
  estimate can be negative), so priors are compared at any n, unlike FID.
* ``n``: prior samples (:meth:`mi_bench.interfaces.Attack.prior_samples`, images in [0, 1]),
  ``n_reference``: real images, ``against``: which real images (below), ``features``:
  ``"evaluator"``, ``grid``: a PNG of the first :data:`GRID_SAMPLES` samples in the run folder.
* The reference: test-split images (``eval_test``) of the public set's classes that are not in
  the public set (the prior never saw them), drawn in the public set's class shares (under
  ``disjoint_samples`` the public set holds part of the private classes' images, so their
  test images are part of the reference in that share). Where no such images exist (MNIST
  under ``disjoint_classes`` makes every public-class test image public) the reference is a
  sample of the public set itself - the prior's training images - and ``against`` says so.
* An attack without a generative prior (``pixel``) records ``kid: null`` with the reason in
  ``absent``; a computation that fails records ``kid: null`` with its error in ``error`` (raised
  under ``MI_BENCH_STRICT_METRICS``, :func:`mi_bench.errors.metric_failure`) - never 0.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mi_bench.errors import metric_failure

PRIOR_GRID = "prior_grid.png"
GRID_SAMPLES = 64
REFERENCE_CAP = 3000  # real images at most (a seeded random sample of the held-out ones)
MIN_REFERENCE = 50  # fewer held-out images than this: the public set is the reference
SUBSETS = 100
SUBSET_SIZE = 1000
SE_SUBSETS = 10
GRAM_MAX = 4096  # n + m up to this: one kernel matrix for every subset (128 MiB in float64)


def _mmd2(kxx: torch.Tensor, kyy: torch.Tensor, kxy: torch.Tensor) -> float:
    n, m = kxx.shape[0], kyy.shape[0]
    t_xx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    t_yy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(t_xx + t_yy - 2 * kxy.mean())


def kid_subsets(x: Any, y: Any, *, subsets: int = SUBSETS, subset_size: int = SUBSET_SIZE,
                seed: int = 0) -> tuple[float, float, int]:
    """KID of feature sets ``x`` (n, d) and ``y`` (m, d): ``(mean, std, subset size)`` over
    ``subsets`` random subsets of ``s = min(n, m, subset_size)`` rows of each set (without
    replacement; a single subset when both sets have ``s`` rows: std 0). Each subset's value is
    the unbiased MMD^2 with the kernel ``(a.b / d + 1)^3``. Float64 throughout."""
    x = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(y), dtype=torch.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"KID needs two (n, d) feature sets of one d (got {tuple(x.shape)} and {tuple(y.shape)})")
    n, m = len(x), len(y)
    s = min(n, m, subset_size)
    if s < 2:
        raise ValueError(f"KID needs at least 2 images per set (got {n} and {m})")
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise ValueError("KID: non-finite features")
    d = x.shape[1]

    def kern(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a @ b.T / d + 1) ** 3

    if n == s and m == s:
        return _mmd2(kern(x, x), kern(y, y), kern(x, y)), 0.0, s
    g = torch.Generator().manual_seed(seed)
    draws = [(torch.randperm(n, generator=g)[:s], torch.randperm(m, generator=g)[:s]) for _ in range(subsets)]
    if n + m <= GRAM_MAX:  # one kernel matrix; each subset's sums as quadratic forms of 0/1 indicators
        z = torch.cat([x, y])
        k = kern(z, z)
        wx = torch.zeros(n + m, subsets, dtype=torch.float64)
        wy = torch.zeros(n + m, subsets, dtype=torch.float64)
        for j, (ix, iy) in enumerate(draws):
            wx[ix, j] = 1.0
            wy[iy + n, j] = 1.0
        kwx, kwy, diag = k @ wx, k @ wy, k.diagonal()
        t_xx = ((wx * kwx).sum(0) - diag @ wx) / (s * (s - 1))
        t_yy = ((wy * kwy).sum(0) - diag @ wy) / (s * (s - 1))
        vals = (t_xx + t_yy - 2 * (wx * kwy).sum(0) / (s * s)).tolist()
    else:
        vals = [_mmd2(kern(x[ix], x[ix]), kern(y[iy], y[iy]), kern(x[ix], y[iy])) for ix, iy in draws]
    return float(np.mean(vals)), float(np.std(vals)), s


def _jackknife_se(fa: torch.Tensor, fb: torch.Tensor) -> float | None:
    """The standard error of KID over both samples (the two-sample delete-one jackknife of
    :func:`mi_bench.perceptual.kid`, averaged over :data:`SE_SUBSETS` subsets of at most
    :data:`SUBSET_SIZE`): ``kid_std`` is only the spread over subsets of the larger set."""
    from mi_bench.perceptual import kid

    se = kid(fa.double().numpy(), fb.double().numpy(), subsets=SE_SUBSETS, subset_size=SUBSET_SIZE)[1]
    return se if math.isfinite(se) else None


# -- the real images --------------------------------------------------------------------------

def _image_hashes(x: torch.Tensor) -> list[bytes]:
    from mi_bench.images import to_uint8

    u = to_uint8(x).flatten(1).numpy()
    return [hashlib.sha1(row.tobytes()).digest() for row in u]


def reference_images(splits: Any, *, cap: int = REFERENCE_CAP, seed: int = 0) -> tuple[torch.Tensor, str]:
    """The real images prior samples are compared with, and a sentence saying which (module
    docstring): held-out public-class test images in the public set's class shares, else a
    sample of the public set (the prior's training images)."""
    pub_x, pub_y = splits.public
    g = torch.Generator().manual_seed(seed)
    seen = set(_image_hashes(pub_x))
    ex, ey = splits.eval_test
    keep = torch.tensor([h not in seen for h in _image_hashes(ex)], dtype=torch.bool) if len(ex) else \
        torch.zeros(0, dtype=torch.bool)
    classes, counts = torch.unique(pub_y, return_counts=True)
    share = counts.double() / counts.sum()
    avail = [torch.nonzero(keep & (ey == c)).flatten() for c in classes]
    total = min(min(len(a) / float(p) for a, p in zip(avail, share)), float(cap)) if len(classes) else 0.0
    take = [int(np.floor(float(p) * total)) for p in share]
    if sum(take) >= MIN_REFERENCE and all(t > 0 for t in take):
        idx = torch.cat([a[torch.randperm(len(a), generator=g)[:t]] for a, t in zip(avail, take)])
        return ex[idx], (f"held-out public images: {len(idx)} test-split images of the public set's "
                         f"{len(classes)} classes, none in the public set (the prior never saw them), "
                         "in the public set's class shares")
    why = ("every test image of the public classes is in the public set" if not int(keep.sum()) else
           f"only {sum(take)} held-out test images of the public classes in the public set's class shares "
           f"(fewer than {MIN_REFERENCE}, or a class without any)")
    idx = torch.randperm(len(pub_x), generator=g)[:cap]
    return pub_x[idx], (f"the public set itself: {len(idx)} of its {len(pub_x)} images, the prior's training "
                        f"images (no held-out public images: {why})")


# -- one prior ----------------------------------------------------------------------------------

def _draw(attack: Any, prior: dict[str, torch.Tensor], n: int,
          seed: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``attack.prior_samples`` under a forked RNG (the run's random streams are left as they
    were): the images (None without a prior) and, for a conditional prior, their classes."""
    dev = getattr(attack, "device", torch.device("cpu"))
    devices = [dev] if isinstance(dev, torch.device) and dev.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        out = attack.prior_samples(prior, n, generator=torch.Generator().manual_seed(seed))
    if out is None:
        return None, None
    labels = None
    if isinstance(out, tuple):  # a conditional prior: (images, private class of each)
        out, labels = out
        labels = torch.as_tensor(labels).long().cpu()
        if labels.shape != (len(out),):
            raise ValueError(f"{attack.name}.prior_samples returned {tuple(labels.shape)} labels for {len(out)} images")
    out = out.detach().float().cpu()
    shape = tuple(getattr(attack, "image_shape", out.shape[1:]))
    if out.ndim != 4 or len(out) != n or tuple(out.shape[1:]) != shape:
        raise ValueError(f"{attack.name}.prior_samples returned {tuple(out.shape)}; expected ({n}, "
                         f"{', '.join(map(str, shape))})")
    if not torch.isfinite(out).all():
        raise ValueError(f"{attack.name}.prior_samples returned non-finite images")
    return out.clamp(0, 1), labels


def _class_diversity(out: dict[str, Any], samples: torch.Tensor, labels: torch.Tensor, splits: Any,
                     feats: Any, collapse_ratio: float) -> None:
    """A conditional prior's per-class diversity (:func:`mi_bench.diversity.diversity`: mean
    pairwise distance of its samples of a class / of real private training images of the
    class, evaluator features), into ``out``: ``diversity_ratio``, ``collapsed_classes``,
    ``diversity_per_class``; a failure is ``diversity_ratio: None`` with ``diversity_error``."""
    from mi_bench.diversity import diversity

    try:
        classes = sorted(int(c) for c in torch.unique(labels))
        x_tr, y_tr = splits.private_train
        per = min(int((labels == c).sum()) for c in classes)
        images = torch.stack([samples[labels == c][:per] for c in classes])
        report, _ = diversity(images, classes, [x_tr[y_tr == c] for c in classes], feats,
                              judge="eval", collapse_ratio=collapse_ratio, pairwise={})
        out.update(diversity_ratio=report["diversity_ratio"], collapsed_classes=report["collapsed_classes"],
                   collapsed=report["diversity"]["collapsed_classes"],
                   diversity_per_class={c: e["ratio"] for c, e in report["diversity"]["per_class"].items()},
                   diversity_rule=report["diversity"]["rule"] + f" ({per} prior samples per class)")
    except Exception as exc:  # noqa: BLE001 - reported, never silently 0
        out.update(diversity_ratio=None, diversity_error=metric_failure(exc, "prior_diversity"))


def prior_quality(attack: Any, prior: dict[str, torch.Tensor], evaluator: torch.nn.Module, splits: Any, *,
                  n: int, seed: int, collapse_ratio: float = 0.25) -> tuple[dict[str, Any], torch.Tensor | None]:
    """The record's ``prior_quality`` and the samples for the grid (None when there are none).
    Never raises for the metric (outside strict mode): a failure is ``kid: None`` and ``error``.
    A conditional prior (PLG-MI) adds its per-class diversity (:func:`_class_diversity`)."""
    from mi_bench.metrics import embed

    out: dict[str, Any] = {"kid": None, "kid_std": None, "n": n, "features": "evaluator",
                           "kernel": "(x.y/d+1)^3, unbiased MMD^2 (Binkowski et al. 2018)"}
    if n <= 0:
        out["absent"] = "disabled (eval.prior_kid_samples=0)"
        return out, None
    samples = labels = None
    try:
        samples, labels = _draw(attack, prior, n, seed)
        if samples is None:
            out["n"] = 0
            out["absent"] = (f"not applicable: {attack.name} draws no prior samples (its prior_samples "
                             "returns None: an attack without a generative prior, as the pixel baseline)")
            return out, None
        ref, against = reference_images(splits)
        size = splits.image_shape[-1]
        fa, fb = embed(evaluator, samples, size), embed(evaluator, ref, size)
        kid, std, s = kid_subsets(fa, fb, subsets=SUBSETS, subset_size=SUBSET_SIZE, seed=seed)
        out.update(kid=kid, kid_std=std, n_reference=len(ref), subset_size=s,
                   subsets=1 if (s == len(fa) == len(fb)) else SUBSETS, against=against)
        out["kid_se"] = _jackknife_se(fa, fb)
    except Exception as exc:  # noqa: BLE001 - reported, never silently 0
        out.update(kid=None, kid_std=None, error=metric_failure(exc, "prior_kid"))
    if samples is None:
        return out, None
    if labels is None:
        return out, samples[:GRID_SAMPLES]
    size = splits.image_shape[-1]
    _class_diversity(out, samples, labels, splits, lambda x: embed(evaluator, x, size), collapse_ratio)
    # the grid of a conditional prior: one row per class (the first 8), 8 samples each
    rows = [samples[labels == c][:8] for c in sorted(int(c) for c in torch.unique(labels))[:8]]
    return out, (torch.cat(rows) if all(len(r) == 8 for r in rows) else samples[:GRID_SAMPLES])


def write_prior_grid(path: Path, samples: torch.Tensor, nrow: int = 8) -> Path:
    """The first :data:`GRID_SAMPLES` prior samples as one PNG (``nrow`` per row)."""
    from torchvision.utils import save_image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(samples[:GRID_SAMPLES], str(path), nrow=nrow, padding=1, pad_value=1.0)
    return path


def describe(pq: dict[str, Any] | None) -> tuple[str, str] | None:
    """A record's ``prior_quality`` as (value, note) for tables: ``kid ± std``, ``n/a`` or
    ``failed`` with the reason; None for a record without it (older mi-bench)."""
    if not isinstance(pq, dict):
        return None
    if pq.get("kid") is not None:
        std = pq.get("kid_std")
        value = f"{pq['kid']:.3g}" + (f" ± {std:.2g}" if std is not None else "")
        note = (f"{pq.get('n')} prior samples vs {pq.get('against', '?')}; {pq.get('features', '?')} features, "
                f"{pq.get('subsets', '?')} subsets of {pq.get('subset_size', '?')} (± std over subsets"
                + (f"; jackknife s.e. {pq['kid_se']:.2g}" if pq.get("kid_se") is not None else "") + "); "
                "unbiased: ~0 = the prior's samples are distributed like real public images")
        if pq.get("grid"):
            note += f"; samples: {pq['grid']}"
        return value, note
    if pq.get("absent"):
        return "n/a", str(pq["absent"])
    return "failed", str(pq.get("error", "no KID and no reason recorded"))


def describe_diversity(pq: dict[str, Any] | None) -> tuple[str, str] | None:
    """A conditional prior's per-class diversity as (value, note); None when not measured."""
    if not isinstance(pq, dict) or ("diversity_ratio" not in pq and "diversity_error" not in pq):
        return None
    if pq.get("diversity_ratio") is None:
        return "failed", str(pq.get("diversity_error", "no value and no reason recorded"))
    flagged = pq.get("collapsed") or []
    return (f"{pq['diversity_ratio']:.2f} x real",
            "mean pairwise distance of the prior's samples of a class / of real private images of it; "
            f"{pq.get('diversity_rule', '')}; " + (f"COLLAPSED classes: {flagged}" if flagged else "no class collapsed"))
