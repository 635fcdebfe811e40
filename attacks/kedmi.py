"""KED-MI: knowledge-enriched distributional model inversion (Chen et al., ICCV 2021).

Prior (trained per target, methods.md section 3):

* Generator: GMI's DCGAN generator (:class:`~mi_bench.attacks.common.DCGANGenerator`), z ~ N(0, I).
* Discriminator with K-way logits (K = private classes), as the official ``discri.py``
  (``MinibatchDiscriminator``; ``MinibatchDiscriminator_MNIST`` in Defend_MI): conv +
  InstanceNorm(affine) + LReLU blocks - the first one included - down to 4x4 with channels
  ``w, 2w, 4w, 4w``; the first three convs are 5x5 stride 2, any further one 3x3 stride 2
  (64x64: 3->64->128->256 (5x5) ->256 (3x3); 32x32: 1->64->128->256), flattened (4096-d at
  ``disc_width=64``) -> minibatch discrimination (A x B x C = 4096 x 64 x 50) -> Linear(A + B, K).
* D loss: soft cross-entropy between ``softmax(T(x_pub))`` and ``D(x_pub)`` plus the
  semi-supervised real/fake terms with an implicit fake logit 0,
  ``0.5 * [mean softplus(lse(D(x_u))) - mean lse(D(x_u)) + mean softplus(lse(D(G(z))))]``.
* G loss: L1 between the mean D-features (pre-minibatch-discrimination) of fakes and of real
  public images, plus ``entropy_weight`` (1e-4) * the entropy of ``softmax(D(G(z)))``. The
  official ``HLoss`` (``utils.py``) *sums* ``-p log p`` over the batch and the classes, so at
  batch 64 the term is 64x a batch-mean entropy: ``entropy_reduction=sum`` (default, all
  presets) does that; ``mean`` is the batch mean (mi-bench's earlier choice).
* Adam 2e-4, betas (0.5, 0.999), batch 64, ``n_critic`` D steps per G step, ``gan_steps`` G
  steps (the official code counts epochs: 120 on CelebA, 100 on MNIST in Defend_MI's
  ``DMI/config/mnist.json``; mi-bench counts steps, like GMI, so that a preset costs the same on
  every dataset).

Soft labels: the target is frozen, in eval mode and under ``no_grad`` when it labels the public
images (computed once, before training). The official code leaves T in train mode (BatchNorm
batch statistics, gradients into T); mi-bench does not copy that.

Inversion (distributional recovery): per attacked class a Gaussian over the latent, mu (init 0)
and log sigma^2 (init ``init_log_var`` = 1); each step draws ``z = mu + exp(0.5 log sigma^2) *
eps`` (one draw per class, as the official code) and minimises
``-log sigmoid(lse(D(G(z)))) + lambda_ce * CE(T(G(z)), y)`` with Adam (betas 0.9, 0.999).

Latent constraint: the official clamp acts on a detached copy and does nothing, so the
published runs are unconstrained - ``latent_clamp=none`` (the default, every preset). Two
documented options apply a constraint for real: ``z`` clamps every sampled z to
``[-clip, clip]`` with ``torch.clamp`` inside the graph (differentiable; zero gradient for
coordinates that are clipped), during optimisation and when drawing the final samples; ``mu``
instead projects mu onto ``[-clip, clip]`` after every Adam step (samples unclamped).

Evaluation: ``samples_per_class`` samples drawn per class from the learned distributions, every
one returned and scored (the pipeline reports the mean over samples).

LOMMA (``lomma=true``, ``attacks/lomma.py``): ``CE(T(G(z)), y)`` becomes LOMMA's identity loss,
the batch mean of ``mean over T and 3 surrogates of -logit_y + lomma_lambda * mean((T.embed -
p_reg)^2)`` (the official reductions); the surrogates and p_reg are a per-target artifact
(``target_aux_spec`` / ``train_target_aux``, cached by the pipeline). Nothing else changes. The
LOMMA code also clamps every sampled z to [-1, 1] (``clipz``), in its KED-MI baseline as in
LOMMA: that is ``latent_clamp=z`` here, left to the user (the KED-MI authors' code does not
clamp), so that the option changes one thing. With ``lomma=false`` (the default) the attack is
the code path above, draw for draw, and trains no per-target artifact.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from mi_bench.api import (
    Attack, AttackRequirements, DCGANGenerator, FiniteCheck, Inversion, AttackConfig, frozen,
    gather, host_floats, load_prefixed, n_stages, param, prefixed, register_attack, sample_batches,
    target_probs, to_device,
)

from . import lomma as lomma_lib  # the LOMMA pieces shared with GMI (registers nothing)

log = logging.getLogger(__name__)


# -- losses ------------------------------------------------------------------------------------

def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """``-mean_i sum_k p_ik log softmax(logits)_ik``."""
    return -(target_probs * F.log_softmax(logits, dim=1)).sum(1).mean()


def semi_supervised_loss(logits_unlabeled: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Real/fake terms with an implicit fake logit 0 (Salimans et al. 2016):
    ``0.5 * [mean softplus(lse(u)) - mean lse(u) + mean softplus(lse(f))]``."""
    lse_u = torch.logsumexp(logits_unlabeled, dim=1)
    lse_f = torch.logsumexp(logits_fake, dim=1)
    return 0.5 * (F.softplus(lse_u).mean() - lse_u.mean() + F.softplus(lse_f).mean())


def feature_matching_loss(feat_fake: torch.Tensor, feat_real: torch.Tensor) -> torch.Tensor:
    """L1 (mean absolute difference) between the batch-mean features of fakes and reals."""
    return (feat_fake.mean(0) - feat_real.mean(0)).abs().mean()


def entropy(logits: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Entropy of ``softmax(logits)`` (nats) per row, averaged (``mean``) or summed (``sum``,
    the official ``HLoss``) over the batch."""
    h = -(F.softmax(logits, dim=1) * F.log_softmax(logits, dim=1)).sum(1)
    if reduction == "sum":
        return h.sum()
    if reduction == "mean":
        return h.mean()
    raise ValueError(f"entropy reduction {reduction!r}: use 'sum' or 'mean'")


def realness_loss(logits: torch.Tensor) -> torch.Tensor:
    """``mean -log sigmoid(lse(logits))`` (the inversion's prior term)."""
    return F.softplus(-torch.logsumexp(logits, dim=1)).mean()


# -- networks ----------------------------------------------------------------------------------

class MinibatchDiscrimination(nn.Module):
    """Salimans et al. 2016 as in the official KED-MI code: ``T`` in R^{A x B x C} (init N(0,1));
    ``o_b(x_i) = sum_{j != i} exp(-||M_i,b - M_j,b||_1)``; output ``[x, o]`` (A + B)."""

    def __init__(self, in_features: int, out_features: int, kernel_dims: int):
        super().__init__()
        self.in_features, self.out_features, self.kernel_dims = in_features, out_features, kernel_dims
        self.T = nn.Parameter(torch.randn(in_features, out_features, kernel_dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mm(self.T.view(self.in_features, -1)).view(-1, self.out_features, self.kernel_dims)
        norm = (m.unsqueeze(0) - m.unsqueeze(1)).abs().sum(3)  # N x N x B
        o = torch.exp(-norm).sum(0) - 1  # remove the self term exp(0) = 1
        return torch.cat([x, o], dim=1)


class KEDDiscriminator(nn.Module):
    """K-way discriminator. ``forward(x)`` returns ``(features, logits)``."""

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, width: int = 64,
                 mbd_kernels: int = 64, mbd_dim: int = 50):
        super().__init__()
        c_in, size, _ = image_shape
        n = n_stages(size)
        chans = [min(width * 2**i, 4 * width) for i in range(n)]  # 64, 128, 256 (, 256)
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip([c_in] + chans[:-1], chans)):
            k, pad = (5, 2) if i < 3 else (3, 1)  # official: 5x5 s2 x3, then 3x3 s2 (64x64)
            layers += [nn.Conv2d(cin, cout, k, 2, pad), nn.InstanceNorm2d(cout, affine=True),
                       nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*layers)
        self.feat_dim = chans[-1] * 16
        self.mbd = MinibatchDiscrimination(self.feat_dim, mbd_kernels, mbd_dim)
        self.fc = nn.Linear(self.feat_dim + mbd_kernels, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.body(x).flatten(1)
        return feat, self.fc(self.mbd(feat))


# -- plugin ------------------------------------------------------------------------------------

@dataclass
class KEDMIFields(AttackConfig):
    # prior (GAN) -------------------------------------------------------------------------------
    latent_dim: int = param(100, ge=1, prior=True, help="latent size of G (published: 100)")
    gen_width: int = param(64, ge=1, prior=True, help="G base width (64 = published)")
    disc_width: int = param(64, ge=1, prior=True,
                            help="D base width (64 = published: 4x4x256 = 4096-d features)")
    mbd_kernels: int = param(64, ge=1, prior=True, help="minibatch discrimination B (published 64)")
    mbd_dim: int = param(50, ge=1, prior=True, help="minibatch discrimination C (published 50)")
    gan_steps: int = param(10700, ge=1, prior=True,
                           help="generator steps (each after n_critic D steps); official MNIST: "
                           "100 epochs, 10,700 G steps on the 34,265 public images at batch 64")
    gan_batch_size: int = param(64, ge=2, prior=True, help="GAN batch size")
    gan_lr: float = param(2e-4, gt=0.0, prior=True, help="Adam lr of G and D")
    beta1: float = param(0.5, ge=0.0, lt=1.0, prior=True, help="Adam beta1 (GAN)")
    beta2: float = param(0.999, ge=0.0, lt=1.0, prior=True, help="Adam beta2 (GAN)")
    n_critic: int = param(5, ge=1, prior=True, help="D steps per G step")
    entropy_weight: float = param(1e-4, ge=0.0, prior=True,
                                  help="weight of the entropy of D(G(z)) in the G loss")
    entropy_reduction: str = param("sum", choices=("sum", "mean"), prior=True,
                                   help="entropy summed over the batch (official HLoss) or "
                                   "averaged (64x smaller at batch 64)")
    # inversion -------------------------------------------------------------------------------
    iterations: int = param(2400, ge=1, help="Adam steps of the distributional recovery")
    lr: float = param(0.02, gt=0.0, help="Adam lr on (mu, log sigma^2)")
    lambda_ce: float = param(100.0, ge=0.0, help="weight of CE(T(G(z)), y)")
    init_log_var: float = param(1.0, help="initial log sigma^2 (published: 1)")
    latent_clamp: str = param("none", choices=("none", "z", "mu"),
                              help="none: no constraint (what the official code does); z: clamp "
                              "sampled z to [-clip, clip] in the graph; mu: project mu after "
                              "each step")
    clip: float = param(1.0, gt=0.0, help="latent clamp range")
    samples_per_class: int = param(5, ge=1, help="samples drawn per class from the learned "
                                   "distribution; all are returned and scored")


@dataclass
class KEDMIConfig(lomma_lib.LommaFields, KEDMIFields):
    """KED-MI's settings, then LOMMA's (attacks/lomma.py)."""


@register_attack("kedmi")
class KEDMI(lomma_lib.LommaOption, Attack):
    Config = KEDMIConfig
    summary = "KED-MI: target-aware K-way GAN + learned latent Gaussian per class"
    paper = "Chen et al., Knowledge-Enriched Distributional Model Inversion Attacks, ICCV 2021"
    requirements = AttackRequirements(prior="per_target")
    prior_version = "2"  # 2: official D (IN on layer 1, 3x3 4th layer), summed entropy

    def _nets(self) -> tuple[DCGANGenerator, KEDDiscriminator]:
        c = self.cfg
        g = DCGANGenerator(self.image_shape, c.latent_dim, c.gen_width)
        d = KEDDiscriminator(self.image_shape, self.num_classes, c.disc_width, c.mbd_kernels, c.mbd_dim)
        return g.to(self.device), d.to(self.device)

    def train_prior(self, public: torch.Tensor, target: nn.Module | None, *, seed: int,
                    progress: Any) -> dict[str, torch.Tensor]:
        c = self.cfg
        self.check_public(public, target)
        torch.manual_seed(seed)
        probs = target_probs(target, public, self.device)  # frozen, eval, no_grad
        if probs.shape[1] != self.num_classes:
            raise ValueError(f"kedmi: target has {probs.shape[1]} outputs, expected {self.num_classes}")
        g, d = self._nets()
        opt_g = torch.optim.Adam(g.parameters(), lr=c.gan_lr, betas=(c.beta1, c.beta2))
        opt_d = torch.optim.Adam(d.parameters(), lr=c.gan_lr, betas=(c.beta1, c.beta2))
        n = len(public)
        bs = min(c.gan_batch_size, n)
        gen = torch.Generator().manual_seed(seed + 1)
        total = c.gan_steps * c.n_critic  # D steps
        acc = self.accel
        every = acc.every(self.device)
        pub = to_device(public, self.device)  # once, when it fits
        probs = to_device(probs, self.device)
        lab_batches = sample_batches(n, bs, gen, device=pub.device)
        unl_batches = sample_batches(n, bs, gen, device=pub.device)
        g_net, d_net = acc.compiled(g), acc.compiled(d)  # the modules themselves when off
        g.train()
        d.train()
        stats: dict[str, torch.Tensor] = {}  # detached, read every N steps
        check = FiniteCheck(every, lambda v, where: f"kedmi GAN: D loss became {v} at {where}; lower gan_lr")
        with progress.task("kedmi GAN", total=total) as bar:
            for step in range(total):
                # -- D step -------------------------------------------------------------------
                li, ui = next(lab_batches), next(unl_batches)
                with acc.autocast(self.device):
                    with torch.no_grad():
                        fake = g_net(torch.randn(len(li), c.latent_dim, device=self.device))
                    _, out_lab = d_net(gather(pub, li, self.device))
                    _, out_unl = d_net(gather(pub, ui, self.device))
                    _, out_fake = d_net(fake)
                    loss_lab = soft_cross_entropy(out_lab, gather(probs, li, self.device))
                    loss_unl = semi_supervised_loss(out_unl, out_fake)
                    loss_d = loss_lab + loss_unl
                opt_d.zero_grad(set_to_none=True)
                loss_d.backward()
                opt_d.step()
                stats.update(d_lab=loss_lab.detach(), d_unl=loss_unl.detach())
                # -- G step -------------------------------------------------------------------
                if step % c.n_critic == 0:
                    for p in d.parameters():
                        p.requires_grad_(False)
                    with acc.autocast(self.device):
                        fake = g_net(torch.randn(bs, c.latent_dim, device=self.device))
                        f_fake, o_fake = d_net(fake)
                        with torch.no_grad():
                            f_real, _ = d_net(gather(pub, next(unl_batches), self.device))
                        fm = feature_matching_loss(f_fake, f_real)
                        ent = entropy(o_fake, c.entropy_reduction)
                        loss_g = fm + c.entropy_weight * ent
                    opt_g.zero_grad(set_to_none=True)
                    loss_g.backward()
                    opt_g.step()
                    for p in d.parameters():
                        p.requires_grad_(True)
                    stats.update(g_fm=fm.detach(), g_ent=ent.detach())
                check.add(loss_d, step)
                bar.advance(1, **stats)
            check.flush()
        log.info("kedmi GAN trained: %d D steps, %d G steps; last %s", total, c.gan_steps,
                 ", ".join(f"{k}={v:.4g}" for k, v in host_floats(stats).items()))
        return {**prefixed("G", g), **prefixed("D", d)}

    def _sample_z(self, mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
        z = mu + torch.exp(0.5 * log_var) * torch.randn_like(mu)
        if self.cfg.latent_clamp == "z":
            z = torch.clamp(z, -self.cfg.clip, self.cfg.clip)
        return z

    def prior_samples(self, prior: dict[str, torch.Tensor], n: int, *,
                      generator: torch.Generator) -> torch.Tensor:
        """G(z), z ~ N(0, I) from ``generator`` (the GAN's own latent law, before any per-class
        distribution is learned); G in eval mode."""
        c = self.cfg
        self.check_prior(prior, ("G",))
        g = load_prefixed("G", DCGANGenerator(self.image_shape, c.latent_dim, c.gen_width), prior)
        g = g.to(self.device).eval()
        z = torch.randn(n, c.latent_dim, generator=generator)
        return torch.cat([g(zb.to(self.device)).float().cpu() for zb in z.split(256)])

    def invert(self, target: nn.Module, prior: dict[str, torch.Tensor], classes: list[int], *,
               seed: int, progress: Any) -> Inversion:
        c = self.cfg
        self.check_classes(classes)
        self.check_prior(prior, ("G", "D"))
        g, d = self._nets()
        load_prefixed("G", g, prior)
        load_prefixed("D", d, prior)
        if self.lomma is not None:
            iden_of, lomma_protocol = lomma_lib.identity_from_prior(
                self.lomma, target, prior, num_classes=self.num_classes,
                in_channels=self.image_shape[0], device=self.device)
        torch.manual_seed(seed)
        y = torch.tensor(classes, dtype=torch.long, device=self.device)
        k = len(classes)
        mu = torch.zeros(k, c.latent_dim, device=self.device, requires_grad=True)
        log_var = torch.full((k, c.latent_dim), float(c.init_log_var), device=self.device,
                             requires_grad=True)
        opt = torch.optim.Adam([mu, log_var], lr=c.lr)
        every = self.accel.every(self.device)
        check = FiniteCheck(every, lambda v, where: f"kedmi inversion: loss became {v} at {where}; lower lr")
        with frozen(g, d, target), progress.task("kedmi inversion", total=c.iterations) as bar:
            for it in range(c.iterations):
                z = self._sample_z(mu, log_var)
                x = g(z)
                _, logits_d = d(x)
                prior_loss = realness_loss(logits_d)
                if self.lomma is None:
                    out = target(x)
                    ce = F.cross_entropy(out, y)
                else:
                    iden, out = iden_of(x, y)
                    ce = iden.mean()
                loss = prior_loss + c.lambda_ce * ce
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if c.latent_clamp == "mu":
                    with torch.no_grad():
                        mu.clamp_(-c.clip, c.clip)
                check.add(loss, it)
                bar.advance(1, prior=prior_loss.detach(), ce=ce.detach(),
                            acc=(out.detach().argmax(1) == y).float().mean())
            check.flush()
            with torch.no_grad():
                imgs = torch.stack([g(self._sample_z(mu, log_var)) for _ in range(c.samples_per_class)], 1)
        protocol = {
            "attack": "kedmi",
            "samples_per_class": c.samples_per_class,
            "selection": "all N samples drawn from the learned distribution, each scored",
            "iterations": c.iterations,
            "optimizer": f"Adam lr={c.lr} on (mu, log sigma^2), one draw per class per step",
            "loss": f"-log sigmoid(lse(D(G(z)))) + {c.lambda_ce} * CE(T(G(z)), y)",
            "latent_clamp": c.latent_clamp, "clip": c.clip,
        }
        if self.lomma is not None:
            protocol.update(lomma_protocol)
            protocol["loss"] = f"-log sigmoid(lse(D(G(z)))) + {c.lambda_ce} * LOMMA identity loss"
        return Inversion(
            images=imgs.detach().cpu().clamp(0, 1),
            classes=[int(v) for v in classes],
            protocol=protocol,
            extra={"mu": mu.detach().cpu(), "log_var": log_var.detach().cpu()},
        )
