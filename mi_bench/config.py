"""Typed, validated run configuration composed from YAML groups and ``key=value`` overrides.

Composition, later layers winning (Hydra-style, parsed by click):

1. the schema defaults (:class:`RunConfig`, plugin ``Config`` dataclasses);
2. ``configs/preset/<preset>.yaml`` - a patch of the whole config;
3. ``configs/dataset/<dataset>.yaml`` - a patch of the whole config, then its ``presets.<preset>``;
4. ``configs/defense/<defense>.yaml`` - a patch of the ``defense`` section, then its
   ``presets.<preset>`` (a plugin may also carry ``presets`` as a class attribute; the YAML's
   preset values win field by field);
5. ``configs/attack/<attack>.yaml`` - likewise for ``attack``;
6. dotted overrides from the command line (``defense.lambda_x=0.05 seed=3``).

Group options are selected with ``preset=``, ``dataset=``, ``defense=``, ``attack=``. A defense or
attack option is either a YAML file of that group (``bido-coco``, an alias that sets
``measure: coco``) or the name of a registered plugin (entry-point plugins need no YAML).

Every mistake - unknown group option, unknown key, wrong type, value out of range - raises
:class:`ConfigError` with one line naming the problem and the fix, before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from mi_bench.data import DatasetConfig
from mi_bench.judges import JUDGE_NAMES, JudgingConfig, check_judges
from mi_bench.params import param, validate_dataclass
from mi_bench.registry import ATTACKS, DATASETS, DEFENSES, RegistryError, unknown_choice_message
from mi_bench.train import TrainConfig

GROUPS = ("preset", "dataset", "defense", "attack")
DEFAULTS = {"preset": "quick", "dataset": "digits", "defense": "none", "attack": "gmi"}


class ConfigError(ValueError):
    """A user-facing configuration mistake; ``str(err)`` is the one-line message."""


@dataclass
class EvalConfig:
    fid_inception: bool = param(True, help="compute Inception FID when its weights are on disk")
    grid_real: int = param(4, ge=0, le=16, help="real private images per class in the image grid")
    grid_samples: int = param(10, ge=1, le=100, help="reconstructions per class shown in the image grid "
                              "(all are saved in the run folder)")


def _evaluator_default() -> TrainConfig:
    return TrainConfig(model="scnn", epochs=30, lr=0.01)


@dataclass
class RunConfig:
    preset: str = param("quick", help="preset name (smoke, quick, paper)")
    seed: int = param(0, help="run seed: target training, prior training, inversion")
    eval_seed: int = param(1000, help="seed of the evaluation model (the fixed judge)")
    threads: int = param(1, ge=1, le=256, help="torch intra-op threads (see results/threads.md)")
    device: str = param("cpu", help="cpu, cuda, cuda:N or auto")
    data_root: str = param("", help="folder holding datasets ('' = $MI_BENCH_DATA or ./data)")
    cache_dir: str = param("", help="artifact cache ('' = $MI_BENCH_CACHE or ~/.cache/mi-bench)")
    results_db: str = param("results/mi_bench.sqlite", help="SQLite database of run records")
    results_dir: str = param("results/runs", help="folder for image grids of each run")
    classes: list[int] = param(default_factory=list, help="private classes to attack (empty = all)")
    target_checkpoint: str = param(
        "", help="attack this checkpoint (.safetensors or .pt state dict) instead of training one"
    )
    dataset: DatasetConfig = param(default_factory=DatasetConfig)
    target: TrainConfig = param(default_factory=TrainConfig)
    evaluator: TrainConfig = param(default_factory=_evaluator_default)
    defense: Any = None
    attack: Any = None
    eval: EvalConfig = param(default_factory=EvalConfig)
    judges: list[str] = param(default_factory=lambda: list(JUDGE_NAMES),
                              help="judges scoring every run (mi_bench.judges): eval, resnet, robust")
    judge: JudgingConfig = param(default_factory=JudgingConfig)


# -- YAML groups -----------------------------------------------------------------------------

def _config_dir():
    return resources.files("mi_bench.configs")


def group_options(group: str) -> list[str]:
    """Options of a group: its YAML files, plus registered plugin names for defense/attack."""
    d = _config_dir() / group
    names = {p.name[:-5] for p in d.iterdir() if p.name.endswith(".yaml")} if d.is_dir() else set()
    if group == "defense":
        names |= set(DEFENSES.names())
    elif group == "attack":
        names |= set(ATTACKS.names())
    elif group == "dataset":
        names |= set(DATASETS.names())
    return sorted(names)


def _read_yaml(group: str, option: str) -> dict[str, Any]:
    f = _config_dir() / group / f"{option}.yaml"
    if not f.is_file():
        return {}
    data = yaml.safe_load(f.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"configs/{group}/{option}.yaml must hold a mapping")
    return data


# -- overrides --------------------------------------------------------------------------------

def parse_overrides(tokens: list[str] | tuple[str, ...]) -> tuple[dict[str, str], list[str]]:
    """Split ``key=value`` tokens into group selections and dotted overrides."""
    groups: dict[str, str] = {}
    dotted: list[str] = []
    for tok in tokens:
        if "=" not in tok or tok.startswith("="):
            raise ConfigError(
                f"cannot parse '{tok}': overrides are key=value (e.g. defense=bido, seed=3)"
            )
        key, value = tok.split("=", 1)
        if key in GROUPS:
            groups[key] = value
        else:
            dotted.append(tok)
    return groups, dotted


def _all_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(node, DictConfig):
        for k in node.keys():
            full = f"{prefix}{k}"
            keys.append(full)
            child = node._get_node(k)
            if isinstance(child, DictConfig):
                keys.extend(_all_keys(child, full + "."))
    return keys


def _check_keys(cfg: DictConfig, keys: list[str], origin: str) -> None:
    valid = _all_keys(cfg)
    for key in keys:
        if key in valid:
            continue
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        section = key.rsplit(".", 1)[0] if "." in key else ""
        siblings = [k for k in valid if k.rsplit(".", 1)[0] == section and "." in k] if section else []
        extra = f" Valid keys of '{section}': {', '.join(k.split('.')[-1] for k in siblings)}" if (
            siblings and not close) else ""
        raise ConfigError(f"unknown config key '{key}' ({origin}).{hint}{extra}")


def _flatten(d: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.extend(_flatten(v, f"{prefix}{k}."))
        else:
            out.append(f"{prefix}{k}")
    return out


def _merge(cfg: DictConfig, patch: dict[str, Any] | DictConfig, origin: str) -> DictConfig:
    if isinstance(patch, dict):
        _check_keys(cfg, _flatten(patch), origin)
    try:
        return OmegaConf.merge(cfg, patch)  # type: ignore[return-value]
    except ConfigKeyError as exc:
        raise ConfigError(f"unknown config key '{exc.full_key}' ({origin})") from None
    except ValidationError as exc:
        expected = _expected_type(cfg, str(exc.full_key))
        raise ConfigError(
            f"wrong type for '{exc.full_key}' ({origin}): {str(exc.msg).splitlines()[0]}"
            f"{'; it expects ' + expected if expected else ''}"
        ) from None
    except OmegaConfBaseException as exc:
        raise ConfigError(f"invalid value ({origin}): {str(exc).splitlines()[0]}") from None


def _expected_type(cfg: DictConfig, full_key: str) -> str:
    node: Any = cfg
    obj_type = None
    for part in full_key.split("."):
        if not isinstance(node, DictConfig):
            return ""
        obj_type = OmegaConf.get_type(node)
        node = node._get_node(part)
    if obj_type is None or not dataclasses.is_dataclass(obj_type):
        return ""
    name = full_key.split(".")[-1]
    for f in dataclasses.fields(obj_type):
        if f.name == name:
            return getattr(f.type, "__name__", str(f.type))
    return ""


def _plugin_patch(group: str, option: str, preset: str, cls: Any) -> tuple[str, dict, dict]:
    data = _read_yaml(group, option)
    plugin = data.pop("name", option)
    # the class's presets (third-party plugins; built-in baselines inheriting GMI's prior
    # fields), then the YAML's, merged field by field
    yaml_presets = data.pop("presets", {}) or {}
    merged = {**(getattr(cls, "presets", {}).get(preset) or {}), **(yaml_presets.get(preset) or {})}
    return plugin, data, merged


def compose(tokens: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Resolve a full, validated :class:`RunConfig` from command-line style overrides."""
    groups, dotted = parse_overrides(tokens)
    sel = {g: groups.get(g, DEFAULTS[g]) for g in GROUPS}
    for g in GROUPS:
        valid = group_options(g)
        if sel[g] not in valid:
            raise ConfigError(unknown_choice_message(f"{g} option", sel[g], valid))

    # which plugin classes the defense/attack options select (alias YAMLs name their plugin)
    plugin_names = {g: _read_yaml(g, sel[g]).get("name", sel[g]) for g in ("defense", "attack")}
    try:
        defense_cls = DEFENSES.get(plugin_names["defense"])
        attack_cls = ATTACKS.get(plugin_names["attack"])
    except RegistryError as exc:
        raise ConfigError(str(exc)) from None

    cfg: DictConfig = OmegaConf.structured(RunConfig)
    cfg.defense = OmegaConf.structured(defense_cls.Config)
    cfg.attack = OmegaConf.structured(attack_cls.Config)

    preset = sel["preset"]
    cfg = _merge(cfg, _read_yaml("preset", preset), f"configs/preset/{preset}.yaml")
    ds = _read_yaml("dataset", sel["dataset"])
    ds_presets = ds.pop("presets", {}) or {}
    cfg = _merge(cfg, ds, f"configs/dataset/{sel['dataset']}.yaml")
    cfg = _merge(cfg, ds_presets.get(preset, {}) or {}, f"configs/dataset/{sel['dataset']}.yaml presets.{preset}")
    if not (ds.get("dataset") or {}).get("name"):
        cfg.dataset.name = sel["dataset"]
    for g, cls in (("defense", defense_cls), ("attack", attack_cls)):
        plugin, base, pre = _plugin_patch(g, sel[g], preset, cls)
        cfg = _merge(cfg, {g: base}, f"configs/{g}/{sel[g]}.yaml")
        cfg = _merge(cfg, {g: pre}, f"configs/{g}/{sel[g]}.yaml presets.{preset}")
        cfg[g].name = plugin
    cfg.preset = preset

    if dotted:
        keys = [t.split("=", 1)[0] for t in dotted]
        _check_keys(cfg, keys, "command line")
        try:
            patch = OmegaConf.from_dotlist(list(dotted))
        except OmegaConfBaseException as exc:
            raise ConfigError(f"cannot parse overrides: {str(exc).splitlines()[0]}") from None
        cfg = _merge(cfg, patch, "command line")
        for key in ("defense.name", "attack.name", "preset", "dataset.name"):
            if key in keys:
                raise ConfigError(f"set '{key}' through the group ('{key.split('.')[0]}=...'), not as a field")

    try:
        run: RunConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        raise ConfigError(f"invalid config: {str(exc).splitlines()[0]}") from None
    errors = validate_dataclass(run) + check_judges(run.judges, run.judge)
    if errors:
        raise ConfigError(errors[0] + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""))
    if run.dataset.name not in DATASETS:
        raise ConfigError(unknown_choice_message("dataset", run.dataset.name, DATASETS.names()))
    return run


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


# Fields that do not change what a run computes (where or how fast it runs, where it writes).
NON_SEMANTIC = ("threads", "device", "data_root", "cache_dir", "results_db", "results_dir")


def config_hash(config: dict[str, Any], drop: tuple[str, ...] = ()) -> str:
    """Hash of a resolved config (as a dict) without its non-semantic fields and ``drop``."""
    return stable_hash({k: v for k, v in config.items() if k not in NON_SEMANTIC + drop})


def stable_hash(obj: Any, n: int = 16) -> str:
    """Hash of a JSON-able object, independent of key order."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:n]
