"""Typed hyperparameters with ranges, choices and help text.

Every config section (a plugin's ``Config`` dataclass included) declares its fields with
:func:`param`. The metadata drives validation (range/choices errors name the field and what it
accepts), help text, sweep ranges (DomainBed-style), and which attack
fields determine the attack's prior (``prior=True``; only those enter the prior's cache key).
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
    prior: bool = False,
    default_factory: Any = MISSING,
) -> Any:
    meta = {
        "help": help, "ge": ge, "gt": gt, "le": le, "lt": lt,
        "choices": tuple(choices) if choices is not None else None,
        "sweep": tuple(sweep) if sweep is not None else None,
        "prior": prior,
    }
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

