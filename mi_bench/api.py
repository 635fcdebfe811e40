"""The plugin API: everything an attack or defense plugin may import from mi-bench.

A plugin (built-in under ``attacks/`` or ``defenses/``, or a third-party package's entry point)
imports from this module and from nothing else of mi-bench; the rest of the package may change
between versions, this module does not without notice. ``tests/test_plugin_contract.py`` holds
every built-in plugin to it.

The contract, in full (the README's "Adding a defense" / "Adding an attack" walk through it):

* **A class** deriving from :class:`Defense` or :class:`Attack`, registered with
  ``@register_defense("name")`` / ``@register_attack("name")``. Built-ins are discovered: one
  new file under ``defenses/`` or ``attacks/`` is all it takes (``mi_bench.registry.discover``).
* **A config** dataclass deriving from :class:`PluginConfig`, every field declared with
  :func:`param` (range, choices, help). Flags with consequences:

  - ``label=True`` on each *strength* field: it is written into the leaderboard label
    (``mydefense[alpha=0.1]``); without it runs at different strengths share one label;
  - ``prior=True`` on each attack field the prior depends on: only those enter the prior's cache
    key, so a missing flag reuses a stale prior (the contract test perturbs every other field
    and checks the prior's key and output are unchanged);
  - ``sweep=(...)``: the documented range, expanded by ``mi-bench sweep key=@sweep``;
  - ``neutral_default=True`` on a field added after results were recorded: at its default it
    stays out of the config hash.

* **Presets**: ``configs/<defense|attack>/<name>.yaml`` with at least a ``smoke`` preset (the
  contract test runs every plugin end to end under it; it must take seconds), and ``quick``,
  ``cpu``, ``paper`` where they differ; or a ``presets`` class attribute (third-party plugins).
  Deviations from the paper are said in the YAML and in FIDELITY.md.
* **Calibration baselines** (no real attack: how much of a score needs none) set
  ``calibration = <column>`` on their class; the leaderboard reports every real attack's margin
  over them.
* **Per-target artifacts** besides the prior (LOMMA's surrogates): :meth:`Attack.target_aux_spec`
  and :meth:`Attack.train_target_aux`.

Targets handed to an attack satisfy :class:`Classifier` (``embed``, ``head``, ``hidden_layers``,
``feature_dim``). The helpers below are shared by the built-in attacks and defenses.
"""

from __future__ import annotations

from mi_bench.adversarial import pgd
from mi_bench.attacks.common import (
    DCGANGenerator, WGANCritic, frozen, gradient_penalty, load_prefixed, n_stages, prefixed,
    sample_batches, target_probs,
)
from mi_bench.hsic import (
    dependence, dependence_of, gaussian_kernel, kernel_from_sq, label_kernel, prepare, sq_distances,
)
from mi_bench.interfaces import (
    Attack, AttackConfig, AttackRequirements, Classifier, Defense, Inversion, LossOutput, TrainBatch,
)
from mi_bench.models import build_model
from mi_bench.params import PluginConfig, param
from mi_bench.registry import ATTACKS, DEFENSES, MODELS
from mi_bench.cuda_graph import GraphedStep
from mi_bench.runtime import FiniteCheck, gather, host_floats, to_device, upload

register_attack = ATTACKS.register
register_defense = DEFENSES.register

__all__ = [
    # base classes and what they exchange
    "Attack", "AttackRequirements", "Classifier", "Defense", "Inversion", "LossOutput", "TrainBatch",
    # configs
    "AttackConfig", "PluginConfig", "param",
    # registration; the classifier families (build_model(name, ...), MODELS.names())
    "register_attack", "register_defense", "build_model", "MODELS",
    # attack helpers (mi_bench.attacks.common)
    "DCGANGenerator", "WGANCritic", "frozen", "gradient_penalty", "load_prefixed", "n_stages",
    "prefixed", "sample_batches", "target_probs",
    # dependence measures for defenses (mi_bench.hsic)
    "dependence", "dependence_of", "gaussian_kernel", "kernel_from_sq", "label_kernel", "prepare",
    "sq_distances",
    # adversarial examples (mi_bench.adversarial: the robust judge's PGD)
    "pgd",
    # device and loop helpers (mi_bench.runtime)
    "FiniteCheck", "GraphedStep", "gather", "host_floats", "to_device", "upload",
]
