"""The registry and the plugin contract, parametrised over everything registered (so a new
plugin is tested automatically), plus third-party plugins through entry points."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mi_bench.config import compose
from mi_bench.data import DatasetConfig, load_splits
from mi_bench.errors import ConfigError, RegistryError
from mi_bench.interfaces import Attack, Defense
from mi_bench.models import build_model
from mi_bench.registry import ATTACKS, DEFENSES, Registry
from mi_bench.runtime import NULL_BARS
from mi_bench.train import train_classifier

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny():
    s = load_splits(DatasetConfig(), REPO)
    x, y = s.private_train
    return s, (x[:96], y[:96])


def test_duplicate_names_are_rejected():
    reg = Registry("widget", ())

    @reg.register("a")
    class A:  # noqa: D401
        pass

    with pytest.raises(RegistryError, match="duplicate widget name 'a'"):
        @reg.register("a")
        class B:
            pass


def test_unknown_name_suggests_the_closest():
    with pytest.raises(RegistryError, match="unknown defense 'bidoo'. Did you mean 'bido'"):
        DEFENSES.get("bidoo")


@pytest.mark.parametrize("name,prior", [("gmi", "shared"), ("kedmi", "per_target"), ("plgmi", "per_target"),
                                        ("random", "shared"), ("pixel", "shared")])
def test_builtin_attacks_are_registered_with_their_prior_kind(name, prior):
    # a per-target prior (KED-MI's and PLG-MI's GANs use the target) is trained again per target
    cls = ATTACKS.get(name)
    assert cls.name == name and cls.requirements.prior == prior


def _numeric_field_with_lower_bound(cfg_cls):
    for f in dataclasses.fields(cfg_cls):
        for key in ("ge", "gt"):
            if f.metadata.get(key) is not None and f.type in (int, float, "int", "float"):
                return f.name, f.metadata[key] - 1
    return None


def _smoke_plugin(kind: str, name: str, registry: Registry, base: type):
    """The smoke-preset run config with plugin ``name`` chosen, and its class (which must
    subclass ``base`` and state a summary and a paper)."""
    cfg = compose([f"{kind}={name}", "preset=smoke"])
    cls = registry.get(name)
    assert issubclass(cls, base) and cls.summary and cls.paper
    return cfg, cls


def _mcnn():
    return build_model("mcnn", num_classes=5, in_channels=1, width=0.25)


@pytest.mark.parametrize("name", DEFENSES.names())
def test_every_defense_trains_under_its_smoke_preset(name, tiny):
    splits, train = tiny
    cfg, cls = _smoke_plugin("defense", name, DEFENSES, Defense)
    d = cls(cfg.defense, num_classes=5, input_shape=(1, 32, 32))
    res = train_classifier(_mcnn, train, splits.private_val,
                           dataclasses.replace(cfg.target, epochs=1, batch_size=32), seed=0, defense=d)
    out = res.model(splits.private_test[0][:8])
    assert out.shape == (8, 5) and torch.isfinite(out).all()
    for _, mod in res.model.named_modules():
        assert not mod._forward_hooks, "a defense left a forward hook behind"


@pytest.mark.parametrize("name", DEFENSES.names())
def test_every_defense_rejects_a_bad_parameter(name):
    bad = _numeric_field_with_lower_bound(DEFENSES.get(name).Config)
    if bad is None:
        pytest.skip(f"{name} has no bounded numeric parameter")
    field, value = bad
    with pytest.raises(ConfigError, match=f"defense.{field}"):
        compose([f"defense={name}", f"defense.{field}={value}"])


@pytest.mark.parametrize("name", ATTACKS.names())
def test_every_attack_inverts_under_its_smoke_preset_and_rejects_wrong_targets(name, tiny):
    splits, _ = tiny
    cfg, cls = _smoke_plugin("attack", name, ATTACKS, Attack)
    target = _mcnn().eval()
    atk = cls(cfg.attack, image_shape=(1, 32, 32), num_classes=5, device=torch.device("cpu"))
    prior = atk.train_prior(splits.public[0][:128],
                            target if cls.requirements.prior == "per_target" else None,
                            seed=0, progress=NULL_BARS)
    inv = atk.invert(target, prior, [0, 3], seed=0, progress=NULL_BARS)
    assert inv.images.shape[0] == 2 and inv.images.shape[2:] == (1, 32, 32)
    assert inv.images.min() >= 0 and inv.images.max() <= 1 and inv.classes == [0, 3]
    assert inv.protocol, "an attack must state its protocol"
    with pytest.raises(ValueError, match="class"):
        atk.invert(target, prior, [5], seed=0, progress=NULL_BARS)


@pytest.mark.parametrize("name", ATTACKS.names())
def test_every_attack_rejects_a_bad_parameter(name):
    bad = _numeric_field_with_lower_bound(ATTACKS.get(name).Config)
    assert bad is not None
    field, value = bad
    with pytest.raises(ConfigError, match=f"attack.{field}"):
        compose([f"attack={name}", f"attack.{field}={value}"])


def _write_dist(root: Path, name: str, entry_points: str, module: str, source: str) -> None:
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    dist = root / f"{name}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent(entry_points))


PLUGIN = """
from dataclasses import dataclass
import torch
from mi_bench.interfaces import Defense, LossOutput
from mi_bench.params import PluginConfig, param

@dataclass
class SmoothConfig(PluginConfig):
    alpha: float = param(0.1, ge=0.0, le=1.0, help="label smoothing")

class LabelSmoothing(Defense):
    Config = SmoothConfig
    summary = "third-party test plugin: label smoothing"
    paper = "Szegedy et al. 2016"
    def compute_loss(self, batch):
        ce = torch.nn.functional.cross_entropy(batch.logits, batch.y, label_smoothing=self.cfg.alpha)
        return LossOutput(ce, {"ce": float(ce.detach())})
"""


@pytest.mark.slow  # minute-long on the 2-core machine: the slow lane
def test_entry_point_plugin_runs_through_mi_bench_run_and_broken_one_only_warns(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    _write_dist(site, "mb_demo_plugin", """
        [mi_bench.defenses]
        smooth = mb_demo_plugin:LabelSmoothing
        broken = mb_broken_plugin:Nope
        """, "mb_demo_plugin", PLUGIN)
    (site / "mb_broken_plugin.py").write_text("raise ImportError('missing dependency foo')\n")
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "MI_BENCH_CACHE": str(tmp_path / "cache"), "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "mi_bench.cli"]
    r = subprocess.run(cmd + ["run", "defense=smooth", "defense.alpha=0.2", "preset=smoke", "--json", "--quiet",
                              f"results_db={tmp_path}/r.sqlite", f"results_dir={tmp_path}/runs"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)
    assert rec["config"]["defense"] == {"name": "smooth", "alpha": 0.2}
    assert "broken" in r.stderr and "missing dependency foo" in r.stderr
    lst = subprocess.run(cmd + ["list"], capture_output=True, text=True, env=env, timeout=120)
    assert lst.returncode == 0 and "smooth" in lst.stdout and "bido" in lst.stdout
    assert "broken" in lst.stdout + lst.stderr
    bad = subprocess.run(cmd + ["show-config", "defense=smooth", "defense.alpha=2"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "defense.alpha=2" in bad.stderr


def test_a_defense_setup_runs_after_the_base_fields_and_can_refuse():
    from mi_bench.params import PluginConfig

    class Sized(Defense):
        def setup(self, cfg):
            if self.num_classes < 2:
                raise ValueError("sized: needs 2 classes or more")
            self.seen = (cfg is self.cfg, self.num_classes, self.input_shape)

    d = Sized(PluginConfig(name="sized"), num_classes=5, input_shape=(1, 32, 32))
    assert d.seen == (True, 5, (1, 32, 32))
    with pytest.raises(ValueError, match="needs 2 classes"):
        Sized(PluginConfig(name="sized"), num_classes=1, input_shape=(1, 32, 32))
