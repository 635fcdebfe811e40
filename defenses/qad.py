"""QAD-style regulariser: mi-bench's *adaptation* of quality-agnostic deepfake detection
(Le & Woo, ICCV 2023) to model inversion. It is not a published MI defense.

The paper trains one model on several quality levels of the same images, *maximises* the
dependency (HSIC) between intermediate representations of the high- and low-quality versions,
and adds Adversarial Weight Perturbation (AWP, Wu, Xia, Wang, NeurIPS 2020). mi-bench's version:

* Each training image is degraded with differentiable kornia corruptions (each switchable and
  configurable): JPEG (quality ~ U[30, 80]), Gaussian blur (sigma ~ U[0.5, 1.5]), down-up
  sampling (x0.5, bilinear), Gaussian noise (std 0.03). ``degrade_mode=one`` applies one
  enabled corruption, drawn per image; ``chain`` applies all enabled ones in that order.
  Outputs are clamped to [0, 1]. Grayscale images go through JPEG as 3 equal channels and come
  back as luma. Randomness comes from torch's global generator (seeded by the trainer).
* Loss: ``ce_clean + ce_weight * ce_degraded - alpha_q * sum_l w_l nHSIC(Z_l(x), Z_l(x~))
  + alpha_r * sum_l w_l nHSIC(x - x~, Z_l(x))``. ``nHSIC`` is BiDO's normalised HSIC
  (``mi_bench.hsic``) with Gaussian kernels of bandwidth ``sigma^2 d`` (official sigma 6). The
  degraded view runs through the model with taps via ``TrainBatch.forward`` (in train mode, so
  BatchNorm statistics see both views, as when training on both qualities). The ``alpha_r``
  term is a targeted form of BiDO's d(X, Z): it penalises dependence of the representation on
  the detail the degradation removes.
* AWP (``awp_gamma > 0``, off for the first ``awp_warmup`` epochs) in ``optimizer_step``, as
  methods.md describes: a proxy copy of the weights takes one SGD step (lr ``awp_proxy_lr``,
  0.01) that *increases* the training loss; for every weight tensor of dim > 1,
  ``v = ||w|| / (||dw|| + 1e-20) * dw`` with ``dw = proxy - w``; ``w += gamma * v``; the loss
  and gradients are computed at the perturbed weights; the perturbation is removed (the saved
  original tensors are copied back, so nothing is left behind, not even rounding); then the
  optimiser steps the original weights with the perturbed-point gradients. The ascent gradient
  is the gradient of the *full* training objective (clean and degraded cross-entropy and the
  HSIC terms) at the unperturbed weights, which is exactly what the proxy's SGD step uses, and
  the ascent and the perturbed pass see the *same* degraded view of the batch (drawn once per
  step), so AWP perturbs against the loss it then minimises; BatchNorm running statistics
  touched by that extra forward pass are restored, as a separate proxy model would leave the
  model's own untouched. Adversarial
  robustness is known to make models *easier* to invert: AWP is off by default and must be
  ablated, not assumed helpful.

Switched off (``alpha_q = alpha_r = 0``, no degradation enabled, AWP off) no degraded view is
computed and no tap is installed: the training is bit-for-bit the ``none`` baseline (tested).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import kornia
import torch
from torch import nn
from torch.nn import functional as F

from mi_bench.api import (
    Defense, LossOutput, PluginConfig, TrainBatch, dependence, gaussian_kernel, param,
    register_defense,
)


@dataclass
class QADConfig(PluginConfig):
    alpha_q: float = param(0.003, ge=0.0, label=True, sweep=(0.0, 0.001, 0.003, 0.01, 0.03),
                           help="weight of the clean/degraded representation dependence "
                           "(maximised); official 0.002-0.003")
    alpha_r: float = param(0.0, ge=0.0, label=True, sweep=(0.0, 0.01, 0.05),
                           help="weight of nHSIC(x - x~, Z_l(x)) (minimised); 0 = off")
    ce_weight: float = param(1.0, ge=0.0, help="weight of the cross-entropy on the degraded view")
    layers: list[str] = param(default_factory=list,
                              help="tapped layers (empty = the model's first hidden_layers, one "
                              "per layer weight)")
    layer_weights: list[float] = param(default_factory=lambda: [0.1, 0.25, 0.5],
                                       help="per-layer weights w_l (official [0.1, 0.25, 0.5])")
    sigma: float = param(6.0, gt=0.0, help="Gaussian kernel sigma (bandwidth sigma^2 * dim)")
    measure: str = param("hsic", choices=("hsic", "plain_hsic", "coco"),
                         help="dependence measure: normalised HSIC (default), plain HSIC, COCO")
    eps: float = param(1e-5, gt=0.0, help="ridge of the normalised HSIC")
    # degradations
    degrade_mode: str = param("one", choices=("one", "chain"),
                              help="one enabled corruption per image (random), or all in a chain")
    jpeg: bool = param(True, help="JPEG compression (kornia, differentiable)")
    jpeg_quality_min: float = param(30.0, ge=1.0, le=100.0, help="lowest JPEG quality")
    jpeg_quality_max: float = param(80.0, ge=1.0, le=100.0, help="highest JPEG quality")
    blur: bool = param(True, help="Gaussian blur")
    blur_sigma_min: float = param(0.5, gt=0.0, help="smallest blur sigma (pixels)")
    blur_sigma_max: float = param(1.5, gt=0.0, help="largest blur sigma (pixels)")
    resample: bool = param(True, help="down-up sampling (bilinear)")
    resample_scale: float = param(0.5, gt=0.0, lt=1.0, help="down-sampling factor")
    noise: bool = param(True, help="additive Gaussian noise")
    noise_std: float = param(0.03, ge=0.0, help="std of the additive noise")
    # adversarial weight perturbation
    awp_gamma: float = param(0.0, ge=0.0, label=True, sweep=(0.0, 0.002, 0.006),
                             help="AWP size (relative to each weight's norm); 0 = off; "
                             "official 0.002-0.006")
    awp_warmup: int = param(3, ge=0, help="epochs without AWP at the start (official 3)")
    awp_proxy_lr: float = param(0.01, gt=0.0, help="lr of the proxy's loss-increasing SGD step")


# -- degradations -----------------------------------------------------------------------------

def _uniform(n: int, lo: float, hi: float, like: torch.Tensor) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, device=like.device, dtype=like.dtype)


def jpeg(x: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """Differentiable JPEG (kornia) for 1- or 3-channel images in [0, 1]."""
    if x.shape[1] == 1:
        y = kornia.enhance.jpeg_codec_differentiable(x.expand(-1, 3, -1, -1), quality)
        return kornia.color.rgb_to_grayscale(y)
    return kornia.enhance.jpeg_codec_differentiable(x, quality)


def blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Gaussian blur with one sigma per image; kernel covers +-3 sigma of the largest."""
    ks = 2 * math.ceil(3 * float(sigma.max())) + 1
    return kornia.filters.gaussian_blur2d(x, (ks, ks), sigma[:, None].repeat(1, 2))


def down_up(x: torch.Tensor, scale: float) -> torch.Tensor:
    h, w = x.shape[-2:]
    small = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False,
                          recompute_scale_factor=False)
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


def add_noise(x: torch.Tensor, std: float) -> torch.Tensor:
    return x + std * torch.randn_like(x)


def enabled_degradations(cfg: QADConfig) -> list[str]:
    return [n for n in ("jpeg", "blur", "resample", "noise") if getattr(cfg, n)]


def apply_degradation(name: str, x: torch.Tensor, cfg: QADConfig) -> torch.Tensor:
    m = x.shape[0]
    if name == "jpeg":
        return jpeg(x, _uniform(m, cfg.jpeg_quality_min, cfg.jpeg_quality_max, x))
    if name == "blur":
        return blur(x, _uniform(m, cfg.blur_sigma_min, cfg.blur_sigma_max, x))
    if name == "resample":
        return down_up(x, cfg.resample_scale)
    if name == "noise":
        return add_noise(x, cfg.noise_std)
    raise ValueError(f"unknown degradation {name!r}")


def degrade(x: torch.Tensor, cfg: QADConfig) -> torch.Tensor:
    """A degraded view of ``x`` (same shape, in [0, 1], differentiable w.r.t. ``x``)."""
    names = enabled_degradations(cfg)
    if not names:
        return x
    if cfg.degrade_mode == "chain":
        out = x
        for name in names:
            out = apply_degradation(name, out, cfg).clamp(0.0, 1.0)
        return out
    choice = torch.randint(len(names), (x.shape[0],), device=x.device)
    out = torch.empty_like(x)
    for i, name in enumerate(names):
        sel = torch.nonzero(choice == i).flatten()
        if len(sel):
            out = out.index_put((sel,), apply_degradation(name, x[sel], cfg))
    return out.clamp(0.0, 1.0)


# -- adversarial weight perturbation ----------------------------------------------------------

def awp_perturbation(
    model: nn.Module, closure: Callable[[], LossOutput], gamma: float, proxy_lr: float = 0.01,
) -> dict[str, torch.Tensor]:
    """``gamma * v`` per weight tensor of dim > 1 (name -> tensor); leaves the model unchanged.

    The proxy (a copy of the weights) takes one SGD step of size ``proxy_lr`` that increases the
    closure's loss; ``dw = proxy - w`` and ``v = ||w|| / (||dw|| + 1e-20) * dw``.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and p.dim() > 1]
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    loss = closure().total
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    with torch.no_grad():
        for n, b in model.named_buffers():  # the proxy's forward must not touch the model's stats
            b.copy_(buffers[n])
        out: dict[str, torch.Tensor] = {}
        for (n, p), g in zip(named, grads):
            if g is None:
                continue
            proxy = p.detach().clone()
            proxy.add_(g, alpha=proxy_lr)  # SGD on -loss: one step that increases the loss
            dw = proxy - p
            out[n] = gamma * p.norm() / (dw.norm() + 1e-20) * dw
    return out


@register_defense("qad")
class QAD(Defense):
    Config = QADConfig
    summary = "QAD-style (adaptation): CE on clean+degraded views, max nHSIC(Z(x), Z(x~)), opt. AWP"
    paper = "adapted from Le & Woo, Quality-Agnostic Deepfake Detection, ICCV 2023 (+ AWP, Wu et " \
            "al., NeurIPS 2020); not a published MI defense"

    def setup(self, cfg) -> None:
        if cfg.jpeg_quality_min > cfg.jpeg_quality_max:
            raise ValueError("qad: jpeg_quality_min must be <= jpeg_quality_max")
        if cfg.blur_sigma_min > cfg.blur_sigma_max:
            raise ValueError("qad: blur_sigma_min must be <= blur_sigma_max")
        self._epoch = 0
        self._awp_steps = 0
        self._view: tuple[torch.Tensor, torch.Tensor] | None = None  # (batch x, its degraded view)

    def _degraded(self, batch: TrainBatch) -> torch.Tensor:
        """The batch's degraded view, drawn once per batch tensor (AWP's ascent and its
        perturbed pass both call the loss on the same ``x``: they must see the same view)."""
        if self._view is None or self._view[0] is not batch.x:
            self._view = (batch.x, degrade(batch.x, self.cfg))
        return self._view[1]

    def _layers(self, model: nn.Module) -> list[str]:
        n = len(self.cfg.layer_weights)
        layers = list(self.cfg.layers) or list(getattr(model, "hidden_layers", ()))[:n]
        if len(layers) != n:
            raise ValueError(
                f"qad: {len(layers)} tapped layers ({', '.join(layers) or 'none'}) but "
                f"{n} layer_weights: give one weight per layer"
            )
        return layers

    def tap_layers(self, model: nn.Module) -> list[str]:
        if self.cfg.alpha_q == 0 and self.cfg.alpha_r == 0:
            return []
        return self._layers(model)

    def configure(self, model, optimizer, **kw):
        self._epoch = 0
        self._awp_steps = 0
        self._view = None
        return model, optimizer

    def on_epoch_end(self, epoch: int) -> None:
        self._epoch = epoch + 1

    def compute_loss(self, batch: TrainBatch) -> LossOutput:
        cfg = self.cfg
        ce = F.cross_entropy(batch.logits, batch.y)
        terms: dict[str, torch.Tensor] = {"ce": ce.detach()}
        total = ce
        if not enabled_degradations(cfg):
            return LossOutput(total, terms)
        x_deg = self._degraded(batch)
        logits_deg, taps_deg = batch.forward(x_deg)
        ce_deg = F.cross_entropy(logits_deg, batch.y)
        total = total + cfg.ce_weight * ce_deg
        terms["ce_degraded"] = ce_deg.detach()
        if batch.taps:
            weights = dict(zip(self._layers(batch.model), cfg.layer_weights))
            k_res = gaussian_kernel(batch.x - x_deg, cfg.sigma) if cfg.alpha_r else None
            # detached float64 sums (as the former Python floats), read by the trainer every N steps
            dq = dr = ce.new_zeros((), dtype=torch.float64)
            for name, z in batch.taps.items():
                w = weights[name]
                kz = gaussian_kernel(z, cfg.sigma)
                if cfg.alpha_q:
                    d = dependence(cfg.measure, kz, gaussian_kernel(taps_deg[name], cfg.sigma),
                                   eps=cfg.eps)
                    total = total - cfg.alpha_q * w * d  # maximised
                    dq = dq + w * d.detach().double()
                if k_res is not None:
                    d = dependence(cfg.measure, k_res, kz, eps=cfg.eps)
                    total = total + cfg.alpha_r * w * d  # minimised
                    dr = dr + w * d.detach().double()
            terms.update(hsic_clean_degraded=dq, hsic_residual=dr)
        terms["loss"] = total.detach()
        return LossOutput(total, terms)

    def awp_active(self) -> bool:
        return self.cfg.awp_gamma > 0 and self._epoch >= self.cfg.awp_warmup

    def optimizer_step(self, model, optimizer, closure):
        if not self.awp_active():
            return super().optimizer_step(model, optimizer, closure)
        diff = awp_perturbation(model, closure, self.cfg.awp_gamma, self.cfg.awp_proxy_lr)
        params = dict(model.named_parameters())
        saved = {n: params[n].detach().clone() for n in diff}
        with torch.no_grad():
            for n, v in diff.items():
                params[n].add_(v)
        optimizer.zero_grad(set_to_none=True)
        out = closure()
        out.total.backward()
        with torch.no_grad():
            for n, w in saved.items():
                params[n].copy_(w)
        optimizer.step()
        self._awp_steps += 1
        return out

    def report(self) -> dict:
        return {"awp_steps": self._awp_steps, "degradations": enabled_degradations(self.cfg)}
