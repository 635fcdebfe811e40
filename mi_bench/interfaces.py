"""The two plugin interfaces: :class:`Defense` and :class:`Attack`.

A defense shapes how the target classifier is trained. The trainer (``mi_bench.train``) owns
the loop; a defense hooks into it at well-defined points, each with a no-op default, so the
undefended baseline ``none`` is a defense that overrides nothing:

* ``check_target(target)``      refuse, before any training, a target this defense cannot train
                                (TL-DMI: one trained from scratch); ``target`` is the run's
                                ``target`` section (``mi_bench.train.TrainConfig``).
* ``build_model(model)``        change the network (MID's bottleneck head, DP-SGD's GroupNorm).
* ``tap_layers(model)``         names of modules whose outputs the trainer captures (forward
                                hooks, added before training and removed after) for loss terms.
* ``configure(model, opt, ...)`` wrap/replace the optimiser (DP-SGD) once training starts.
* ``epoch_batches(...)``        choose the batches of an epoch (Poisson sampling); default None
                                lets the trainer use the configured sampler (random or P x K).
* ``prepare_batch(model, x, y)`` change a batch before the forward pass: augmentation, extra
                                samples with their labels, adversarial examples (the judges of
                                ``mi_bench.judges`` use it); default unchanged.
* ``compute_loss(batch)``       the training objective from logits, taps, inputs and labels;
                                per-sample weighting (DESMIL) happens here.
* ``optimizer_step(model, opt, closure)``  act around the step (AWP: perturb, step, restore).
* ``on_epoch_end(epoch)`` / ``on_train_end(model)`` / ``report()``  bookkeeping, clean-up
                                (DP-SGD removes Opacus' hooks) and numbers stored with the result
                                (e.g. DP-SGD's spent epsilon).
* ``export_model(model)``       the plain ``nn.Module`` to checkpoint/attack (unwrap wrappers).

An attack declares what it needs (:class:`AttackRequirements`), trains its prior on public
data (the pipeline caches it; per-target priors carry the target's hash in their key) and
inverts a list of private classes into images (:class:`Inversion`). Scoring is done by the
pipeline, identically for every attack.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal, Protocol, runtime_checkable

import torch
from torch import nn

from mi_bench.params import PluginConfig, param
from mi_bench.runtime import NO_ACCEL, Accel


@runtime_checkable
class Classifier(Protocol):
    """What every classifier in mi-bench offers (targets, evaluator, judges, surrogates), and so
    what a plugin may rely on in the target it is given:

    * ``embed(x)``       the penultimate feature, (N, ``feature_dim``);
    * ``head``           the final ``nn.Linear``: logits = ``head(embed(x))`` (MID swaps it for a
                         variational bottleneck);
    * ``hidden_layers``  names of the modules a defense taps by default (``get_submodule(name)``);
    * ``feature_dim``    the size of ``embed(x)``;
    * calling it gives the logits, (N, classes).
    """

    hidden_layers: tuple[str, ...]
    feature_dim: int
    head: nn.Module

    def embed(self, x: torch.Tensor) -> torch.Tensor: ...

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


@dataclass
class LossOutput:
    """``total`` is back-propagated; ``terms`` are logged scalars (e.g. ``{"ce": .., "hsic_x": ..}``):
    detached 0-d tensors (preferred: the trainer sums them on the device and reads them every N
    steps, so a GPU never waits for the host) or floats."""

    total: torch.Tensor
    terms: dict[str, float | torch.Tensor] = field(default_factory=dict)


@dataclass
class TrainBatch:
    """Everything a defense may need to compute its loss for one batch."""

    x: torch.Tensor  # inputs in [0, 1], (m, C, H, W)
    y: torch.Tensor  # labels (m,)
    logits: torch.Tensor  # model(x)
    taps: dict[str, torch.Tensor]  # tapped layer name -> output (unflattened)
    model: nn.Module
    epoch: int
    step: int
    forward: Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]
    """Run the model (with taps) on other inputs, e.g. degraded views: returns (logits, taps)."""


class Defense:
    """Base class of every defense plugin. Subclasses set the class attributes below."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[PluginConfig]] = PluginConfig
    summary: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    presets: ClassVar[dict[str, dict[str, Any]]] = {}  # optional, for third-party plugins

    def __init__(self, cfg: PluginConfig, *, num_classes: int, input_shape: tuple[int, ...]):
        self.cfg = cfg
        self.num_classes = num_classes
        self.input_shape = input_shape
        self.setup(cfg)

    def setup(self, cfg: PluginConfig) -> None:
        """Per-instance state and checks across fields, run at the end of ``__init__`` (with
        ``self.cfg``, ``self.num_classes`` and ``self.input_shape`` set). Raise ``ValueError``
        (one line: the problem and the fix) for a combination of settings that cannot run.
        A plugin overrides this rather than ``__init__``."""

    # -- model -----------------------------------------------------------------------------
    def check_target(self, target: Any) -> None:
        """Raise ``ValueError`` (one line: the problem and the fix) when the target described by
        ``target`` (the run's ``target`` section: model, recipe, ``pretrained``, ``pretrain``)
        cannot be trained under this defense. Called by the target stage before any training,
        and by ``mi-bench sweep --dry-run``'s plan."""

    def build_model(self, model: nn.Module) -> nn.Module:
        return model

    def tap_layers(self, model: nn.Module) -> list[str]:
        return []

    def export_model(self, model: nn.Module) -> nn.Module:
        return model

    # -- loop ------------------------------------------------------------------------------
    def configure(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, *, n_train: int,
        batch_size: int, epochs: int, generator: torch.Generator,
    ) -> tuple[nn.Module, torch.optim.Optimizer]:
        return model, optimizer

    def epoch_batches(
        self, labels: torch.Tensor, batch_size: int, generator: torch.Generator
    ) -> list[torch.Tensor] | None:
        return None

    def prepare_batch(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return x, y

    def compute_loss(self, batch: TrainBatch) -> LossOutput:
        ce = nn.functional.cross_entropy(batch.logits, batch.y)
        return LossOutput(ce, {"ce": ce.detach()})

    def optimizer_step(
        self, model: nn.Module, optimizer: torch.optim.Optimizer,
        closure: Callable[[], LossOutput],
    ) -> LossOutput:
        optimizer.zero_grad(set_to_none=True)
        out = closure()
        out.total.backward()
        optimizer.step()
        return out

    def on_epoch_end(self, epoch: int) -> None:
        pass

    def on_train_end(self, model: nn.Module) -> None:
        """Called once after the last epoch (e.g. to remove wrappers' hooks)."""

    def report(self) -> dict[str, Any]:
        return {}


@dataclass
class AttackRequirements:
    white_box: bool = True  # needs gradients of the target
    public_data: bool = True  # trains a prior on the attacker's public data
    prior: Literal["shared", "per_target", "none"] = "shared"  # GMI: shared; KED-MI/PLG-MI: per target


@dataclass
class AttackConfig(PluginConfig):
    """Base of the built-in attacks' configs: the fields every attack shares (an attack plugin's
    config may derive from it, or from :class:`PluginConfig`, in which case it has no cap)."""

    max_latents: int = param(
        0, ge=0, neutral_default=True,
        help="cap on the latents the inversion makes (0 = none): only max_latents // (latents per "
        "class: samples_per_class x restarts) of the attacked classes are inverted, chosen by the "
        "run seed (mi_bench.inversion_cap); the record and the run table say which were left out")
    time_budget_s: float = param(
        0.0, ge=0.0, neutral_default=True,
        help="seconds the inversion may take (0 = no limit): two iterations are timed first and "
        "only as many classes as fit are inverted (max_latents's rule picks them; how many depends "
        "on this machine's speed, and the record states the timing)")


@dataclass
class Inversion:
    """Reconstructions: ``images[c, s]`` is sample ``s`` for the c-th attacked class.

    ``protocol`` states how they were produced (samples per class, restarts, selection rule) and
    is stored with the result next to every number.
    """

    images: torch.Tensor  # (n_classes, n_samples, C, H, W) in [0, 1]
    classes: list[int]  # private class indices attacked, aligned with images' first axis
    protocol: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


class Attack:
    """Base class of every attack plugin.

    ``train_prior`` returns a flat ``dict[str, Tensor]`` (state dicts of the prior's networks,
    prefixed, plus any tensors such as a pseudo-label selection); the pipeline stores it in the
    content-addressed cache and passes it back to ``invert``. Fields of ``Config`` marked
    ``param(..., prior=True)`` are exactly those the prior depends on: only they enter its key.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type[PluginConfig]] = PluginConfig
    summary: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    requirements: ClassVar[AttackRequirements] = AttackRequirements()
    prior_version: ClassVar[str] = "1"  # bump when the prior's training code changes
    prior_name: ClassVar[str] = ""  # "" = its own; another attack's name to share its cached prior
    # (attack option, fields): take these fields' per-preset values from another attack option's
    # YAML (the calibration baselines follow GMI's presets), resolved by mi_bench.config
    preset_fields_from: ClassVar[tuple[str, tuple[str, ...]] | None] = None
    # a calibration baseline (how much of a score needs no attack): > 0, its column in the
    # margin tables (mi_bench.results.effects.baseline_margins); 0 = a real attack
    calibration: ClassVar[int] = 0
    aux_version: ClassVar[str] = "1"  # bump when train_target_aux's code changes
    # True where train_prior honours Accel(graph=True) (cuda_graph=true): such priors get keys of
    # their own, since the replayed step draws its random numbers differently
    graphed_prior: ClassVar[bool] = False
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    # performance options (amp, compile, host reads every N steps); the pipeline sets the run's
    accel: Accel = NO_ACCEL

    def __init__(
        self, cfg: PluginConfig, *, image_shape: tuple[int, int, int], num_classes: int,
        device: torch.device,
    ):
        self.cfg = cfg
        self.image_shape = image_shape
        self.num_classes = num_classes
        self.device = device

    @classmethod
    def latents_per_class(cls, cfg: PluginConfig) -> int:
        """The latents (reconstruction candidates) the inversion of ``cfg`` makes per attacked
        class: ``samples_per_class`` x ``restarts`` (1 for a field the config lacks). What
        ``attack.max_latents`` counts; an attack that makes a different number overrides it."""
        return int(getattr(cfg, "samples_per_class", 1)) * int(getattr(cfg, "restarts", 1))

    def train_prior(
        self, public: torch.Tensor, target: nn.Module | None, *, seed: int, progress: Any
    ) -> dict[str, torch.Tensor]:
        """Train the prior on public images (N, C, H, W) in [0, 1]. ``target`` is given (frozen,
        eval mode) only when ``requirements.prior == "per_target"``."""
        return {}

    def target_aux_spec(self) -> dict[str, Any] | None:
        """What this attack trains *per target* besides its prior (LOMMA's surrogate classifiers
        and feature mean), as a JSON-able spec of the settings it depends on; ``None`` (the
        default): nothing. The pipeline caches the artifact under the spec, ``aux_version``, the
        target's key, the public set and the run seed."""
        return None

    def train_target_aux(
        self, public: torch.Tensor, target: nn.Module, *, seed: int, progress: Any
    ) -> dict[str, torch.Tensor]:
        """Train the per-target artifact (called only when :meth:`target_aux_spec` is not None;
        ``target`` frozen, eval mode). Its tensors reach :meth:`invert` inside ``prior``, each
        key prefixed ``aux.``."""
        return {}

    def invert(
        self, target: nn.Module, prior: dict[str, torch.Tensor], classes: list[int], *,
        seed: int, progress: Any,
    ) -> Inversion:
        raise NotImplementedError

    def prior_samples(self, prior: dict[str, torch.Tensor], n: int, *, generator: torch.Generator
                      ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None:
        """``n`` samples of the prior, (n, C, H, W) in [0, 1], as the attack's generator draws
        them (latents from ``generator``, a CPU generator: use no global random state); a
        conditional prior returns ``(images, classes)``, the private class of each (PLG-MI: every
        class in equal share), and gets a per-class diversity too; ``None`` for an attack
        without a generative prior (the default; the ``pixel`` baseline). The pipeline measures
        the prior's KID from them and writes a grid of them (``mi_bench.prior_quality``); called
        after the prior is built, under ``no_grad``."""
        return None

    # -- input checks shared by every attack -----------------------------------------------------
    def check_classes(self, classes: list[int]) -> None:
        """Refuse an empty list or a class the target does not have (a wrong target)."""
        from mi_bench.errors import ConfigError

        bad = [c for c in classes if not (0 <= int(c) < self.num_classes)]
        if not classes or bad:
            raise ConfigError(f"{self.name}: cannot attack classes {bad if bad else '[]'}: use a non-empty "
                              f"list of the target's class indices 0..{self.num_classes - 1}")

    def check_prior(self, prior: dict[str, torch.Tensor], required: tuple[str, ...]) -> None:
        """Refuse a prior that lacks the networks this attack needs (trained by another attack)."""
        missing = [p for p in required if not any(k.startswith(p + ".") or k == p for k in prior)]
        if missing:
            raise ValueError(
                f"{self.name}: the prior lacks {', '.join(missing)}; was it trained by {self.name}?"
            )

    def check_public(self, public: torch.Tensor, target: nn.Module | None) -> None:
        """Public images must match the attack's image shape; per-target priors need the target."""
        if self.requirements.prior == "per_target" and target is None:
            raise ValueError(f"{self.name} trains its prior per target: train_prior needs the target model")
        if public.ndim != 4 or tuple(public.shape[1:]) != tuple(self.image_shape):
            raise ValueError(
                f"{self.name}: public images must be (N, {', '.join(map(str, self.image_shape))}); "
                f"got {tuple(public.shape)}"
            )
