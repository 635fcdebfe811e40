"""LOMMA as an option of GMI and KED-MI (attacks/lomma.py): the identity loss against a hand
computation, p_reg, the surrogates' distillation, the refusal of missing paper weights, the
per-target cache, smoke runs end to end, and lomma=false being today's attack bit for bit."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from mi_bench.attacks import lomma as lomma_lib
from mi_bench.attacks.gmi import GMI, GMIConfig
from mi_bench.attacks.kedmi import KEDMI, KEDMIConfig
from mi_bench.attacks.lomma import (
    LommaIdentity, LommaSettings, check_weights, feature_mean, kd_loss, surrogate_names, train_aux,
)
from mi_bench.config import compose, config_hash, to_dict
from mi_bench.data import DatasetConfig, load_splits
from mi_bench.models import build_model
from mi_bench.runtime import NULL_BARS
from mi_bench.train import TrainConfig, train_classifier

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
SHAPE = (1, 32, 32)


def _linear(w, b) -> nn.Linear:
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(w))
        lin.bias.copy_(torch.tensor(b))
    return lin


class _TwoFeatureTarget(nn.Module):
    """embed(x) = x (2 features); head a given Linear."""

    feature_dim = 2
    hidden_layers = ()

    def __init__(self, head: nn.Linear):
        super().__init__()
        self.head = head

    def embed(self, x):
        return x

    def forward(self, x):
        return self.head(self.embed(x))


# -- the loss, by hand ------------------------------------------------------------------------

def test_identity_loss_is_minus_logit_averaged_over_networks_plus_the_target_feature_term():
    target = _TwoFeatureTarget(_linear([[1.0, 2.0], [3.0, -1.0]], [0.5, -0.5]))
    s1 = _linear([[0.0, 1.0], [1.0, 0.0]], [0.0, 0.0])
    s2 = _linear([[2.0, 0.0], [0.0, 2.0]], [1.0, -1.0])
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    y = torch.tensor([1, 0])
    p_reg = torch.tensor([0.5, 0.5])
    iden, logits = LommaIdentity(target, [s1, s2], p_reg, lam=2.0)(x, y)
    # row 0 (y=1): target logits [1 + 0.5, 3 - 0.5], s1 [0, 1], s2 [2 + 1, 0 - 1];
    # features [1, 0] vs p_reg: ((0.5^2 + 0.5^2) / 2)
    row0 = (-2.5 - 1.0 - (-1.0)) / 3 + 2.0 * (0.25 + 0.25) / 2
    # row 1 (y=0): target [4 + 0.5, -2 - 0.5], s1 [2, 0], s2 [0 + 1, 4 - 1]; features [0, 2]
    row1 = (-4.5 - 2.0 - 1.0) / 3 + 2.0 * (0.25 + 2.25) / 2
    assert iden.tolist() == pytest.approx([row0, row1], abs=1e-6)
    assert logits.flatten().tolist() == pytest.approx([1.5, 2.5, 4.5, -2.5])
    # the target's bias counts (raw logits, as the official NLLLoss on logits): +1 on the bias of
    # class 1 lowers row 0's loss by 1/3 (one of three networks), row 1's not at all
    with torch.no_grad():
        target.head.bias[1] += 1.0
    shifted, _ = LommaIdentity(target, [s1, s2], p_reg, lam=2.0)(x, y)
    assert shifted.tolist() == pytest.approx([row0 - 1 / 3, row1], abs=1e-6)
    # the feature term is the target's only and is not divided among the networks
    alone, _ = LommaIdentity(target, [], p_reg, lam=0.0)(x, y)
    assert alone.tolist() == pytest.approx([-3.5, -4.5], abs=1e-6)


def test_distillation_loss_is_kl_of_teacher_to_student_batch_mean():
    student = torch.tensor([[0.0, math.log(3.0)], [1.0, 1.0]])  # softmax [1/4, 3/4], [1/2, 1/2]
    teacher = torch.tensor([[0.5, 0.5], [0.9, 0.1]])
    kl_ts = [0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75),
             0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)]
    kl_st = [0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5),
             0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)]
    got = kd_loss(student, teacher.log()).item()
    assert got == pytest.approx(sum(kl_ts) / 2, rel=1e-6)
    assert got != pytest.approx(sum(kl_st) / 2, rel=1e-2)  # the direction the official code uses


# -- p_reg and the surrogates on digits --------------------------------------------------------

@pytest.fixture(scope="module")
def digits_target():
    splits = load_splits(DatasetConfig(), REPO)
    target = train_classifier(
        lambda: build_model("mcnn", num_classes=5, in_channels=1, width=0.25),
        splits.private_train, splits.private_val, TrainConfig(epochs=3), seed=0,
    ).model.eval()
    for p in target.parameters():
        p.requires_grad_(False)
    return splits, target


@pytest.fixture(scope="module")
def trained_aux(digits_target):
    splits, target = digits_target
    public = splits.public[0][:512]
    settings = LommaSettings(surrogates="auto", width=0.25, epochs=3, n_public=300)
    aux = train_aux(settings, public, target, num_classes=5, seed=0, device=CPU, progress=NULL_BARS)
    return settings, public, aux


def test_p_reg_is_the_mean_target_feature_of_the_shuffled_public_images_it_used(digits_target, trained_aux):
    splits, target = digits_target
    _, public, aux = trained_aux
    idx = aux["p_reg_index"]
    assert len(idx) == 300 and len(set(idx.tolist())) == 300
    assert not torch.equal(idx, torch.arange(300))  # shuffled, not the first images
    with torch.no_grad():
        expect = target.embed(public[idx]).mean(0)
    assert torch.allclose(aux["p_reg"], expect, atol=1e-5)
    # another subset of the same images gives another mean: the index is the one used
    assert not torch.allclose(target.embed(public[:300]).mean(0), aux["p_reg"], atol=1e-4)
    # fewer public images than n: all of them
    p_all, idx_all = feature_mean(target, public[:40], 5050, seed=3, device=CPU)
    assert sorted(idx_all.tolist()) == list(range(40))
    assert torch.allclose(p_all, target.embed(public[:40]).mean(0), atol=1e-5)


def test_distillation_lowers_each_surrogates_kl_to_the_target(digits_target, trained_aux):
    _, target = digits_target
    settings, public, aux = trained_aux
    with torch.no_grad():
        teacher = F.log_softmax(target(public), 1)

    def kl(net):
        with torch.no_grad():
            return F.kl_div(F.log_softmax(net.eval()(public), 1), teacher, reduction="batchmean",
                            log_target=True).item()

    names = surrogate_names(settings, target)
    assert names == ["resnet8", "madrynet", "scnn"]  # three families, none the target's (mcnn)
    stats = aux["kd_stats"].tolist()
    for i, name in enumerate(names):
        fresh = build_model(name, num_classes=5, in_channels=1, width=settings.width)
        torch.manual_seed(0)
        trained = build_model(name, num_classes=5, in_channels=1, width=settings.width)
        lomma_lib.load_prefixed(f"surrogate{i}", trained, aux)
        before, after = stats[i][0], kl(trained)
        assert after == pytest.approx(stats[i][1], rel=1e-4)  # the recorded value is the real one
        assert after < 0.8 * before, (name, before, after)
        assert after < kl(fresh)


def test_auto_surrogates_avoid_the_target_family_and_bad_names_are_refused():
    auto = LommaSettings(surrogates="auto")
    for target, expect in (("mcnn", ["resnet8", "madrynet", "scnn"]),
                           ("scnn", ["resnet8", "madrynet", "mcnn"]),
                           ("resnet20", ["madrynet", "scnn", "mcnn"])):  # resnet8's family
        net = build_model(target, num_classes=5, in_channels=1, width=0.25)
        assert surrogate_names(auto, net) == expect
    listed = LommaSettings(surrogates="madrynet, scnn")
    assert surrogate_names(listed, None) == ["madrynet", "scnn"]
    with pytest.raises(ValueError, match="nope.*registered models"):
        GMI(GMIConfig(name="gmi", lomma=True, lomma_surrogates="resnet8,nope"), image_shape=SHAPE,
            num_classes=5, device=CPU)


def test_paper_surrogates_are_refused_without_their_weights_files(tmp_path):
    settings = LommaSettings(weights=str(tmp_path))  # the defaults: the paper's EfficientNets
    with pytest.raises(ValueError) as err:
        check_weights(settings)
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path) in msg and "lomma_surrogates=auto" in msg
    for fname in lomma_lib.EFFICIENTNETS.values():
        assert fname in msg
    # a file of the right name but other bytes: refused by its SHA-256
    for fname in lomma_lib.EFFICIENTNETS.values():
        (tmp_path / fname).write_bytes(b"not the weights")
    with pytest.raises(ValueError, match="does not begin with torchvision's 7f5810bc"):
        check_weights(settings)
    # the attacks refuse when they are built, before any prior or surrogate is trained; the
    # `paper` preset (no lomma_* values) asks for the EfficientNets
    cfg = compose(["preset=paper", "attack=gmi", "attack.lomma=true", f"attack.lomma_weights={tmp_path}"])
    assert cfg.attack.lomma_surrogates == "efficientnet" and cfg.attack.lomma_epochs == 20
    for cls, name in ((GMI, "gmi"), (KEDMI, "kedmi")):
        cfg = compose(["preset=paper", f"attack={name}", "attack.lomma=true",
                       f"attack.lomma_weights={tmp_path / 'none'}"])
        with pytest.raises(ValueError, match="EfficientNet-B0/B1/B2"):
            cls(cfg.attack, image_shape=SHAPE, num_classes=5, device=CPU)


# -- lomma=false is today's attack ------------------------------------------------------------

def _without_lomma_fields(d: dict) -> dict:
    return {**d, "attack": {k: v for k, v in d["attack"].items() if not k.startswith("lomma")}}


@pytest.mark.parametrize("toks", [[], ["preset=paper"], ["attack=kedmi"], ["preset=smoke", "attack=kedmi"],
                                  ["dataset=lfw", "preset=cpu", "attack=kedmi"]])
def test_lomma_fields_leave_every_config_hash_as_it_was_while_lomma_is_off(toks):
    cfg = compose(["attack=gmi", *toks] if not any(t.startswith("attack=") for t in toks) else toks)
    d = to_dict(cfg)
    assert "lomma" in d["attack"]
    # the presets give lomma_* values (width, epochs, surrogates) that matter only with lomma on
    assert config_hash(d) == config_hash(_without_lomma_fields(d))
    on = to_dict(compose([*toks, "attack.lomma=true"] if toks else ["attack.lomma=true"]))
    assert config_hash(on) != config_hash(d)
    more = to_dict(compose([*toks, "attack.lomma=true", "attack.lomma_epochs=7"]))
    assert config_hash(more) != config_hash(on)


def _tiny_attacks(**kw):
    g = GMI(GMIConfig(name="gmi", gan_width=8, gan_steps=2, n_critic=2, iterations=4, restarts=2,
                      samples_per_class=2, **kw), image_shape=SHAPE, num_classes=5, device=CPU)
    k = KEDMI(KEDMIConfig(name="kedmi", gen_width=4, disc_width=4, mbd_kernels=4, mbd_dim=3,
                          gan_steps=2, n_critic=2, gan_batch_size=16, iterations=4,
                          samples_per_class=2, **kw), image_shape=SHAPE, num_classes=5, device=CPU)
    return g, k


@pytest.mark.slow  # an end-to-end smoke run (10-40 s): the slow lane
def test_lomma_false_is_todays_attack_draw_for_draw(digits_target, trained_aux, monkeypatch):
    splits, target = digits_target
    _, _, aux = trained_aux
    public = splits.public[0][:128]
    absent, off = _tiny_attacks(), _tiny_attacks(lomma=False, lomma_epochs=3, lomma_surrogates="auto")
    assert all(a.target_aux_spec() is None for a in (*absent, *off))  # no per-target artifact

    def boom(*a, **k):
        raise AssertionError("a LOMMA piece ran with lomma=false")

    for name in ("identity_from_prior", "train_aux", "aux_spec", "check_weights"):
        monkeypatch.setattr(lomma_lib, name, boom)
    monkeypatch.setattr(lomma_lib.LommaIdentity, "__call__", boom)
    with_aux = {f"aux.{k}": v for k, v in aux.items()}
    for a0, a1 in zip(absent, off):
        prior = a0.train_prior(public, target, seed=0, progress=NULL_BARS)
        assert all(torch.equal(v, a1.train_prior(public, target, seed=0, progress=NULL_BARS)[k])
                   for k, v in prior.items())
        ref = a0.invert(target, prior, [0, 2, 4], seed=1, progress=NULL_BARS)
        # lomma=false ignores LOMMA tensors even when a prior carries them
        for got in (a1.invert(target, prior, [0, 2, 4], seed=1, progress=NULL_BARS),
                    a1.invert(target, {**prior, **with_aux}, [0, 2, 4], seed=1, progress=NULL_BARS)):
            assert torch.equal(got.images, ref.images)
            assert got.protocol == ref.protocol
    # and with lomma on, the same attack inverts differently (the option does something)
    monkeypatch.undo()
    g_on = GMI(dataclasses.replace(absent[0].cfg, lomma=True, lomma_surrogates="auto", lomma_width=0.25),
               image_shape=SHAPE, num_classes=5, device=CPU)
    prior = absent[0].train_prior(public, None, seed=0, progress=NULL_BARS)
    ref = absent[0].invert(target, prior, [0, 2, 4], seed=1, progress=NULL_BARS)
    got = g_on.invert(target, {**prior, **with_aux}, [0, 2, 4], seed=1, progress=NULL_BARS)
    assert not torch.equal(got.images, ref.images)
    assert got.protocol["lomma_surrogates"] == ["resnet8", "madrynet", "scnn"]


def test_a_plain_run_trains_no_aux_artifact(smoke_run):
    assert "aux" not in smoke_run["trained"] and "aux" not in smoke_run["artifacts"]


# -- through the pipeline ---------------------------------------------------------------------

def _run(root, *toks):
    from mi_bench.pipeline import run

    return run(compose(["preset=smoke", f"cache_dir={root / 'cache'}", f"results_db={root / 'r.sqlite'}",
                        f"results_dir={root / 'runs'}", f"data_root={root / 'data'}", *toks]))


@pytest.fixture(scope="module")
def lomma_gmi_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lomma_gmi")
    return root, _run(root, "attack=gmi", "attack.lomma=true")


@pytest.mark.slow
def test_smoke_lomma_gmi_end_to_end(lomma_gmi_run):
    _, rec = lomma_gmi_run
    assert "aux" in rec["trained"] and rec["artifacts"]["aux"]["cached"] is False
    inv = rec["protocol"]["inversion"]
    assert inv["lomma_surrogates"] == ["resnet8", "madrynet", "scnn"]
    assert inv["identity_loss"].startswith("LOMMA")
    assert inv["lomma_p_reg_images"] == rec["protocol"]["data"]["counts"]["public"]  # < 5,050
    assert all(s["after"] < s["before"] for s in inv["lomma_surrogate_kl"].values())
    assert rec["metrics"]["attack_acc"] is not None


@pytest.mark.slow
def test_surrogates_are_cached_and_keyed_by_the_target(lomma_gmi_run):
    root, first = lomma_gmi_run
    again = _run(root, "attack=gmi", "attack.lomma=true")
    assert again["trained"] == [] and again["artifacts"]["aux"]["cached"] is True
    assert again["artifacts"]["aux"]["key"] == first["artifacts"]["aux"]["key"]
    # another target (same seed, same GMI prior): new surrogates under a new key
    other = _run(root, "attack=gmi", "attack.lomma=true", "target.seed_offset=1")
    assert other["artifacts"]["target"]["key"] != first["artifacts"]["target"]["key"]
    assert other["artifacts"]["prior"]["key"] == first["artifacts"]["prior"]["key"]
    assert other["trained"] == ["target", "aux"]
    assert other["artifacts"]["aux"]["key"] != first["artifacts"]["aux"]["key"]


@pytest.mark.slow
def test_smoke_lomma_kedmi_end_to_end(tmp_path):
    rec = _run(tmp_path, "attack=kedmi", "attack.lomma=true")
    assert "aux" in rec["trained"]
    inv = rec["protocol"]["inversion"]
    assert inv["lomma_surrogates"] == ["resnet8", "madrynet", "scnn"]
    assert "LOMMA identity loss" in inv["loss"]
    assert rec["metrics"]["attack_acc"] is not None
