"""DESMIL-style regulariser: mi-bench's *adaptation* of debiased multi-interest learning
(Liu et al. 2022) and its sample-reweighting decorrelation (StableNet, Zhang et al., CVPR 2021)
to model inversion. It is not a published MI defense.

The penultimate embedding (the output of the tapped ``layer``; MCNN/SCNN: ``pool``, i.e.
``model.embed(x)``) is split into ``interests`` contiguous chunks (``torch.tensor_split``).
Per batch, StableNet's inner loop (xxgege/StableNet ``training/reweighting.py``) learns sample
weights that decorrelate the chunks:

* fresh weight logits ``u`` for the batch (StableNet starts them at 1 and its memory logits at
  1; mi-bench starts both at 0 - the softmax is the same); ``inner_steps`` (20) SGD steps, lr
  ``inner_lr`` (1.0), momentum 0.9, lr x0.1 after half the steps;
* weights = softmax over the batch *and* the filled slots of a memory of ``memory`` (128) past
  features and weight logits (the memory enters detached);
* objective ``sum_{i != j, chunk(i) != chunk(j)} C_w(i, j)^2 / lambda_p + sum_b softmax(u)_b^2``
  (``lambda_p`` = 70), where ``C_w = sum_n w_n phi_n phi_n^T - e e^T`` (``e = sum_n w_n phi_n``)
  is the weighted covariance of random-Fourier-feature maps of the feature dimensions. Only
  pairs of dimensions from *different* interests count (with ``interests = 0`` every pair
  ``i != j`` counts, which is StableNet itself).
* Random Fourier features (``rff``):
  - ``stablenet`` (default, StableNet's ``loss_reweighting.random_fourier_features_gpu`` with
    ``num_f = 1``, ``sum = True``): one frequency ``a ~ N(0, 1)`` shared by all dimensions, a
    phase ``b_d ~ U(0, 2 pi)`` per dimension, ``u = a h + b`` rescaled per sample to
    ``[0, pi/2]`` by its min and max over the dimensions, ``phi = sqrt(2) (cos u + sin u)``,
    **redrawn at every inner step** (the inner objective is itself random, as in StableNet);
    mi-bench guards the rescale against a zero range (StableNet divides by it);
  - ``per_dim``: mi-bench's earlier variant - one frequency per dimension ``a_d ~ N(0, 1)``, no
    rescale, drawn once per batch and kept over the inner loop.
* the memory is a ring buffer: each batch writes its first ``min(batch, memory)`` features and
  learned logits into the next slots (wrapping around), so every slot is refreshed whichever
  the batch size; a slot's first 10 writes form a running mean (StableNet's first-epoch warm
  start), later ones an EMA with factor ``memory_ema`` (0.9). Empty slots take no part in the
  softmax. (StableNet runs batch 128 = memory 128 and updates every slot from the same position
  of each batch; with batch 64 its rule would leave half of a 128-slot memory at its initial
  zeros for ever.)
* the network is trained on ``sum_b softmax(u)_b CE_b`` (weights detached).

StableNet's first-epoch loss scaling (``first_step_cons``) and lambda decay
(``lambda_decay_rate``) are no-ops at its defaults (1 and 1) and are not implemented. Random
draws use torch's global generator (seeded by the trainer).

Optional ``beta_dec * sum_{i<j} HSIC(z^i, z^j)`` (plain biased HSIC, Gaussian kernels with
bandwidth ``sigma^2 d``; ``sigma = 0``, the default, takes the median squared distance of the
chunk in the batch, because at BiDO's fixed sigma = 5 the kernels of a small embedding are ~1
everywhere and the HSIC ~1e-5) back-propagates into the network: the direct decorrelation arm.
Reweighting alone is expected to change MI leakage little; report both arms.

With ``reweight=false`` and ``beta_dec=0`` no tap is installed and the loss is the plain mean
cross-entropy: bit-for-bit the ``none`` baseline (tested).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from mi_bench.api import (
    Defense, LossOutput, PluginConfig, TrainBatch, dependence, gaussian_kernel, kernel_from_sq,
    param, register_defense, sq_distances,
)


@dataclass
class DESMILConfig(PluginConfig):
    interests: int = param(4, ge=0,
                           help="K chunks of the embedding (0 = every dimension, StableNet)")
    layer: str = param("pool", help="module whose (flattened) output is the penultimate embedding")
    reweight: bool = param(True, help="learn decorrelating sample weights (StableNet loop)")
    lambda_p: float = param(70.0, gt=0.0, label=True, sweep=(7.0, 70.0, 700.0),
                            help="divisor of the decorrelation loss (StableNet 70); smaller = "
                            "stronger decorrelation vs. uniform weights")
    inner_steps: int = param(20, ge=1, help="SGD steps of the weight learner (StableNet 20)")
    inner_lr: float = param(1.0, gt=0.0, help="lr of the weight learner (x0.1 after half)")
    inner_momentum: float = param(0.9, ge=0.0, lt=1.0, help="momentum of the weight learner")
    rff: str = param("stablenet", choices=("stablenet", "per_dim"),
                     help="random Fourier features: StableNet's (shared frequency, per-dimension "
                     "phase, per-sample rescale, redrawn each inner step) or one frequency per "
                     "dimension drawn once per batch")
    memory: int = param(128, ge=0, help="slots of the feature/weight ring memory (0 = none)")
    memory_ema: float = param(0.9, ge=0.0, lt=1.0, help="EMA factor of the memory")
    beta_dec: float = param(0.0, ge=0.0, label=True, sweep=(0.0, 1.0, 10.0, 100.0),
                            help="weight of the direct decorrelation sum_{i<j} HSIC(z^i, z^j)")
    sigma: float = param(0.0, ge=0.0, help="Gaussian kernel sigma of the direct HSIC term "
                         "(bandwidth sigma^2 * dim); 0 = median heuristic per chunk and batch")
    measure: str = param("plain_hsic", choices=("plain_hsic", "hsic", "coco"),
                         help="direct term's measure: plain HSIC (default), normalised, COCO")


def rff(h: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Random Fourier features, one frequency per dimension: ``sqrt(2)(cos u + sin u)``,
    ``u = a * h + b`` (``h`` (n, d), ``a``, ``b`` (d,))."""
    u = h * a + b
    return math.sqrt(2.0) * (torch.cos(u) + torch.sin(u))


def stablenet_rff(h: torch.Tensor) -> torch.Tensor:
    """StableNet's random Fourier features (one draw): ``u = a h + b`` with one shared
    ``a ~ N(0, 1)`` and per-dimension ``b ~ U(0, 2 pi)``, rescaled per sample (over the
    dimensions) to ``[0, pi/2]``; ``sqrt(2) (cos u + sin u)``."""
    a = torch.randn((), device=h.device, dtype=h.dtype)
    b = 2 * math.pi * torch.rand(h.shape[1], device=h.device, dtype=h.dtype)
    u = h * a + b
    u = u - u.amin(dim=1, keepdim=True)
    u = u / u.amax(dim=1, keepdim=True).clamp_min(torch.finfo(h.dtype).tiny)
    u = u * (math.pi / 2)
    return math.sqrt(2.0) * (torch.cos(u) + torch.sin(u))


def weighted_cov(phi: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``sum_n w_n phi_n phi_n^T - e e^T`` with ``e = sum_n w_n phi_n`` (``w`` sums to 1)."""
    w = w.reshape(-1, 1)
    e = (w * phi).sum(0, keepdim=True)
    return (w * phi).T @ phi - e.T @ e


def chunk_kernel(z: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian kernel of ``mi_bench.hsic``; ``sigma = 0`` picks the median heuristic
    ``sigma^2 d = median_{i != j} ||z_i - z_j||^2`` (detached), i.e. ``exp(-sq / (2 median))``."""
    if sigma > 0:
        return gaussian_kernel(z, sigma)
    z = z.reshape(z.shape[0], -1)
    sq = sq_distances(z)
    off = sq.detach()[~torch.eye(len(z), dtype=torch.bool, device=z.device)]
    if not off.numel():
        return kernel_from_sq(sq, 2.0 * z.shape[1])  # sigma = 1
    med = off.median()  # stays on the device (no host read per step)
    return kernel_from_sq(sq, 2.0 * torch.where(med > 0, med, torch.full_like(med, z.shape[1])))


def pair_mask(d: int, interests: int, device=None) -> torch.Tensor:
    """Boolean (d, d): pairs of dimensions that belong to different interests."""
    if interests <= 0 or interests >= d:
        ids = torch.arange(d, device=device)
    else:
        ids = torch.cat([torch.full((len(c),), i, device=device)
                         for i, c in enumerate(torch.arange(d).tensor_split(interests))])
    return ids[:, None] != ids[None, :]


def decorrelation_loss(
    phi: torch.Tensor, logits_all: torch.Tensor, n_batch: int, mask: torch.Tensor, lambda_p: float,
) -> torch.Tensor:
    """StableNet's objective: masked ``sum C_w^2 / lambda_p + sum_b softmax(u)_b^2``; the
    softmax runs over batch + memory, the penalty over the batch's own logits only."""
    cov = weighted_cov(phi, torch.softmax(logits_all, 0))
    lossb = (cov.pow(2) * mask).sum()
    lossp = torch.softmax(logits_all[:n_batch], 0).pow(2).sum()
    return lossb / lambda_p + lossp


class SampleWeighter:
    """StableNet's per-batch weight learner with its feature/weight ring memory."""

    WARM_START = 10  # a slot's first writes form a running mean (StableNet: first 10 batches)

    def __init__(self, cfg: DESMILConfig) -> None:
        self.cfg = cfg
        self.mem_feat: torch.Tensor | None = None
        self.mem_logit: torch.Tensor | None = None
        self.mem_count: torch.Tensor | None = None  # writes per slot (0 = empty)
        self.ptr = 0  # next slot to write
        self.updates = 0
        self.last_losses = torch.zeros(0)  # inner-loop objective per step (detached, on the device)

    def _phi(self, feats: torch.Tensor, fixed: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        if fixed is not None:
            return rff(feats, *fixed)
        return stablenet_rff(feats)

    def learn(self, feat: torch.Tensor) -> torch.Tensor:
        """Sample weights (n,) for the batch ``feat`` (n, d): non-negative, summing to 1."""
        cfg = self.cfg
        feat = feat.detach().reshape(feat.shape[0], -1)
        n, d = feat.shape
        mem_n = cfg.memory
        if mem_n and self.mem_feat is None:
            self.mem_feat = feat.new_zeros(mem_n, d)
            self.mem_logit = feat.new_zeros(mem_n)
            self.mem_count = torch.zeros(mem_n, dtype=torch.long, device=feat.device)
        filled = (self.mem_count > 0) if mem_n else None
        mem_feat = self.mem_feat[filled] if mem_n else feat[:0]
        mem_logit = self.mem_logit[filled] if mem_n else feat.new_zeros(0)
        feats = torch.cat([feat, mem_feat])
        fixed = None
        if cfg.rff == "per_dim":  # drawn once per batch
            fixed = (torch.randn(d, device=feat.device, dtype=feat.dtype),
                     2 * math.pi * torch.rand(d, device=feat.device, dtype=feat.dtype))
        mask = pair_mask(d, cfg.interests, feat.device).to(feat.dtype)  # not re-cast every inner step
        u = torch.zeros(n, device=feat.device, dtype=feat.dtype, requires_grad=True)
        opt = torch.optim.SGD([u], lr=cfg.inner_lr, momentum=cfg.inner_momentum)
        half = max(1, cfg.inner_steps // 2)
        losses = []
        with torch.enable_grad():
            for step in range(cfg.inner_steps):
                for g in opt.param_groups:
                    g["lr"] = cfg.inner_lr * (0.1 ** (step // half))
                phi = self._phi(feats, fixed)  # stablenet: a fresh draw every inner step
                loss = decorrelation_loss(phi, torch.cat([u, mem_logit]), n, mask, cfg.lambda_p)
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.detach())
            phi = self._phi(feats, fixed)
            losses.append(decorrelation_loss(phi, torch.cat([u, mem_logit]), n, mask, cfg.lambda_p).detach())
        self.last_losses = torch.stack(losses)  # no host read per inner step
        u = u.detach()
        if mem_n:
            self._write(feat, u)
        self.updates += 1
        return torch.softmax(u, 0)

    def _write(self, feat: torch.Tensor, u: torch.Tensor) -> None:
        """Ring-buffer update of the next ``min(n, memory)`` slots."""
        mem_n = self.cfg.memory
        k = min(len(u), mem_n)
        slots = (self.ptr + torch.arange(k, device=feat.device)) % mem_n
        self.ptr = (self.ptr + k) % mem_n
        count = self.mem_count[slots]
        warm = (count < self.WARM_START).to(feat.dtype)
        # warm start: running mean (the slot's initial zeros are dropped); then EMA
        keep = warm * count.to(feat.dtype) / (count + 1).to(feat.dtype) + (1 - warm) * self.cfg.memory_ema
        self.mem_feat[slots] = self.mem_feat[slots] * keep[:, None] + feat[:k] * (1 - keep[:, None])
        self.mem_logit[slots] = self.mem_logit[slots] * keep + u[:k] * (1 - keep)
        self.mem_count[slots] = count + 1


@register_defense("desmil")
class DESMIL(Defense):
    Config = DESMILConfig
    summary = "DESMIL-style (adaptation): StableNet sample reweighting decorrelating K interests"
    paper = "adapted from Liu et al. 2022 (debiased multi-interest learning) and Zhang et al., " \
            "StableNet, CVPR 2021; not a published MI defense"

    def setup(self, cfg) -> None:
        if cfg.beta_dec and cfg.interests < 2:
            raise ValueError("desmil: beta_dec > 0 needs interests >= 2 (chunks to decorrelate)")
        self.weighter = SampleWeighter(cfg)

    def tap_layers(self, model: nn.Module) -> list[str]:
        if not self.cfg.reweight and self.cfg.beta_dec == 0:
            return []
        return [self.cfg.layer]

    def configure(self, model, optimizer, **kw):
        self.weighter = SampleWeighter(self.cfg)  # fresh memory per training run
        return model, optimizer

    def compute_loss(self, batch: TrainBatch) -> LossOutput:
        cfg = self.cfg
        if not batch.taps:
            ce = F.cross_entropy(batch.logits, batch.y)
            return LossOutput(ce, {"ce": ce.detach()})
        feat = batch.taps[cfg.layer].reshape(len(batch.y), -1)
        terms: dict[str, torch.Tensor] = {}
        ce_each = F.cross_entropy(batch.logits, batch.y, reduction="none")
        terms["ce"] = ce_each.detach().mean()
        if cfg.reweight:
            w = self.weighter.learn(feat)
            total = (w * ce_each).sum()
            terms["ce_weighted"] = total.detach()
            terms["decor_start"] = self.weighter.last_losses[0]
            terms["decor_end"] = self.weighter.last_losses[-1]
            terms["weight_max"] = w.max()
        else:
            total = ce_each.mean()
        if cfg.beta_dec:
            chunks = feat.tensor_split(min(cfg.interests, feat.shape[1]), dim=1)
            kernels = [chunk_kernel(c, cfg.sigma) for c in chunks]
            dec = feat.new_zeros(())
            for i in range(len(kernels)):
                for j in range(i + 1, len(kernels)):
                    dec = dec + dependence(cfg.measure, kernels[i], kernels[j])
            total = total + cfg.beta_dec * dec
            terms["hsic_interests"] = dec.detach()
        terms["loss"] = total.detach()
        return LossOutput(total, terms)
