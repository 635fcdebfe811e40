"""DP-SGD: differentially private training (Abadi et al., CCS 2016) through Opacus.

* ``build_model``: Opacus cannot compute per-sample gradients through BatchNorm (it mixes
  samples), so the network is passed through ``opacus.validators.ModuleValidator.fix``, which
  replaces every BatchNorm by ``GroupNorm(gcd(32, C), C)``. The *architecture of the target
  changes* (MCNN's norm layers become GroupNorm): its checkpoint must be loaded into
  ``DPSGD.build_model(make_model())``, and plain-training comparisons (the tested invariant) use
  the same fixed architecture.
* ``configure``: the model is wrapped in a ``GradSampleModule`` (per-sample gradients), the
  trainer's optimiser in a ``DPOptimizer`` (per-sample clipping to ``max_grad_norm``, Gaussian
  noise of std ``noise_multiplier * max_grad_norm`` on the summed gradient, divided by the
  expected batch size) and an Opacus accountant (``rdp`` by default; ``prv``, ``gdp``) is
  attached to every optimiser step. With ``target_epsilon > 0`` the noise multiplier is instead
  calibrated by Opacus for (target_epsilon, delta) over the planned steps. mi-bench defaults to
  RDP where Opacus' ``PrivacyEngine`` defaults to PRV: on the MNIST ``paper`` preset (q =
  64/27,536, 8,600 steps, noise 1.0, delta 1e-5) RDP reports epsilon 1.29 and PRV 1.11 (RDP's
  bound is looser); ``accountant=prv`` reports the tighter figure. Under Poisson sampling the
  per-sample-gradient module forbids gradient accumulation across backward passes (as
  ``PrivacyEngine.make_private`` does), so a step can never mix two batches.
* ``epoch_batches``: with ``poisson=true`` (default) each of the ``round(n / batch_size)``
  batches of an epoch contains each training sample independently with probability
  ``q = batch_size / n`` (Poisson sampling, which the accountant assumes); batches may be empty
  (a noise-only step). With ``poisson=false`` the trainer's shuffled fixed-size batches are
  used, the update is normalised by the actual batch size, and the accountant's figure is only
  the usual approximation (``report()["sampling"]`` says so).
* after the last epoch (``on_train_end``) Opacus' hooks are removed from the network, so the
  exported target carries no forward/backward hooks.
* ``report``: the (epsilon, delta) actually spent, from the accountant (unlike the MID paper's
  DP baseline, whose accountant was commented out), with steps, sample rate, noise multiplier
  and clip norm. No noise means no guarantee: epsilon is reported as ``inf``.

``max_grad_norm = 0`` disables clipping (only allowed with ``noise_multiplier = 0``, since the
noise is calibrated to the clip norm). With no clipping, no noise and ``poisson=false`` the
training equals the ``none`` baseline on the same (GroupNorm) architecture up to float
summation order of the per-sample gradients (tested).

Noise comes from torch's global generator (seeded by the trainer); Poisson batches from the
trainer's generator. Opacus' secure RNG (``secure_mode``) is *off*, as in Opacus' MNIST example:
the noise is reproducible and fine for measuring leakage, but not a cryptographically secure
guarantee for a deployed model. The optimiser (``configs/defense/dpsgd.yaml``: the argparse
defaults of Opacus' ``examples/mnist.py``, SGD lr 0.1 without momentum) is the training
config's, not a defense field.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from mi_bench.api import Defense, LossOutput, PluginConfig, TrainBatch, param, register_defense

NO_CLIP = 1e30  # stands for "no clipping" inside Opacus (clip factor min(1, C/||g||) == 1)


@dataclass
class DPSGDConfig(PluginConfig):
    noise_multiplier: float = param(1.0, ge=0.0, label=True, sweep=(0.5, 1.0, 2.0, 4.0),
                                    help="Gaussian noise std / clip norm (ignored when "
                                    "target_epsilon > 0)")
    max_grad_norm: float = param(1.0, ge=0.0, help="per-sample clip norm C (0 = no clipping; "
                                 "only with noise_multiplier 0)")
    target_epsilon: float = param(0.0, ge=0.0, label=True, sweep=(1.0, 3.0, 8.0),
                                  help="> 0: calibrate the noise multiplier to this epsilon")
    delta: float = param(1e-5, gt=0.0, lt=1.0, help="delta of the reported (epsilon, delta)")
    accountant: str = param("rdp", choices=("rdp", "prv", "gdp"), help="Opacus accountant")
    poisson: bool = param(True, help="Poisson sampling of batches (what the accountant assumes)")


def _unwrap(model: nn.Module) -> nn.Module:
    from opacus import GradSampleModule

    return model._module if isinstance(model, GradSampleModule) else model


@register_defense("dpsgd")
class DPSGD(Defense):
    Config = DPSGDConfig
    summary = "DP-SGD (Opacus): per-sample clipping + Gaussian noise, accountant reports epsilon"
    paper = "Abadi et al., Deep Learning with Differential Privacy, CCS 2016 (Opacus, " \
            "Yousefpour et al. 2021)"

    def setup(self, cfg) -> None:
        if cfg.max_grad_norm == 0 and (cfg.noise_multiplier > 0 or cfg.target_epsilon > 0):
            raise ValueError(
                "dpsgd: max_grad_norm=0 (no clipping) leaves the noise scale undefined: set "
                "noise_multiplier=0 and target_epsilon=0, or give a clip norm"
            )
        self.accountant = None
        self.optimizer = None
        self.sample_rate = float("nan")
        self.steps_per_epoch = 0
        self.noise_multiplier = cfg.noise_multiplier
        self._batch_len = 0
        self._gsm = None

    def build_model(self, model: nn.Module) -> nn.Module:
        from opacus.validators import ModuleValidator

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = ModuleValidator.fix(model)
        errors = ModuleValidator.validate(model, strict=False)
        if errors:
            raise ValueError(f"dpsgd: model not supported by Opacus: {errors}")
        return model

    def configure(self, model, optimizer, *, n_train, batch_size, epochs, generator):
        from opacus import GradSampleModule
        from opacus.accountants import create_accountant
        from opacus.accountants.utils import get_noise_multiplier
        from opacus.optimizers import DPOptimizer

        cfg = self.cfg
        self.sample_rate = min(1.0, batch_size / max(1, n_train))
        self.steps_per_epoch = max(1, round(1.0 / self.sample_rate))
        if cfg.target_epsilon > 0:
            self.noise_multiplier = float(get_noise_multiplier(
                target_epsilon=cfg.target_epsilon, target_delta=cfg.delta,
                sample_rate=self.sample_rate, steps=self.steps_per_epoch * epochs,
                accountant=cfg.accountant,
            ))
        else:
            self.noise_multiplier = cfg.noise_multiplier
        clip = cfg.max_grad_norm if cfg.max_grad_norm > 0 else NO_CLIP
        gsm = GradSampleModule(model, loss_reduction="mean")
        if cfg.poisson:  # what PrivacyEngine.make_private does under Poisson sampling
            gsm.forbid_grad_accumulation()
        self._gsm = gsm
        self.optimizer = DPOptimizer(
            optimizer, noise_multiplier=self.noise_multiplier, max_grad_norm=clip,
            expected_batch_size=max(1, round(self.sample_rate * n_train)), loss_reduction="mean",
        )
        self.accountant = create_accountant(cfg.accountant)
        self.optimizer.attach_step_hook(self.accountant.get_optimizer_hook_fn(self.sample_rate))
        return gsm, self.optimizer

    def epoch_batches(self, labels, batch_size, generator):
        if not self.cfg.poisson:
            return None
        n = len(labels)
        return [torch.nonzero(torch.rand(n, generator=generator) < self.sample_rate).flatten()
                for _ in range(self.steps_per_epoch)]

    def compute_loss(self, batch: TrainBatch) -> LossOutput:
        self._batch_len = len(batch.y)
        if len(batch.y) == 0:  # an empty Poisson batch: a noise-only step
            zero = batch.logits.sum() * 0.0
            return LossOutput(zero, {"ce": 0.0})
        ce = F.cross_entropy(batch.logits, batch.y)
        return LossOutput(ce, {"ce": float(ce.detach())})

    def optimizer_step(self, model, optimizer, closure):
        optimizer.zero_grad(set_to_none=True)
        out = closure()
        with warnings.catch_warnings():  # Opacus' hooks on the first layer: harmless here
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            out.total.backward()
        if not self.cfg.poisson:  # fixed-size batches: normalise by the actual size
            optimizer.expected_batch_size = max(1, self._batch_len)
        optimizer.step()
        return out

    def export_model(self, model: nn.Module) -> nn.Module:
        return _unwrap(model)

    def on_train_end(self, model) -> None:
        self.release()

    def release(self) -> None:
        """Remove Opacus' per-sample-gradient hooks and attributes from the trained network
        (after the last epoch), so the exported target is a plain module."""
        if self._gsm is not None:
            self._gsm.cleanup()
            self._gsm = None

    def epsilon(self) -> float:
        if self.accountant is None or len(self.accountant) == 0:
            return 0.0
        if self.noise_multiplier == 0:
            return math.inf
        return float(self.accountant.get_epsilon(delta=self.cfg.delta))

    def report(self) -> dict[str, Any]:
        steps = sum(h[2] for h in getattr(self.accountant, "history", [])) if self.accountant else 0
        return {
            "epsilon": self.epsilon(), "delta": self.cfg.delta, "accountant": self.cfg.accountant,
            "steps": int(steps), "sample_rate": self.sample_rate,
            "noise_multiplier": self.noise_multiplier,
            "max_grad_norm": self.cfg.max_grad_norm or None,
            "sampling": "poisson" if self.cfg.poisson else
                        "shuffle (accountant assumes Poisson: epsilon approximate)",
            "norm_layers": "BatchNorm replaced by GroupNorm (opacus ModuleValidator.fix)",
        }
