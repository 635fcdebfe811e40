"""Typed hyperparameters with ranges, choices and help text.

Every config section (a plugin's ``Config`` dataclass included) declares its fields with
:func:`param`. The metadata drives:

* validation: ``ge``/``gt``/``le``/``lt``/``choices`` (errors name the field and what it accepts);
* help text (``mi-bench show-config`` and the README);
* ``label=True``: a *strength* field. It is written into the leaderboard label of every run
  (``bido[lambda_x=0.05,lambda_y=0.5]``), so runs at different strengths are different entries.
  Choice fields (``choices=``) that differ from their default are added to the label too.
* ``sweep=(...)``: the field's documented range. ``mi-bench sweep defense.lambda_y=@sweep``
  expands to it (DomainBed's hyperparameter registry, without random sampling);
* ``prior=True`` (attack fields): the attack's prior depends on this field, so it enters the
  prior's cache key; every other field must leave the prior unchanged
  (``tests/test_plugin_contract.py`` checks it by perturbing each one);
* ``neutral_default=True``: a field added after results were recorded. At its default it is left
  out of every config hash, so earlier results keep their hashes (``mi_bench.config.semantic_config``).
* ``only_with="<bool field>"`` (with ``neutral_default=True``): a setting of an option that is
  off by default (LOMMA's ``lomma_*`` settings, ``only_with="lomma"``). While that field is off
  the setting changes nothing, so it is left out of every config hash whatever its value: a preset
  may give it a value for runs that turn the option on without changing the others' hashes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING, dataclass
from typing import Any, Sequence


def param(
    default: Any = MISSING,
    *,
    help: str = "",
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: Sequence[Any] | None = None,
    sweep: Sequence[Any] | None = None,
    label: bool = False,
    prior: bool = False,
    neutral_default: bool = False,
    only_with: str | None = None,
    default_factory: Any = MISSING,
) -> Any:
    meta = {
        "help": help, "ge": ge, "gt": gt, "le": le, "lt": lt,
        "choices": tuple(choices) if choices is not None else None,
        "sweep": tuple(sweep) if sweep is not None else None,
        "label": label, "prior": prior, "neutral_default": neutral_default,
    }
    if only_with is not None:
        meta["only_with"] = only_with
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass
class PluginConfig:
    """Base of every attack/defense config. ``name`` is the registered plugin name."""

    name: str = ""


def check_field(path: str, value: Any, meta: dict) -> str | None:
    """Return an error message when ``value`` violates the field's declared range/choices."""
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        return f"{path}={value!r} is not allowed: choose one of {', '.join(map(str, choices))}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        for key, ok, word in (
            ("ge", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
            ("le", lambda v, b: v <= b, "<="), ("lt", lambda v, b: v < b, "<"),
        ):
            bound = meta.get(key)
            if bound is not None and not ok(value, bound):
                return f"{path}={value!r} is out of range: it must be {word} {bound}"
    return None


def validate_dataclass(obj: Any, prefix: str = "") -> list[str]:
    """Walk a (nested) dataclass instance and collect range/choice violations."""
    errors: list[str] = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            errors.extend(validate_dataclass(value, path + "."))
            continue
        msg = check_field(path, value, dict(f.metadata))
        if msg:
            errors.append(msg)
    return errors


def prior_fields(cfg: Any) -> dict[str, Any]:
    """The fields of an attack config marked ``prior=True`` (what its GAN prior depends on)."""
    return {
        f.name: getattr(cfg, f.name)
        for f in dataclasses.fields(cfg)
        if f.metadata.get("prior")
    }



def label_fields(cfg: Any) -> dict[str, Any]:
    """The fields of a plugin config that name its runs in the leaderboard: the strength fields
    (``label=True``) and the choice fields that differ from their default, in declaration order."""
    out = {}
    for f in dataclasses.fields(cfg):
        if f.name == "name":
            continue
        value = getattr(cfg, f.name)
        if f.metadata.get("label") or (f.metadata.get("choices") and value != f.default):
            out[f.name] = value
    return out


def sweep_range(cfg_cls: Any, name: str) -> tuple[Any, ...] | None:
    """The documented range (``sweep=``) of field ``name`` of a config dataclass, or None."""
    for f in dataclasses.fields(cfg_cls):
        if f.name == name:
            return f.metadata.get("sweep")
    return None


def _default(f: dataclasses.Field) -> Any:
    return f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]


def neutral_defaults(cfg_cls: Any) -> dict[str, Any]:
    """``{field: default}`` of the fields marked ``neutral_default=True`` (hash-neutral at their
    default)."""
    return {f.name: _default(f) for f in dataclasses.fields(cfg_cls) if f.metadata.get("neutral_default")}


def strip_neutral(values: dict[str, Any], cfg_cls: Any, plugin_classes: Any = None) -> dict[str, Any]:
    """``values`` (a config section as a dict) without the ``neutral_default`` fields of
    ``cfg_cls`` that hold their default (or whose ``only_with`` option is off), recursively into
    nested config sections. Sections typed ``Any`` (a run's ``defense`` / ``attack``) are resolved
    by ``plugin_classes(section, dict)`` (a plugin's ``Config`` class, or None). Fields unknown to
    ``cfg_cls`` are kept: records written by other versions hash as they were."""
    import typing

    try:
        hints = typing.get_type_hints(cfg_cls)
    except Exception:  # noqa: BLE001 - an unresolvable annotation: compare by name only
        hints = {}
    fields = {f.name: f for f in dataclasses.fields(cfg_cls)}

    def off(f: dataclasses.Field) -> bool:  # only_with: the option it belongs to is off
        gate = fields.get(f.metadata.get("only_with") or "")
        return gate is not None and not values.get(gate.name, _default(gate))

    out = {}
    for k, v in values.items():
        f = fields.get(k)
        if f is not None and f.metadata.get("neutral_default") and (v == _default(f) or off(f)):
            continue
        sub = hints.get(k)
        if isinstance(v, dict):
            if not (isinstance(sub, type) and dataclasses.is_dataclass(sub)) and plugin_classes is not None:
                sub = plugin_classes(k, v)
            if isinstance(sub, type) and dataclasses.is_dataclass(sub):
                v = strip_neutral(v, sub, plugin_classes)
        out[k] = v
    return out


def hash_dict(obj: Any) -> dict[str, Any]:
    """A config section (dataclass instance) as the dict that enters cache keys: ``asdict``
    without its ``neutral_default`` fields at their default (recursively)."""
    return strip_neutral(dataclasses.asdict(obj), type(obj), lambda _k, _v: None)
