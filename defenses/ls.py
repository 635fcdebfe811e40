"""Label smoothing, positive and negative (Struppek, Hintersdorf, Kersting, ICLR 2024, "Be
Careful What You Smooth For"): a known-answer control. Positive smoothing is published to *raise*
model-inversion leakage, negative smoothing (NegLS) to lower it.

The smoothed target is ``(1 - alpha) onehot(y) + alpha / C`` with ``alpha`` in [-1, 1]; its
cross-entropy is ``(1 - alpha) NLL + alpha * mean_c(-log p_c)``, averaged over the batch:

* ``alpha > 0``: ``F.cross_entropy(logits, y, label_smoothing=alpha)`` (torch's built-in, what the
  official ``train_model.py`` uses for alpha >= 0; torch refuses negative smoothing);
* ``alpha < 0``: the same formula written out, as the official ``losses/label_smoothing.py``;
* an effective ``alpha`` of 0 (``alpha=0``, or NegLS before its schedule starts): plain
  ``F.cross_entropy(logits, y)``, the very call of ``none`` - so ``alpha=0`` trains exactly the
  ``none`` target, bit for bit (tested).

Schedule (negative alpha only; ``schedule=official``): the official ``ls_scheduler`` of
``train_model.py`` for its 100-epoch recipe is 0 for epochs ``t < 50``, ``alpha (t + 1 - 50) /
(E - 50)`` for ``50 <= t < 75`` (a ramp that reaches alpha / 2), and ``alpha`` from epoch 75,
where the recipe's learning rate also drops (epochs counted from 0). mi-bench scales it to any
number of epochs ``E``: ``h = floor(E / 2)``, ``q = floor(3 E / 4)``; 0 for ``t < h``,
``alpha (t + 1 - h) / (E - h)`` for ``h <= t < q``, ``alpha`` from ``q``. For E = 100 that is the
official function; for E = 10 it is Trap-MID's MNIST copy (``loss.py`` ``mnist_ls_scheduler``:
0, 0, 0, 0, 0, 0.2, 0.4, 1, 1, 1 times alpha). The official code hard-codes 50 and 75, so run as
is for fewer than 51 epochs it would never smooth at all; the scaling is the deviation that
keeps the CPU presets meaningful. Until the upstream fix of 2024-08-07 (commit 9a79baf, "fix: ls
scheduler not employed") the schedule was defined but never passed to ``fit``: training used the
full alpha from epoch 0. ``schedule=constant`` reproduces that pre-fix behaviour. Positive alpha
is constant in both (official: no scheduler for alpha >= 0).

What differs from the paper is the training recipe, not the loss: its targets are ImageNet-
pretrained ResNet-152s at 224 px (Adam 1e-3, 100 epochs, batch 128, crop/colour/flip
augmentation); mi-bench trains its own protocols' targets (configs/defense/ls.yaml says which
recipe applies where).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from mi_bench.api import Defense, LossOutput, PluginConfig, TrainBatch, param, register_defense


@dataclass
class LSConfig(PluginConfig):
    alpha: float = param(0.1, ge=-1.0, le=1.0, label=True, sweep=(-0.1, -0.05, 0.0, 0.05, 0.1),
                         help="smoothing factor: target (1 - alpha) onehot + alpha / C; > 0 label "
                         "smoothing (raises leakage), < 0 NegLS (lowers it; authors' value -0.05)")
    schedule: str = param("official", choices=("official", "constant"),
                          help="negative alpha only: official = 0 for the first half of the epochs, "
                          "a ramp to 3/4, then alpha (the code as fixed upstream on 2024-08-07); "
                          "constant = alpha from the first epoch (the code before that fix)")


def schedule_factor(epoch: int, epochs: int) -> float:
    """The official NegLS schedule's factor for ``epoch`` (0-based) of ``epochs``, scaled to any
    length: 0 before ``floor(E/2)``, ``(t + 1 - h) / (E - h)`` until ``floor(3E/4)``, then 1."""
    if epochs < 1 or epoch < 0:
        raise ValueError(f"ls schedule: epoch {epoch} of {epochs}: epochs must be >= 1, epoch >= 0")
    h, q = epochs // 2, (3 * epochs) // 4
    if epoch < h:
        return 0.0
    if epoch < q:
        return (1 / (epochs - h)) * (epoch + 1 - h)  # the official order of operations
    return 1.0


def smoothed_cross_entropy(logits: torch.Tensor, y: torch.Tensor, alpha: float) -> torch.Tensor:
    """``mean_i [(1 - alpha) NLL_i + alpha * mean_c(-log p_ic)]``: the cross-entropy against
    ``(1 - alpha) onehot + alpha / C``, for any alpha in [-1, 1]. ``alpha = 0`` is plain
    ``F.cross_entropy`` (the same call as the undefended baseline)."""
    if alpha == 0:
        return F.cross_entropy(logits, y)
    if alpha > 0:
        return F.cross_entropy(logits, y, label_smoothing=alpha)
    logp = F.log_softmax(logits, dim=-1)
    nll = -logp.gather(-1, y[:, None]).squeeze(1)
    smooth = -logp.mean(dim=-1)
    return ((1 - alpha) * nll + alpha * smooth).mean()


@register_defense("ls")
class LabelSmoothing(Defense):
    Config = LSConfig
    summary = "label smoothing, alpha in [-1, 1]: > 0 raises MI leakage, < 0 (NegLS, scheduled) lowers it"
    paper = "Struppek, Hintersdorf, Kersting, Be Careful What You Smooth For: Label Smoothing Can " \
            "Be a Privacy Shield but Also a Catalyst for Model Inversion Attacks, ICLR 2024"

    def setup(self, cfg) -> None:
        self.epochs: int | None = None
        self._last_epoch = -1

    def configure(self, model, optimizer, *, epochs: int, **kw):
        self.epochs = epochs
        self._last_epoch = -1
        return model, optimizer

    def alpha_at(self, epoch: int) -> float:
        """The smoothing factor used in ``epoch`` (0-based)."""
        a = self.cfg.alpha
        if a >= 0 or self.cfg.schedule == "constant":
            return a
        if self.epochs is None:
            raise RuntimeError("ls: the NegLS schedule needs the number of epochs; call configure() "
                               "first (the trainer does)")
        return a * schedule_factor(epoch, self.epochs)

    def compute_loss(self, batch: TrainBatch) -> LossOutput:
        a = self.alpha_at(batch.epoch)
        self._last_epoch = batch.epoch
        total = smoothed_cross_entropy(batch.logits, batch.y, a)
        terms = {"loss": total.detach(), "ls_alpha": a}
        terms["ce"] = total.detach() if a == 0 else F.cross_entropy(batch.logits.detach(), batch.y)
        return LossOutput(total, terms)

    def report(self) -> dict:
        out = {"alpha": self.cfg.alpha, "schedule": self.cfg.schedule}
        if self.epochs and self.cfg.alpha < 0 and self.cfg.schedule == "official":
            e = self.epochs
            out.update(zero_through_epoch=e // 2, full_from_epoch=(3 * e) // 4 + 1)  # 1-based
        if self._last_epoch >= 0:
            out["alpha_last_epoch"] = self.alpha_at(self._last_epoch)
        return out
