"""A cap on the inversion: ``attack.max_latents=N`` (:class:`mi_bench.interfaces.AttackConfig`).

Inversion can dominate a run (a folder of 50 people at 20 latents each: 642 of 992 s). With a cap
of ``N`` latents and ``L`` latents per class (:meth:`Attack.latents_per_class`: samples per class
x restarts), a run inverts ``k = N // L`` of the classes it would attack (``classes=``, or all
private classes), never more than there are, and states the rest as left out.

Which classes (the rule, reproducible and independent of library versions): the requested
classes are ranked by ``sha256("<run seed>:<class>")`` (hex digest, ascending) and the first
``k`` are attacked, in ascending class order. The same seed attacks the same classes; a larger cap
attacks a superset of a smaller one's classes; another seed draws another subset.

A time budget, ``attack.time_budget_s=T``: before inverting (once the prior is ready), two
iterations of the real inversion of those classes are timed (``mi_bench.dataplan.time_inversion``)
and, when the whole would take longer than ``T``, only ``k = max(1, floor(n x T / estimate))`` of
the ``n`` classes are inverted - the first ``k`` in the same sha256 order. ``k`` depends on this
machine's speed (the record states the timing); the classes, given ``k``, do not.

The cap and what it left out are stated in the record (``protocol.inversion.cap``) and the run
table. ``max_latents=0`` and ``time_budget_s=0`` (the defaults) cap nothing and leave every config
hash as it was.
"""

from __future__ import annotations

import hashlib
from typing import Any

from mi_bench.errors import ConfigError
from mi_bench.registry import ATTACKS

RULE = ("the k = max_latents // latents_per_class requested classes with the smallest "
        "sha256('<run seed>:<class>') hex digest, attacked in ascending order")


def latents_per_class(attack_cfg: Any) -> int:
    """Latents per attacked class of the attack configured by ``attack_cfg`` (its plugin's rule)."""
    cls = ATTACKS.get(attack_cfg.name)
    return int(cls.latents_per_class(attack_cfg))


def rank(classes: list[int], seed: int) -> list[int]:
    """``classes`` in the cap's order: by ``sha256("<seed>:<class>")``, ascending."""
    return sorted(classes, key=lambda c: hashlib.sha256(f"{seed}:{int(c)}".encode()).hexdigest())


def cap_classes(classes: list[int], attack_cfg: Any, seed: int) -> tuple[list[int], dict[str, Any] | None]:
    """The classes to invert under ``attack_cfg.max_latents`` and the cap's statement for the
    record (None without a cap: ``max_latents`` 0 or absent from the plugin's config).

    Raises :class:`ConfigError` when the cap is below one class's latents."""
    n_max = int(getattr(attack_cfg, "max_latents", 0) or 0)
    if n_max <= 0:
        return list(classes), None
    per = latents_per_class(attack_cfg)
    if n_max < per:
        raise ConfigError(
            f"attack.max_latents={n_max} is below the {per} latents of one class (samples_per_class x "
            f"restarts): raise it to at least {per}, or lower attack.samples_per_class")
    k = min(len(classes), n_max // per)
    attacked = sorted(rank(list(classes), seed)[:k])
    left_out = sorted(c for c in classes if c not in set(attacked))
    statement = {
        "max_latents": n_max, "latents_per_class": per, "latents": k * per,
        "classes_requested": len(classes), "classes_attacked": len(attacked),
        "attacked": attacked, "left_out": left_out, "binding": bool(left_out), "seed": seed,
        "rule": RULE,
    }
    return attacked, statement


BUDGET_RULE = ("k = max(1, floor(n x time_budget_s / estimate)) of the n classes left by "
               "max_latents, the inversion's time taken as proportional to its classes; the estimate "
               "times 2 iterations on this machine (mi_bench.dataplan.time_inversion), so k depends on "
               "its speed; the k classes are the first in the sha256 order above")


def budget_classes(cfg: Any, splits: Any, target: Any, prior: dict[str, Any], classes: list[int],
                   cap: dict[str, Any] | None, *, device: Any, accel: Any = None
                   ) -> tuple[list[int], dict[str, Any] | None]:
    """``attack.time_budget_s``: the classes whose inversion fits the budget, and the cap's
    statement (``cap``, from :func:`cap_classes`, extended; a new one when there was none).
    Unchanged without a budget. The global random state is left as it was."""
    import torch

    budget = float(getattr(cfg.attack, "time_budget_s", 0.0) or 0.0)
    if budget <= 0:
        return classes, cap
    from mi_bench.dataplan import time_inversion

    devices = [device] if getattr(device, "type", "cpu") == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        estimate, per_step, steps = time_inversion(cfg, splits, target, prior, classes, device=device,
                                                   accel=accel)
    n = len(classes)
    k = n if estimate <= budget else max(1, min(n, int(n * budget / estimate)))
    attacked = sorted(rank(list(classes), cfg.seed)[:k])
    per = latents_per_class(cfg.attack)
    statement = dict(cap) if cap else {
        "max_latents": 0, "latents_per_class": per, "classes_requested": n, "left_out": [],
        "seed": cfg.seed, "rule": RULE}
    left_out = sorted(set(statement["left_out"]) | (set(classes) - set(attacked)))
    statement.update({
        "attacked": attacked, "left_out": left_out, "classes_attacked": len(attacked),
        "latents": len(attacked) * per, "binding": bool(left_out), "time_budget_s": budget,
        "time_estimate": {"classes": n, "estimate_s": round(estimate, 3),
                          "s_per_step": None if per_step is None else round(per_step, 4),
                          "steps": steps, "fits_in_budget": estimate <= budget,
                          "fits_one_class": n * budget / estimate >= 1 if estimate > 0 else True,
                          "rule": BUDGET_RULE},
    })
    return attacked, statement


def describe(cap: dict[str, Any]) -> tuple[str, str]:
    """The run table's row for a cap: (value, protocol)."""
    value = f"{cap['classes_attacked']} of {cap['classes_requested']} classes"
    parts = []
    if cap.get("max_latents"):
        parts.append(f"attack.max_latents={cap['max_latents']}")
    est = cap.get("time_estimate")
    if est:
        parts.append(f"attack.time_budget_s={cap['time_budget_s']:g} (all {est['classes']} classes "
                     f"estimated at {est['estimate_s']:.1f} s here"
                     + ("" if est["fits_one_class"] else "; not even one class fits: one attacked") + ")")
    where = f"{', '.join(parts)} ({cap['latents_per_class']} latents per class, {cap['latents']} inverted); "
    if cap["left_out"]:
        where += f"left out (not attacked): {cap['left_out']}; chosen by seed {cap['seed']}: {cap['rule']}"
    else:
        where += "not reached: every requested class attacked"
    return value, where
