"""PLG-MI: pseudo-label-guided model inversion with a conditional GAN (Yuan et al., AAAI 2023).

Prior (trained per target, methods.md section 3):

* Stage 0, top-n selection: T (frozen, eval, no_grad) labels every public image; for each private
  class the ``top_n`` public images with the highest softmax probability *for that class* are
  kept; an image may serve several classes. The official n = 30 (for K = 1,000) is set by hand
  (``top_n_selection.py --top_n=30``); no rule exists there. ``top_n=0`` is mi-bench's auto
  rule ``n = max(1, N_public // K)``: the cGAN trains on as many selected copies as there are
  public images, as 30 x 1,000 = 30,000 does for the 30,000 public CelebA images. mi-bench uses
  it on MNIST/digits (6,853 per class on MNIST: the published per-class share, 0.1% of the
  public set, would leave 34 images per class, 170 in all, for a 30,000-iteration GAN) and the
  official n = 30 on CelebA (plgmi.yaml ``datasets.celeba``).
  The selection is stored in the prior (``selection.index``: public-image indices,
  ``selection.label``: the class each selected copy serves) so it is recorded with the cache.
* Conditional GAN: SNGAN-projection ResNet generator, z ~ N(0, I) in R^``latent_dim`` (128) ->
  Linear -> 4x4 x (w * 2^n) -> n up-sampling residual blocks (bilinear x2, conv3x3, class-
  conditional BatchNorm with per-class gamma/beta embeddings, init 1 and 0; n = log2(size/4): 3
  for 32x32, 4 for 64x64) -> BN, ReLU, conv1x1, tanh. PyTorch's default initialisation (the
  official generator's ``_initialize`` is never called).
* Discriminator (``models/discriminators/snresnet64.py``): spectral-norm ResNet with a
  projection head, ``l(h) + <embed(y), h>``, h = sum-pooled ReLU features; an "optimized" first
  block (conv in->out, conv out->out) and n down-sampling blocks whose convs go in->in->out
  (64x64: 3->w->2w->4w->8w->16w; 20.6M parameters at w = 64 with 1,000 classes); Xavier-uniform
  initialisation (gain sqrt 2 on the 3x3 convs, 1 on shortcuts and the heads), as official.
* Image range (``image_range``): ``official`` (default) as the official ``train_cgan.py`` and
  ``reconstruct.py``: real public images in [0, 1] plus U(0, 1/256) noise (drawn per batch) for
  D, and the *raw* tanh output of G for both D and T (during training and inversion), so G learns
  to produce [0, 1] images through D; the returned reconstructions are G's output clamped to
  [0, 1]. ``symmetric`` (mi-bench's earlier choice): D sees [-1, 1] (public images rescaled) and
  T and the scored images ``(G + 1) / 2``.
* Hinge loss; G adds ``alpha * max-margin(T(A(G(z, y))), y)``, y uniform over the classes, with
  A = kornia RandomResizedCrop(size, scale (0.8, 1), ratio (1, 1)), ColorJitter(brightness 0.2,
  contrast 0.2, p 0.5), RandomHorizontalFlip (p 0.5), RandomRotation(5 degrees, p 0.5). Each
  augmentation is a switch (``aug_*``); for 1-channel digits a horizontal flip changes the digit,
  but it is kept on by default (faithful) - the presets say what they use.
* Adam 2e-4, betas (0.0, 0.9), batch 64, ``n_critic`` D steps per G step; ``gan_steps`` G steps.

Inversion: for each attacked class ``samples_per_class`` latents (independent seeds), Adam (lr
0.1) on z, loss = max-margin summed over two independently augmented views (ColorJitter with p
1.0), no prior term, no clamp; G in eval mode. Every latent's image is returned and scored.
The latents run forward and backward in chunks of ``inversion_chunk`` (run config), the batch
means taken as sums over the chunk / N and the gradients summed before the one Adam step: the
step of the whole batch, except that the random augmentations are drawn chunk by chunk (the same
distribution, another random stream; the record's protocol states the chunk).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import spectral_norm

from mi_bench.api import (
    Attack, AttackRequirements, FiniteCheck, Inversion, AttackConfig, frozen, gather, host_floats,
    load_prefixed, n_stages, param, prefixed, register_attack, sample_batches, target_probs,
    to_device,
)

log = logging.getLogger(__name__)


# -- losses and selection ----------------------------------------------------------------------

def hinge_d_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """``mean relu(1 - D(real)) + mean relu(1 + D(fake))``."""
    return F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()


def hinge_g_loss(d_fake: torch.Tensor) -> torch.Tensor:
    """``-mean D(fake)``."""
    return -d_fake.mean()


def max_margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``mean_i [-logit_{i,y_i} + max_{j != y_i} logit_{i,j}]``."""
    real = logits.gather(1, y.view(-1, 1)).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return (other - real).mean()


def top_n_selection(probs: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each class k, the ``n`` rows with the highest ``probs[:, k]`` (ties: lower index first).

    Returns ``(index, label)``: public-image indices and the class each selected copy serves,
    class-major (class 0's n images first, in decreasing probability). An image may appear for
    several classes.
    """
    n = min(n, probs.shape[0])
    idx, lab = [], []
    for k in range(probs.shape[1]):
        order = torch.argsort(probs[:, k], descending=True, stable=True)[:n]
        idx.append(order)
        lab.append(torch.full((n,), k, dtype=torch.long))
    return torch.cat(idx), torch.cat(lab)


def resolve_top_n(top_n: int, n_public: int, num_classes: int) -> int:
    """``top_n`` if > 0, else auto: ``max(1, n_public // num_classes)``."""
    return top_n if top_n > 0 else max(1, n_public // num_classes)


def augmentations(size: int, *, crop: bool, jitter: bool, flip: bool, rotate: bool,
                  jitter_p: float) -> nn.Module:
    import kornia.augmentation as KA

    augs: list[nn.Module] = []
    if crop:
        augs.append(KA.RandomResizedCrop((size, size), scale=(0.8, 1.0), ratio=(1.0, 1.0)))
    if jitter:
        augs.append(KA.ColorJitter(brightness=0.2, contrast=0.2, p=jitter_p))
    if flip:
        augs.append(KA.RandomHorizontalFlip())
    if rotate:
        augs.append(KA.RandomRotation(5.0))
    return nn.Sequential(*augs)


# -- networks ----------------------------------------------------------------------------------

class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm without affine, then per-class ``gamma_y * h + beta_y`` (init 1 and 0)."""

    def __init__(self, num_features: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features, affine=False)
        self.weight = nn.Embedding(num_classes, num_features)
        self.bias = nn.Embedding(num_classes, num_features)
        nn.init.ones_(self.weight.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.bn(x)
        return self.weight(y)[:, :, None, None] * h + self.bias(y)[:, :, None, None]


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class GenBlock(nn.Module):
    def __init__(self, cin: int, cout: int, num_classes: int):
        super().__init__()
        self.b1 = ConditionalBatchNorm2d(cin, num_classes)
        self.c1 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.b2 = ConditionalBatchNorm2d(cout, num_classes)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.c_sc = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.c1(_up(F.relu(self.b1(x, y))))
        h = self.c2(F.relu(self.b2(h, y)))
        return h + self.c_sc(_up(x))


class ResNetGenerator(nn.Module):
    """``forward(z, y)`` -> images in [-1, 1] (tanh)."""

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, latent_dim: int = 128,
                 width: int = 64):
        super().__init__()
        c_out, size, _ = image_shape
        n = n_stages(size)
        chans = [width * 2 ** (n - i) for i in range(n + 1)]  # 64x64: 16w, 8w, 4w, 2w, w
        self.latent_dim, self._c0 = latent_dim, chans[0]
        self.l1 = nn.Linear(latent_dim, chans[0] * 16)
        self.blocks = nn.ModuleList(GenBlock(a, b, num_classes) for a, b in zip(chans[:-1], chans[1:]))
        self.bn = nn.BatchNorm2d(chans[-1])
        self.out = nn.Conv2d(chans[-1], c_out, 1)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.l1(z).view(z.shape[0], self._c0, 4, 4)
        for blk in self.blocks:
            h = blk(h, y)
        return torch.tanh(self.out(F.relu(self.bn(h))))


def _sn_xavier(layer: nn.Module, gain: float = 1.0) -> nn.Module:
    """Xavier-uniform weights (as the official D's ``_initialize``), then spectral norm."""
    nn.init.xavier_uniform_(layer.weight, gain)
    return spectral_norm(layer)


class DiscBlock(nn.Module):
    """Down-sampling residual block. ``first``: the official ``OptimizedBlock`` (conv in->out,
    conv out->out, no leading ReLU); otherwise ``Block`` with its hidden width = ``cin``
    (conv in->in, conv in->out)."""

    def __init__(self, cin: int, cout: int, first: bool):
        super().__init__()
        self.first = first
        hidden = cout if first else cin
        self.c1 = _sn_xavier(nn.Conv2d(cin, hidden, 3, 1, 1), math.sqrt(2))
        self.c2 = _sn_xavier(nn.Conv2d(hidden, cout, 3, 1, 1), math.sqrt(2))
        self.c_sc = _sn_xavier(nn.Conv2d(cin, cout, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.first else F.relu(x)
        h = F.avg_pool2d(self.c2(F.relu(self.c1(h))), 2)
        sc = self.c_sc(F.avg_pool2d(x, 2)) if self.first else F.avg_pool2d(self.c_sc(x), 2)
        return h + sc


class SNProjectionDiscriminator(nn.Module):
    """``forward(x, y)`` -> (N,) scores; x in [-1, 1]."""

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, width: int = 64):
        super().__init__()
        c_in, size, _ = image_shape
        n = n_stages(size)
        chans = [c_in] + [width * 2**i for i in range(n + 1)]  # 64x64: 3, w, 2w, 4w, 8w, 16w
        self.blocks = nn.Sequential(*(DiscBlock(a, b, i == 0)
                                      for i, (a, b) in enumerate(zip(chans[:-1], chans[1:]))))
        self.l_out = _sn_xavier(nn.Linear(chans[-1], 1))
        self.l_y = _sn_xavier(nn.Embedding(num_classes, chans[-1]))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.blocks(x)).sum(dim=(2, 3))
        return self.l_out(h).squeeze(1) + (self.l_y(y) * h).sum(1)


# -- plugin ------------------------------------------------------------------------------------

@dataclass
class PLGMIConfig(AttackConfig):
    # prior (pseudo labels + conditional GAN) ---------------------------------------------------
    top_n: int = param(0, ge=0, prior=True,
                       help="public images kept per class (0 = mi-bench's auto rule "
                       "max(1, N_public // K); official 30 for K=1000, set by hand)")
    latent_dim: int = param(128, ge=1, prior=True, help="latent size (published 128)")
    gen_width: int = param(64, ge=1, prior=True, help="G base width (64 = published)")
    disc_width: int = param(64, ge=1, prior=True, help="D base width (64 = published)")
    gan_steps: int = param(30000, ge=1, prior=True, help="GAN iterations (G steps)")
    n_critic: int = param(5, ge=1, prior=True, help="D steps per G step")
    gan_batch_size: int = param(64, ge=2, prior=True, help="GAN batch size")
    gan_lr: float = param(2e-4, gt=0.0, prior=True, help="Adam lr of G and D")
    beta1: float = param(0.0, ge=0.0, lt=1.0, prior=True, help="Adam beta1 (GAN)")
    beta2: float = param(0.9, ge=0.0, lt=1.0, prior=True, help="Adam beta2 (GAN)")
    alpha: float = param(0.2, ge=0.0, prior=True, help="weight of the max-margin term in the G loss")
    aug_crop: bool = param(True, prior=True, help="RandomResizedCrop(scale 0.8-1, ratio 1)")
    aug_jitter: bool = param(True, prior=True, help="ColorJitter(brightness 0.2, contrast 0.2)")
    aug_flip: bool = param(True, prior=True, help="RandomHorizontalFlip (changes digits' meaning)")
    aug_rotate: bool = param(True, prior=True, help="RandomRotation(5 degrees)")
    image_range: str = param("official", choices=("official", "symmetric"), prior=True,
                             help="official: reals in [0,1] + U(0,1/256) noise for D, raw tanh "
                             "output to D and T; symmetric: D sees [-1,1], T sees (G+1)/2")
    # inversion -------------------------------------------------------------------------------
    iterations: int = param(600, ge=1, help="Adam steps on z")
    lr: float = param(0.1, gt=0.0, help="Adam lr on z")
    samples_per_class: int = param(5, ge=1, help="latents (seeds) per class; all returned and scored")


@register_attack("plgmi")
class PLGMI(Attack):
    Config = PLGMIConfig
    summary = "PLG-MI: top-n pseudo-labelled public data -> conditional GAN, max-margin inversion"
    paper = "Yuan et al., Pseudo Label-Guided Model Inversion Attack via Conditional GAN, AAAI 2023"
    requirements = AttackRequirements(prior="per_target")
    prior_version = "2"  # 2: official D blocks (in->in->out) and init, official image range

    def _nets(self) -> tuple[ResNetGenerator, SNProjectionDiscriminator]:
        c = self.cfg
        g = ResNetGenerator(self.image_shape, self.num_classes, c.latent_dim, c.gen_width)
        d = SNProjectionDiscriminator(self.image_shape, self.num_classes, c.disc_width)
        return g.to(self.device), d.to(self.device)

    def _for_target(self, g_out: torch.Tensor) -> torch.Tensor:
        """What T (and the scored images) get from G's tanh output."""
        return g_out if self.cfg.image_range == "official" else (g_out + 1) / 2

    def _real_for_d(self, real: torch.Tensor) -> torch.Tensor:
        """Public images as D sees them."""
        if self.cfg.image_range == "official":  # [0, 1] + U(0, 1/256), fresh per batch
            return real + torch.rand_like(real) / 256.0
        return real * 2 - 1

    def _augment(self, jitter_p: float) -> nn.Module:
        c = self.cfg
        return augmentations(self.image_shape[1], crop=c.aug_crop, jitter=c.aug_jitter,
                             flip=c.aug_flip, rotate=c.aug_rotate, jitter_p=jitter_p).to(self.device)

    def train_prior(self, public: torch.Tensor, target: nn.Module | None, *, seed: int,
                    progress: Any) -> dict[str, torch.Tensor]:
        c = self.cfg
        self.check_public(public, target)
        torch.manual_seed(seed)
        probs = target_probs(target, public, self.device)
        if probs.shape[1] != self.num_classes:
            raise ValueError(f"plgmi: target has {probs.shape[1]} outputs, expected {self.num_classes}")
        n_top = resolve_top_n(c.top_n, len(public), self.num_classes)
        sel_idx, sel_lab = top_n_selection(probs, n_top)
        log.info("plgmi: top-%d selection, %d selected copies of %d distinct public images",
                 n_top, len(sel_idx), len(torch.unique(sel_idx)))
        real = to_device(public[sel_idx], self.device)  # [0, 1]; _real_for_d per batch
        real_y = to_device(sel_lab, self.device)
        g, d = self._nets()
        opt_g = torch.optim.Adam(g.parameters(), lr=c.gan_lr, betas=(c.beta1, c.beta2))
        opt_d = torch.optim.Adam(d.parameters(), lr=c.gan_lr, betas=(c.beta1, c.beta2))
        aug = self._augment(jitter_p=0.5)
        bs = min(c.gan_batch_size, len(real))
        batches = sample_batches(len(real), bs, torch.Generator().manual_seed(seed + 1), device=real.device)
        acc = self.accel
        every = acc.every(self.device)
        g_net, d_net = acc.compiled(g), acc.compiled(d)  # the modules themselves when off
        g.train()
        d.train()
        stats: dict[str, torch.Tensor] = {}  # detached, read every N iterations
        check = FiniteCheck(every, lambda v, where: f"plgmi cGAN: loss became non-finite at {where}; "
                            "lower gan_lr", unit="iteration")

        def fakes() -> tuple[torch.Tensor, torch.Tensor]:
            y = torch.randint(0, self.num_classes, (bs,), device=self.device)
            return g_net(torch.randn(bs, c.latent_dim, device=self.device), y), y

        with frozen(target), progress.task("plgmi cGAN", total=c.gan_steps) as bar:
            for it in range(c.gan_steps):
                for i in range(c.n_critic):
                    if i == 0:  # G step (official order: G first, then n_critic D steps)
                        for p in d.parameters():
                            p.requires_grad_(False)
                        with acc.autocast(self.device):
                            fake, y = fakes()
                            loss_adv = hinge_g_loss(d_net(fake, y))
                            inv = max_margin_loss(target(aug(self._for_target(fake))), y)
                            loss_g = loss_adv + c.alpha * inv
                        opt_g.zero_grad(set_to_none=True)
                        loss_g.backward()
                        opt_g.step()
                        for p in d.parameters():
                            p.requires_grad_(True)
                        stats.update(g_adv=loss_adv.detach(), inv=inv.detach())
                    with acc.autocast(self.device):
                        with torch.no_grad():
                            fake, y = fakes()
                        bi = next(batches)
                        real_b, real_yb = gather(real, bi, self.device), gather(real_y, bi, self.device)
                        loss_d = hinge_d_loss(d_net(self._real_for_d(real_b), real_yb), d_net(fake, y))
                    opt_d.zero_grad(set_to_none=True)
                    loss_d.backward()
                    opt_d.step()
                    stats["d"] = loss_d.detach()
                check.add(stats["d"] + stats["g_adv"], it)  # non-finite iff either is
                bar.advance(1, **stats)
            check.flush()
        log.info("plgmi cGAN trained: %d iterations; last %s", c.gan_steps,
                 ", ".join(f"{k}={v:.4g}" for k, v in host_floats(stats).items()))
        return {**prefixed("G", g), **prefixed("D", d),
                "selection.index": sel_idx.clone(), "selection.label": sel_lab.clone(),
                "selection.top_n": torch.tensor(n_top)}

    def prior_samples(self, prior: dict[str, torch.Tensor], n: int, *,
                      generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """G(z, y), z ~ N(0, I) from ``generator``, the classes in turn (y = i mod K: every class
        in equal share), and y (a conditional prior: the pipeline adds its per-class diversity);
        images as T and the scores get them (``image_range``), clamped to [0, 1]; G in eval mode."""
        c = self.cfg
        self.check_prior(prior, ("G",))
        g = ResNetGenerator(self.image_shape, self.num_classes, c.latent_dim, c.gen_width)
        g = load_prefixed("G", g, prior).to(self.device).eval()
        z = torch.randn(n, c.latent_dim, generator=generator)
        y = torch.arange(n) % self.num_classes
        x = torch.cat([self._for_target(g(zb.to(self.device), yb.to(self.device))).float().cpu()
                       for zb, yb in zip(z.split(256), y.split(256))]).clamp(0, 1)
        return x, y

    def invert(self, target: nn.Module, prior: dict[str, torch.Tensor], classes: list[int], *,
               seed: int, progress: Any) -> Inversion:
        c = self.cfg
        self.check_classes(classes)
        self.check_prior(prior, ("G",))
        g, _ = self._nets()
        load_prefixed("G", g, prior)
        torch.manual_seed(seed)
        s, k = c.samples_per_class, len(classes)
        y = torch.tensor(classes, dtype=torch.long, device=self.device).repeat_interleave(s)
        z = torch.randn(k * s, c.latent_dim, device=self.device, requires_grad=True)
        opt = torch.optim.Adam([z], lr=c.lr)
        aug = self._augment(jitter_p=1.0)
        every = self.accel.every(self.device)
        check = FiniteCheck(every, lambda v, where: f"plgmi inversion: loss became {v} at {where}")
        parts = self.accel.latent_chunks(len(y))
        with frozen(g, target), progress.task("plgmi inversion", total=c.iterations) as bar:
            for it in range(c.iterations):
                opt.zero_grad(set_to_none=True)
                loss_sum = hits = torch.zeros((), device=self.device)
                for part in parts:  # the batch means as sums / N: gradients summed, one step
                    x = self._for_target(g(z[part], y[part]))
                    out1, out2 = target(aug(x)), target(aug(x))
                    loss = (max_margin_loss(out1, y[part]) + max_margin_loss(out2, y[part])) * (len(x) / len(y))
                    loss.backward()
                    loss_sum = loss_sum + loss.detach()
                    hits = hits + (out1.detach().argmax(1) == y[part]).sum()
                opt.step()
                check.add(loss_sum, it)
                bar.advance(1, loss=loss_sum, acc=hits / len(y))
            check.flush()
            with torch.no_grad():
                imgs = torch.cat([self._for_target(g(z[part], y[part])) for part in parts])
                imgs = imgs.view(k, s, *self.image_shape)
        return Inversion(
            images=imgs.detach().cpu().clamp(0, 1),
            classes=[int(v) for v in classes],
            protocol={
                "attack": "plgmi",
                "samples_per_class": s,
                "selection": "all samples_per_class latents (independent seeds) returned, each scored",
                "inversion_chunk": self.accel.inversion_chunk,
                "iterations": c.iterations,
                "optimizer": f"Adam lr={c.lr} on z, no clamp, no prior term",
                "loss": "max-margin(T(A1(G(z,y))), y) + max-margin(T(A2(G(z,y))), y)",
                "augmentations": {"crop": c.aug_crop, "jitter(p=1.0)": c.aug_jitter,
                                  "flip": c.aug_flip, "rotate": c.aug_rotate},
                "top_n": int(prior["selection.top_n"]) if "selection.top_n" in prior else None,
                "image_range": c.image_range,
            },
        )
