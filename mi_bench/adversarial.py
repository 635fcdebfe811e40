"""Adversarial examples, shared by the robust judge (mi_bench.judges) and adversarial training
(defenses/advtrain.py, through mi_bench.api): untargeted PGD (Madry et al., ICLR 2018) in an L2
or L-inf ball, kept in the image box [0, 1]."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _per_image(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * 3))


def project(delta: torch.Tensor, x: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """``delta`` projected onto the ``norm`` ball of radius ``eps``, then ``x + delta`` onto the
    box [0, 1] (the box step only shrinks coordinates, so the result stays in the ball)."""
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        n = delta.flatten(1).norm(dim=1)
        delta = delta * _per_image((eps / n.clamp_min(1e-12)).clamp(max=1.0))
    return (x + delta).clamp(0, 1) - x


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, norm: str, eps: float,
                 steps: int, step_size: float = 0.0, random_start: bool = True) -> torch.Tensor:
    """Untargeted PGD adversarial examples of ``x`` (in [0, 1]) for labels ``y``: within the
    ``norm`` ball of radius ``eps`` and in [0, 1]; ``model`` in eval mode while attacked (its mode
    restored), gradients to the input only. ``eps <= 0`` returns ``x`` itself."""
    if norm not in ("l2", "linf"):
        raise ValueError(f"PGD: norm={norm!r}: use l2 or linf")
    if eps <= 0:
        return x.detach()
    step = step_size or 2.5 * eps / steps
    x = x.detach()
    if not random_start:
        delta = torch.zeros_like(x)
    elif norm == "linf":
        delta = (torch.rand_like(x) * 2 - 1) * eps
    else:
        r = torch.randn_like(x)
        r = r / _per_image(r.flatten(1).norm(dim=1).clamp_min(1e-12))
        delta = r * eps * _per_image(torch.rand(len(x), device=x.device, dtype=x.dtype))
    delta = project(delta, x, norm, eps)
    was = model.training
    model.eval()
    try:
        for _ in range(steps):
            delta.requires_grad_(True)
            loss = F.cross_entropy(model(x + delta), y)
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                if norm == "linf":
                    delta = delta + step * grad.sign()
                else:
                    delta = delta + step * grad / _per_image(grad.flatten(1).norm(dim=1).clamp_min(1e-12))
                delta = project(delta, x, norm, eps)
    finally:
        model.train(was)
    return (x + delta).detach()
