"""Tests of TL-DMI (defenses/tldmi.py) and the target's public pretraining (target.pretrain=public,
mi_bench.train / mi_bench.stages): the frozen layers are bit-identical to the pretrained network
after fine-tuning while the rest changes, freeze=0 without pretraining is `none` bit for bit, the
pretrain artifact is trained once and cached and enters the target's key, a smoke run end to end,
and the paper preset's refusal without weights. Digits only; ~45 s on one thread."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import math

import pytest
import torch
from click.testing import CliRunner

from mi_bench.artifacts import ArtifactStore
from mi_bench.cli import cli
from mi_bench.config import compose
from mi_bench.data import DatasetConfig, load_splits
from mi_bench.defenses.none import NoDefense
from mi_bench.defenses.tldmi import TLDMI, TLDMIConfig, frozen_parameter_names
from mi_bench.errors import ArtifactError, ConfigError
from mi_bench.face_models import IR152, VGG16BN
from mi_bench.models import MCNN
from mi_bench.params import PluginConfig
from mi_bench.runtime import NO_ACCEL
from mi_bench.stages import Stages, artifact_plan, target_key
from mi_bench.train import TrainConfig, init_from_pretrained, pretrain_set, train_classifier

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
KW = dict(num_classes=5, input_shape=(1, 32, 32))
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def splits():
    return load_splits(DatasetConfig(), REPO)


@pytest.fixture(scope="module")
def data(splits):
    x, y = splits.private_train
    return (x[:100], y[:100]), (splits.private_val[0][:30], splits.private_val[1][:30])


@pytest.fixture(scope="module")
def pretrained(splits):
    """An MCNN (width 0.25) trained 2 epochs on digits 5-9, the public classes."""
    x, y, classes = pretrain_set(splits.public, splits.private_classes, 2)
    assert classes == [5, 6, 7, 8, 9]
    res = train_classifier(lambda: MCNN(5, width=0.25), (x[:200], y[:200]), (x[:0], y[:0]),
                           TrainConfig(epochs=2, batch_size=32, selection="last"), seed=3)
    return res.model.state_dict()


def train(data, defense, make, epochs=2, seed=0):
    tr, va = data
    cfg = TrainConfig(epochs=epochs, batch_size=32, selection="last")
    return train_classifier(make, tr, va, cfg, seed=seed, defense=defense).model


def from_pretrained(state):
    def make():
        m = MCNN(5, width=0.25)
        init_from_pretrained(m, state, {"pretrain": "test"})
        return m
    return make


def same_state(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# -- freezing ---------------------------------------------------------------------------------------

def test_frozen_layers_stay_the_pretrained_ones_while_the_rest_is_fine_tuned(data, pretrained):
    model = train(data, TLDMI(TLDMIConfig(freeze=2), **KW), from_pretrained(pretrained))
    after = model.state_dict()
    frozen = [k for k in after if k.startswith(("block1.", "block2."))]
    assert any("running_mean" in k for k in frozen)  # BatchNorm statistics are checked too
    for k in frozen:
        assert torch.equal(after[k], pretrained[k]), k
    for k in ("block3.0.weight", "block3.1.running_mean", "head.weight"):
        assert not torch.equal(after[k], pretrained.get(k, torch.zeros_like(after[k]))), k


def test_frozen_bn_train_keeps_the_weights_and_updates_the_statistics(data, pretrained):
    """frozen_bn=train is the official behaviour: frozen weights, BatchNorm statistics adapt."""
    after = train(data, TLDMI(TLDMIConfig(freeze=2, frozen_bn="train"), **KW),
                  from_pretrained(pretrained)).state_dict()
    assert torch.equal(after["block1.0.weight"], pretrained["block1.0.weight"])
    assert torch.equal(after["block2.1.weight"], pretrained["block2.1.weight"])
    assert not torch.equal(after["block1.1.running_mean"], pretrained["block1.1.running_mean"])


def test_freeze_zero_without_pretraining_is_none_bit_for_bit(data):
    make = lambda: MCNN(5, width=0.25)  # noqa: E731
    none = train(data, NoDefense(PluginConfig(name="none"), **KW), make)
    assert same_state(train(data, TLDMI(TLDMIConfig(freeze=0), **KW), make), none)
    assert not same_state(train(data, TLDMI(TLDMIConfig(freeze=1), **KW), make), none)


def test_units_follow_the_official_freeze_points():
    mcnn = MCNN(5, width=0.25)
    assert {n.split(".")[0] for n in frozen_parameter_names(mcnn, [], 2)} == {"block1", "block2"}
    assert frozen_parameter_names(mcnn, [], 0) == []
    # VGG16-BN through conv4_1 and its BN (official features children 0-26)
    vgg = frozen_parameter_names(VGG16BN(5, width=0.125), ["block1", "block2", "block3", "block4.1"], 4)
    assert "block4.0.weight" in vgg and "block4.1.bias" in vgg and vgg[-1] == "block4.1.bias"
    assert not any(n.startswith(("block4.3", "block5", "bn", "head")) for n in vgg)
    # IR-152: the third hidden layer ends stage 3 at body.46: 47 of 50 blocks, and the stem
    ir = frozen_parameter_names(IR152(5, width=0.0625), [], 3)
    blocks = {int(n.split(".")[1]) for n in ir if n.startswith("body.")}
    assert blocks == set(range(47)) and any(n.startswith("input_layer.") for n in ir)
    with pytest.raises(ValueError, match="freeze=4.*3 units"):
        frozen_parameter_names(mcnn, [], 4)
    with pytest.raises(ValueError, match="unit 'conv9' is not a module"):
        frozen_parameter_names(mcnn, ["conv9"], 1)


def test_pretrain_set_keeps_public_non_private_classes_with_enough_images():
    x = torch.arange(9.0).view(9, 1, 1, 1)
    y = torch.tensor([0, 5, 5, 7, -1, 9, 9, 9, 0])  # 0: private; 7: one image; -1: unlabelled
    xs, ys, classes = pretrain_set((x, y), [0, 1], min_images=2)
    assert classes == [5, 9]
    assert xs.flatten().tolist() == [1.0, 2.0, 5.0, 6.0, 7.0] and ys.tolist() == [0, 0, 1, 1, 1]


# -- the pretrain stage -----------------------------------------------------------------------------

def smoke(root: Path, *extra: str):
    return compose(["preset=smoke", "defense=tldmi", f"cache_dir={root / 'cache'}",
                    f"results_db={root / 'r.sqlite'}", f"results_dir={root / 'runs'}",
                    f"data_root={root / 'data'}", *extra])


@pytest.fixture(scope="module")
def run_root(tmp_path_factory):
    return tmp_path_factory.mktemp("tldmi_run")


def test_pretrain_is_trained_once_cached_and_starts_the_target(run_root, splits):
    cfg = smoke(run_root)
    store = ArtifactStore(run_root / "cache")
    first = Stages(cfg, splits, store, device=CPU, accel=NO_ACCEL)
    target = first.target()
    assert first.trained == ["pretrain", "target"] and first.artifacts["pretrain"]["classes"] == 5
    assert first.times["pretrain"] > 0
    pre, _ = store.load("pretrain", first.artifacts["pretrain"]["key"])
    t = target.state_dict()
    for k in ("block1.0.weight", "block2.1.running_var"):  # frozen: exactly the pretrained tensors
        assert torch.equal(t[k], pre[k]), k
    assert pre["head.weight"].shape[0] == 5 and not torch.equal(t["block3.0.weight"], pre["block3.0.weight"])
    second = Stages(cfg, splits, store, device=CPU, accel=NO_ACCEL)
    second.target()
    assert second.trained == [] and second.artifacts["pretrain"]["cached"]
    assert second.artifacts["pretrain"]["key"] == first.artifacts["pretrain"]["key"]
    assert artifact_plan(cfg, splits)["pretrain"] == ("pretrain", first.artifacts["pretrain"]["key"])


def test_the_target_key_holds_the_pretrain_settings_and_is_unchanged_without(splits):
    none = target_key(compose(["preset=smoke"]), splits)
    public = target_key(compose(["preset=smoke", "target.pretrain=public"]), splits)
    assert public != none
    assert target_key(compose(["preset=smoke", "target.pretrain=public", "target.pretrain_epochs=3"]),
                      splits) != public
    assert target_key(compose(["preset=smoke", "target.pretrain=public", "target.pretrain_lr=0.05"]),
                      splits) != public
    # without pretraining its settings change nothing (only_with): earlier keys are kept
    assert target_key(compose(["preset=smoke", "target.pretrain_epochs=3"]), splits) == none
    assert "pretrain" not in artifact_plan(compose(["preset=smoke"]), splits)


def test_tldmi_recipe_is_nones_plus_the_pretraining():
    for ds in ("digits", "mnist"):
        tl = compose(["defense=tldmi", f"dataset={ds}", "preset=smoke"]).target
        base = compose(["defense=none", f"dataset={ds}", "preset=smoke"]).target
        assert tl.pretrain == "public" and dataclasses.replace(tl, pretrain="") == base


def test_pretraining_is_a_target_option_only():
    with pytest.raises(ConfigError, match="evaluator.pretrain=public.*target option"):
        compose(["evaluator.pretrain=public"])
    with pytest.raises(ConfigError, match="judge.robust.pretrain"):
        compose(["judge.robust.pretrain=public"])


# -- refusals ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dataset, model, file", [
    ("lfw", "vgg16_bn", "vgg16_bn-6c64b313.pth"), ("celeba", "vgg16_bn", "vgg16_bn-6c64b313.pth"),
    ("celeba", "ir152", "Backbone_IR_152_Epoch_112"),
])
def test_paper_preset_refuses_without_the_published_weights(dataset, model, file):
    cfg = compose(["defense=tldmi", f"dataset={dataset}", "preset=paper", f"target.model={model}"])
    assert cfg.target.pretrain == "" and cfg.defense.frozen_bn == "train"
    defense = TLDMI(cfg.defense, num_classes=10, input_shape=(3, 64, 64))
    with pytest.raises(ValueError, match="target.pretrained=<file> target.pretrained_sha256=") as err:
        defense.check_target(cfg.target)
    assert file in str(err.value) and "\n" not in str(err.value)
    defense.check_target(dataclasses.replace(cfg.target, pretrained="/some/file.pth"))  # accepted


def test_a_target_from_scratch_is_refused_before_any_training(tmp_path, splits):
    cfg = smoke(tmp_path, "target.pretrain=''")
    stages = Stages(cfg, splits, ArtifactStore(tmp_path / "cache"), device=CPU, accel=NO_ACCEL)
    with pytest.raises(ValueError, match="target.model=mcnn would train from scratch"):
        stages.target()
    assert stages.trained == [] and not (tmp_path / "cache" / "target").exists()
    target_key(smoke(tmp_path, "target.pretrain=''", "defense.freeze=0"), splits)  # freeze 0: none


def test_pretrained_weights_are_sha256_checked(tmp_path, splits):
    f = tmp_path / "mcnn.pt"
    torch.save(MCNN(5, width=0.5).state_dict(), f)
    cfg = smoke(tmp_path, "target.pretrain=''", f"target.pretrained={f}", "target.pretrained_sha256=" + "0" * 64)
    stages = Stages(cfg, splits, ArtifactStore(tmp_path / "cache"), device=CPU, accel=NO_ACCEL)
    with pytest.raises(ArtifactError, match="refusing to load it"):
        stages.target()


# -- end to end -------------------------------------------------------------------------------------

def test_tldmi_runs_through_mi_bench_run_smoke(run_root):
    r = CliRunner().invoke(cli, [
        "run", "preset=smoke", "defense=tldmi", "--json", "--quiet",
        f"cache_dir={run_root / 'cache'}", f"results_db={run_root / 'r.sqlite'}",
        f"results_dir={run_root / 'runs'}", f"data_root={run_root / 'data'}",
    ], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)
    assert rec["defense_label"] == "tldmi[freeze=2]"
    assert "pretrain" in rec["artifacts"] and "pretrain" in rec["stage_seconds"]
    rep = rec["defense_report"]
    assert rep["frozen_through"] == "block2" and rep["init"]["pretrain"] == "public"
    assert rep["init"]["key"] == rec["artifacts"]["pretrain"]["key"]
    assert rec["protocol"]["initialisation"]["target"].startswith("pretrained")
    m = rec["metrics"]
    assert math.isfinite(m["target_acc"]) and math.isfinite(m["attack_acc"])
