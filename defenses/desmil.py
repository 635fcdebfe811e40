"""DESMIL-style regulariser: mi-bench's *adaptation* of debiased multi-interest learning
(Liu et al. 2022) and its sample-reweighting decorrelation (StableNet, Zhang et al., CVPR 2021)
to model inversion. It is not a published MI defense.

The penultimate embedding (the output of the tapped ``layer``; MCNN/SCNN: ``pool``, i.e.
``model.embed(x)``) is split into ``interests`` contiguous chunks (``torch.tensor_split``).
Per batch, StableNet's inner loop learns sample weights that decorrelate the chunks:

* fresh weight logits ``u = 0`` for the batch; ``inner_steps`` (20) SGD steps, lr ``inner_lr``
  (1.0), momentum 0.9, lr x0.1 after half the steps;
* weights = softmax over the batch *and* a memory of ``memory`` (128) past features and weight
  logits (the memory enters detached);
* objective ``sum_{i != j, chunk(i) != chunk(j)} C_w(i, j)^2 / lambda_p + sum_b softmax(u)_b^2``
  (``lambda_p`` = 70), where ``C_w = sum_n w_n phi_n phi_n^T - e e^T`` (``e = sum_n w_n phi_n``)
  is the weighted covariance of random-Fourier-feature maps ``phi_d = sqrt(2) (cos(a_d h_d +
  b_d) + sin(a_d h_d + b_d))``: one frequency per dimension, ``a ~ N(0, 1)``, ``b ~ U(0, 2 pi)``,
  StableNet's summed cos/sin form. Only pairs of dimensions from *different* interests count
  (with ``interests = 0`` every pair ``i != j`` counts, which is StableNet itself).
* the memory is updated slot-wise with EMA 0.9 (a running mean over the first 10 batches, as
  StableNet does in its first epoch) from the batch's features and logits;
* the network is trained on ``sum_b softmax(u)_b CE_b`` (weights detached).

Deviations from StableNet's code (documented choices): the Fourier features are drawn once per
batch and kept fixed over the inner loop (StableNet redraws them at every inner step, so its
inner objective is itself random); StableNet's min-max rescaling of the projections and its
first-epoch loss scaling and lambda decay are not used. Random draws use torch's global
generator (seeded by the trainer).

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

from mi_bench.hsic import dependence, gaussian_kernel
from mi_bench.interfaces import Defense, LossOutput, TrainBatch
from mi_bench.params import PluginConfig, param
from mi_bench.registry import DEFENSES


@dataclass
class DESMILConfig(PluginConfig):
    interests: int = param(4, ge=0,
                           help="K chunks of the embedding (0 = every dimension, StableNet)")
    layer: str = param("pool", help="module whose (flattened) output is the penultimate embedding")
    reweight: bool = param(True, help="learn decorrelating sample weights (StableNet loop)")
    lambda_p: float = param(70.0, gt=0.0, sweep=(7.0, 70.0, 700.0),
                            help="divisor of the decorrelation loss (StableNet 70); smaller = "
                            "stronger decorrelation vs. uniform weights")
    inner_steps: int = param(20, ge=1, help="SGD steps of the weight learner (StableNet 20)")
    inner_lr: float = param(1.0, gt=0.0, help="lr of the weight learner (x0.1 after half)")
    inner_momentum: float = param(0.9, ge=0.0, lt=1.0, help="momentum of the weight learner")
    memory: int = param(128, ge=0, help="slots of the feature/weight memory (0 = none)")
    memory_ema: float = param(0.9, ge=0.0, lt=1.0, help="EMA factor of the memory")
    beta_dec: float = param(0.0, ge=0.0, sweep=(0.0, 1.0, 10.0, 100.0),
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
    with torch.no_grad():
        sq = torch.cdist(z, z).pow(2)
        off = sq[~torch.eye(len(z), dtype=torch.bool, device=z.device)]
        med = float(off.median()) if off.numel() else 0.0
    return gaussian_kernel(z, math.sqrt(med / z.shape[1]) if med > 0 else 1.0)


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
    """StableNet's per-batch weight learner with its feature/weight memory."""

    def __init__(self, cfg: DESMILConfig) -> None:
        self.cfg = cfg
        self.mem_feat: torch.Tensor | None = None
        self.mem_logit: torch.Tensor | None = None
        self.updates = 0
        self.last_losses: list[float] = []

    def learn(self, feat: torch.Tensor) -> torch.Tensor:
        """Sample weights (n,) for the batch ``feat`` (n, d): non-negative, summing to 1."""
        cfg = self.cfg
        feat = feat.detach().reshape(feat.shape[0], -1)
        n, d = feat.shape
        mem_n = cfg.memory
        if mem_n and self.mem_feat is None:
            self.mem_feat = feat.new_zeros(mem_n, d)
            self.mem_logit = feat.new_zeros(mem_n)
        feats = torch.cat([feat, self.mem_feat]) if mem_n else feat
        a = torch.randn(d, device=feat.device, dtype=feat.dtype)
        b = 2 * math.pi * torch.rand(d, device=feat.device, dtype=feat.dtype)
        phi = rff(feats, a, b)
        mask = pair_mask(d, cfg.interests, feat.device)
        u = torch.zeros(n, device=feat.device, dtype=feat.dtype, requires_grad=True)
        opt = torch.optim.SGD([u], lr=cfg.inner_lr, momentum=cfg.inner_momentum)
        half = max(1, cfg.inner_steps // 2)
        losses = []
        with torch.enable_grad():
            for step in range(cfg.inner_steps):
                for g in opt.param_groups:
                    g["lr"] = cfg.inner_lr * (0.1 ** (step // half))
                logits_all = torch.cat([u, self.mem_logit]) if mem_n else u
                loss = decorrelation_loss(phi, logits_all, n, mask, cfg.lambda_p)
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
            logits_all = torch.cat([u, self.mem_logit]) if mem_n else u
            losses.append(float(decorrelation_loss(phi, logits_all, n, mask, cfg.lambda_p)))
        self.last_losses = losses
        u = u.detach()
        if mem_n:
            k = min(n, mem_n)
            if self.updates < 10:  # StableNet's warm start: running mean of the first batches
                t = self.updates
                self.mem_feat[:k] = (self.mem_feat[:k] * t + feat[:k]) / (t + 1)
                self.mem_logit[:k] = (self.mem_logit[:k] * t + u[:k]) / (t + 1)
            else:
                r = cfg.memory_ema
                self.mem_feat[:k] = self.mem_feat[:k] * r + feat[:k] * (1 - r)
                self.mem_logit[:k] = self.mem_logit[:k] * r + u[:k] * (1 - r)
        self.updates += 1
        return torch.softmax(u, 0)


@DEFENSES.register("desmil")
class DESMIL(Defense):
    Config = DESMILConfig
    summary = "DESMIL-style (adaptation): StableNet sample reweighting decorrelating K interests"
    paper = "adapted from Liu et al. 2022 (debiased multi-interest learning) and Zhang et al., " \
            "StableNet, CVPR 2021; not a published MI defense"

    def __init__(self, cfg, **kw) -> None:
        super().__init__(cfg, **kw)
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
            return LossOutput(ce, {"ce": float(ce.detach())})
        feat = batch.taps[cfg.layer].reshape(len(batch.y), -1)
        terms: dict[str, float] = {}
        ce_each = F.cross_entropy(batch.logits, batch.y, reduction="none")
        terms["ce"] = float(ce_each.detach().mean())
        if cfg.reweight:
            w = self.weighter.learn(feat)
            total = (w * ce_each).sum()
            terms["ce_weighted"] = float(total.detach())
            terms["decor_start"] = self.weighter.last_losses[0]
            terms["decor_end"] = self.weighter.last_losses[-1]
            terms["weight_max"] = float(w.max())
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
            terms["hsic_interests"] = float(dec.detach())
        terms["loss"] = float(total.detach())
        return LossOutput(total, terms)
