"""TL-DMI: transfer learning as a model-inversion defense (Ho, Hao, Ho, Chen, CVPR 2024, "Model
Inversion Robustness: Can Transfer Learning Help?"; official code hosytuyen/TL-DMI at a92bd4f,
``models/classify.py``, ``train_classifier.py``, ``engine.py``,
``config/celeba/training_classifiers/classify.json``).

Protocol: the target is pretrained on public data, its early layers are frozen, and the rest is
fine-tuned on the private data. The early layers carry most of what an inversion exploits, the
late ones most of the task; frozen early layers hold no private information.

* **Pretraining** is the target's option, not this plugin's: ``target.pretrain=public``
  (``mi_bench.train``: the network trained as a classifier of the public classes with at least
  2 images, then the target started from it, every tensor but the head's) or
  ``target.pretrained=<file> target.pretrained_sha256=<hex>`` (ImageNet VGG16-BN, MS1M IR-152).
  :meth:`TLDMI.check_target` refuses, before any training, a target trained from scratch when
  ``freeze > 0``, with one line saying which weights to put where.
* **Freezing** (:func:`frozen_parameter_names`): ``units`` is an ordered list of module names
  (empty = the model's ``hidden_layers``); ``freeze = k`` freezes every parameter registered up
  to and including the last parameter of the k-th unit (so the stem before the first unit is
  frozen too): ``requires_grad`` off, so the optimiser never touches them (SGD and Adam skip
  parameters without a gradient, weight decay included), and - with ``frozen_bn=eval`` - the
  BatchNorm layers among them in eval mode for every training batch (``prepare_batch``, after
  the trainer's per-epoch ``model.train()``), so their running statistics stay the pretrained
  ones and the frozen part is bit-identical before and after fine-tuning (tested).
  ``freeze = 0`` freezes nothing: without pretraining that is exactly ``none`` (tested); with
  it, the "pretrained, fully fine-tuned" arm that separates the freezing from the pretraining.

Official settings (``classify.json``) and how they map:

* VGG16-BN from ImageNet, ``freeze_layers: 26``: ``VGG16_TL`` freezes ``features`` children
  ``i <= 26`` of torchvision's ``vgg16_bn``, i.e. blocks 1-3 and conv4_1 with its BatchNorm (26
  is its ReLU); here ``units: [block1, block2, block3, block4.1]``, ``freeze: 4``. Its recipe:
  SGD lr 0.08, momentum 0.9, wd 1e-4, batch 64, 200 epochs, shuffled, ``drop_last``, no schedule.
* IR-152 from MS1M, ``freeze_layers: 46``: ``body`` children ``i <= 46``, 47 of 50 blocks; the
  model's ``hidden_layers`` end stage 3 at ``body.46``, so ``units: []``, ``freeze: 3``. lr 0.01,
  100 epochs. FaceNet64 (IR-50 MS1M): blocks 0-5 of 24, ``units: [body.5]``, ``freeze: 1``.

The official code's freezing bugs are not copied (methods.md): ``param.requries_grad = False``
(a typo) leaves the IR networks' ``input_layer`` trainable - here the stem is frozen with the
blocks after it; FaceNet64's MS1M weights are never loaded (``'FaceNet_64'`` in the list of
models that load them) - here ``target.pretrained`` loads them. Nor is ``VGG16_TL``'s
``freeze_layers == 0``, which freezes *all* of ``features``: here 0 freezes nothing. The
official frozen layers stay in train mode (``engine.train_reg`` calls ``model.train()``), so
their BatchNorm running statistics keep adapting to the private data; ``frozen_bn=train`` does
that (the ``paper`` preset), ``frozen_bn=eval`` (the CPU presets) keeps them pretrained. The
official ``VGG16_TL`` also starts its BatchNorm1d feature layer afresh; mi-bench copies it from
the pretrained network with the rest (only the head is new). Model selection is mi-bench's
best-on-validation (the official code keeps the epoch best on the test split).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from mi_bench.api import Defense, PluginConfig, param, register_defense

# the published initialisations, by target model: what to download, and the file's name
WEIGHTS = {
    "vgg16_bn": ("torchvision's ImageNet VGG16-BN weights, vgg16_bn-6c64b313.pth "
                 "(https://download.pytorch.org/models/vgg16_bn-6c64b313.pth; its SHA-256 starts 6c64b313)"),
    "ir152": ("face.evoLVe's MS1M IR-152 backbone, Backbone_IR_152_Epoch_112_Batch_2547328_Time_"
              "2019-07-13-02-59_checkpoint.pth (the TL-DMI README's download)"),
    "facenet64": ("face.evoLVe's MS1M IR-50 backbone, backbone_ir50_ms1m_epoch120.pth (the TL-DMI "
                  "README's download)"),
}


@dataclass
class TLDMIConfig(PluginConfig):
    freeze: int = param(2, ge=0, label=True, sweep=(0, 1, 2, 3),
                        help="leading units frozen after pretraining: every parameter up to and "
                        "including the freeze-th unit's; 0 = nothing (full fine-tuning)")
    units: list[str] = param(default_factory=list,
                             help="the ordered module names `freeze` counts (empty = the model's "
                             "hidden_layers); official VGG16-BN: [block1, block2, block3, block4.1]")
    frozen_bn: str = param("eval", choices=("eval", "train"),
                           help="BatchNorm layers of the frozen part: eval = running statistics kept "
                           "(fully frozen); train = updated on the private data (the official code)")


def freeze_units(model: nn.Module, units: list[str]) -> list[str]:
    """The units ``freeze`` counts: ``units``, or the model's ``hidden_layers`` when empty;
    each must name a module of the model that holds parameters."""
    names = list(units) or list(getattr(model, "hidden_layers", ()))
    if not names:
        raise ValueError(f"tldmi: {type(model).__name__} has no hidden_layers; name its units "
                         "with defense.units=[...]")
    modules = dict(model.named_modules())
    for u in names:
        if u not in modules:
            valid = [n for n, m in modules.items() if n and any(True for _ in m.parameters())]
            raise ValueError(f"tldmi: unit '{u}' is not a module of {type(model).__name__}; valid: "
                             f"{', '.join(valid[:30])}")
        if not any(True for _ in modules[u].parameters()):
            raise ValueError(f"tldmi: unit '{u}' of {type(model).__name__} has no parameters; "
                             "name the layer before it")
    return names


def frozen_parameter_names(model: nn.Module, units: list[str], freeze: int) -> list[str]:
    """The parameters ``freeze`` leading units cover, in registration order: every parameter up
    to and including the last one of unit ``freeze`` (the built-in models register their layers
    in forward order, so this is everything the input passes through before that unit's end)."""
    if freeze == 0:
        return []
    names = freeze_units(model, units)
    if freeze > len(names):
        raise ValueError(f"tldmi: defense.freeze={freeze}, but {type(model).__name__} has "
                         f"{len(names)} units ({', '.join(names)}): use 0..{len(names)}")
    order = [n for n, _ in model.named_parameters()]
    last = names[freeze - 1]
    end = max(i for i, n in enumerate(order) if n.startswith(last + "."))
    return order[: end + 1]


@register_defense("tldmi")
class TLDMI(Defense):
    Config = TLDMIConfig
    summary = "TL-DMI: pretrain on public data, freeze the early layers, fine-tune the rest"
    paper = "Ho, Hao, Ho, Chen, Model Inversion Robustness: Can Transfer Learning Help?, CVPR 2024"

    def setup(self, cfg) -> None:
        self._frozen_bn: list[nn.Module] = []
        self._report: dict[str, Any] = {}

    def check_target(self, target: Any) -> None:
        if self.cfg.freeze == 0 or getattr(target, "pretrain", "") or getattr(target, "pretrained", ""):
            return
        model = getattr(target, "model", "?")
        what = WEIGHTS.get(model, f"weights of a {model} pretrained on other data")
        raise ValueError(
            f"tldmi freezes pretrained layers but target.model={model} would train from scratch: put "
            f"{what} on disk and pass target.pretrained=<file> target.pretrained_sha256=<its SHA-256>, "
            "or pretrain on the public images with target.pretrain=public (the CPU presets' deviation)")

    def configure(self, model, optimizer, **kw):
        frozen = set(frozen_parameter_names(model, self.cfg.units, self.cfg.freeze))
        params = dict(model.named_parameters())
        for name in frozen:
            params[name].requires_grad_(False)
        frozen_ids = {id(params[n]) for n in frozen}
        self._frozen_bn = [] if self.cfg.frozen_bn == "train" else [
            m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and (own := list(m.parameters(recurse=False))) and all(id(p) in frozen_ids for p in own)]
        n_frozen = sum(params[n].numel() for n in frozen)
        units = freeze_units(model, self.cfg.units) if self.cfg.freeze else []
        self._report = {
            "freeze": self.cfg.freeze, "frozen_through": units[self.cfg.freeze - 1] if units else None,
            "frozen_tensors": len(frozen), "frozen_parameters": n_frozen,
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "frozen_bn": self.cfg.frozen_bn, "frozen_bn_layers_in_eval": len(self._frozen_bn),
            "init": getattr(model, "init_report", None) or "from scratch",
        }
        return model, optimizer

    def prepare_batch(self, model, x, y):
        for m in self._frozen_bn:  # after the trainer's model.train() of each epoch
            m.eval()
        return x, y

    def report(self) -> dict:
        return dict(self._report)

