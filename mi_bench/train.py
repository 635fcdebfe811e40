"""One classifier trainer for targets (under any defense) and evaluation models.

Optimisation (:class:`TrainConfig`): SGD (optionally Nesterov) or Adam with weight decay; an
optional step schedule (``milestones``, ``gamma``: the lr is multiplied by ``gamma`` after each
listed epoch, like ``torch.optim.lr_scheduler.MultiStepLR`` stepped once per epoch, as the
official BiDO/MID/GMI trainers do); ``drop_last`` drops the last, partial batch of each shuffled
epoch (the official MNIST/CelebA loaders all use ``drop_last=True``; it matters where a loss
depends on the batch size m, e.g. BiDO's normalised HSIC). Which recipe a target is trained with
is decided by the config (``configs/defense/*.yaml`` ``datasets:`` entries, see
``mi_bench.config``), not here.

Model selection (documented, and stored with every result): with ``selection=best_val`` the
weights of the epoch with the highest accuracy on the *validation* split (carved from the
training data) are kept; ``last`` keeps the final epoch. The test split is only used once, for
the reported accuracy (the official BiDO/GMI code selects on the test split; mi-bench does not).

Devices (issue 7): the training and validation sets are moved to the device once when they fit
(:func:`mi_bench.runtime.to_device`) and each epoch's index batches (and horizontal-flip masks)
are sent in one copy, so batches are gathered on the device. Batches, flips and every random
draw come from the same CPU generator in the same order as before, so CPU runs are unchanged
bit for bit. Loss terms (floats or tensors, ``LossOutput.terms``), the training accuracy and
the NaN check are accumulated on the device and read every ``accel.every(device)`` steps (every
step on the CPU) and at the end of each epoch. ``accel`` (:class:`mi_bench.runtime.Accel`)
adds bf16 autocast (forward and loss; backward and optimiser outside; on the CPU only with
native bfloat16, :mod:`mi_bench.cpu`), channels-last training (``channels_last``) and ``torch.compile``
of the network's forward (the defense's hooks and taps stay on the plain module; skipped, with
a warning, when the defense wraps the model, e.g. DP-SGD's Opacus module).

Pretraining on public data (``target.pretrain=public``, any defense; TL-DMI's first step): the
network is first trained, without the defense, as a classifier of the public classes
(:func:`pretrain_set`: the public images whose class is not private and has at least
``pretrain_min_images`` images, labels renumbered 0..P-1 in increasing original label) with the
section's own recipe (:func:`pretrain_config`: ``pretrain_epochs`` / ``pretrain_lr`` in place of
``epochs`` / ``lr`` when set, the last epoch kept since the public set has no validation split);
the target is then built, every tensor but its head's copied from that network
(:func:`init_from_pretrained`), and trained on the private data under the defense. The stage and
its cache key are ``mi_bench.stages``'.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from mi_bench.data import pk_batches, random_batches
from mi_bench.interfaces import Defense, LossOutput, TrainBatch
from mi_bench.params import param
from mi_bench.runtime import (
    NO_ACCEL, NULL_BARS, Accel, Bars, FiniteCheck, canonical, host_floats, to_device, upload,
)

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    model: str = param("mcnn", help="registered model name")
    width: float = param(1.0, gt=0.0, le=4.0, help="channel multiplier (1 = published)")
    epochs: int = param(20, ge=1, help="training epochs")
    batch_size: int = param(64, ge=2, help="batch size")
    optimizer: str = param("sgd", choices=("sgd", "adam"), help="optimiser")
    lr: float = param(0.01, gt=0.0, help="learning rate")
    momentum: float = param(0.9, ge=0.0, lt=1.0, help="SGD momentum (ignored by adam)")
    nesterov: bool = param(False, help="Nesterov momentum (sgd with momentum > 0)")
    weight_decay: float = param(1e-4, ge=0.0, help="weight decay")
    milestones: list[int] = param(default_factory=list,
                                  help="epochs after which the lr is multiplied by gamma "
                                  "(MultiStepLR stepped per epoch; empty = constant lr)")
    gamma: float = param(0.1, gt=0.0, le=1.0, help="lr factor at each milestone")
    drop_last: bool = param(False, help="drop the last partial batch of each shuffled epoch")
    sampler: str = param("random", choices=("random", "pk"),
                         help="batches: shuffled, or P classes x K images (BiDO's identity sampler)")
    pk_classes: int = param(16, ge=1, help="P of the P x K sampler (K = batch_size // P)")
    selection: str = param("best_val", choices=("best_val", "last"),
                           help="model selection: best validation accuracy, or last epoch")
    seed_offset: int = param(0, help="added to the run seed for this model (evaluator != target)")
    # face protocols (mi_bench.faces / face_models)
    hflip: bool = param(False, help="flip a random half of each training batch horizontally")
    pretrained: str = param("", help="initialise from this weights file ('' = from scratch)")
    pretrained_sha256: str = param("", help="expected SHA-256 of the pretrained file (mismatch refused)")
    # pretraining on the public data (the target only; mi_bench.stages, artifact kind "pretrain")
    pretrain: str = param("", choices=("", "public"), neutral_default=True,
                          help="'public': first train this network as a classifier of the public "
                          "classes (those with >= pretrain_min_images images, private classes left "
                          "out), then start the target from it (every layer but the head) and train "
                          "it on the private data; '' = no pretraining. Target only")
    pretrain_epochs: int = param(0, ge=0, neutral_default=True, only_with="pretrain",
                                 help="epochs of the public pretraining (0 = this section's epochs)")
    pretrain_lr: float = param(0.0, ge=0.0, neutral_default=True, only_with="pretrain",
                               help="learning rate of the public pretraining (0 = this section's lr)")
    pretrain_min_images: int = param(2, ge=1, neutral_default=True, only_with="pretrain",
                                     help="public classes with fewer images are left out of the pretraining")


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = -1
    val_acc: float = float("nan")
    defense_report: dict[str, Any] = field(default_factory=dict)


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        if cfg.nesterov and cfg.momentum == 0:
            raise ValueError("nesterov=true needs momentum > 0 (set target.momentum or nesterov=false)")
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig):
    """``MultiStepLR(milestones, gamma)`` stepped once per epoch, or ``None`` without milestones."""
    if not cfg.milestones:
        return None
    if any(m < 1 for m in cfg.milestones):
        raise ValueError(f"milestones={list(cfg.milestones)}: epochs are counted from 1")
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, sorted(cfg.milestones), gamma=cfg.gamma)


def pretrain_config(cfg: TrainConfig) -> TrainConfig:
    """The recipe of the public pretraining of a section with ``pretrain='public'``: the section's
    own, with ``pretrain_epochs`` / ``pretrain_lr`` in place of ``epochs`` / ``lr`` where they are
    set, the last epoch kept (the public set has no validation split), the pretrain fields reset."""
    return dataclasses.replace(
        cfg, epochs=cfg.pretrain_epochs or cfg.epochs, lr=cfg.pretrain_lr or cfg.lr, selection="last",
        pretrain="", pretrain_epochs=0, pretrain_lr=0.0, pretrain_min_images=2)


def pretrain_set(public: tuple[torch.Tensor, torch.Tensor], private_classes: list[int],
                 min_images: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """The public images a network is pretrained on and their labels: the images of every public
    class that is not a private class (under ``disjoint_samples`` the public set also holds the
    private classes' held-out images; they are left out, or pretraining would train on the
    private classes) and has at least ``min_images`` images; unlabelled images (label -1, e.g.
    FFHQ) are left out. Labels are renumbered ``0..P-1`` in increasing original label; returns
    ``(images, labels, original labels of the P classes)``."""
    x, y = public
    private = {int(c) for c in private_classes}
    labels, counts = torch.unique(y, return_counts=True)
    classes = [int(c) for c, n in zip(labels.tolist(), counts.tolist())
               if c >= 0 and c not in private and n >= min_images]
    lut = torch.full((max(1, int(labels.max()) + 1) if len(labels) else 1,), -1, dtype=torch.long)
    lut[torch.tensor(classes, dtype=torch.long)] = torch.arange(len(classes))
    keep = torch.zeros(len(y), dtype=torch.bool)
    if classes:
        keep = (y >= 0) & (lut[y.clamp(min=0)] >= 0)
    idx = torch.nonzero(keep).flatten()
    return x[idx], lut[y[idx]], classes


def init_from_pretrained(model: nn.Module, state: dict[str, torch.Tensor], source: dict[str, Any],
                         head: str = "head") -> dict[str, Any]:
    """Copy every tensor of ``state`` (a pretrained network of the same architecture and width,
    with another head) into ``model`` except those of its ``head`` module, which keeps its random
    initialisation. Every other tensor must be in ``state`` with the same shape (else
    ``ValueError``). Returns (and sets ``model.init_report``) what was loaded, with ``source``."""
    own = model.state_dict()
    in_head = lambda k: k == head or k.startswith(head + ".")  # noqa: E731
    body = {k: v for k, v in state.items() if not in_head(k)}
    missing = [k for k in own if not in_head(k) and k not in body]
    bad = [k for k, v in body.items() if k not in own or tuple(own[k].shape) != tuple(v.shape)]
    if missing or bad:
        raise ValueError(f"the pretrained network does not fit {type(model).__name__}: "
                         f"{len(missing)} tensors missing ({', '.join(missing[:3])}), {len(bad)} "
                         f"of another name or shape ({', '.join(bad[:3])})")
    model.load_state_dict(body, strict=False)
    report = {**source, "loaded_tensors": len(body),
              "fresh_tensors": len([k for k in own if in_head(k)]), "fresh": head}
    model.init_report = report  # type: ignore[assignment]
    return report


def epoch_batches(n: int, cfg: TrainConfig, labels: torch.Tensor, gen: torch.Generator) -> list[torch.Tensor]:
    """The trainer's own sampling: P x K identity batches, or a shuffled epoch (its last partial
    batch dropped when ``cfg.drop_last``)."""
    if cfg.sampler == "pk":
        p = cfg.pk_classes
        return pk_batches(labels, p, max(1, cfg.batch_size // p), gen)
    batches = random_batches(n, cfg.batch_size, gen)
    if cfg.drop_last and len(batches) > 1 and len(batches[-1]) < cfg.batch_size:
        batches.pop()
    return batches


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits for ``x`` in eval mode (restores the previous mode)."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    out = torch.cat([model(xb.to(dev)).float().cpu() for xb in x.split(batch_size)])
    model.train(was)
    return out


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy in eval mode (restores the previous mode), counted on the model's device
    and read once."""
    if len(y) == 0:
        return float("nan")
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    correct = torch.zeros((), dtype=torch.long, device=dev)
    for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
        correct += (model(xb.to(dev)).argmax(1) == yb.to(dev)).sum()
    model.train(was)
    return float(correct.to(torch.float32) / len(y))  # float32, as the mean of 0/1 always was


class Taps:
    """Forward hooks capturing named submodules' outputs; removed by :meth:`remove`."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = []
        for name in names:
            try:
                mod = model.get_submodule(name)
            except AttributeError:
                valid = [n for n, _ in model.named_modules() if n]
                raise ValueError(
                    f"layer '{name}' not found in {type(model).__name__}; valid layers: "
                    f"{', '.join(valid[:30])}"
                ) from None
            self._handles.append(mod.register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def fn(_mod, _inp, out):
            self.outputs[name] = out
        return fn

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def _batch(data: torch.Tensor, idx_host: torch.Tensor, idx_dev: torch.Tensor,
           device: torch.device) -> torch.Tensor:
    """``data[idx]`` on ``device``: indexed there when the data set was moved (CPU: always),
    else gathered on the host and copied (pinned, asynchronous)."""
    if data.device == device:
        return data[idx_dev]
    return data[idx_host].pin_memory().to(device, non_blocking=True)


def train_classifier(
    make_model: Callable[[], nn.Module],
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    cfg: TrainConfig,
    *,
    seed: int,
    defense: Defense | None = None,
    device: torch.device | str = "cpu",
    bars: Bars = NULL_BARS,
    desc: str = "train",
    accel: Accel = NO_ACCEL,
) -> TrainResult:
    """Train a classifier; returns the selected model (exported, on ``device``, eval mode)."""
    defense = defense or Defense(None, num_classes=0, input_shape=())  # type: ignore[arg-type]
    device = canonical(device)
    every = accel.every(device)
    seed = seed + cfg.seed_offset
    torch.manual_seed(seed)
    model = defense.build_model(make_model()).to(device)
    gen = torch.Generator().manual_seed(seed + 1)
    x_tr, y_tr = train
    x_dev, y_dev = to_device(x_tr, device), to_device(y_tr, device)  # once, when they fit
    val = (to_device(val[0], device), to_device(val[1], device))
    optimizer = make_optimizer(model.parameters(), cfg)
    scheduler = make_scheduler(optimizer, cfg)  # on the plain optimiser: wrappers share its groups
    model, optimizer = defense.configure(
        model, optimizer, n_train=len(y_tr), batch_size=cfg.batch_size, epochs=cfg.epochs,
        generator=gen,
    )
    # channels-last (mi_bench.cpu): the plain network only (not a defense's wrapper, e.g. Opacus)
    cl = (accel.memory_format(cfg.model, device) == torch.channels_last
          and defense.export_model(model) is model)
    if cl:
        model.to(memory_format=torch.channels_last)
    taps = Taps(model, defense.tap_layers(model))
    net = model
    if accel.compile != "off":
        if defense.export_model(model) is model:
            net = accel.compiled(model)
        else:
            log.warning("%s: compile=%s skipped: the defense wraps the model (%s)", desc,
                        accel.compile, type(model).__name__)

    def forward(x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        taps.outputs = {}
        logits = net(x)
        return logits, taps.outputs

    result = TrainResult(model=model)
    best_state = None
    best_acc = -1.0
    step = 0
    try:
        with bars.task(desc, total=cfg.epochs) as bar:
            for epoch in range(cfg.epochs):
                t0 = time.perf_counter()
                model.train()
                batches = defense.epoch_batches(y_tr, cfg.batch_size, gen)
                if batches is None:
                    batches = epoch_batches(len(y_tr), cfg, y_tr, gen)
                # the flips are drawn right after the batches, batch by batch, as before
                flips = [torch.rand(len(idx), generator=gen) < 0.5 for idx in batches] if cfg.hflip else []
                dev_batches, dev_flips = upload(batches, device), upload(flips, device)
                sums: dict[str, Any] = {}
                correct: Any = 0
                seen = 0
                check = FiniteCheck(every, lambda v, where, e=epoch: (
                    f"{desc}: loss became {v} at epoch {e + 1}, {where}; lower the learning rate "
                    "or the defense strength"))
                for i, (idx, idx_dev) in enumerate(zip(batches, dev_batches)):
                    xb, yb = _batch(x_dev, idx, idx_dev, device), _batch(y_dev, idx, idx_dev, device)
                    if cfg.hflip:
                        xb = torch.where(dev_flips[i][:, None, None, None], xb.flip(-1), xb)
                    xb, yb = defense.prepare_batch(model, xb, yb)
                    if cl and xb.dim() == 4:
                        xb = xb.contiguous(memory_format=torch.channels_last)
                    holder: dict[str, torch.Tensor] = {}

                    def closure(xb=xb, yb=yb, holder=holder) -> LossOutput:
                        with accel.autocast(device):
                            logits, tapped = forward(xb)
                            holder["logits"] = logits
                            return defense.compute_loss(TrainBatch(
                                x=xb, y=yb, logits=logits, taps=tapped, model=model,
                                epoch=epoch, step=step, forward=forward,
                            ))

                    out = defense.optimizer_step(model, optimizer, closure)
                    check.add(out.total, step)
                    step += 1
                    for k, v in out.terms.items():
                        v = v.detach().to(torch.float64) if isinstance(v, torch.Tensor) else v
                        sums[k] = sums[k] + v if k in sums else v
                    if "logits" in holder and len(idx):
                        correct = correct + (holder["logits"].detach().argmax(1) == yb).sum()
                        seen += len(yb)
                check.flush()
                sums = host_floats(sums)  # one read per epoch
                correct = int(correct)
                defense.on_epoch_end(epoch)
                lr_used = optimizer.param_groups[0]["lr"]
                if scheduler is not None:
                    scheduler.step()
                val_acc = accuracy(defense.export_model(model), *val)
                row = {k: v / max(1, len(batches)) for k, v in sums.items()}
                row.update(epoch=epoch + 1, lr=lr_used, batches=len(batches),
                           train_acc=correct / max(1, seen), val_acc=val_acc,
                           seconds=time.perf_counter() - t0)
                result.history.append(row)
                no_val = val_acc != val_acc  # no validation split: keep the last epoch
                if cfg.selection == "last" or no_val or val_acc >= best_acc:
                    if not no_val:
                        best_acc = val_acc
                    result.best_epoch = epoch + 1
                    best_state = copy.deepcopy(defense.export_model(model).state_dict())
                bar.advance(1, loss=row.get("loss", row.get("ce", 0.0)), val_acc=val_acc)
        defense.on_train_end(model)
    finally:
        taps.remove()
    final = defense.export_model(model)
    if best_state is not None:
        final.load_state_dict(best_state)
    if cl:  # the exported weights in the standard (contiguous) layout
        final.to(memory_format=torch.contiguous_format)
    final.eval()
    result.model = final
    result.val_acc = float(best_acc) if best_acc >= 0 else float("nan")
    result.defense_report = defense.report()
    log.debug("%s: selected epoch %d (val acc %.4f)", desc, result.best_epoch, result.val_acc)
    return result
