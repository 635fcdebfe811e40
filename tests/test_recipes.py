"""Per-method training recipes (``datasets:`` entries of defense/attack YAML), the ``recipe=``
selector for matched baselines, and the trainer's Nesterov / step schedule / drop-last."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

import mi_bench.config as config
from mi_bench.cli import cli
from mi_bench.config import compose
from mi_bench.data import DATASETS
from mi_bench.errors import ConfigError
from mi_bench.models import build_model
from mi_bench.record import defense_label
from mi_bench.train import TrainConfig, epoch_batches, make_optimizer, train_classifier

REPO = Path(__file__).resolve().parents[1]
MNIST_LIKE = ("digits", "mnist")
PRESETS = ("smoke", "quick", "paper")


def target(*tokens: str) -> dict:
    return config.to_dict(compose(list(tokens)).target)


# -- the show-config check of the issue ------------------------------------------------------

def test_show_config_paper_mnist_bido_is_adam_lr_0_1():
    r = CliRunner().invoke(cli, ["show-config", "preset=paper", "dataset=mnist", "defense=bido"],
                           catch_exceptions=False)
    assert r.exit_code == 0
    t = yaml.safe_load(r.output)["target"]
    assert t["optimizer"] == "adam" and t["lr"] == 0.1 and t["weight_decay"] == 0.0
    assert t["drop_last"] is True and t["epochs"] == 20 and t["batch_size"] == 64


# -- the official recipes ---------------------------------------------------------------------

@pytest.mark.parametrize("dataset", MNIST_LIKE)
def test_official_mnist_recipes(dataset):
    none = target(f"dataset={dataset}", "preset=paper", "defense=none")
    assert (none["optimizer"], none["nesterov"], none["lr"], none["momentum"], none["weight_decay"],
            none["milestones"], none["gamma"], none["drop_last"]) == (
        "sgd", True, 0.1, 0.5, 0.0, [20, 35], 0.2, True)  # BiDO/train_reg.py
    mid = target(f"dataset={dataset}", "preset=paper", "defense=mid")
    assert (mid["optimizer"], mid["nesterov"], mid["lr"], mid["momentum"], mid["weight_decay"],
            mid["milestones"], mid["drop_last"]) == ("sgd", False, 0.1, 0.5, 0.0, [], True)
    dp = target(f"dataset={dataset}", "preset=paper", "defense=dpsgd")
    assert (dp["optimizer"], dp["lr"], dp["momentum"]) == ("sgd", 0.1, 0.0)  # Opacus example
    ev = config.to_dict(compose([f"dataset={dataset}", "preset=paper"]).evaluator)
    assert (ev["model"], ev["epochs"], ev["lr"], ev["momentum"], ev["nesterov"], ev["weight_decay"],
            ev["milestones"], ev["gamma"]) == ("scnn", 30, 0.01, 0.5, True, 0.0, [25], 0.2)


@pytest.mark.parametrize("dataset", MNIST_LIKE)
@pytest.mark.parametrize("preset", PRESETS)
def test_recipes_apply_under_every_preset_and_defenses_without_one_train_like_none(dataset, preset):
    base = (f"dataset={dataset}", f"preset={preset}")
    none = target(*base, "defense=none")
    for option in ("qad", "desmil"):  # adaptations with no official recipe
        assert target(*base, f"defense={option}") == none, option
    bido = target(*base, "defense=bido")
    assert bido["optimizer"] == "adam" and bido["lr"] == 0.1
    for alias in ("bido-hsic", "bido-coco", "bido-shipped"):  # aliases inherit bido's recipe
        assert target(*base, f"defense={alias}") == bido, alias
    # only how, not how long: epochs/width stay the preset's and dataset's
    assert {bido["epochs"], bido["width"]} == {none["epochs"], none["width"]}


def test_bido_lambdas_and_aliases():
    cfg = compose(["defense=bido-coco", "dataset=mnist", "preset=paper"]).defense
    assert (cfg.measure, cfg.lambda_x, cfg.lambda_y) == ("coco", 1.0, 50.0)
    cfg = compose(["defense=bido-shipped", "dataset=mnist", "preset=paper"]).defense
    assert (cfg.measure, cfg.lambda_x, cfg.lambda_y) == ("hsic", 1.0, 50.0)  # "as shipped"
    cfg = compose(["defense=bido", "dataset=mnist", "preset=paper"]).defense
    assert (cfg.measure, cfg.lambda_x, cfg.lambda_y) == ("hsic", 0.05, 0.5)
    # the published CelebA settings apply on CelebA (and the MNIST recipe does not leak into it)
    cel = compose(["defense=bido", "dataset=celeba", "preset=paper"])
    assert (cel.defense.lambda_x, cel.defense.lambda_y) == (0.05, 0.5)
    assert (cel.target.optimizer, cel.target.lr, cel.target.sampler) == ("adam", 1.0e-4, "pk")
    mn = compose(["defense=bido", "dataset=mnist", "preset=paper"]).target
    assert (mn.optimizer, mn.lr, mn.sampler) == ("adam", 0.1, "random")


def test_attack_paper_presets_follow_the_official_code():
    ked = compose(["attack=kedmi", "preset=paper", "dataset=mnist"]).attack
    assert ked.latent_clamp == "none" and ked.entropy_reduction == "sum" and ked.gan_steps == 10700
    for preset in ("quick", "smoke"):
        assert compose(["attack=kedmi", f"preset={preset}"]).attack.latent_clamp == "none"
    gmi = compose(["attack=gmi", "preset=paper", "dataset=mnist"]).attack
    assert gmi.lr == 0.01 and gmi.identities_per_batch == 0 and gmi.iterations == 1500
    plg = compose(["attack=plgmi", "preset=paper", "dataset=mnist"]).attack
    assert plg.image_range == "official" and plg.top_n == 0


# -- matched baselines: recipe= ---------------------------------------------------------------

def test_recipe_selector_trains_none_with_the_defense_recipe():
    for preset in PRESETS:
        matched = compose(["defense=none", "recipe=bido", f"preset={preset}"])
        assert config.to_dict(matched.target) == target("defense=bido", f"preset={preset}")
        assert matched.recipe == "bido" and matched.defense.name == "none"
        assert defense_label(matched.defense, matched.recipe) == "none[recipe=bido]"
    # the same recipe as the selected defense is no recipe at all (same config, same label)
    same = compose(["defense=mid", "recipe=mid"])
    assert same.recipe == "" and config.to_dict(same) == config.to_dict(compose(["defense=mid"]))
    # a defense option without a recipe of its own gives the published baseline's training
    assert target("defense=none", "recipe=qad") == target("defense=none")
    # another defense trained with bido's recipe keeps its own settings
    dp = compose(["defense=dpsgd", "recipe=bido"])
    assert dp.target.optimizer == "adam" and dp.defense.noise_multiplier == 1.0
    assert "recipe=bido" in defense_label(dp.defense, dp.recipe)


def test_unknown_recipe_is_refused_with_a_suggestion(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="unknown recipe .*'bdo'.*Did you mean 'bido'"):
        compose(["recipe=bdo"])
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["run", "recipe=bdo", "preset=smoke"], catch_exceptions=False)
    assert r.exit_code == 2 and r.stderr.startswith("error:") and "bido" in r.stderr
    assert not (tmp_path / "results").exists()


# -- datasets without YAML, and CelebA once it exists ----------------------------------------

@pytest.fixture()
def fake_dataset(monkeypatch):
    """Register a dataset plugin by name for the duration of a test (composition only)."""
    DATASETS.names()  # load the built-ins first

    def add(name: str) -> None:
        monkeypatch.setitem(DATASETS._items, name, lambda cfg, root: None)

    return add


def test_a_dataset_without_entries_breaks_nothing(fake_dataset):
    fake_dataset("toyset")
    plain = target("dataset=toyset", "defense=none")
    assert plain == config.to_dict(TrainConfig(**{**plain}))  # a valid, complete section
    for option in ("bido", "bido-coco", "mid", "qad", "desmil", "dpsgd"):
        got = target("dataset=toyset", f"defense={option}", "preset=paper")
        assert got["optimizer"] == TrainConfig().optimizer and got["lr"] == TrainConfig().lr
    for attack in ("gmi", "kedmi", "plgmi"):
        compose(["dataset=toyset", f"attack={attack}", "preset=paper"])


def test_celeba_recipes_apply_once_a_celeba_dataset_exists(fake_dataset):
    if "celeba" not in DATASETS:
        fake_dataset("celeba")
    base = ("dataset=celeba", "preset=paper")
    none = target(*base, "defense=none")
    assert (none["optimizer"], none["lr"], none["momentum"], none["weight_decay"], none["sampler"],
            none["pk_classes"], none["batch_size"]) == ("sgd", 0.01, 0.9, 1e-4, "pk", 16, 64)
    bido = compose([*base, "defense=bido"])
    assert (bido.target.optimizer, bido.target.lr, bido.target.weight_decay) == ("adam", 1e-4, 0.0)
    assert (bido.defense.lambda_x, bido.defense.lambda_y) == (0.05, 0.5)
    coco = compose([*base, "defense=bido-coco"])
    assert (coco.defense.measure, coco.defense.lambda_x, coco.defense.lambda_y) == ("coco", 5.0, 35.0)
    assert config.to_dict(coco.target) == config.to_dict(bido.target)
    mid = compose([*base, "defense=mid"])
    assert (mid.target.lr, mid.target.momentum, mid.target.weight_decay, mid.defense.beta) == (
        0.01, 0.9, 1e-4, 0.003)
    assert target(*base, "defense=qad") == none
    gmi = compose([*base, "attack=gmi"]).attack
    assert (gmi.lr, gmi.identities_per_batch, gmi.gan_steps) == (0.02, 100, 26208)
    assert compose([*base, "attack=plgmi"]).attack.top_n == 30
    assert compose([*base, "attack=kedmi"]).attack.gan_steps == 11232
    assert compose(["dataset=celeba", "preset=quick", "attack=gmi"]).attack.gan_steps == 300


# -- validation of dataset entries -------------------------------------------------------------

@pytest.fixture()
def configs_copy(tmp_path, monkeypatch):
    """A writable copy of configs/ that compose() reads instead of the shipped one."""
    root = tmp_path / "configs"
    shutil.copytree(REPO / "configs", root)
    monkeypatch.setattr(config, "_config_dir", lambda: root)
    return root


@pytest.mark.parametrize("entry, needle", [
    ({"mnist": {"evaluator": {"lr": 1.0}}}, "datasets.mnist: a defense entry cannot patch 'evaluator'"),
    ({"mnist": {"target": {"lrr": 1.0}}}, "unknown config key 'target.lrr' (configs/defense/mid.yaml "
                                          "datasets.mnist.target)"),
    ({"mnist": {"target": {"lr": "fast"}}}, "wrong type for 'target.lr'"),
    ({"mnist": {"defense": {"betta": 1.0}}}, "unknown config key 'defense.betta'"),
    ({"mnist": {"presets": {"smoke": {"attack": {}}}}}, "presets.smoke: a defense entry cannot patch"),
    ({"mnist": ["sgd"]}, "datasets.mnist must be a mapping"),
])
def test_bad_dataset_entries_are_refused_naming_file_and_key(configs_copy, entry, needle):
    f = configs_copy / "defense" / "mid.yaml"
    data = yaml.safe_load(f.read_text())
    data["datasets"] = entry
    f.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as exc:
        compose(["defense=mid", "dataset=mnist", "preset=paper"])
    assert needle in str(exc.value)


@pytest.mark.parametrize("tokens, needle", [
    (["target.nesterov=true", "target.momentum=0.0"], "target.nesterov=true needs target.momentum > 0"),
    (["evaluator.milestones=[0]"], "evaluator.milestones=[0]: epochs are counted from 1"),
    (["target.gamma=1.5"], "target.gamma=1.5 is out of range"),
    (["target.drop_last=maybe"], "wrong type for 'target.drop_last'"),
])
def test_bad_training_options_are_refused_before_any_work(tokens, needle):
    with pytest.raises(ConfigError) as exc:
        compose(tokens)
    assert needle in str(exc.value)


def test_attack_entries_may_only_patch_the_attack(configs_copy):
    f = configs_copy / "attack" / "gmi.yaml"
    data = yaml.safe_load(f.read_text())
    data["datasets"] = {"mnist": {"target": {"lr": 1.0}}}
    f.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="an attack entry cannot patch 'target'; it may patch attack"):
        compose(["dataset=mnist"])
    compose(["dataset=digits"])  # the entry is only read for its dataset


# -- trainer: Nesterov, step schedule, drop-last ------------------------------------------------

def test_drop_last_drops_only_the_partial_batch():
    g = torch.Generator().manual_seed(0)
    labels = torch.zeros(100, dtype=torch.long)
    keep = epoch_batches(100, TrainConfig(batch_size=32), labels, g)
    assert [len(b) for b in keep] == [32, 32, 32, 4]
    drop = epoch_batches(100, TrainConfig(batch_size=32, drop_last=True), labels, g)
    assert [len(b) for b in drop] == [32, 32, 32]
    assert [len(b) for b in epoch_batches(96, TrainConfig(batch_size=32, drop_last=True), labels[:96], g)] == [32] * 3


@pytest.fixture(scope="module")
def tiny_data():
    from mi_bench.data import DatasetConfig, load_splits

    s = load_splits(DatasetConfig(), REPO)
    (x, y), (xv, yv) = s.private_train, s.private_val
    return (x[:100], y[:100]), (xv[:20], yv[:20])


def _fit(data, **kw):
    make = lambda: build_model("mcnn", num_classes=5, in_channels=1, width=0.25)  # noqa: E731
    cfg = TrainConfig(batch_size=32, selection="last", **kw)
    return train_classifier(make, *data, cfg, seed=0)


def test_trainer_step_schedule_nesterov_and_drop_last(tiny_data):
    res = _fit(tiny_data, epochs=4, lr=0.2, milestones=[1, 3], gamma=0.5, drop_last=True,
               momentum=0.5, nesterov=True)
    assert [round(h["lr"], 6) for h in res.history] == [0.2, 0.1, 0.1, 0.05]  # x0.5 after epochs 1, 3
    assert [h["batches"] for h in res.history] == [3] * 4  # 100 // 32, the partial batch dropped
    assert [h["batches"] for h in _fit(tiny_data, epochs=1).history] == [4]
    plain = _fit(tiny_data, epochs=2, lr=0.2, momentum=0.5).model.state_dict()
    nest = _fit(tiny_data, epochs=2, lr=0.2, momentum=0.5, nesterov=True).model.state_dict()
    assert any(not torch.equal(plain[k], nest[k]) for k in plain)
    opt = make_optimizer(torch.nn.Linear(2, 2).parameters(), TrainConfig(nesterov=True, momentum=0.5))
    assert opt.param_groups[0]["nesterov"] is True
    with pytest.raises(ValueError, match="nesterov=true needs momentum > 0"):
        make_optimizer(torch.nn.Linear(2, 2).parameters(), TrainConfig(nesterov=True, momentum=0.0))
    adam = make_optimizer(torch.nn.Linear(2, 2).parameters(), TrainConfig(optimizer="adam", lr=0.1,
                                                                          weight_decay=0.0))
    assert isinstance(adam, torch.optim.Adam) and adam.param_groups[0]["weight_decay"] == 0.0
