"""LOMMA (Nguyen et al., "Re-thinking Model Inversion Attacks Against Deep Neural Networks",
CVPR 2023): the pieces GMI and KED-MI share when run with ``attack.lomma=true``. Not a plugin: it
registers nothing (``attacks/gmi.py`` and ``attacks/kedmi.py`` import it).

Protocol (methods.md, section LOMMA; official code sutd-visual-computing-group/Re-thinking_MI,
``attack.py``, ``engine.py``, ``utils.py``, ``config/celeba/*``):

* **Identity loss** (:class:`LommaIdentity`, replacing ``CE(T(x), y)``): per image,
  ``mean over {T, S_1..S_3} of -logit_y(x)`` (raw logits, bias included: the official
  ``NLLLoss`` applied to logits) ``+ lambda * mean_d (p(x) - p_reg)_d^2`` with ``p = T.embed``
  and lambda 1.0; the feature term is the target's only and is added after the average over the
  networks, as ``iden_loss`` does. Batch means of this per-image loss are the official
  reductions (``NLLLoss`` mean, ``torch.mean`` over batch and dimensions).
* **p_reg** (:func:`feature_mean`): one global mean of ``T.embed`` (T frozen, eval mode) over
  ``n_public`` = 5,050 shuffled public images - the official ``get_act_reg`` keeps 101 batches
  of 50 of a shuffled loader. (The released code also computes a std and draws a sample from
  N(mean, std), then overwrites it with the mean; only the mean is used, so only it is kept.)
* **Surrogates** (:func:`train_aux`): three classifiers distilled from T on the unlabelled public
  images, ``KL(softmax(T(x)) || softmax(S(x)))`` per image, batch mean (the official
  ``KLDivLoss(reduction='sum')(log_softmax(S), softmax(T)) / batch``, temperature 1; methods.md
  writes it with the arguments in the other order, the code computes this one), SGD momentum
  0.9, weight decay 1e-4, batch 64 of a shuffled public set without the last partial batch, lr
  0.02 (the released checkpoints' folder names; the shipped config says 0.01), halved every 20
  epochs (``StepLR(20, 0.5)``: never within the published 20 epochs), students in train mode,
  T in eval mode. ``epochs`` are trained in full (the official "_20" checkpoint is saved after
  19 of its 20 epochs - not copied).
* **Which surrogates**: ``efficientnet`` (the default, every ``paper`` preset) = ImageNet
  EfficientNet-B0/B1/B2 as the official ``classify.EfficientNet_b*`` (torchvision's
  IMAGENET1K_V1 weights, ``features`` + average pool + a new ``Linear(feat, K)``, no dropout,
  [0, 1] inputs without ImageNet normalisation as the official loaders; 1-channel images are
  repeated to 3). They are used only when torchvision's files are on disk (``lomma_weights``, by
  default the torch hub cache) and their SHA-256 begins with the hash torchvision publishes in
  the file's name (torchvision's own download check); otherwise the run is refused before any
  training, with one line saying where to put them. ``auto`` (the CPU presets; a documented
  deviation) = three small registered families other than the target's, from scratch: the first
  three of ``resnet8, madrynet, scnn, mcnn`` whose family differs from the target's (resnet8 and
  resnet20 are one family, the IR networks another). A comma list of registered model names
  picks them by hand.

The surrogates and p_reg are the attack's per-target artifact (``Attack.train_target_aux``): the
pipeline caches them keyed by :func:`aux_spec`, the target's key, the public set and the seed,
and hands them to ``invert`` with keys prefixed ``aux.``.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from mi_bench.api import MODELS, build_model, frozen, load_prefixed, param, prefixed, to_device

log = logging.getLogger(__name__)

# the official distillation (engine.train_augmodel); not settings of mi-bench
KD_MOMENTUM = 0.9
KD_WEIGHT_DECAY = 1e-4
KD_LR_STEP_EPOCHS, KD_LR_GAMMA = 20, 0.5  # StepLR(step_size=20, gamma=0.5)
P_REG_BATCH = 50  # get_act_reg's loader batch (eval mode: it changes nothing but memory)

# torchvision's IMAGENET1K_V1 files (what the official ``efficientnet_b*(pretrained=True)`` loads);
# the hex in each name is the start of the file's SHA-256 (torchvision's check_hash)
EFFICIENTNETS = {
    "efficientnet_b0": "efficientnet_b0_rwightman-7f5810bc.pth",
    "efficientnet_b1": "efficientnet_b1_rwightman-bac287d4.pth",
    "efficientnet_b2": "efficientnet_b2_rwightman-c35c1473.pth",
}
WEIGHTS_URL = "https://download.pytorch.org/models/"
SMALL_CANDIDATES = ("resnet8", "madrynet", "scnn", "mcnn")  # `auto`, in order of preference
FAMILY = {"resnet8": "resnet", "resnet20": "resnet", "ir18": "ir", "ir152": "ir",
          "facenet": "ir", "facenet64": "ir"}  # registered names sharing an architecture family


# help text of the lomma_* fields, shared by GMI's and KED-MI's configs
HELP = {
    "lomma": "LOMMA (Nguyen et al., CVPR 2023): identity loss -logit_y + a feature regulariser, "
             "averaged over the target and 3 surrogates distilled from it (attacks/lomma.py)",
    "lambda": "LOMMA: weight of mean((T.embed(x) - p_reg)^2) (paper 1.0)",
    "surrogates": "LOMMA: efficientnet = ImageNet EfficientNet-B0/B1/B2 (paper; needs torchvision's "
                  "weights files), auto = three small registered families other than the target's, "
                  "from scratch (CPU presets), or a comma list of registered models",
    "width": "LOMMA: channel multiplier of registered-model surrogates (not EfficientNets)",
    "epochs": "LOMMA: distillation epochs over the public set (paper 20)",
    "lr": "LOMMA: distillation SGD lr (released checkpoints 0.02; the shipped config says 0.01)",
    "batch_size": "LOMMA: distillation batch size (paper 64)",
    "n_public": "LOMMA: shuffled public images averaged into p_reg (official: 101 batches of 50)",
    "weights": "LOMMA: folder of torchvision's EfficientNet files ('' = the torch hub cache, "
               "$TORCH_HOME/hub/checkpoints)",
}


@dataclass
class LommaFields:
    """The LOMMA settings GMI's and KED-MI's configs share (a mixin listed first in their bases,
    so these fields come last): off by default; the ``lomma_*`` settings matter only with
    ``lomma=true`` and stay out of every config hash and artifact key until then."""

    lomma: bool = param(False, neutral_default=True, help=HELP["lomma"])
    lomma_lambda: float = param(1.0, ge=0.0, neutral_default=True, only_with="lomma",
                                help=HELP["lambda"])
    lomma_surrogates: str = param("efficientnet", neutral_default=True, only_with="lomma",
                                  help=HELP["surrogates"])
    lomma_width: float = param(1.0, gt=0.0, le=4.0, neutral_default=True, only_with="lomma",
                               help=HELP["width"])
    lomma_epochs: int = param(20, ge=1, neutral_default=True, only_with="lomma",
                              help=HELP["epochs"])
    lomma_lr: float = param(0.02, gt=0.0, neutral_default=True, only_with="lomma", help=HELP["lr"])
    lomma_batch_size: int = param(64, ge=2, neutral_default=True, only_with="lomma",
                                  help=HELP["batch_size"])
    lomma_n_public: int = param(5050, ge=1, neutral_default=True, only_with="lomma",
                                help=HELP["n_public"])
    lomma_weights: str = param("", neutral_default=True, only_with="lomma", help=HELP["weights"])


@dataclass(frozen=True)
class LommaSettings:
    """The LOMMA settings of an attack config (its ``lomma_*`` fields)."""

    surrogates: str = "efficientnet"
    width: float = 1.0
    epochs: int = 20
    lr: float = 0.02
    batch_size: int = 64
    n_public: int = 5050
    weights: str = ""
    lam: float = 1.0

    @classmethod
    def of(cls, cfg: Any) -> "LommaSettings":
        return cls(surrogates=cfg.lomma_surrogates, width=cfg.lomma_width, epochs=cfg.lomma_epochs,
                   lr=cfg.lomma_lr, batch_size=cfg.lomma_batch_size, n_public=cfg.lomma_n_public,
                   weights=cfg.lomma_weights, lam=cfg.lomma_lambda)

    @property
    def paper(self) -> bool:
        return self.surrogates.strip() == "efficientnet"


def settings_of(cfg: Any) -> LommaSettings | None:
    """The LOMMA settings of an attack config, ``None`` when ``lomma`` is off. The surrogates are
    checked at once (the paper's weights files, registered names), so a run that cannot train
    them is refused before any training."""
    if not getattr(cfg, "lomma", False):
        return None
    settings = LommaSettings.of(cfg)
    check_weights(settings)
    return settings


# -- the identity loss -----------------------------------------------------------------------

def logit_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``-logit_y`` per row (N,): the official ``NLLLoss`` on raw logits, before its mean."""
    return -logits.gather(1, y[:, None]).squeeze(1)


def feature_reg(feat: torch.Tensor, p_reg: torch.Tensor) -> torch.Tensor:
    """``mean_d (feat - p_reg)^2`` per row (N,); its batch mean is the official ``reg_loss``."""
    return (feat - p_reg).pow(2).mean(1)


class LommaIdentity:
    """The LOMMA identity loss against ``target`` and ``surrogates`` (all frozen, eval mode).

    ``loss(x, y)`` returns the per-image loss (N,) - ``mean over the networks of -logit_y +
    lam * feature_reg(T.embed(x))`` - and the target's logits (``T.head(T.embed(x))``, the
    Classifier contract's ``T(x)``)."""

    def __init__(self, target: nn.Module, surrogates: list[nn.Module], p_reg: torch.Tensor, lam: float):
        self.target, self.surrogates, self.p_reg, self.lam = target, surrogates, p_reg, float(lam)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.target.embed(x)
        logits = self.target.head(feat)
        per_net = [logit_loss(logits, y)] + [logit_loss(s(x), y) for s in self.surrogates]
        iden = torch.stack(per_net).mean(0) + self.lam * feature_reg(feat, self.p_reg)
        return iden, logits


# -- p_reg -----------------------------------------------------------------------------------

@torch.no_grad()
def feature_mean(target: nn.Module, public: torch.Tensor, n: int, seed: int,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(p_reg, idx)``: the mean of ``target.embed`` over ``public[idx]``, ``idx`` the first
    ``min(n, N)`` of a seeded permutation of the public set (CPU tensors)."""
    idx = torch.randperm(len(public), generator=torch.Generator().manual_seed(seed))[:min(n, len(public))]
    with frozen(target):
        feats = torch.cat([target.embed(public[b].to(device)).float().cpu()
                           for b in idx.split(P_REG_BATCH)])
    return feats.mean(0), idx


# -- surrogates ------------------------------------------------------------------------------

def target_family(target: nn.Module) -> str | None:
    """The registered family of ``target``'s class (``FAMILY``), or None when it is not a
    registered model class."""
    for name in MODELS.names():
        cls = MODELS.get(name)
        if isinstance(cls, type) and type(target) is cls:
            return FAMILY.get(name, name)
    return None


def surrogate_names(settings: LommaSettings, target: nn.Module) -> list[str]:
    """The surrogates' model names for this target (``efficientnet``, ``auto`` or a list)."""
    spec = settings.surrogates.strip()
    if spec == "efficientnet":
        return list(EFFICIENTNETS)
    if spec == "auto":
        fam = target_family(target)
        if fam is None:
            log.warning("lomma: the target (%s) is not a registered model class; `auto` surrogates "
                        "cannot avoid its family", type(target).__name__)
        return [n for n in SMALL_CANDIDATES if FAMILY.get(n, n) != fam][:3]
    return check_surrogates(spec)


def check_surrogates(spec: str) -> list[str]:
    """A comma list of registered model names, or ValueError naming the bad one."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [n for n in names if n not in MODELS.names()]
    if not names or bad:
        raise ValueError(
            f"attack.lomma_surrogates={spec!r}: use efficientnet (the paper's ImageNet "
            f"EfficientNet-B0/B1/B2), auto (three small families other than the target's) or a "
            f"comma list of registered models ({', '.join(MODELS.names())})")
    return names


def weights_dir(settings: LommaSettings) -> Path:
    if settings.weights:
        return Path(settings.weights).expanduser()
    return Path(torch.hub.get_dir()) / "checkpoints"  # where torchvision keeps its downloads


def check_weights(settings: LommaSettings) -> dict[str, str]:
    """``{arch: SHA-256}`` of the paper surrogates' ImageNet files, or ValueError (one line)
    saying where to put them; ``{}`` for other surrogates (names checked)."""
    if not settings.paper:
        if settings.surrogates.strip() != "auto":
            check_surrogates(settings.surrogates)
        return {}
    folder = weights_dir(settings)
    missing = [f for f in EFFICIENTNETS.values() if not (folder / f).is_file()]
    if missing:
        raise ValueError(
            f"lomma: the paper's surrogates are ImageNet EfficientNet-B0/B1/B2 (torchvision "
            f"IMAGENET1K_V1); {', '.join(missing)} not in {folder}: download them from {WEIGHTS_URL} "
            f"into that folder (or set attack.lomma_weights=FOLDER), or use "
            f"attack.lomma_surrogates=auto (small surrogates from scratch, a deviation)")
    out = {}
    for arch, fname in EFFICIENTNETS.items():
        digest = hashlib.sha256((folder / fname).read_bytes()).hexdigest()
        prefix = fname.rsplit("-", 1)[1].split(".")[0]
        if not digest.startswith(prefix):
            raise ValueError(f"lomma: {folder / fname} has SHA-256 {digest}, which does not begin "
                             f"with torchvision's {prefix}: a wrong or corrupt file; download it "
                             f"again from {WEIGHTS_URL}{fname}")
        out[arch] = digest
    return out


class EfficientNetSurrogate(nn.Module):
    """The official ``classify.EfficientNet_b*``: torchvision's ``features`` + average pool,
    flattened, and a new ``Linear(feature_dim, K)`` (no dropout); 1-channel inputs repeated."""

    def __init__(self, arch: str, num_classes: int, state: dict[str, torch.Tensor] | None = None):
        super().__init__()
        import torchvision

        net = getattr(torchvision.models, arch)(weights=None)
        if state is not None:
            net.load_state_dict(state)  # strict: a file of another architecture is refused
        self.features = nn.Sequential(net.features, net.avgpool, nn.Flatten())
        self.feature_dim = net.classifier[1].in_features
        self.head = nn.Linear(self.feature_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def build_surrogate(name: str, settings: LommaSettings, *, num_classes: int, in_channels: int,
                    imagenet: bool = False) -> nn.Module:
    """A surrogate network; ``imagenet``: initialised from its ImageNet file (paper surrogates,
    for training; invert loads the distilled weights instead)."""
    if name in EFFICIENTNETS:
        state = None
        if imagenet:
            state = torch.load(weights_dir(settings) / EFFICIENTNETS[name], map_location="cpu",
                               weights_only=True)
        return EfficientNetSurrogate(name, num_classes, state)
    return build_model(name, num_classes=num_classes, in_channels=in_channels, width=settings.width)


def kd_loss(student_logits: torch.Tensor, teacher_log_probs: torch.Tensor) -> torch.Tensor:
    """``KL(p_T || p_S)`` per image, batch mean (the official KLDivLoss sum / batch, T = 1)."""
    return F.kl_div(F.log_softmax(student_logits, 1), teacher_log_probs, reduction="batchmean",
                    log_target=True)


@torch.no_grad()
def _log_probs(model: nn.Module, x: torch.Tensor, device: torch.device, batch: int = 256) -> torch.Tensor:
    with frozen(model):
        return torch.cat([F.log_softmax(model(x[i:i + batch].to(device)).float(), 1)
                          for i in range(0, len(x), batch)])


@torch.no_grad()
def distillation_stats(student: nn.Module, x: torch.Tensor, teacher_log_probs: torch.Tensor,
                       device: torch.device) -> tuple[float, float]:
    """``(KL(p_T || p_S), top-1 agreement)`` of ``student`` (eval mode) over ``x``."""
    s = _log_probs(student, x, device)
    t = teacher_log_probs.to(s.device)
    kl = F.kl_div(s, t, reduction="batchmean", log_target=True).item()
    return kl, (s.argmax(1) == t.argmax(1)).float().mean().item()


def distil(student: nn.Module, public: torch.Tensor, teacher_log_probs: torch.Tensor,
           settings: LommaSettings, *, generator: torch.Generator, device: torch.device,
           progress: Any, what: str) -> None:
    """Train ``student`` in place on ``kd_loss`` against the teacher's log-probabilities."""
    opt = torch.optim.SGD(student.parameters(), lr=settings.lr, momentum=KD_MOMENTUM,
                          weight_decay=KD_WEIGHT_DECAY)
    n = len(public)
    bs = min(settings.batch_size, n)
    student.train()
    with progress.task(f"LOMMA surrogate {what}", total=settings.epochs * (n // bs)) as bar:
        for epoch in range(settings.epochs):
            for g in opt.param_groups:
                g["lr"] = settings.lr * KD_LR_GAMMA ** (epoch // KD_LR_STEP_EPOCHS)
            perm = torch.randperm(n, generator=generator)
            for i in range(0, n - bs + 1, bs):  # drop_last, as the official loader
                b = perm[i:i + bs].to(public.device)
                loss = kd_loss(student(public[b]), teacher_log_probs[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                bar.advance(1, kl=loss.detach())
    student.eval()


def aux_spec(settings: LommaSettings) -> dict[str, Any]:
    """What the surrogates and p_reg depend on (their cache key, with the target's); refuses
    missing or wrong paper weights before any training."""
    spec: dict[str, Any] = {
        "surrogates": settings.surrogates.strip(), "epochs": settings.epochs, "lr": settings.lr,
        "batch_size": settings.batch_size, "n_public": settings.n_public, "momentum": KD_MOMENTUM,
        "weight_decay": KD_WEIGHT_DECAY, "temperature": 1.0,
    }
    if settings.paper:
        spec["imagenet_sha256"] = check_weights(settings)
    else:
        check_weights(settings)
        spec["width"] = settings.width
    return spec


def train_aux(settings: LommaSettings, public: torch.Tensor, target: nn.Module, *, num_classes: int,
              seed: int, device: torch.device, progress: Any) -> dict[str, torch.Tensor]:
    """The per-target artifact: ``p_reg`` and ``p_reg_index`` (the public images it averages),
    each surrogate's state dict (``surrogate<i>.*``), and ``kd_stats`` (surrogates x [KL before,
    KL after, top-1 agreement after] on the public set)."""
    names = surrogate_names(settings, target)
    if settings.paper:
        check_weights(settings)
    p_reg, idx = feature_mean(target, public, settings.n_public, seed, device)
    pub = to_device(public, device)  # once, when it fits
    teacher = _log_probs(target, pub, device)
    if teacher.shape[1] != num_classes:
        raise ValueError(f"lomma: the target has {teacher.shape[1]} outputs, expected {num_classes}")
    out: dict[str, torch.Tensor] = {"p_reg": p_reg, "p_reg_index": idx}
    stats = []
    for i, name in enumerate(names):
        torch.manual_seed(seed + 1000 * (i + 1))
        student = build_surrogate(name, settings, num_classes=num_classes, in_channels=public.shape[1],
                                  imagenet=True).to(device)
        before = distillation_stats(student, pub, teacher, device)[0]
        distil(student, pub, teacher, settings, generator=torch.Generator().manual_seed(seed + i + 1),
               device=device, progress=progress, what=f"{i + 1}/{len(names)} ({name})")
        kl, agree = distillation_stats(student, pub, teacher, device)
        log.info("lomma surrogate %s: KL to the target %.4g -> %.4g, top-1 agreement %.3f on %d "
                 "public images", name, before, kl, agree, len(public))
        stats.append([before, kl, agree])
        out.update(prefixed(f"surrogate{i}", student))
    out["kd_stats"] = torch.tensor(stats, dtype=torch.float32)
    return out


class LommaOption:
    """The ``attack.lomma`` option on an attack (GMI, KED-MI): put it before ``Attack`` in the
    bases. It reads the settings once (``self.lomma``, None when off; paper weights are checked
    here, before any training) and declares and trains the per-target artifact (``p_reg`` and
    the surrogates) through the base class's ``target_aux_spec``/``train_target_aux`` hooks."""

    def __init__(self, cfg: Any, **kwargs: Any):
        super().__init__(cfg, **kwargs)  # type: ignore[call-arg]  # the Attack base
        self.lomma = settings_of(cfg)

    def target_aux_spec(self) -> dict[str, Any] | None:
        return None if self.lomma is None else aux_spec(self.lomma)

    def train_target_aux(self, public: torch.Tensor, target: nn.Module, *, seed: int,
                         progress: Any) -> dict[str, torch.Tensor]:
        self.check_public(public, target)  # type: ignore[attr-defined]
        return train_aux(self.lomma, public, target, num_classes=self.num_classes,  # type: ignore[attr-defined]
                         seed=seed, device=self.device, progress=progress)  # type: ignore[attr-defined]


def identity_from_prior(
    settings: LommaSettings, target: nn.Module, prior: dict[str, torch.Tensor], *, num_classes: int,
    in_channels: int, device: torch.device,
) -> tuple[LommaIdentity, dict[str, Any]]:
    """The identity loss of ``invert`` from the ``aux.`` tensors, and what the record says of it."""
    if "aux.p_reg" not in prior:
        raise ValueError("lomma: the prior has no aux.p_reg - the LOMMA surrogates were not trained "
                         "(train_target_aux) for this target")
    names = surrogate_names(settings, target)
    surrogates = []
    for i, name in enumerate(names):
        net = build_surrogate(name, settings, num_classes=num_classes, in_channels=in_channels)
        net = load_prefixed(f"aux.surrogate{i}", net, prior).to(device).eval()
        for p in net.parameters():
            p.requires_grad_(False)
        surrogates.append(net)
    stats = prior["aux.kd_stats"].tolist()
    protocol = {
        "identity_loss": (f"LOMMA: mean over target + {len(names)} surrogates of -logit_y, "
                          f"+ {settings.lam} * mean((T.embed(x) - p_reg)^2) (target only)"),
        "lomma_surrogates": names,
        "lomma_surrogate_kl": {n: {"before": s[0], "after": s[1], "agreement": s[2]}
                               for n, s in zip(names, stats)},
        "lomma_p_reg_images": int(prior["aux.p_reg_index"].numel()),
        "lomma_distillation": {"epochs": settings.epochs, "lr": settings.lr,
                               "batch_size": settings.batch_size, "width": settings.width},
    }
    return LommaIdentity(target, surrogates, prior["aux.p_reg"].to(device), settings.lam), protocol
