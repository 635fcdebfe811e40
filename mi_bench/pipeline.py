"""``mi-bench run``: train (or load) the target, the evaluator and the attack prior, invert,
score, store and show.

Stages and their cache keys (``mi_bench.artifacts``):
* target    - dataset private train/val content hash, ``target`` section, defense config,
              run seed, stage code version (or the user checkpoint's SHA-256);
* evaluator - dataset eval train/val content hash, ``evaluator`` section, ``eval_seed``,
              ``judge.none_fraction``, ``judge.noise_fraction``, ``judge.noise_amplitude`` (the
              evaluator is the ``eval`` judge, with a "none" class);
* judge-<name> - dataset eval train/val content hash, ``judge.<name>`` section (its own seed),
              ``judge.none_fraction``, ``judge.noise_*`` (``mi_bench.judges``);
* prior     - attack name (``prior_name`` when it uses another attack's prior: the ``random``
              baseline shares GMI's) and ``prior_version``, the fields marked ``prior=True``,
              public-set content hash, image shape, run seed, and the target's key when the
              attack trains its prior against the target (KED-MI, PLG-MI).
Nothing else (threads, device, compile, tf32, inversion settings, paths) enters a key;
``amp=bf16`` enters the target and prior keys (the evaluator always trains in float32). ``artifact_plan`` computes
the keys without training (``mi-bench sweep --dry-run``). Each artifact is built under its cache
lock, so concurrent runs that need it train it once.

Storing: before any training the results database, the results folder and the cache are checked
(``results.preflight``); at the end the record is written as ``record.json`` in the run folder
first, then indexed in the database, so a finished run never loses its record.

Scoring (``Runner.score``, one code path for ``run`` and ``rescore``): the reconstructions are
rounded to 8 bits first - the images saved in the run folder - so ``mi-bench rescore``
(``Runner.rescore``, ``mi_bench.rescore``) of an unchanged run reproduces its numbers exactly.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import platform
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

import mi_bench
from mi_bench.artifacts import (
    ArtifactError, ArtifactStore, load_checkpoint, resolve_cache_dir, sha256_file,
)
from mi_bench.config import RunConfig, config_hash, stable_hash, to_dict
from mi_bench.data import DataSplits, load_splits, resolve_data_root
from mi_bench.diversity import DIVERSITY_PROTOCOL, diversity
from mi_bench.interfaces import Attack, Defense, Inversion
from mi_bench.judges import JUDGE_PROTOCOL, NONE, Judge, JudgeRecipe, describe, health, score_judges
from mi_bench.labelling import copy_labels
from mi_bench.metrics import _embed, metrics_protocol, score_inversion
from mi_bench.models import build_model
from mi_bench.params import hash_dict, label_fields, prior_fields, strip_neutral
from mi_bench.registry import ATTACKS, DEFENSES
from mi_bench.results import ResultStore, ResultsError, json_safe, preflight
from mi_bench.runs import (
    GRID, RECONSTRUCTIONS, copy_reconstructions, load_reconstructions, quantize, run_dir,
    save_reconstructions, write_record,
)
from mi_bench.runtime import NULL_BARS, Accel, Bars, configure_device, resolve_device, set_threads
from mi_bench.train import accuracy, train_classifier
from mi_bench.viz import save_grid
from mi_bench.weights import init_statement

log = logging.getLogger(__name__)

TARGET_VERSION = "1"
EVALUATOR_VERSION = "3"  # 2: K + 1 outputs, the last a "none" class trained on junk; 3: background noise
JUDGE_VERSION = "2"  # 2: background noise on real training images (judge.noise_*)
RECONSTRUCTIONS_NOTE = ("scored as saved in reconstructions.safetensors: 8-bit (uint8 / 255); records "
                        "without this note scored the attack's float images")
# metrics of the old record kept in a re-scored record's ``rescore.from_metrics``
RESCORE_COMPARED = ("target_acc", "eval_acc", "attack_acc", "attack_acc_resnet", "attack_acc_robust",
                    "consensus_acc", "attack_acc_pixel_nn")


def new_run_id() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def defense_label(defense_cfg: Any, recipe: str = "") -> str:
    """``bido[lambda_x=0.05,lambda_y=0.5]``: the name and its label fields
    (:func:`mi_bench.params.label_fields`: the strength fields, ``label=True``, and any choice
    field that differs from its default, e.g. ``measure=coco``); a target trained with another
    defense option's recipe adds it (``none[recipe=bido]``)."""
    parts = [f"{k}={v}" for k, v in label_fields(defense_cfg).items()]
    if recipe:
        parts.append(f"recipe={recipe}")
    return f"{defense_cfg.name}[{','.join(parts)}]" if parts else defense_cfg.name


def _make_defense(cfg: RunConfig, splits: DataSplits) -> Defense:
    cls = DEFENSES.get(cfg.defense.name)
    return cls(cfg.defense, num_classes=splits.num_private_classes, input_shape=splits.image_shape)


def _target_factory(cfg: RunConfig, splits: DataSplits):
    c = splits.image_shape[0]
    t = cfg.target
    return lambda: build_model(t.model, num_classes=splits.num_private_classes, in_channels=c,
                               width=t.width, pretrained=t.pretrained,
                               pretrained_sha256=t.pretrained_sha256, what="target")


# -- artifact keys (computed without training: ``mi-bench sweep --dry-run`` uses them) ----------

def _with_amp(spec: dict[str, Any], cfg: RunConfig) -> dict[str, Any]:
    """bf16-trained artifacts get their own keys; float32 keys are unchanged."""
    return {**spec, "amp": cfg.amp} if cfg.amp != "off" else spec


def target_spec(cfg: RunConfig, splits: DataSplits) -> dict[str, Any]:
    return _with_amp({
        "stage": "target", "version": TARGET_VERSION,
        "data": splits.fingerprint(("private_train", "private_val")),
        "train": hash_dict(cfg.target), "defense": hash_dict(cfg.defense), "seed": cfg.seed,
    }, cfg)


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
        "prior": strip_neutral(prior_fields(cfg.attack), type(cfg.attack)), "public": splits.fingerprint(("public",)),
        "image_shape": list(splits.image_shape), "seed": cfg.seed,
    }
    if req.prior == "per_target":
        spec["target"] = target_key
    if cfg.cuda_graph and ATTACKS.get(owner).graphed_prior:
        spec["cuda_graph"] = True
    return _with_amp(spec, cfg)


def aux_spec(cfg: RunConfig, splits: DataSplits, target_key: str) -> dict[str, Any] | None:
    """The key spec of the attack's per-target artifact (:meth:`Attack.target_aux_spec`), or None."""
    attack_cls = ATTACKS.get(cfg.attack.name)
    own = attack_cls(cfg.attack, image_shape=splits.image_shape, num_classes=splits.num_private_classes,
                     device=torch.device("cpu")).target_aux_spec()
    if own is None:
        return None
    return _with_amp({"stage": "aux", "attack": cfg.attack.name, "version": attack_cls.aux_version,
                      "aux": own, "target": target_key, "public": splits.fingerprint(("public",)),
                      "seed": cfg.seed}, cfg)


def artifact_plan(cfg: RunConfig, splits: DataSplits) -> dict[str, tuple[str, str]]:
    """``{stage: (cache kind, key)}`` of the artifacts a run of ``cfg`` trains or loads.

    A user checkpoint (``target_checkpoint``) is not a cache artifact and is left out."""
    plan: dict[str, tuple[str, str]] = {}
    if cfg.target_checkpoint:
        if not Path(cfg.target_checkpoint).is_file():
            raise ArtifactError(f"checkpoint {cfg.target_checkpoint} does not exist: check target_checkpoint=...")
        target_key = "file:" + sha256_file(Path(cfg.target_checkpoint))[:16]
    else:
        target_key = stable_hash(target_spec(cfg, splits))
        plan["target"] = ("target", target_key)
    for name, (kind, jspec, _, _) in judge_specs(cfg, splits).items():
        plan["evaluator" if name == "eval" else f"judge-{name}"] = (kind, stable_hash(jspec))
    spec = prior_spec(cfg, splits, target_key)
    if spec is not None:
        plan["prior"] = (f"prior-{spec['attack']}", stable_hash(spec))
    aux = aux_spec(cfg, splits, target_key)
    if aux is not None:
        plan["aux"] = (f"aux-{aux['attack']}", stable_hash(aux))
    return plan


class Runner:
    def __init__(self, cfg: RunConfig, bars: Bars = NULL_BARS, *, index: bool = True) -> None:
        """``index=False``: write the run's ``record.json`` but leave the SQLite index alone
        (Slurm workers on other hosts; the submitting host indexes their records)."""
        self.cfg = cfg
        self.bars = bars
        self.index = index
        set_threads(cfg.threads)
        self.device = resolve_device(cfg.device)
        self.device_settings = configure_device(self.device, cfg.tf32)
        self.accel = Accel(amp=cfg.amp, compile=cfg.compile, graph=cfg.cuda_graph)
        self.store = ArtifactStore(resolve_cache_dir(cfg.cache_dir))
        self.times: dict[str, float] = {}
        self.trained: list[str] = []
        self.artifacts: dict[str, dict[str, Any]] = {}

    # -- stages ------------------------------------------------------------------------------
    def _timed(self, stage: str, t0: float) -> None:
        self.times[stage] = round(self.times.get(stage, 0.0) + time.perf_counter() - t0, 3)

    def _classifier_stage(self, kind: str, key_spec: dict[str, Any], make, train, val, tcfg,
                          *, seed: int, defense: Defense | None,
                          checks=None) -> tuple[torch.nn.Module, dict]:
        """Train or load one cached classifier. ``checks(model) -> dict``, when given, is
        computed once after training and stored in the artifact's meta (``info["checks"]``)."""
        key = stable_hash(key_spec)
        t0 = time.perf_counter()
        trained: dict[str, torch.nn.Module] = {}

        def build() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
            accel = self.accel if kind == "target" else Accel(compile=self.accel.compile)  # fp32 judge
            res = train_classifier(make, train, val, tcfg, seed=seed, defense=defense,
                                   device=self.device, bars=self.bars, desc=f"train {kind}",
                                   accel=accel)
            trained["model"] = res.model
            meta = {"spec": key_spec, "history": res.history, "best_epoch": res.best_epoch,
                    "val_acc": res.val_acc, "defense_report": res.defense_report}
            if checks is not None:
                res.model.eval()
                meta["checks"] = checks(res.model)
            return res.model.state_dict(), meta

        state, meta, cached = self.store.load_or_build(kind, key, build)
        if cached:
            model = (defense.build_model(make()) if defense else make()).to(self.device)
            model.load_state_dict(state)
            log.info("%s: cached %s - no training", kind, key)
        else:
            model = trained["model"]
            self.trained.append(kind)
        model.eval()
        self._timed(kind, t0)
        info = {"key": key, "sha256": meta["sha256"], "cached": cached,
                "best_epoch": meta.get("best_epoch"), "val_acc": meta.get("val_acc"),
                "defense_report": meta.get("defense_report", {})}
        if checks is not None:
            info["checks"] = meta.get("checks", {})
        self.artifacts[kind] = info
        return model, info

    def target(self, splits: DataSplits) -> torch.nn.Module:
        cfg = self.cfg
        defense = _make_defense(cfg, splits)
        make = _target_factory(cfg, splits)
        if cfg.target_checkpoint:
            t0 = time.perf_counter()
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
            self._timed("target", t0)
            return model.eval()
        model, _ = self._classifier_stage("target", target_spec(cfg, splits), make, splits.private_train,
                                          splits.private_val, cfg.target, seed=cfg.seed,
                                          defense=defense)
        return model

    def judges(self, splits: DataSplits) -> dict[str, Judge]:
        """The run's judges (``mi_bench.judges``), ``eval`` (the evaluator) first, each trained
        on the whole domain with a "none" class, cached, with its independence record and its
        health checks (computed once, after training) in ``Judge.info``."""
        cfg = self.cfg
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

            model, info = self._classifier_stage(kind, spec, make, splits.eval_train, splits.eval_val,
                                                 tcfg, seed=seed, defense=recipe, checks=checks)
            judge.model = model
            judge.info = {**describe(tcfg, seed=seed, **shared), "artifact": kind,
                          "key": info["key"], **info.get("checks", {})}
            out[name] = judge
        return out

    def prior(self, attack: Attack, splits: DataSplits, target: torch.nn.Module) -> dict[str, torch.Tensor]:
        req = attack.requirements
        spec = prior_spec(self.cfg, splits, self.artifacts["target"]["key"])
        if spec is None:
            return {}
        owner = spec["attack"]
        key = stable_hash(spec)
        kind = f"prior-{owner}"
        t0 = time.perf_counter()

        def build() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
            tensors = attack.train_prior(
                splits.public[0], target if req.prior == "per_target" else None,
                seed=self.cfg.seed, progress=self.bars,
            )
            return tensors, {"spec": spec}

        tensors, meta, cached = self.store.load_or_build(kind, key, build)
        if cached:
            log.info("%s prior: cached %s - no training", owner, key)
        else:
            self.trained.append("prior")
        self._timed("prior", t0)
        self.artifacts["prior"] = {"key": key, "sha256": meta["sha256"], "cached": cached,
                                   "shared_across_targets": req.prior == "shared"}
        return tensors

    def aux(self, attack: Attack, splits: DataSplits, target: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The attack's per-target artifact (trained or loaded), keys prefixed ``aux.``; {} when
        the attack trains none."""
        spec = aux_spec(self.cfg, splits, self.artifacts["target"]["key"])
        if spec is None:
            return {}
        key, kind = stable_hash(spec), f"aux-{spec['attack']}"
        t0 = time.perf_counter()

        def build() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
            tensors = attack.train_target_aux(splits.public[0], target, seed=self.cfg.seed, progress=self.bars)
            return tensors, {"spec": spec}

        tensors, meta, cached = self.store.load_or_build(kind, key, build)
        if cached:
            log.info("%s: cached %s - no training", kind, key)
        else:
            self.trained.append("aux")
        self._timed("aux", t0)
        self.artifacts["aux"] = {"key": key, "sha256": meta["sha256"], "cached": cached}
        return {f"aux.{k}": v for k, v in tensors.items()}

    # -- whole run ----------------------------------------------------------------------------
    def _splits(self) -> DataSplits:
        t0 = time.perf_counter()
        splits = load_splits(self.cfg.dataset, resolve_data_root(self.cfg.data_root), cache_dir=self.store.root)
        self._timed("data", t0)
        return splits

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        t_start = time.perf_counter()
        run_id = new_run_id()
        splits = self._splits()
        classes = list(cfg.classes) or list(range(splits.num_private_classes))
        bad = [c for c in classes if not 0 <= c < splits.num_private_classes]
        if bad:
            raise ValueError(
                f"classes={bad} are not private classes: use indices 0..{splits.num_private_classes - 1}"
            )
        preflight(cfg, index=self.index)  # before any training: where the results go is usable
        target = self.target(splits)
        judges = self.judges(splits)
        t0 = time.perf_counter()
        target_acc = accuracy(target, *splits.private_test)
        self._timed("utility", t0)

        attack_cls = ATTACKS.get(cfg.attack.name)
        attack = attack_cls(cfg.attack, image_shape=splits.image_shape,
                            num_classes=splits.num_private_classes, device=self.device)
        attack.accel = self.accel
        for p in target.parameters():
            p.requires_grad_(False)
        prior = self.prior(attack, splits, target)
        prior = {**prior, **self.aux(attack, splits, target)}
        t0 = time.perf_counter()
        inversion = attack.invert(target, prior, classes, seed=cfg.seed, progress=self.bars)
        self._timed("inversion", t0)
        # scored as saved (8-bit), so `mi-bench rescore` of this run reproduces its numbers exactly
        inversion = dataclasses.replace(inversion, images=quantize(inversion.images))
        metrics = self.score(inversion, splits, judges, target_acc)
        return self._store(run_id, t_start, splits, classes, inversion, judges, metrics,
                           requirements=dataclasses.asdict(attack.requirements))

    def score(self, inversion: Inversion, splits: DataSplits, judges: dict[str, Judge],
              target_acc: float | None) -> dict[str, Any]:
        """Every metric of one inversion, timed as the ``scoring`` stage: ``target_acc`` and
        ``eval_acc`` first, then :func:`mi_bench.metrics.score_inversion` (the ``eval`` judge
        is the evaluator), :func:`mi_bench.judges.score_judges` and per-class diversity. The one
        scoring code of ``run`` and ``rescore``."""
        cfg = self.cfg
        t0 = time.perf_counter()
        metrics = score_inversion(inversion, judges["eval"].model, splits, device=self.device,
                                  options=cfg.eval, store=self.store)
        metrics.update(score_judges(judges, inversion.images, inversion.classes, splits.private_classes))
        self._diversity(metrics, inversion, splits, judges[cfg.judge.diversity_judge])
        self._timed("scoring", t0)
        return {"target_acc": target_acc, "eval_acc": judges["eval"].info["test_acc"], **metrics}

    def _store(self, run_id: str, t_start: float, splits: DataSplits, classes: list[int],
               inversion: Inversion, judges: dict[str, Judge], metrics: dict[str, Any], *,
               requirements: dict[str, Any], source_folder: Path | None = None,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The run folder (reconstructions - saved, or copied from ``source_folder`` - and grid)
        and the record: ``record.json`` first, then the database index. ``extra`` adds or
        replaces record fields (``rescore``: the kept artifacts and stage times)."""
        cfg = self.cfg
        out_dir = run_dir(cfg.results_dir, run_id)
        if source_folder is None:
            save_reconstructions(out_dir, inversion.images, inversion.classes)
        else:
            copy_reconstructions(source_folder, out_dir)
        grid = self._grid(out_dir / GRID, splits, inversion, metrics)
        config = to_dict(cfg)
        record = {
            "run_id": run_id,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "config": config,
            "config_hash": config_hash(config),
            "group_hash": config_hash(config, drop=("seed",)),
            "defense_label": defense_label(cfg.defense, cfg.recipe),
            "seed": cfg.seed,
            "protocol": {
                "data": splits.info,
                "attacked_classes": classes,
                "inversion": inversion.protocol,
                "metrics": {**metrics_protocol(cfg.eval), **JUDGE_PROTOCOL, **DIVERSITY_PROTOCOL},
                "model_selection": {"target": cfg.target.selection, "evaluator": cfg.evaluator.selection,
                                    "note": "best_val = highest accuracy on a validation split "
                                            "carved from training data; test split only reported"},
                "evaluator": f"{cfg.evaluator.model} over all {splits.num_domain_classes} classes "
                             f"plus 'none', seed {cfg.eval_seed}",
                "judges": {name: j.info for name, j in judges.items()},
                "initialisation": {"target": init_statement(cfg.target),
                                   "evaluator": init_statement(cfg.evaluator)},
                "attack_requirements": requirements,
                "reconstructions": RECONSTRUCTIONS_NOTE,
            },
            "artifacts": self.artifacts,
            "trained": self.trained,
            "metrics": metrics,
            "defense_report": self.artifacts.get("target", {}).get("defense_report", {}),
            "stage_seconds": self.times,
            "wall_seconds": 0.0,
            "run_dir": str(out_dir),
            "grid": str(grid) if grid else None,
            "versions": versions(),
            "machine": machine(cfg, self.device, self.device_settings),
            **(extra or {}),
        }
        record["wall_seconds"] = round(time.perf_counter() - t_start, 3)
        record = json_safe(record)
        path = write_record(out_dir, record)  # first: the source of truth, never lost
        if self.index:
            try:
                ResultStore(cfg.results_db).append(record)
            except ResultsError as exc:
                raise ResultsError(f"{exc} - the run's record is safe in {path}; index it later with "
                                   f"'mi-bench db sync --db {cfg.results_db} --runs {cfg.results_dir}'") from None
        return record

    # -- re-scoring a stored run -----------------------------------------------------------------
    def rescore(self, source: dict[str, Any], folder: Path, splits: DataSplits | None = None) -> dict[str, Any]:
        """Score the reconstructions saved in run folder ``folder`` (of the record ``source``)
        again, with this runner's judges (trained or loaded) and today's metric code, and store
        a new record: its own run id and folder (a copy of the reconstructions, a new grid),
        ``rescored_from`` = the old run id and ``rescore`` = how. The target, the prior and the
        inversion are not re-run: their artifacts and stage times are the old record's; the
        target accuracy is recomputed when the target is in the cache, else kept (and said).
        ``splits``: the run's data, when the caller has loaded it already."""
        cfg = self.cfg
        t_start = time.perf_counter()
        run_id = new_run_id()
        images, classes = load_reconstructions(folder)
        old_id = source.get("run_id", "?")
        attacked = (source.get("protocol") or {}).get("attacked_classes")
        if attacked is not None and list(attacked) != list(classes):
            raise ArtifactError(f"{folder / RECONSTRUCTIONS} holds classes {classes} but run {old_id} "
                                f"attacked {attacked}: the folder does not belong to that record")
        if splits is None:
            splits = self._splits()
        bad = [c for c in classes if not 0 <= c < splits.num_private_classes]
        if bad:
            raise ArtifactError(f"{folder / RECONSTRUCTIONS}: classes {bad} are not private classes of "
                                f"{splits.name} ({splits.num_private_classes}); was the dataset config changed?")
        preflight(cfg, index=self.index)
        judges = self.judges(splits)
        t0 = time.perf_counter()
        target_acc, target_note = self._stored_target_acc(source, splits)
        self._timed("utility", t0)
        protocol = source.get("protocol") or {}
        inversion = Inversion(images, classes, protocol=protocol.get("inversion") or {})
        metrics = self.score(inversion, splits, judges, target_acc)
        kept = ("target", "prior")
        artifacts = {**{k: v for k, v in (source.get("artifacts") or {}).items() if k in kept},
                     **self.artifacts}
        times = {k: v for k, v in (source.get("stage_seconds") or {}).items() if k in (*kept, "inversion")}
        extra = {
            "artifacts": artifacts,
            "stage_seconds": {**times, **self.times},
            "defense_report": source.get("defense_report", {}),
            "rescored_from": old_id,
            "rescore": {
                "from": old_id, "from_created_at": source.get("created_at"), "from_run_dir": str(folder),
                "from_metrics": {k: (source.get("metrics") or {}).get(k) for k in RESCORE_COMPARED},
                "from_rejected": {j: r.get("rejected") for j, r in
                                  ((source.get("metrics") or {}).get("judges") or {}).items()},
                "reconstructions": f"read from {folder / RECONSTRUCTIONS} as uint8 (x / 255): "
                                   + ("the images the run scored" if "reconstructions" in protocol else
                                      "the run scored its float images before saving them, so its "
                                      "numbers can differ by 8-bit rounding (at most 1/510 a pixel)"),
                "target_acc": target_note,
                "kept": "target, prior and inversion: artifacts, stage times and inversion protocol of "
                        f"run {old_id}; stage times of the judges, utility and scoring are this re-scoring's",
            },
        }
        record = self._store(run_id, t_start, splits, classes, inversion, judges, metrics,
                             requirements=protocol.get("attack_requirements") or {}, source_folder=folder,
                             extra=extra)
        copy_labels(folder, Path(record["run_dir"]), run_id)
        return record

    def _stored_target_acc(self, source: dict[str, Any], splits: DataSplits) -> tuple[float | None, str]:
        """The target's private-test accuracy, recomputed from the cached target artifact that
        the run attacked (nothing is trained); the old value when it is not in the cache."""
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
            model = _make_defense(self.cfg, splits).build_model(_target_factory(self.cfg, splits)())
            model.load_state_dict(state)
        except (ArtifactError, RuntimeError) as exc:
            return old, f"{why}: cached target {key} could not be loaded ({str(exc).splitlines()[0]})"
        acc = accuracy(model.to(self.device).eval(), *splits.private_test)
        if old is not None and abs(acc - old) > 1e-6:
            log.warning("target %s: accuracy %.4f now, %.4f in run %s", key, acc, old, source.get("run_id"))
        return acc, f"recomputed with the cached target {key} (run {source.get('run_id')}: {old})"

    def _lpips_pairwise(self) -> dict[str, Any]:
        """LPIPS as a diversity distance (built on first use with the run's ``eval`` options; its
        weights missing offline make it unavailable, recorded in ``metric_absent``)."""
        from mi_bench.diversity import DistanceUnavailable
        from mi_bench.perceptual import WeightsUnavailable, lpips_model, lpips_pairwise

        e = self.cfg.eval
        if not e.lpips:
            return {}
        state: dict[str, Any] = {}

        def fn(x: torch.Tensor) -> torch.Tensor:
            if "model" not in state:
                try:
                    state["model"] = lpips_model(e.lpips_net, self.device, e.download)[0]
                except WeightsUnavailable as exc:
                    raise DistanceUnavailable(str(exc)) from None
            return lpips_pairwise(state["model"], x, x, min_size=e.lpips_min_size)
        return {"lpips": fn}

    def _diversity(self, metrics: dict[str, Any], inversion, splits: DataSplits, judge: Judge) -> None:
        x_tr, y_tr = splits.private_train
        real = [x_tr[y_tr == c] for c in inversion.classes]
        size = splits.image_shape[-1]
        try:
            report, absent = diversity(inversion.images, inversion.classes, real,
                                       lambda x: _embed(judge.model, x, size), judge=judge.name,
                                       collapse_ratio=self.cfg.judge.collapse_ratio,
                                       pairwise=self._lpips_pairwise())
            if not self.cfg.eval.lpips:
                absent["diversity_lpips"] = "disabled (eval.lpips=false)"
            metrics.update(report)
            metrics["metric_absent"].update(absent)
        except Exception as exc:  # noqa: BLE001 - reported, never silently 0
            metrics.update(diversity=None, diversity_ratio=None, collapsed_classes=None)
            metrics["metric_errors"]["diversity"] = f"{type(exc).__name__}: {exc}"

    def _grid(self, path: Path, splits: DataSplits, inversion, metrics) -> Path | None:
        """Real private images, then the first ``eval.grid_samples`` reconstructions per class,
        each labelled with every judge's prediction (x = rejected) and framed green when all
        judges name the attacked class, orange when only some do, red when none does."""
        cfg = self.cfg
        x_tr, y_tr = splits.private_train
        real = [x_tr[y_tr == c][: cfg.eval.grid_real] for c in inversion.classes]
        n = min(cfg.eval.grid_samples, inversion.images.shape[1])
        judged = metrics["judges"]
        order = list(judged)
        preds = [[["x" if judged[j]["predictions"][i][k] == NONE else judged[j]["predictions"][i][k]
                   for j in order] for k in range(n)] for i in range(len(inversion.classes))]
        state = []
        for i, c in enumerate(inversion.classes):
            row = []
            for k in range(n):
                hits = sum(judged[j]["predictions"][i][k] == splits.private_classes[c] for j in order)
                row.append(True if hits == len(order) else (False if hits == 0 else None))
            state.append(row)
        labels = [["/".join(map(str, p)) for p in row] for row in preds]
        collapsed = set((metrics.get("diversity") or {}).get("collapsed_classes", []))
        class_names = splits.info.get("class_names")  # face datasets: identity names
        names = [f"class {c} ({class_names[c] if class_names else f'digit {splits.private_classes[c]}'})\n"
                 + "\n".join(f"{j} {judged[j]['per_class'][c]:.0%}" for j in order)
                 + ("\nCOLLAPSED" if c in collapsed else "") for c in inversion.classes]
        title = (f"{cfg.attack.name} vs {defense_label(cfg.defense, cfg.recipe)} on {splits.name} "
                 f"({splits.protocol}, preset {cfg.preset}, seed {cfg.seed}) - attack acc "
                 f"{metrics['attack_acc']:.0%}, consensus {metrics['consensus_acc']:.0%}, target acc "
                 f"{metrics['target_acc']:.1%}\nunder each image: {'/'.join(order)} predictions "
                 f"(x = rejected); green: all judges agree with the attacked class, orange: some")
        return save_grid(path, inversion.images[:, :n], inversion.classes, real, state, labels, names, title)


def versions() -> dict[str, str]:
    import torchvision

    out = {"mi_bench": mi_bench.__version__, "torch": torch.__version__,
           "torchvision": torchvision.__version__, "numpy": np.__version__,
           "python": platform.python_version()}
    from importlib.metadata import PackageNotFoundError, version

    for mod in ("kornia", "opacus", "pytorch-fid", "lpips"):
        try:
            out[mod.replace("-", "_")] = version(mod)
        except PackageNotFoundError:  # optional in a record
            out[mod.replace("-", "_")] = "unavailable"
    return out


def machine(cfg: RunConfig, device: torch.device, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Where the run ran and how: platform, threads, device, the performance options (``amp``,
    ``compile``, host reads every N steps) and, on CUDA, the GPU, its memory and capability,
    the CUDA/cuDNN versions and the backend settings (cuDNN benchmark, TF32)."""
    import os

    info = {"platform": platform.platform(), "processor": platform.machine(),
            "cpu_count": os.cpu_count(), "threads": cfg.threads, "device": str(device),
            "accel": Accel(amp=cfg.amp, compile=cfg.compile, graph=cfg.cuda_graph).record(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["gpu_capability"] = f"{props.major}.{props.minor}"
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
        info["backend"] = settings if settings is not None else configure_device(device, cfg.tf32)
    return info


def run(cfg: RunConfig, bars: Bars = NULL_BARS, *, index: bool = True) -> dict[str, Any]:
    return Runner(cfg, bars, index=index).run()
