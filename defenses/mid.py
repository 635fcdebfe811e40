"""MID: mutual-information regularisation via a variational bottleneck (Wang et al., AAAI 2021).

``build_model`` replaces the classifier's ``head`` (the final ``nn.Linear`` on the penultimate
feature ``h = model.embed(x)``) by :class:`VIBHead`::

    [mu, s] = encoder(h)            encoder = Linear(dim(h), 2k)
    sigma   = softplus(s - 5)
    z       = mu + sigma * eps      eps ~ N(0, I)
    logits  = classifier(z)         classifier = Linear(k, classes)

and the loss is ``CE + beta * KL(N(mu, sigma^2) || N(0, I))`` with
``KL = -1/2 sum_k (1 + 2 log sigma - mu^2 - sigma^2)`` averaged over the batch. The bottleneck
size ``k`` defaults to ``feature_dim / 2`` (MCNN: 128, VGG16: 1024), as in the paper.

Inference (``inference``): ``sample`` (default) draws ``z`` at test time as well, like the
official model - the exported target is then stochastic (each forward uses fresh noise from
torch's global generator); ``mean`` uses the deterministic ``z = mu`` in eval mode (training
always samples). The mode is stored in the model (``head.inference``) and in the config.

``beta = 0`` skips the KL term entirely: it is then exactly plain cross-entropy training of
the network *with* the stochastic bottleneck head, i.e. the ``none`` defense trained on
``MID.build_model(model)`` under the same seed, bit for bit (tested).

The loss reads ``[mu, s]`` from a forward tap on ``head.encoder``, so no extra forward pass and
no state hidden in the module is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from mi_bench.api import Defense, LossOutput, PluginConfig, TrainBatch, param, register_defense

SIGMA_SHIFT = 5.0  # sigma = softplus(s - 5), as in the paper / official code


@dataclass
class MIDConfig(PluginConfig):
    beta: float = param(0.1, ge=0.0, label=True, sweep=(0.0, 0.003, 0.01, 0.02, 0.1, 0.2),
                        help="weight of the KL (information) term; published MNIST 0.1/0.2, "
                        "CelebA 0.003/0.01/0.02")
    bottleneck: int = param(0, ge=0, help="bottleneck size k (0 = feature_dim // 2, the paper's)")
    inference: str = param("sample", choices=("sample", "mean"),
                           help="test-time z: sampled like the official code, or z = mu")


def vib_stats(enc_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split the encoder output ``[mu, s]`` into ``(mu, sigma)`` with ``sigma = softplus(s-5)``."""
    k = enc_out.shape[1] // 2
    mu, s = enc_out[:, :k], enc_out[:, k:]
    return mu, F.softplus(s - SIGMA_SHIFT)


def kl_divergence(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, sigma^2) || N(0, I))`` summed over the bottleneck, averaged over the batch."""
    kl = -0.5 * (1 + 2 * torch.log(sigma) - mu.pow(2) - sigma.pow(2)).sum(dim=1)
    return kl.mean()


class VIBHead(nn.Module):
    """Variational information bottleneck in place of a classifier's linear head."""

    def __init__(self, in_dim: int, k: int, num_classes: int, inference: str = "sample") -> None:
        super().__init__()
        if inference not in ("sample", "mean"):
            raise ValueError(f"inference={inference!r}: use 'sample' or 'mean'")
        self.k = k
        self.inference = inference
        self.encoder = nn.Linear(in_dim, 2 * k)
        self.classifier = nn.Linear(k, num_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        mu, sigma = vib_stats(self.encoder(h))
        if self.training or self.inference == "sample":
            z = mu + sigma * torch.randn_like(sigma)
        else:
            z = mu
        return self.classifier(z)

    def extra_repr(self) -> str:
        return f"k={self.k}, inference={self.inference}"


@register_defense("mid")
class MID(Defense):
    Config = MIDConfig
    summary = "MID: variational information bottleneck before the head, CE + beta * KL"
    paper = "Wang, Zhang, Jia, Improving Robustness to Model Inversion Attacks via Mutual " \
            "Information Regularization, AAAI 2021"

    ENCODER_TAP = "head.encoder"
    k = 0

    def build_model(self, model: nn.Module) -> nn.Module:
        head = getattr(model, "head", None)
        if not isinstance(head, nn.Linear):
            raise ValueError(
                f"mid needs a classifier whose 'head' is an nn.Linear; {type(model).__name__} has "
                f"{type(head).__name__}"
            )
        in_dim = head.in_features
        k = self.cfg.bottleneck or max(1, in_dim // 2)
        model.head = VIBHead(in_dim, k, head.out_features, self.cfg.inference)
        self.k = k
        return model

    def tap_layers(self, model: nn.Module) -> list[str]:
        return [self.ENCODER_TAP]

    def compute_loss(self, batch: TrainBatch) -> LossOutput:
        ce = F.cross_entropy(batch.logits, batch.y)
        mu, sigma = vib_stats(batch.taps[self.ENCODER_TAP])
        kl = kl_divergence(mu, sigma)
        total = ce + self.cfg.beta * kl if self.cfg.beta else ce
        return LossOutput(total, {"ce": ce.detach(), "kl": kl.detach(), "loss": total.detach()})

    def report(self) -> dict:
        return {"bottleneck": self.k, "inference": self.cfg.inference}
