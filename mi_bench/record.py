"""The run record: what it holds, how it is built, and how older records are read.

A record is one JSON object, written as ``record.json`` in the run folder (``mi_bench.runs``) and
indexed in the results database (``mi_bench.results.store``). Its schema, version
:data:`SCHEMA_VERSION` (``schema_version``):

* ``run_id``, ``created_at``; ``config`` (the whole resolved config), ``config_hash`` (what the run
  computes), ``group_hash`` (the same without the seed: one leaderboard entry), ``defense_label``,
  ``seed``;
* ``protocol``: the data (``data``: splits, counts, classes), the attacked classes, how the
  reconstructions were made (``inversion``) and scored (``metrics``, ``judges``, model selection,
  initialisation, the attack's requirements, the 8-bit note) and the prior's quality
  (``prior_quality``: KID of its samples, ``mi_bench.prior_quality``);
* ``artifacts`` (key, SHA-256 and cache state of every trained stage), ``trained``;
  ``metrics`` (``mi_bench.scoring``), ``defense_report``;
* ``stage_seconds``, ``wall_seconds``, ``run_dir``, ``grid``, ``versions`` (mi-bench and its
  libraries), ``machine`` (platform, threads, device, performance options);
* a re-scored run adds ``rescored_from`` and ``rescore`` (``mi_bench.rescore``).
* ``health``: the verdict on target, evaluator and each judge (``mi_bench.health``: accuracy
  against chance, rejections, the problems and their fixes). Records written before it existed
  get it computed when read (``mi_bench.health.of``), with the default thresholds.

Older records: every reader of records (the results store, records files, run folders) passes
them through :func:`upgrade_record`, the one place where earlier schemas are brought to today's:

* schema 1 (no ``schema_version``; mi-bench up to 0.1.0): missing Inception weights recorded as a
  metric *error* become *absent by design* (with a note), and the 95% Wilson interval of each
  share of reconstructions that was not stored (``<metric>_ci``) is filled in.

:func:`dataset_config` rebuilds a record's dataset configuration; it is the one way the
labelling page, the report and ``mi-bench rescore`` load a recorded run's data.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import platform
import uuid
from typing import Any

import torch

import mi_bench
from mi_bench.config import RunConfig, config_hash, to_dict
from mi_bench.data import DatasetConfig
from mi_bench.errors import ConfigError
from mi_bench.params import label_fields, neutral_defaults
from mi_bench.runtime import Accel, configure_device, cpu_has_native_bf16
from mi_bench.stats import wilson_interval

SCHEMA_VERSION = 2
RECONSTRUCTIONS_NOTE = ("scored as saved in reconstructions.safetensors: 8-bit (uint8 / 255); records "
                        "without this note scored the attack's float images")
# metrics of the old record kept in a re-scored record's ``rescore.from_metrics``
RESCORE_COMPARED = ("target_acc", "eval_acc", "attack_acc", "attack_acc_resnet", "attack_acc_robust",
                    "consensus_acc", "attack_acc_pixel_nn")
# shares of a run's n_reconstructions: one run's interval is their Wilson interval
SHARES_OF_RECONSTRUCTIONS = ("attack_acc", "attack_acc_top5", "attack_acc_pixel_nn", "consensus_acc")
# mi-bench <= 0.1.0 recorded the Inception weights missing offline as a failure; they are absent by design
_LEGACY_ABSENT = "FileNotFoundError: Inception-v3 FID weights not on disk"


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


def attack_label(attack: dict[str, Any]) -> str:
    """``gmi``, or ``gmi[lomma]`` / ``gmi[max_latents=80]``: the attack's name and its
    ``neutral_default`` options that are on (a bool shown by its name; ``only_with`` fields left
    out), so runs that differ by such an option are told apart in the leaderboard. A record of an
    attack not installed here keeps its name."""
    from mi_bench.registry import ATTACKS

    name = attack.get("name", "?")
    try:
        cls = ATTACKS.get(name).Config
    except Exception:  # noqa: BLE001 - an uninstalled or broken plugin: its name is enough
        return name
    gated = {f.name for f in dataclasses.fields(cls) if f.metadata.get("only_with")}
    parts = [k if attack[k] is True else f"{k}={attack[k]}" for k, default in neutral_defaults(cls).items()
             if k not in gated and k in attack and attack[k] != default]
    return f"{name}[{','.join(parts)}]" if parts else name


def versions() -> dict[str, str]:
    """mi-bench's version and its libraries' (a library not installed: ``unavailable``)."""
    from importlib.metadata import PackageNotFoundError, version

    import numpy as np
    import torchvision

    out = {"mi_bench": mi_bench.__version__, "torch": torch.__version__,
           "torchvision": torchvision.__version__, "numpy": np.__version__,
           "python": platform.python_version()}
    for mod in ("kornia", "opacus", "pytorch-fid", "lpips"):
        try:
            out[mod.replace("-", "_")] = version(mod)
        except PackageNotFoundError:  # optional in a record
            out[mod.replace("-", "_")] = "unavailable"
    return out


def machine(cfg: RunConfig, device: torch.device, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Where the run ran and how: platform, threads, device, the performance options (``amp``,
    ``compile``, host reads every N steps), ``channels_last``, whether the CPU has
    native bfloat16 (``cpu_native_bf16``; without it ``amp=bf16`` ran float32 on the CPU and
    ``accel.amp_effective`` says ``off``) and, on CUDA, the GPU, its memory and capability,
    the CUDA/cuDNN versions and the backend settings (cuDNN benchmark, TF32)."""
    import os

    info = {"platform": platform.platform(), "processor": platform.machine(),
            "cpu_count": os.cpu_count(), "threads": cfg.threads, "device": str(device),
            "accel": Accel.from_config(cfg).record(device),
            "channels_last": cfg.channels_last, "cpu_native_bf16": cpu_has_native_bf16()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["gpu_capability"] = f"{props.major}.{props.minor}"
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
        info["backend"] = settings if settings is not None else configure_device(device, cfg.tf32)
    return info


def build_record(cfg: RunConfig, *, run_id: str, splits: Any, classes: list[int], inversion: Any,
                 judges: dict[str, Any], metrics: dict[str, Any], requirements: dict[str, Any],
                 stages: Any, run_dir: str, grid: str | None, device: torch.device,
                 device_settings: dict[str, Any] | None, wall_seconds: float,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A run's record (today's schema), from its config, data, inversion, judges, metrics and
    stages (``mi_bench.stages.Stages``: artifacts, what was trained, stage times). ``extra``
    adds or replaces fields (a re-scoring's ``rescore``, kept artifacts and stage times)."""
    from mi_bench.diversity import DIVERSITY_PROTOCOL
    from mi_bench.judges import JUDGE_PROTOCOL
    from mi_bench.metrics import metrics_protocol
    from mi_bench.results.store import json_safe
    from mi_bench.weights import init_statement

    config = to_dict(cfg)
    record = {
        "schema_version": SCHEMA_VERSION,
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
            # the prior's KID against held-out public images (mi_bench.prior_quality); absent
            # from records of mi-bench versions before it
            **({"prior_quality": stages.prior_quality}
               if getattr(stages, "prior_quality", None) is not None else {}),
        },
        "artifacts": stages.artifacts,
        "trained": stages.trained,
        "metrics": metrics,
        "defense_report": stages.artifacts.get("target", {}).get("defense_report", {}),
        "stage_seconds": stages.times,
        "wall_seconds": round(wall_seconds, 3),
        "run_dir": run_dir,
        "grid": grid,
        "versions": versions(),
        "machine": machine(cfg, device, device_settings),
        **(extra or {}),
    }
    record = json_safe(record)
    from mi_bench.health import verdict

    record["health"] = verdict(record)  # thresholds: the config's health section
    return record


# -- older records ------------------------------------------------------------------------------

def schema_of(record: dict[str, Any]) -> int:
    """The schema a record was written in (1: records from before ``schema_version`` existed)."""
    v = record.get("schema_version", 1)
    return v if isinstance(v, int) and not isinstance(v, bool) else 1


def upgrade_record(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` in today's schema (:data:`SCHEMA_VERSION`); a copy when anything changes.

    A record from a newer mi-bench is returned as it is (its extra fields are ignored by this
    version's analysis)."""
    if schema_of(record) >= SCHEMA_VERSION:
        return record
    rec = copy.deepcopy(record)
    m = rec.get("metrics")
    if isinstance(m, dict):
        errors, absent = dict(m.get("metric_errors") or {}), dict(m.get("metric_absent") or {})
        for k, why in list(errors.items()):
            if str(why).startswith(_LEGACY_ABSENT):
                absent.setdefault(k, f"{why} (recorded as an error by an older mi-bench)")
                del errors[k]
        m["metric_errors"], m["metric_absent"] = errors, absent
        n = m.get("n_reconstructions")
        for k in SHARES_OF_RECONSTRUCTIONS:
            v = m.get(k)
            if n and isinstance(v, (int, float)) and not isinstance(v, bool) and not m.get(k + "_ci"):
                m[k + "_ci"] = list(wilson_interval(int(round(v * n)), int(n)))
    rec["schema_version"] = SCHEMA_VERSION
    rec["upgraded_from_schema"] = schema_of(record)
    return rec


# -- a recorded run's data ----------------------------------------------------------------------

def _known(values: dict[str, Any], cls: Any) -> dict[str, Any]:
    """``values`` restricted to the fields of dataclass ``cls`` (recursively): a field removed
    since the record was written is dropped, a field added since gets its default."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for k, v in values.items():
        f = fields.get(k)
        if f is None:
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
        if isinstance(v, dict) and dataclasses.is_dataclass(default):
            v = type(default)(**_known(v, type(default)))
        out[k] = v
    return out


def dataset_config(record: dict[str, Any], *, download: bool | None = None) -> DatasetConfig:
    """The dataset configuration of a recorded run (nested sections as their dataclasses);
    ``download`` overrides whether missing files may be fetched (report and labelling: never)."""
    try:
        values = dict(record["config"]["dataset"])
    except (KeyError, TypeError):
        raise ConfigError(f"record {record.get('run_id', '?')} has no dataset config") from None
    cfg = DatasetConfig(**_known(values, DatasetConfig))
    if download is not None:
        cfg = dataclasses.replace(cfg, download=download)
    return cfg
