"""PGD adversarial training of the target (Madry et al., ICLR 2018): the known-answer control
that should *raise* model-inversion leakage.

Robust models are easier to invert (Mejia et al. 2019, "Robust or Private?"): a plainly trained
model's input gradients are dominated by meaningless adversarial directions, a robust model's
follow perceptible features (Tsipras et al., ICLR 2019), which is what a gradient-based inversion
climbs. No published GMI/KED-MI number exists for plain adversarial training
(``methods.md``): it is a direction-only control, and its budget is mi-bench's choice.

Protocol (``prepare_batch``, every training batch):

* untargeted PGD maximising the cross-entropy of the true label inside an ``norm`` ball (``l2``:
  the whole image's L2 norm, pixels in [0, 1]; ``linf``: per pixel) of radius ``eps`` around the
  batch, every iterate kept in the image box [0, 1];
* a random start (``random_start``): L-inf uniform in the cube; L2 a uniform direction with a
  radius uniform in [0, eps] (the robust judge's start, ``mi_bench.judges``);
* ``steps`` steps of ``step_size`` (0 = ``2.5 * eps / steps``, Madry et al.'s rule): a signed
  gradient step (L-inf) or a step along the L2-normalised gradient (L2), each followed by the
  projection onto the ball and then onto the box (clipping to the box never leaves the ball: it
  only shrinks each coordinate of the perturbation);
* the target is attacked in eval mode (BatchNorm on its running statistics, no statistics
  updated by the attack's passes, as TRADES and the robust judge do) and put back in train mode
  for the update; the attack's gradients flow to the input only (``torch.autograd.grad``), never
  into the weights or the optimiser;
* the update is on the adversarial batch alone (``mix_clean=false``, Madry et al.'s objective);
  ``mix_clean=true`` trains on the clean and the adversarial batch together, concatenated, each
  image with weight 1 (Goodfellow et al.'s 50/50 mix).

The trainer's logged ``train_acc`` is then the accuracy on the adversarial batch (with
``mix_clean``: on both halves). Randomness (the start) comes from torch's global generator,
seeded by the trainer; batch order and flips come from the trainer's own generator and are
the same as ``none``'s. ``eps = 0`` returns the batch untouched without drawing a random number:
the training is bit-for-bit the ``none`` baseline (tested). Cost: each PGD step is one forward
and one backward pass, so training costs about ``steps + 1`` times plain training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mi_bench.api import Defense, PluginConfig, param, pgd, register_defense


@dataclass
class AdvTrainConfig(PluginConfig):
    eps: float = param(1.5, ge=0.0, label=True, sweep=(0.0, 0.5, 1.0, 1.5, 3.0),
                       help="PGD radius, pixels in [0, 1] (l2: the whole image's norm; linf: per "
                       "pixel, must be < 1); 0 = off (plain training)")
    norm: str = param("l2", choices=("l2", "linf"), help="threat model: L2 or L-infinity ball")
    steps: int = param(10, ge=1, help="PGD steps per training batch")
    step_size: float = param(0.0, ge=0.0, help="PGD step; 0 = 2.5 * eps / steps (Madry et al.)")
    random_start: bool = param(True, help="start PGD from a random point of the ball")
    mix_clean: bool = param(False, help="train on the clean and the adversarial batch together "
                            "(false: adversarial only, Madry et al.)")




@register_defense("advtrain")
class AdversarialTraining(Defense):
    Config = AdvTrainConfig
    summary = "PGD adversarial training (L2 or L-inf ball, random start): a control that raises MI leakage"
    paper = "Madry et al., Towards Deep Learning Models Resistant to Adversarial Attacks, ICLR 2018 " \
            "(as an MI control: Mejia et al., Robust or Private? 2019)"

    def setup(self, cfg) -> None:
        if cfg.norm == "linf" and cfg.eps >= 1:
            raise ValueError(f"advtrain: norm=linf with eps={cfg.eps} covers the whole [0, 1] image "
                             "box; set defense.eps to a per-pixel radius such as 0.3 (Madry MNIST) "
                             "or 0.031 (8/255)")
        self.batches = 0

    def step_size(self) -> float:
        c = self.cfg
        return c.step_size or 2.5 * c.eps / c.steps

    def configure(self, model, optimizer, **kw):
        self.batches = 0
        return model, optimizer

    def prepare_batch(self, model, x, y):
        c = self.cfg
        if c.eps <= 0:
            return x, y
        adv = pgd(model, x, y, norm=c.norm, eps=c.eps, steps=c.steps,
                           step_size=c.step_size, random_start=c.random_start)
        self.batches += 1
        if c.mix_clean:
            return torch.cat([x, adv]), torch.cat([y, y])
        return adv, y

    def report(self) -> dict:
        c = self.cfg
        return {"pgd": f"{c.norm} eps={c.eps:g} steps={c.steps} step={self.step_size():.4g} "
                       f"{'random' if c.random_start else 'zero'} start",
                "trained_on": "clean + adversarial" if c.mix_clean else "adversarial only",
                "pgd_batches": self.batches}
