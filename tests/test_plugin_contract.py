"""The plugin contract (README, "Adding a defense" / "Adding an attack"), checked for every
registered plugin, and a new defense written as one file with no other file touched.

1. every plugin declares a ``smoke`` preset (the tests run every plugin at that scale);
2. a GAN prior's cache key depends exactly on the fields marked ``prior=True``: changing any
   other field leaves the key *and* the trained prior unchanged (a field the prior uses without
   the mark would otherwise reuse a stale prior silently);
3. one file in ``MI_BENCH_PLUGINS``: ``list``, ``run``, ``sweep`` and its leaderboard label."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mi_bench.config import compose, option_presets
from mi_bench.errors import ConfigError
from mi_bench.registry import ATTACKS, DEFENSES

REPO = Path(__file__).resolve().parents[1]
KINDS = {"defense": DEFENSES, "attack": ATTACKS}
PLUGINS = [(kind, name) for kind, reg in KINDS.items() for name in reg.names()]


@pytest.mark.parametrize("kind,name", PLUGINS, ids=[f"{k}-{n}" for k, n in PLUGINS])
def test_every_plugin_declares_a_smoke_preset(kind, name):
    presets = option_presets(kind, name)
    assert "smoke" in presets, (
        f"{kind} '{name}' declares no 'smoke' preset: add `presets: {{smoke: {{...}}}}` to "
        f"configs/{kind}/{name}.yaml (or a `presets` class attribute), the smallest settings that "
        "exercise it; the contract tests run every plugin at smoke scale")
    compose([f"{kind}={name}", "preset=smoke"])  # and it composes


def _other_value(f: dataclasses.Field, value):
    """A valid value other than ``value`` for field ``f`` (None when the field has no obvious one)."""
    meta = f.metadata
    if meta.get("choices"):
        others = [c for c in meta["choices"] if c != value]
        return others[0] if others else None
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        cand = [value + 1, value - 1, value * 2]
    elif isinstance(value, float):
        cand = [value * 1.5 if value else 0.1, value * 0.5, value + 0.1]
    else:
        return None
    for c in cand:
        ok = all(meta.get(k) is None or test(c, meta[k]) for k, test in (
            ("ge", lambda a, b: a >= b), ("gt", lambda a, b: a > b),
            ("le", lambda a, b: a <= b), ("lt", lambda a, b: a < b)))
        if ok and c != value:
            return type(value)(c)
    return None


def _valid(cfg) -> bool:
    from mi_bench.params import validate_dataclass

    return not validate_dataclass(cfg)


def _perturbations(name: str) -> dict[str, object]:
    """``{field: new value}`` for every non-prior field of attack ``name`` that has a valid
    other value (each checked against the field's declared range alone)."""
    cfg = compose([f"attack={name}", "preset=smoke"]).attack
    out = {}
    for f in dataclasses.fields(cfg):
        if f.name == "name" or f.metadata.get("prior"):
            continue
        new = _other_value(f, getattr(cfg, f.name))
        if new is not None and _valid(dataclasses.replace(cfg, **{f.name: new})):
            out[f.name] = new
    return out


WITH_PRIOR = [n for n in ATTACKS.names() if ATTACKS.get(n).requirements.prior != "none"]


@pytest.fixture(scope="module")
def digits():
    from mi_bench.data import DatasetConfig, load_splits

    return load_splits(DatasetConfig(), REPO)


def _prior_key(run_cfg, attack_cfg, splits) -> str:
    from mi_bench.config import stable_hash
    from mi_bench.stages import prior_spec

    return stable_hash(prior_spec(dataclasses.replace(run_cfg, attack=attack_cfg), splits, "target-key"))


@pytest.mark.parametrize("name", WITH_PRIOR)
def test_fields_not_marked_prior_leave_the_prior_key_unchanged_and_marked_ones_change_it(name, digits):
    run_cfg = compose([f"attack={name}", "preset=smoke"])
    cfg = run_cfg.attack
    key = _prior_key(run_cfg, cfg, digits)
    moved = _perturbations(name)
    assert moved, f"{name}: no field could be perturbed; the test would check nothing"
    for field, value in moved.items():
        assert _prior_key(run_cfg, dataclasses.replace(cfg, **{field: value}), digits) == key, (
            f"attack.{field} changes {name}'s prior key without prior=True")
    marked = 0
    for f in dataclasses.fields(cfg):
        if f.metadata.get("prior"):
            new = _other_value(f, getattr(cfg, f.name))
            if new is None or not _valid(dataclasses.replace(cfg, **{f.name: new})):
                continue
            marked += 1
            assert _prior_key(run_cfg, dataclasses.replace(cfg, **{f.name: new}), digits) != key, (
                f"attack.{f.name} is marked prior=True but is not in the prior's key")
    assert marked, f"{name} trains a prior but no field is marked prior=True"


def _state(prior) -> dict[str, torch.Tensor]:
    if isinstance(prior, torch.nn.Module):
        return prior.state_dict()
    assert isinstance(prior, dict), type(prior)
    return prior


@pytest.mark.parametrize("name", WITH_PRIOR)
def test_fields_not_marked_prior_leave_the_trained_prior_unchanged(name, digits):
    """All non-prior fields moved at once: the prior trained from the same seed is the same,
    bit for bit. A field the prior's training reads without ``prior=True`` fails this."""
    from mi_bench.models import build_model
    from mi_bench.runtime import NULL_BARS

    moved = _perturbations(name)
    base = compose([f"attack={name}", "preset=smoke"]).attack
    other = dataclasses.replace(base, **moved)
    torch.manual_seed(0)
    target = build_model("mcnn", num_classes=5, in_channels=1, width=0.25).eval()
    cls = ATTACKS.get(name)
    public = digits.public[0][:96]
    states = []
    for cfg in (base, other):
        atk = cls(cfg, image_shape=(1, 32, 32), num_classes=5, device=torch.device("cpu"))
        prior = atk.train_prior(public, target if cls.requirements.prior == "per_target" else None,
                                seed=0, progress=NULL_BARS)
        states.append(_state(prior))
    assert states[0].keys() == states[1].keys()
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), (
            f"{name}: the trained prior's {k} changed with non-prior fields {sorted(moved)}; "
            "mark the field the prior reads with prior=True")


ONE_FILE = '''
"""A defense in one file: input noise of a stated strength (the README's example)."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mi_bench.api import Defense, LossOutput, PluginConfig, param, register_defense


@dataclass
class NoisyInputsConfig(PluginConfig):
    sigma: float = param(0.1, ge=0.0, le=1.0, label=True, sweep=(0.05, 0.1, 0.2),
                         help="std of the Gaussian noise added to training images")


@register_defense("noisy-inputs")
class NoisyInputs(Defense):
    Config = NoisyInputsConfig
    summary = "test plugin: Gaussian noise on the training images"
    paper = "-"
    presets = {"smoke": {}, "quick": {}, "paper": {}}

    def compute_loss(self, batch):
        ce = F.cross_entropy(batch.logits, batch.y)
        return LossOutput(ce, {"ce": float(ce.detach())})
'''


@pytest.mark.slow  # one smoke run and a two-cell sweep in subprocesses: about 1 minute
def test_a_defense_in_one_file_lists_runs_sweeps_and_labels(tmp_path):
    plugin = tmp_path / "noisy_inputs.py"
    plugin.write_text(textwrap.dedent(ONE_FILE))
    env = {**os.environ, "MI_BENCH_PLUGINS": str(plugin), "MI_BENCH_CACHE": str(tmp_path / "cache"),
           "COLUMNS": "250"}
    cmd = [sys.executable, "-m", "mi_bench.cli"]
    where = [f"results_db={tmp_path}/r.sqlite", f"results_dir={tmp_path}/runs"]

    def mb(*args, timeout=300):
        return subprocess.run(cmd + list(args), capture_output=True, text=True, env=env, timeout=timeout,
                              cwd=tmp_path)

    lst = mb("list")
    assert lst.returncode == 0 and "noisy-inputs" in lst.stdout and "bido" in lst.stdout, lst.stderr
    r = mb("run", "defense=noisy-inputs", "defense.sigma=0.2", "preset=smoke", "--json", "--quiet", *where)
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)
    assert rec["config"]["defense"] == {"name": "noisy-inputs", "sigma": 0.2}
    assert rec["defense_label"] == "noisy-inputs[sigma=0.2]"
    dry = mb("sweep", "preset=smoke", "defense=noisy-inputs", "defense.sigma=@sweep", "--dry-run", *where)
    assert dry.returncode == 0, dry.stderr
    for s in ("0.05", "0.1", "0.2"):
        assert f"defense.sigma={s}" in dry.stdout, dry.stdout
    sw = mb("sweep", "preset=smoke", "defense=noisy-inputs", "defense.sigma=0.05,0.2", "--quiet", *where,
            timeout=600)
    assert sw.returncode == 0, sw.stdout + sw.stderr
    board = mb("leaderboard", "--db", f"{tmp_path}/r.sqlite", "--format", "csv")
    assert board.returncode == 0, board.stderr
    labels = [line.split(",")[2].strip('"') for line in board.stdout.splitlines()[1:] if line]
    assert sorted(labels) == ["noisy-inputs[sigma=0.05]", "noisy-inputs[sigma=0.2]"], board.stdout
    # a file that fails to import is named, and the rest still works
    (tmp_path / "broken.py").write_text("raise ImportError('needs foo')\n")
    env["MI_BENCH_PLUGINS"] = os.pathsep.join([str(plugin), str(tmp_path / "broken.py")])
    lst = mb("list")
    assert lst.returncode == 0 and "noisy-inputs" in lst.stdout
    assert "broken.py" in lst.stdout + lst.stderr and "needs foo" in lst.stdout + lst.stderr
