"""Typed, validated run configuration composed from YAML groups and ``key=value`` overrides.

Composition, later layers winning (Hydra-style, parsed by click):

1. the schema defaults (:class:`RunConfig`, plugin ``Config`` dataclasses);
2. ``configs/preset/<preset>.yaml`` - a patch of the whole config;
3. ``configs/dataset/<dataset>.yaml`` - a patch of the whole config (the dataset's protocol, its
   evaluator recipe, epochs per preset), then its ``presets.<preset>``;
4. ``configs/defense/<defense>.yaml`` - a patch of the ``defense`` section, then its
   ``presets.<preset>`` (a plugin may also carry ``presets`` as a class attribute; the YAML's
   preset values win field by field);
5. the defense's **dataset entry** ``datasets.<dataset>`` (see below): the target's training
   recipe and dataset-specific defense values;
6. ``configs/attack/<attack>.yaml`` - likewise for ``attack`` (its fields, ``presets.<preset>``,
   then ``datasets.<dataset>``);
7. dotted overrides from the command line (``defense.lambda_x=0.05 seed=3``).

Group options are selected with ``preset=``, ``dataset=``, ``defense=``, ``attack=``. A defense or
attack option is either a YAML file of that group (``bido-coco``, an alias that sets
``measure: coco``) or the name of a registered plugin (entry-point plugins need no YAML).

Dataset entries (per-method recipes). A defense or attack YAML may hold::

    datasets:
      mnist:                       # a dataset option or plugin name
        target: {...}              # TrainConfig fields: how the target is trained (defense only)
        defense: {...}             # fields of this defense, for this dataset (defense only)
        attack: {...}              # fields of this attack, for this dataset (attack only)
        presets:                   # optional, per preset, on top (same sections)
          paper: {target: {...}}
      digits: *mnist               # YAML anchors share an entry between datasets

The entry is looked up by the dataset option name, then by the dataset plugin name; a dataset
without an entry gets nothing from it (a new dataset needs no YAML change to work). A defense
entry may patch only ``target`` and its own ``defense`` section, an attack entry only
``attack``; anything else, and any unknown field, is refused with a :class:`ConfigError`.
A recipe says *how* a target is trained (optimiser, lr, momentum, Nesterov, weight decay,
milestones/gamma, batch size, sampler, drop_last); *how long* (epochs) is the preset's and
dataset's business, so recipes apply under every preset and `quick`/`smoke` differ from
`paper` only in epochs, data caps and network size.

An alias option (a YAML whose ``name`` is another option's plugin, e.g. ``bido-coco``) inherits
the plugin option's ``datasets`` entries, its own entries merged on top field by field.

The undefended option ``none`` holds the dataset's published baseline recipe. A defense option
whose entry has no ``target`` part (no official recipe, e.g. the QAD-/DESMIL-style adaptations)
trains its target with ``none``'s recipe, so its published baseline is matched by construction.

Matched baselines: ``recipe=<defense option>`` trains the target with that option's ``target``
recipe instead of the selected defense's own (e.g. ``defense=none recipe=bido``: an undefended
MCNN trained with BiDO's Adam lr 0.1). The defense's own ``defense``-section patches still
apply. ``recipe`` is stored in the config (``recipe: bido``) and in the defense label
(``none[recipe=bido]``); ``recipe`` equal to the selected defense option is the same as none.

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
from mi_bench.errors import ConfigError, RegistryError
from mi_bench.health import HealthConfig
from mi_bench.judges import JUDGE_NAMES, JudgingConfig, check_judges
from mi_bench.metrics import EvalConfig  # the `eval` section (as judges/health hold theirs)
from mi_bench.params import param, strip_neutral, validate_dataclass
from mi_bench.registry import ATTACKS, DATASETS, DEFENSES, unknown_choice_message
from mi_bench.runtime import AMP_CHOICES, CHANNELS_LAST_CHOICES, COMPILE_CHOICES, INVERSION_CHUNK
from mi_bench.train import TrainConfig

GROUPS = ("preset", "dataset", "defense", "attack")
SELECTORS = GROUPS + ("recipe",)  # key=value tokens that choose YAML, not dotted fields
DEFAULTS = {"preset": "quick", "dataset": "digits", "defense": "none", "attack": "gmi", "recipe": ""}
BASELINE = "none"  # the defense option whose dataset entries hold the published baseline recipes
# sections a dataset entry of a defense / attack YAML may patch
ENTRY_SECTIONS = {"defense": ("target", "defense"), "attack": ("attack",)}


@dataclass
class SlurmConfig:
    """Resources of each cell's job under ``mi-bench sweep --launcher slurm`` (submitit).
    Where and how a cell runs, never what it computes: left out of every hash."""

    partition: str = param("", help="Slurm partition ('' = the cluster's default)")
    time_min: int = param(120, ge=1, help="wall-time limit of a cell's job in minutes; a cell that "
                          "reaches it (or is preempted) is requeued and resumes from cached artifacts")
    gpus: int = param(0, ge=0, le=16, help="GPUs per cell")
    cpus: int = param(2, ge=1, le=256, help="CPU cores per cell (also its threads= unless set)")
    mem_gb: float = param(16.0, ge=0.0, help="memory per cell, GB (0 = the cluster's default)")
    array_parallelism: int = param(16, ge=1, help="cells of the job array running at once")
    max_requeues: int = param(3, ge=0, le=100, help="requeues after preemption or time-out")
    account: str = param("", help="Slurm account ('' = default)")
    qos: str = param("", help="Slurm quality of service ('' = default)")
    constraint: str = param("", help="Slurm node constraint, e.g. a GPU type ('' = none)")
    cluster: str = param("slurm", choices=("slurm", "local", "debug"),
                         help="submitit executor: slurm; local/debug run the same job array on "
                         "this machine (tests and trying a sweep without a cluster)")


def _evaluator_default() -> TrainConfig:
    return TrainConfig(model="scnn", epochs=30, lr=0.01)


@dataclass
class RunConfig:
    preset: str = param("quick", help="preset name (smoke, quick, paper)")
    recipe: str = param("", help="train the target with this defense option's recipe (matched "
                        "baselines, e.g. defense=none recipe=bido); '' = the defense's own")
    seed: int = param(0, help="run seed: target training, prior training, inversion")
    eval_seed: int = param(1000, help="seed of the evaluation model (the fixed judge)")
    threads: int = param(1, ge=1, le=256, help="torch intra-op threads (see results/threads.md)")
    device: str = param("cpu", help="cpu, cuda, cuda:N or auto (CUDA when available)")
    amp: str = param("off", choices=AMP_CHOICES,
                     help="bf16 autocast for target and GAN-prior training (off = float32; the "
                     "evaluator, inversion and scoring always run float32)")
    compile: str = param("off", choices=COMPILE_CHOICES,
                         help="torch.compile mode for classifier and GAN training (reduce-overhead "
                         "= CUDA graphs); off = eager")
    tf32: bool = param(True, help="CUDA only: TF32 for float32 matmuls and convolutions")
    channels_last: str = param("auto", choices=CHANNELS_LAST_CHOICES,
                               help="classifier training in channels-last memory format: auto = on the "
                               "CPU for the families measured faster (results/bench/cpu_speed.md)")
    inversion_chunk: int = param(INVERSION_CHUNK, ge=0, help="latents per forward/backward pass of GMI and "
                                 "PLG-MI inversions, their gradients summed before each step: memory "
                                 "bounded by the chunk (0 = all latents at once); GMI's result is the "
                                 "same up to float rounding, PLG-MI draws its augmentations per chunk")
    cuda_graph: bool = param(False, help="CUDA only: the GMI prior's whole training step (5 critic "
                             "steps with the gradient penalty, the generator step) captured as one "
                             "CUDA graph and replayed (3.2x faster on an H200; its random stream "
                             "differs from eager training); other loops run eagerly")
    data_root: str = param("", help="folder holding datasets ('' = $MI_BENCH_DATA or ./data)")
    cache_dir: str = param("", help="artifact cache ('' = $MI_BENCH_CACHE or ~/.cache/mi-bench)")
    results_db: str = param("results/mi_bench.sqlite", help="SQLite database of run records")
    results_dir: str = param("results/runs", help="folder for image grids of each run")
    progress_interval_s: float = param(30.0, gt=0.0, help="seconds between progress lines when stderr "
                                       "is not a terminal (a log file, a Slurm job); a terminal "
                                       "shows progress bars instead")
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
    slurm: SlurmConfig = param(default_factory=SlurmConfig)
    judges: list[str] = param(default_factory=lambda: list(JUDGE_NAMES),
                              help="judges scoring every run (mi_bench.judges): eval, resnet, robust")
    judge: JudgingConfig = param(default_factory=JudgingConfig)
    health: HealthConfig = param(default_factory=HealthConfig,
                                 help="thresholds of the health verdicts of target, evaluator and judges "
                                      "(mi_bench.health); how a run is read, not what it computes")


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
        if key in SELECTORS:
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


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """``b`` over ``a``, recursively for mappings; new dicts (YAML anchors share objects)."""
    out = {k: (_deep_merge(v, {}) if isinstance(v, dict) else v) for k, v in a.items()}
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = _deep_merge(v, {}) if isinstance(v, dict) else v
    return out


def _mapping(value: Any, origin: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{origin} must be a mapping, not {type(value).__name__}")
    return value


class _Option:
    """A defense/attack option: its YAML (or the plugin class's attributes) split into the
    plugin name, the section's base fields, ``presets`` and ``datasets``."""

    def __init__(self, group: str, option: str, cls: Any) -> None:
        self.group, self.option = group, option
        self.origin = f"configs/{group}/{option}.yaml"
        data = dict(_read_yaml(group, option))
        self.plugin = data.pop("name", option)
        # the class's presets (third-party plugins; built-in baselines inheriting GMI's prior
        # fields), then the YAML's, merged field by field
        presets = {k: dict(v) for k, v in getattr(cls, "presets", {}).items()}
        source = getattr(cls, "preset_fields_from", None)
        borrowed = _borrowed_fields(group, *source) if source else ({}, {})  # baselines: GMI's fields
        presets = _deep_merge(presets, borrowed[0])
        for k, v in _mapping(data.pop("presets", None), f"{self.origin} presets").items():
            presets[k] = {**presets.get(k, {}), **_mapping(v, f"{self.origin} presets.{k}")}
        datasets = _deep_merge({k: dict(v) for k, v in getattr(cls, "datasets", {}).items()}, borrowed[1])
        if self.plugin != option and (_config_dir() / group / f"{self.plugin}.yaml").is_file():
            # an alias inherits its plugin option's dataset entries (recipes), entry by entry
            datasets = _deep_merge(datasets, _Option(group, self.plugin, cls).datasets)
        own = _mapping(data.pop("datasets", None), f"{self.origin} datasets")
        self.base, self.presets = data, presets
        self.datasets = _deep_merge(datasets, own)

    def preset_patch(self, preset: str) -> dict[str, Any]:
        return dict(_mapping(self.presets.get(preset), f"{self.origin} presets.{preset}"))

    def entry_patches(self, dataset_keys: tuple[str, ...], preset: str) -> dict[str, list[tuple[dict, str]]]:
        """Per section, the ordered patches of this option's dataset entry: the entry's own
        part, then its ``presets.<preset>`` part. Empty when no key matches."""
        key = next((k for k in dataset_keys if k in self.datasets), None)
        if key is None:
            return {}
        origin = f"{self.origin} datasets.{key}"
        entry = dict(_mapping(self.datasets[key], origin))
        presets = _mapping(entry.pop("presets", None), f"{origin} presets")
        layers = [(entry, origin, None)] + [
            (_mapping(layer, f"{origin} presets.{name}"), f"{origin} presets.{name}", name)
            for name, layer in presets.items()
        ]
        allowed = ENTRY_SECTIONS[self.group]
        for layer, where, _ in layers:  # check every preset's layer, not only the selected one
            bad = sorted(set(layer) - set(allowed))
            if bad:
                article = "an" if self.group == "attack" else "a"
                raise ConfigError(f"{where}: {article} {self.group} entry cannot patch "
                                  f"'{bad[0]}'; it may patch {', '.join(allowed)} (and hold presets)")
        out: dict[str, list[tuple[dict, str]]] = {}
        for layer, where, name in layers:
            if name not in (None, preset):
                continue
            for section in allowed:
                if layer.get(section):
                    out.setdefault(section, []).append(
                        (_mapping(layer[section], f"{where}.{section}"), f"{where}.{section}"))
        return out


def _borrowed_fields(group: str, option: str, fields: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``fields`` as ``configs/<group>/<option>.yaml`` sets them, for ``preset_fields_from``:
    ``{preset: {field: value}}`` (its top level, then each ``presets.<preset>``) and its
    ``datasets`` entries cut to those fields of their ``<group>`` section (the entry's own and
    each preset's). A baseline sharing GMI's prior thus follows GMI's per-dataset prior too."""
    data = _read_yaml(group, option)

    def keep(d: Any) -> dict[str, Any]:
        return {k: v for k, v in (d or {}).items() if k in fields}

    presets = {p: {**keep(data), **keep(v)} for p, v in (data.get("presets") or {}).items()}
    datasets: dict[str, Any] = {}
    for name, entry in (data.get("datasets") or {}).items():
        mine: dict[str, Any] = {group: k} if (k := keep((entry or {}).get(group))) else {}
        cut = {p: {group: k} for p, layer in ((entry or {}).get("presets") or {}).items()
               if (k := keep((layer or {}).get(group)))}
        if cut:
            mine["presets"] = cut
        if mine:
            datasets[name] = mine
    return presets, datasets


def _option(group: str, option: str) -> _Option:
    plugin = _read_yaml(group, option).get("name", option)
    reg = DEFENSES if group == "defense" else ATTACKS
    try:
        cls = reg.get(plugin)
    except RegistryError as exc:
        raise ConfigError(str(exc)) from None
    return _Option(group, option, cls)


def option_presets(group: str, option: str) -> dict[str, dict[str, Any]]:
    """``{preset: patch}`` an option declares (its YAML, its class's ``presets``, the fields
    taken from ``preset_fields_from``): the plugin contract asks for a ``smoke`` entry."""
    return {k: dict(v or {}) for k, v in _option(group, option).presets.items()}


def _target_recipe(option: _Option, dataset_keys: tuple[str, ...], preset: str) -> list[tuple[dict, str]]:
    """The target patches of ``option``'s recipe for the dataset; ``none``'s when it has none."""
    recipe = option.entry_patches(dataset_keys, preset).get("target", [])
    if recipe or option.option == BASELINE:
        return recipe
    return _option("defense", BASELINE).entry_patches(dataset_keys, preset).get("target", [])


def compose(tokens: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Resolve a full, validated :class:`RunConfig` from command-line style overrides."""
    groups, dotted = parse_overrides(tokens)
    sel = {g: groups.get(g, DEFAULTS[g]) for g in SELECTORS}
    for g in GROUPS:
        valid = group_options(g)
        if sel[g] not in valid:
            raise ConfigError(unknown_choice_message(f"{g} option", sel[g], valid))
    if sel["recipe"]:
        valid = group_options("defense")
        if sel["recipe"] not in valid:
            raise ConfigError(unknown_choice_message("recipe (a defense option)", sel["recipe"], valid))
    recipe = "" if sel["recipe"] == sel["defense"] else sel["recipe"]

    # which plugin classes the defense/attack options select (alias YAMLs name their plugin)
    options = {g: _option(g, sel[g]) for g in ("defense", "attack")}
    defense_cls = DEFENSES.get(options["defense"].plugin)
    attack_cls = ATTACKS.get(options["attack"].plugin)

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
    dataset_keys = (sel["dataset"], str(cfg.dataset.name))

    for g in ("defense", "attack"):
        opt = options[g]
        cfg = _merge(cfg, {g: opt.base}, opt.origin)
        cfg = _merge(cfg, {g: opt.preset_patch(preset)}, f"{opt.origin} presets.{preset}")
        entry = opt.entry_patches(dataset_keys, preset)
        if g == "defense":
            source = _option("defense", recipe) if recipe else opt
            for patch, origin in _target_recipe(source, dataset_keys, preset):
                cfg = _merge(cfg, {"target": patch}, origin)
        for patch, origin in entry.get(g, []):
            cfg = _merge(cfg, {g: patch}, origin)
        cfg[g].name = opt.plugin
    cfg.preset = preset
    cfg.recipe = recipe

    cfg = _apply_dotted(cfg, dotted)
    return _validated(cfg)


def _apply_dotted(cfg: DictConfig, dotted: list[str]) -> DictConfig:
    """Dotted ``key=value`` overrides from the command line, checked and merged."""
    if not dotted:
        return cfg
    keys = [t.split("=", 1)[0] for t in dotted]
    _check_keys(cfg, keys, "command line")
    try:
        patch = OmegaConf.from_dotlist(list(dotted))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"cannot parse overrides: {str(exc).splitlines()[0]}") from None
    for tok in dotted:  # a text field keeps its text: YAML reads amp=off / compile=off as False
        key, raw = tok.split("=", 1)
        if _expected_type(cfg, key) == "str" and isinstance(OmegaConf.select(patch, key), bool):
            OmegaConf.update(patch, key, raw)
    cfg = _merge(cfg, patch, "command line")
    for key in ("defense.name", "attack.name", "preset", "dataset.name"):
        if key in keys:
            raise ConfigError(f"set '{key}' through the group ('{key.split('.')[0]}=...'), not as a field")
    return cfg


def from_record(config: dict[str, Any], overrides: list[str] | tuple[str, ...] = (), *,
                origin: str = "record", allowed: tuple[str, ...] | None = None) -> RunConfig:
    """The validated :class:`RunConfig` of a stored record's resolved ``config`` dict (schema
    defaults fill fields added since it was written), with dotted ``key=value`` ``overrides``.

    ``allowed``: the only keys the overrides may set (``judge.*`` = every key under ``judge``);
    any other is refused with a :class:`ConfigError` naming them (``mi-bench rescore``)."""
    if not isinstance(config, dict) or not isinstance(config.get("defense"), dict) \
            or not isinstance(config.get("attack"), dict):
        raise ConfigError(f"{origin}: its config is not a resolved mi-bench config (no defense/attack sections)")
    groups, dotted = parse_overrides(list(overrides))
    if groups:
        raise ConfigError(f"{', '.join(f'{k}=' for k in groups)} cannot be changed here: "
                          f"it selects what was run; {origin} keeps its own")
    if allowed is not None:
        for tok in dotted:
            key = tok.split("=", 1)[0]
            if not any(key == a or (a.endswith(".*") and key.startswith(a[:-1])) for a in allowed):
                raise ConfigError(f"'{key}' cannot be changed here (it changes what was run, not how it "
                                  f"is scored); allowed: {', '.join(allowed)}")
    try:
        defense_cls = DEFENSES.get(config["defense"].get("name", ""))
        attack_cls = ATTACKS.get(config["attack"].get("name", ""))
    except RegistryError as exc:
        raise ConfigError(f"{origin}: {exc}") from None
    cfg: DictConfig = OmegaConf.structured(RunConfig)
    cfg.defense = OmegaConf.structured(defense_cls.Config)
    cfg.attack = OmegaConf.structured(attack_cls.Config)
    cfg = _merge(cfg, config, origin)
    return _validated(_apply_dotted(cfg, dotted))


def _validated(cfg: DictConfig) -> RunConfig:
    """The dataclass of a merged config, every range, choice and cross-field rule checked."""
    try:
        run: RunConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        raise ConfigError(f"invalid config: {str(exc).splitlines()[0]}") from None
    errors = validate_dataclass(run) + check_judges(run.judges, run.judge)
    for section in ("target", "evaluator"):  # cross-field checks the trainer would raise late
        tc = getattr(run, section)
        if tc.optimizer == "sgd" and tc.nesterov and tc.momentum == 0:
            errors.append(f"{section}.nesterov=true needs {section}.momentum > 0 (or nesterov=false)")
        if any(m < 1 for m in tc.milestones):
            errors.append(f"{section}.milestones={list(tc.milestones)}: epochs are counted from 1")
    others = [("evaluator", run.evaluator), ("judge.resnet", run.judge.resnet), ("judge.robust", run.judge.robust)]
    for section, tc in others:
        if tc.pretrain:
            errors.append(f"{section}.pretrain={tc.pretrain}: pretraining on the public data is a target "
                          "option (target.pretrain=public); set it back to ''")
    if errors:
        raise ConfigError(errors[0] + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""))
    if run.dataset.name not in DATASETS:
        raise ConfigError(unknown_choice_message("dataset", run.dataset.name, DATASETS.names()))
    return run


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


# Fields that do not change what a run computes (where or how fast it runs, where it writes, how its
# numbers are read: the ``health`` thresholds).
# Like ``device``, ``compile``, ``tf32`` and ``channels_last`` change float rounding only.
NON_SEMANTIC = ("threads", "device", "compile", "tf32", "channels_last", "inversion_chunk", "data_root", "cache_dir",
                "results_db", "results_dir", "slurm", "progress_interval_s", "health")
# Semantic fields left out of the hash at their default, so adding them kept every earlier hash.
HASH_NEUTRAL_DEFAULTS = {"amp": "off", "cuda_graph": False}


def _plugin_config_class(section: str, values: dict[str, Any]) -> Any:
    reg = {"defense": DEFENSES, "attack": ATTACKS}.get(section)
    name = values.get("name")
    return reg.get(name).Config if reg is not None and name in reg else None


def semantic_config(config: dict[str, Any], drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """A resolved config (as a dict) without its non-semantic fields, ``drop``, and the fields
    that are hash-neutral at their default - top-level ones (``HASH_NEUTRAL_DEFAULTS``) and any
    field declared ``param(..., neutral_default=True)``, in any section, plugins included - so
    records written before such a field existed compare equal to records written after, at the
    default."""
    out = {k: v for k, v in config.items() if k not in NON_SEMANTIC + drop
           and not (k in HASH_NEUTRAL_DEFAULTS and v == HASH_NEUTRAL_DEFAULTS[k])}
    return strip_neutral(out, RunConfig, _plugin_config_class)


def config_hash(config: dict[str, Any], drop: tuple[str, ...] = ()) -> str:
    """Hash of a resolved config (as a dict) without its non-semantic fields and ``drop``."""
    return stable_hash(semantic_config(config, drop))


def stable_hash(obj: Any, n: int = 16) -> str:
    """Hash of a JSON-able object, independent of key order."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:n]
