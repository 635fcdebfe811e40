"""The trained stages of a run - target, judges (the evaluator first), the attack's prior and its
per-target artifact - each trained once and then loaded from the artifact cache by its key.

Stages and their cache keys (``mi_bench.artifacts``):

* pretrain  - only with ``target.pretrain=public`` (any defense): the network pretrained as a
              classifier of the public classes (``mi_bench.train.pretrain_set``), without the
              defense: public-set content hash, the private classes left out of it,
              ``target.pretrain_min_images``, the pretraining recipe
              (``mi_bench.train.pretrain_config``: model, width, optimiser, ``pretrain_epochs``,
              ``pretrain_lr``, ``pretrained`` file, ...), run seed, stage code version;
* target    - dataset private train/val content hash, ``target`` section, defense config,
              run seed, stage code version, and the pretrain artifact's key when there is one
              (or the user checkpoint's SHA-256). The target starts from the pretrain
              artifact (every tensor but the head's, ``mi_bench.train.init_from_pretrained``);
* evaluator - dataset eval train/val content hash, ``evaluator`` section, ``eval_seed``,
              ``judge.none_fraction``, ``judge.noise_fraction``, ``judge.noise_amplitude`` (the
              evaluator is the ``eval`` judge, with a "none" class);
* judge-<name> - dataset eval train/val content hash, ``judge.<name>`` section (its own seed),
              ``judge.none_fraction``, ``judge.noise_*`` (``mi_bench.judges``);
* prior     - attack name (``prior_name`` when it uses another attack's prior: the ``random``
              baseline shares GMI's) and ``prior_version``, the fields marked ``prior=True``,
              public-set content hash, image shape, run seed, and the target's key when the
              attack trains its prior against the target (KED-MI, PLG-MI);
* aux       - an attack's per-target artifact (:meth:`Attack.target_aux_spec`: LOMMA's
              surrogates): its spec, ``aux_version``, the target's key, the public set, the seed.

Nothing else (threads, device, compile, tf32, inversion settings, paths) enters a key;
``amp=bf16`` enters the target, prior and aux keys (judges always train in float32); config
fields declared ``neutral_default`` enter no key at their default (``mi_bench.params``).
:func:`artifact_plan` computes the keys without training (``mi-bench sweep --dry-run``). Each
artifact is built under its cache lock, so concurrent runs that need it train it once.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from mi_bench.artifacts import ArtifactStore, load_checkpoint, sha256_file
from mi_bench.config import RunConfig, stable_hash
from mi_bench.data import DataSplits
from mi_bench.errors import ArtifactError, ConfigError
from mi_bench.interfaces import Attack, Defense
from mi_bench.judges import Judge, JudgeRecipe, describe, health
from mi_bench.models import build_model
from mi_bench.params import hash_dict, prior_fields, strip_neutral
from mi_bench.registry import ATTACKS, DEFENSES
from mi_bench.runtime import NULL_BARS, Accel, Bars
from mi_bench.train import (
    accuracy, init_from_pretrained, pretrain_config, pretrain_set, train_classifier,
)

log = logging.getLogger(__name__)

TARGET_VERSION = "1"
PRETRAIN_VERSION = "1"
EVALUATOR_VERSION = "3"  # 2: K + 1 outputs, the last a "none" class trained on junk; 3: background noise
JUDGE_VERSION = "2"  # 2: background noise on real training images (judge.noise_*)


def make_defense(cfg: RunConfig, splits: DataSplits) -> Defense:
    """The run's defense plugin, for its dataset's private classes and image shape."""
    cls = DEFENSES.get(cfg.defense.name)
    return cls(cfg.defense, num_classes=splits.num_private_classes, input_shape=splits.image_shape)


def target_factory(cfg: RunConfig, splits: DataSplits,
                   init: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None
                   ) -> Callable[[], torch.nn.Module]:
    """A function building the run's (untrained) target network; with ``init`` = (the pretrain
    artifact's state dict, its description), started from it (every tensor but the head's; the
    ``target.pretrained`` file, if any, went into the pretraining)."""
    c = splits.image_shape[0]
    t = cfg.target

    def make() -> torch.nn.Module:
        model = build_model(t.model, num_classes=splits.num_private_classes, in_channels=c,
                            width=t.width, pretrained="" if init else t.pretrained,
                            pretrained_sha256=t.pretrained_sha256, what="target")
        if init is not None:
            init_from_pretrained(model, *init)
        return model
    return make


def make_attack(cfg: RunConfig, splits: DataSplits, device: torch.device) -> Attack:
    """The run's attack plugin, for its dataset's private classes and image shape."""
    return ATTACKS.get(cfg.attack.name)(cfg.attack, image_shape=splits.image_shape,
                                        num_classes=splits.num_private_classes, device=device)


# -- artifact keys (computed without training: ``mi-bench sweep --dry-run`` uses them) ----------

def _with_amp(spec: dict[str, Any], cfg: RunConfig) -> dict[str, Any]:
    """bf16-trained artifacts get their own keys; float32 keys are unchanged."""
    return {**spec, "amp": cfg.amp} if cfg.amp != "off" else spec


def pretrain_spec(cfg: RunConfig, splits: DataSplits) -> dict[str, Any] | None:
    """The key spec of the target's public pretraining; None without ``target.pretrain``."""
    t = cfg.target
    if t.pretrain != "public":
        return None
    return _with_amp({
        "stage": "pretrain", "version": PRETRAIN_VERSION, "public": splits.fingerprint(("public",)),
        "exclude": list(splits.private_classes), "min_images": t.pretrain_min_images,
        "train": hash_dict(pretrain_config(t)), "seed": cfg.seed,
    }, cfg)


def target_spec(cfg: RunConfig, splits: DataSplits) -> dict[str, Any]:
    """The target's key spec; the defense first refuses a target it cannot train
    (:meth:`Defense.check_target`)."""
    make_defense(cfg, splits).check_target(cfg.target)
    spec = {
        "stage": "target", "version": TARGET_VERSION,
        "data": splits.fingerprint(("private_train", "private_val")),
        "train": hash_dict(cfg.target), "defense": hash_dict(cfg.defense), "seed": cfg.seed,
    }
    pre = pretrain_spec(cfg, splits)
    if pre is not None:
        spec["pretrain"] = stable_hash(pre)
    return _with_amp(spec, cfg)


def judge_specs(cfg: RunConfig, splits: DataSplits) -> dict[str, tuple[str, dict[str, Any], Any, int]]:
    """``{judge: (cache kind, key spec, training config, seed)}`` of the run's judges, ``eval``
    (the evaluator) first; each is trained on the whole domain plus a "none" class."""
    j = cfg.judge
    shared = {"none_fraction": j.none_fraction, "noise_fraction": j.noise_fraction,
              "noise_amplitude": j.noise_amplitude}
    data = splits.fingerprint(("eval_train", "eval_val"))
    out: dict[str, tuple[str, dict[str, Any], Any, int]] = {
        "eval": ("evaluator", {"stage": "evaluator", "version": EVALUATOR_VERSION, "data": data,
                               "train": hash_dict(cfg.evaluator), "seed": cfg.eval_seed, **shared},
                 cfg.evaluator, cfg.eval_seed)}
    for name in cfg.judges:
        if name == "eval":
            continue
        tcfg = getattr(cfg.judge, name)
        out[name] = (f"judge-{name}", {"stage": "judge", "judge": name, "version": JUDGE_VERSION,
                                       "data": data, "train": hash_dict(tcfg), **shared},
                     tcfg, tcfg.seed)
    return out


def prior_spec(cfg: RunConfig, splits: DataSplits, target_key: str) -> dict[str, Any] | None:
    """None when the attack trains no prior."""
    attack_cls = ATTACKS.get(cfg.attack.name)
    req = attack_cls.requirements
    if req.prior == "none":
        return None
    owner = attack_cls.prior_name or cfg.attack.name  # baselines share GMI's prior (same key)
    spec: dict[str, Any] = {
        "stage": "prior", "attack": owner, "version": attack_cls.prior_version,
        "prior": strip_neutral(prior_fields(cfg.attack), type(cfg.attack)),
        "public": splits.fingerprint(("public",)), "image_shape": list(splits.image_shape), "seed": cfg.seed,
    }
    if req.prior == "per_target":
        spec["target"] = target_key
    if cfg.cuda_graph and ATTACKS.get(owner).graphed_prior:
        spec["cuda_graph"] = True
    return _with_amp(spec, cfg)


def aux_spec(cfg: RunConfig, splits: DataSplits, target_key: str) -> dict[str, Any] | None:
    """The key spec of the attack's per-target artifact (:meth:`Attack.target_aux_spec`), or None."""
    attack = make_attack(cfg, splits, torch.device("cpu"))
    own = attack.target_aux_spec()
    if own is None:
        return None
    return _with_amp({"stage": "aux", "attack": cfg.attack.name, "version": type(attack).aux_version,
                      "aux": own, "target": target_key, "public": splits.fingerprint(("public",)),
                      "seed": cfg.seed}, cfg)


def target_key(cfg: RunConfig, splits: DataSplits) -> str:
    """The target's cache key, or ``file:<sha256 prefix>`` for a user checkpoint."""
    if cfg.target_checkpoint:
        if not Path(cfg.target_checkpoint).is_file():
            raise ArtifactError(f"checkpoint {cfg.target_checkpoint} does not exist: check target_checkpoint=...")
        return "file:" + sha256_file(Path(cfg.target_checkpoint))[:16]
    return stable_hash(target_spec(cfg, splits))


def artifact_plan(cfg: RunConfig, splits: DataSplits) -> dict[str, tuple[str, str]]:
    """``{stage: (cache kind, key)}`` of the artifacts a run of ``cfg`` trains or loads.

    A user checkpoint (``target_checkpoint``) is not a cache artifact and is left out."""
    plan: dict[str, tuple[str, str]] = {}
    tkey = target_key(cfg, splits)
    if not cfg.target_checkpoint:
        pre = pretrain_spec(cfg, splits)
        if pre is not None:
            plan["pretrain"] = ("pretrain", stable_hash(pre))
        plan["target"] = ("target", tkey)
    for name, (kind, jspec, _, _) in judge_specs(cfg, splits).items():
        plan["evaluator" if name == "eval" else f"judge-{name}"] = (kind, stable_hash(jspec))
    spec = prior_spec(cfg, splits, tkey)
    if spec is not None:
        plan["prior"] = (f"prior-{spec['attack']}", stable_hash(spec))
    aux = aux_spec(cfg, splits, tkey)
    if aux is not None:
        plan["aux"] = (f"aux-{aux['attack']}", stable_hash(aux))
    return plan


# -- train or load ------------------------------------------------------------------------------

class Stages:
    """Train-or-load of one run's artifacts on one dataset.

    Records, as it goes, each stage's wall time (``times``), which stages were trained
    (``trained``) and each artifact's key, checksum and whether it came from the cache
    (``artifacts``): the record's ``stage_seconds``, ``trained`` and ``artifacts``."""

    def __init__(self, cfg: RunConfig, splits: DataSplits, store: ArtifactStore, *,
                 device: torch.device, accel: Accel, bars: Bars = NULL_BARS) -> None:
        self.cfg, self.splits, self.store = cfg, splits, store
        self.device, self.accel, self.bars = device, accel, bars
        self.times: dict[str, float] = {}
        self.trained: list[str] = []
        self.artifacts: dict[str, dict[str, Any]] = {}
        # the prior's KID and sample grid (mi_bench.prior_quality), set by the pipeline after the
        # prior is built; the record's protocol["prior_quality"]
        self.prior_quality: dict[str, Any] | None = None

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Add the wall time of the ``with`` block to ``times[stage]``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.times[stage] = round(self.times.get(stage, 0.0) + time.perf_counter() - t0, 3)

    def _classifier(self, kind: str, key_spec: dict[str, Any], make, train, val, tcfg, *, seed: int,
                    defense: Defense | None, checks=None) -> tuple[torch.nn.Module, dict]:
        """Train or load one cached classifier. ``checks(model) -> dict``, when given, is
        computed once after training and stored in the artifact's meta (``info["checks"]``)."""
        key = stable_hash(key_spec)
        trained: dict[str, torch.nn.Module] = {}

        def build() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
            # bf16 (amp) for the target and its pretraining; judges always train in float32
            accel = self.accel if kind in ("target", "pretrain") else Accel(
                compile=self.accel.compile, channels_last=self.accel.channels_last)
            res = train_classifier(make, train, val, tcfg, seed=seed, defense=defense,
                                   device=self.device, bars=self.bars, desc=f"train {kind}", accel=accel)
            trained["model"] = res.model
            meta = {"spec": key_spec, "history": res.history, "best_epoch": res.best_epoch,
                    "val_acc": res.val_acc, "defense_report": res.defense_report}
            if checks is not None:
                res.model.eval()
                meta["checks"] = checks(res.model)
            return res.model.state_dict(), meta

        with self.timed(kind):
            state, meta, cached = self.store.load_or_build(kind, key, build)
            if cached:
                model = (defense.build_model(make()) if defense else make()).to(self.device)
                model.load_state_dict(state)
                log.info("%s: cached %s - no training", kind, key)
            else:
                model = trained["model"]
                self.trained.append(kind)
            model.eval()
        info = {"key": key, "sha256": meta["sha256"], "cached": cached,
                "best_epoch": meta.get("best_epoch"), "val_acc": meta.get("val_acc"),
                "defense_report": meta.get("defense_report", {})}
        if checks is not None:
            info["checks"] = meta.get("checks", {})
        self.artifacts[kind] = info
        return model, info

    def pretrain(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The target's public pretraining (``target.pretrain=public``), trained without the
        defense or loaded: its state dict and a description (what the target's ``init_report``
        records). Artifact ``pretrain``, with the number of classes and images it was trained on
        and its accuracy on them (eval mode, after training)."""
        cfg, splits = self.cfg, self.splits
        t = cfg.target
        spec = pretrain_spec(cfg, splits)
        assert spec is not None, "pretrain() needs target.pretrain=public"
        x, y, classes = pretrain_set(splits.public, splits.private_classes, t.pretrain_min_images)
        if len(classes) < 2:
            raise ConfigError(
                f"target.pretrain=public: the public set of {splits.name} has {len(classes)} non-private "
                f"classes with >= {t.pretrain_min_images} images; pretraining needs at least 2 (lower "
                "target.pretrain_min_images, or use a public set with labelled classes)")
        c = splits.image_shape[0]
        make = lambda: build_model(t.model, num_classes=len(classes), in_channels=c, width=t.width,  # noqa: E731
                                   pretrained=t.pretrained, pretrained_sha256=t.pretrained_sha256,
                                   what="target")
        model, info = self._classifier(
            "pretrain", spec, make, (x, y), (x[:0], y[:0]), pretrain_config(t), seed=cfg.seed,
            defense=None, checks=lambda m: {"public_acc": accuracy(m, x, y)})
        info.update(classes=len(classes), images=len(y), val_acc=None)
        source = {"pretrain": "public", "key": info["key"], "classes": len(classes), "images": len(y)}
        return model.state_dict(), source

    def target(self) -> torch.nn.Module:
        """The target: trained under the defense (or loaded), or the user's checkpoint. With
        ``target.pretrain=public`` it starts from the pretrain artifact (:meth:`pretrain`,
        trained or loaded first)."""
        cfg, splits = self.cfg, self.splits
        defense = make_defense(cfg, splits)
        if not cfg.target_checkpoint:
            spec = target_spec(cfg, splits)  # the defense's check_target first
            make = target_factory(cfg, splits, init=self.pretrain() if cfg.target.pretrain else None)
            model, _ = self._classifier("target", spec, make, splits.private_train,
                                        splits.private_val, cfg.target, seed=cfg.seed, defense=defense)
            return model
        make = target_factory(cfg, splits)
        with self.timed("target"):
            state = load_checkpoint(cfg.target_checkpoint)
            model = defense.build_model(make()).to(self.device)
            try:
                model.load_state_dict(state)
            except RuntimeError as exc:
                raise ArtifactError(
                    f"target_checkpoint {cfg.target_checkpoint} does not fit target.model="
                    f"{cfg.target.model} width={cfg.target.width} with defense={cfg.defense.name}: "
                    f"{str(exc).splitlines()[0]}"
                ) from None
            digest = sha256_file(Path(cfg.target_checkpoint))
            self.artifacts["target"] = {"key": "file:" + digest[:16], "sha256": digest,
                                        "cached": True, "path": str(cfg.target_checkpoint)}
        return model.eval()

    def judges(self) -> dict[str, Judge]:
        """The run's judges (``mi_bench.judges``), ``eval`` (the evaluator) first, each trained
        on the whole domain with a "none" class, cached, with its independence record and its
        health checks (computed once, after training) in ``Judge.info``."""
        cfg, splits = self.cfg, self.splits
        k, c = splits.num_domain_classes, splits.image_shape[0]
        jc = cfg.judge
        shared = {"none_fraction": jc.none_fraction, "noise_fraction": jc.noise_fraction,
                  "noise_amplitude": jc.noise_amplitude}
        out: dict[str, Judge] = {}
        for name, (kind, spec, tcfg, seed) in judge_specs(cfg, splits).items():
            recipe = JudgeRecipe(None if name == "eval" else tcfg, num_classes=k,
                                 input_shape=splits.image_shape, **shared)
            make = lambda tcfg=tcfg, name=name: build_model(  # noqa: E731
                tcfg.model, num_classes=k + 1, in_channels=c, width=tcfg.width,
                pretrained=getattr(tcfg, "pretrained", ""),
                pretrained_sha256=getattr(tcfg, "pretrained_sha256", ""), what=f"{name} judge")
            judge = Judge(name, None, k, tcfg)  # type: ignore[arg-type]

            def checks(model, judge=judge):
                judge.model = model
                return health(judge, splits.eval_test)

            model, info = self._classifier(kind, spec, make, splits.eval_train, splits.eval_val,
                                           tcfg, seed=seed, defense=recipe, checks=checks)
            judge.model = model
            judge.info = {**describe(tcfg, seed=seed, **shared), "artifact": kind,
                          "key": info["key"], **info.get("checks", {})}
            out[name] = judge
        return out

    def _tensors(self, stage: str, kind: str, key: str, build_tensors: Callable[[], dict[str, torch.Tensor]],
                 spec: dict[str, Any], **info: Any) -> dict[str, torch.Tensor]:
        """Train (``build_tensors``) or load one cached dict of tensors (a prior, an aux artifact)."""
        with self.timed(stage):
            tensors, meta, cached = self.store.load_or_build(kind, key, lambda: (build_tensors(), {"spec": spec}))
            if cached:
                log.info("%s: cached %s - no training", kind, key)
            else:
                self.trained.append(stage)
        self.artifacts[stage] = {"key": key, "sha256": meta["sha256"], "cached": cached, **info}
        return tensors

    def prior(self, attack: Attack, target: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The attack's prior (trained on the public images, or loaded); {} when it has none."""
        req = attack.requirements
        spec = prior_spec(self.cfg, self.splits, self.artifacts["target"]["key"])
        if spec is None:
            return {}
        return self._tensors(
            "prior", f"prior-{spec['attack']}", stable_hash(spec),
            lambda: attack.train_prior(self.splits.public[0], target if req.prior == "per_target" else None,
                                       seed=self.cfg.seed, progress=self.bars),
            spec, shared_across_targets=req.prior == "shared")

    def aux(self, attack: Attack, target: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The attack's per-target artifact (trained or loaded), keys prefixed ``aux.``; {} when
        the attack trains none."""
        spec = aux_spec(self.cfg, self.splits, self.artifacts["target"]["key"])
        if spec is None:
            return {}
        tensors = self._tensors(
            "aux", f"aux-{spec['attack']}", stable_hash(spec),
            lambda: attack.train_target_aux(self.splits.public[0], target, seed=self.cfg.seed,
                                            progress=self.bars), spec)
        return {f"aux.{k}": v for k, v in tensors.items()}

    def cached_target_accuracy(self, source: dict[str, Any]) -> tuple[float | None, str]:
        """The private-test accuracy of the target that the recorded run ``source`` attacked,
        recomputed from the cached target artifact (nothing is trained), and how it was got; the
        recorded value when the target is not in the cache (``mi-bench rescore``)."""
        info = (source.get("artifacts") or {}).get("target") or {}
        key = str(info.get("key", ""))
        old = (source.get("metrics") or {}).get("target_acc")
        why = f"kept from run {source.get('run_id')}"
        if not key or key.startswith("file:"):
            return old, f"{why}: the target was a user checkpoint ({info.get('path', '?')})"
        if not self.store.exists("target", key):
            return old, f"{why}: target {key} is not in the cache {self.store.root}"
        try:
            state, _ = self.store.load("target", key)
            model = make_defense(self.cfg, self.splits).build_model(target_factory(self.cfg, self.splits)())
            model.load_state_dict(state)
        except (ArtifactError, RuntimeError) as exc:
            return old, f"{why}: cached target {key} could not be loaded ({str(exc).splitlines()[0]})"
        acc = accuracy(model.to(self.device).eval(), *self.splits.private_test)
        if old is not None and abs(acc - old) > 1e-6:
            log.warning("target %s: accuracy %.4f now, %.4f in run %s", key, acc, old, source.get("run_id"))
        return acc, f"recomputed with the cached target {key} (run {source.get('run_id')}: {old})"
