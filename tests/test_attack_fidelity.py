"""The attacks as the official code runs them: GMI's per-latent step, KED-MI's entropy, latent
constraint and discriminator, PLG-MI's discriminator, initialisation and image range."""

from __future__ import annotations

import math
from contextlib import contextmanager

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from mi_bench.attacks.common import prefixed
from mi_bench.attacks.gmi import GMI, GMIConfig
from mi_bench.attacks.kedmi import KEDMI, KEDDiscriminator, KEDMIConfig, entropy
from mi_bench.attacks.plgmi import PLGMI, PLGMIConfig, ResNetGenerator, SNProjectionDiscriminator
from mi_bench.runtime import NULL_BARS
from tiny import LinearClassifier

CPU = torch.device("cpu")


class _Recorder:
    """A progress object that keeps every ``advance(**info)``."""

    def __init__(self) -> None:
        self.info: list[dict] = []

    @contextmanager
    def task(self, description, total):
        rec = self

        class _T:
            def advance(self, n=1, **info):
                rec.info.append(info)

        yield _T()


def _conv(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k + cout


# -- GMI ------------------------------------------------------------------------------------------

def _gmi(**kw):
    cfg = GMIConfig(name="gmi", gan_width=8, iterations=6, restarts=2, samples_per_class=2,
                    lr=0.05, **kw)
    atk = GMI(cfg, image_shape=(1, 32, 32), num_classes=5, device=CPU)
    torch.manual_seed(0)
    gen, critic = atk._nets()
    return atk, {**prefixed("G", gen), **prefixed("D", critic)}


def test_gmi_step_of_a_latent_does_not_depend_on_how_many_classes_are_attacked():
    """Class 0's latents start the same whether 1 or 5 classes are attacked (class-major draw);
    with the loss divided by a constant, they must follow the same path."""
    atk, prior = _gmi()
    torch.manual_seed(1)
    target = LinearClassifier(5).eval()
    one = atk.invert(target, prior, [0], seed=3, progress=NULL_BARS)
    five = atk.invert(target, prior, [0, 1, 2, 3, 4], seed=3, progress=NULL_BARS)
    assert one.protocol["loss_divisor"] == 5 == five.protocol["loss_divisor"]
    torch.testing.assert_close(one.images[0], five.images[0], atol=1e-5, rtol=1e-4)
    assert float((one.images[0] - five.images[1]).abs().max()) > 1e-3  # other classes differ
    # a different divisor changes the step (the official CelebA batch is 100 identities)
    atk100, _ = _gmi(identities_per_batch=100)
    slow = atk100.invert(target, prior, [0], seed=3, progress=NULL_BARS)
    assert float((slow.images[0] - one.images[0]).abs().max()) > 1e-4


def test_gmi_does_not_clamp_the_initial_latents():
    atk, prior = _gmi(clamp=0.1)
    torch.manual_seed(1)
    target = LinearClassifier(5).eval()
    rec = _Recorder()
    atk.invert(target, prior, [2], seed=7, progress=rec)
    gen, _ = atk._nets()
    gen.load_state_dict({k[2:]: v for k, v in prior.items() if k.startswith("G.")})
    gen.eval()
    z0 = torch.randn(4, 100, generator=torch.Generator().manual_seed(7))
    labels = torch.full((4,), 2)
    with torch.no_grad():
        unclamped = float(F.cross_entropy(target(gen(z0)), labels))
        clamped = float(F.cross_entropy(target(gen(z0.clamp(-0.1, 0.1))), labels))
    assert abs(unclamped - clamped) > 1e-4
    assert rec.info[0]["ce"] == pytest.approx(unclamped, rel=1e-5)  # first step at the raw draw


# -- KED-MI ---------------------------------------------------------------------------------------

def test_kedmi_entropy_is_summed_over_the_batch_like_the_official_hloss():
    logits = torch.randn(64, 7)
    p = F.softmax(logits, 1)
    official = float(-(p * F.log_softmax(logits, 1)).sum())  # HLoss: sum over batch and classes
    assert float(entropy(logits, "sum")) == pytest.approx(official, rel=1e-5)
    assert float(entropy(logits, "sum")) == pytest.approx(64 * float(entropy(logits, "mean")), rel=1e-5)
    with pytest.raises(ValueError, match="sum"):
        entropy(logits, "max")


def test_kedmi_generator_loss_uses_the_configured_entropy(monkeypatch):
    import mi_bench.attacks.kedmi as kedmi

    seen = []
    real = kedmi.entropy
    monkeypatch.setattr(kedmi, "entropy", lambda x, reduction="mean": seen.append(reduction) or real(x, reduction))
    smoke = dict(gen_width=4, disc_width=4, mbd_kernels=4, mbd_dim=3, gan_steps=2, n_critic=1,
                 gan_batch_size=8, iterations=1, samples_per_class=1)
    for reduction in ("sum", "mean"):
        seen.clear()
        atk = KEDMI(KEDMIConfig(name="kedmi", entropy_reduction=reduction, **smoke),
                    image_shape=(1, 32, 32), num_classes=3, device=CPU)
        atk.train_prior(torch.rand(16, 1, 32, 32), LinearClassifier(3).eval(), seed=0, progress=NULL_BARS)
        assert seen == [reduction] * 2


def test_kedmi_default_is_unconstrained_like_the_published_runs():
    cfg = KEDMIConfig(name="kedmi")
    assert cfg.latent_clamp == "none" and cfg.entropy_reduction == "sum"
    atk = KEDMI(cfg, image_shape=(1, 32, 32), num_classes=3, device=CPU)
    z = atk._sample_z(torch.full((50, 10), 3.0), torch.full((50, 10), -20.0))
    assert float(z.min()) > 2.9  # nothing clamps a sampled latent to [-1, 1]


def test_kedmi_discriminator_matches_the_official_layers_and_size():
    d32 = KEDDiscriminator((1, 32, 32), 5, width=64)
    convs = [m for m in d32.body if isinstance(m, nn.Conv2d)]
    norms = [m for m in d32.body if isinstance(m, nn.InstanceNorm2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (1, 64, (5, 5), (2, 2)), (64, 128, (5, 5), (2, 2)), (128, 256, (5, 5), (2, 2))]
    assert len(norms) == 3 and isinstance(d32.body[1], nn.InstanceNorm2d)  # IN after the first conv too
    assert d32.feat_dim == 4096
    d64 = KEDDiscriminator((3, 64, 64), 1000, width=64)
    convs = [m for m in d64.body if isinstance(m, nn.Conv2d)]
    assert (convs[3].in_channels, convs[3].out_channels, convs[3].kernel_size, convs[3].stride,
            convs[3].padding) == (256, 256, (3, 3), (2, 2), (1, 1))
    feat, logits = d64(torch.rand(2, 3, 64, 64))
    assert feat.shape == (2, 4096) and logits.shape == (2, 1000)
    # official discri.py MinibatchDiscriminator: 4 x (conv + affine IN), MBD 4096x64x50, Linear(4160, 1000)
    official = (_conv(3, 64, 5) + _conv(64, 128, 5) + _conv(128, 256, 5) + _conv(256, 256, 3)
                + 2 * (64 + 128 + 256 + 256) + 4096 * 64 * 50 + 4160 * 1000 + 1000)
    assert sum(p.numel() for p in d64.parameters()) == official


# -- PLG-MI ---------------------------------------------------------------------------------------

def test_plgmi_discriminator_blocks_go_in_in_out_with_the_official_size():
    d = SNProjectionDiscriminator((3, 64, 64), 1000, width=64)
    first, second = d.blocks[0], d.blocks[1]
    assert (first.c1.out_channels, first.c2.in_channels) == (64, 64)  # OptimizedBlock: in->out->out
    assert (second.c1.in_channels, second.c1.out_channels, second.c2.out_channels) == (64, 64, 128)
    ch = [3, 64, 128, 256, 512, 1024]
    official = _conv(3, 64, 3) + _conv(64, 64, 3) + _conv(3, 64, 1)
    official += sum(_conv(a, a, 3) + _conv(a, b, 3) + _conv(a, b, 1) for a, b in zip(ch[1:-1], ch[2:]))
    official += 1024 + 1 + 1000 * 1024  # l6 and the projection embedding
    n = sum(p.numel() for p in d.parameters())
    assert n == official == 11_165_441  # 20.6M with in->out->out blocks


def test_plgmi_initialisation_as_official():
    torch.manual_seed(0)
    d = SNProjectionDiscriminator((3, 64, 64), 10, width=16)
    w = d.blocks[1].c1.weight_orig.detach()  # Xavier-uniform, gain sqrt(2)
    fan_in, fan_out = w.shape[1] * 9, w.shape[0] * 9
    bound = math.sqrt(2) * math.sqrt(6 / (fan_in + fan_out))
    assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.95 * bound
    g = ResNetGenerator((3, 64, 64), 10, width=16)  # PyTorch defaults: |w| <= 1 / sqrt(fan_in)
    for conv in (g.blocks[0].c1, g.blocks[0].c2, g.out):
        fan_in = conv.weight[0].numel()
        assert float(conv.weight.abs().max()) <= 1 / math.sqrt(fan_in) + 1e-7
    assert float(g.l1.weight.abs().max()) <= 1 / math.sqrt(g.l1.in_features) + 1e-7


def test_plgmi_image_range():
    x = torch.rand(8, 1, 32, 32)
    g_out = torch.tanh(torch.randn(8, 1, 32, 32))
    official = PLGMI(PLGMIConfig(name="plgmi"), image_shape=(1, 32, 32), num_classes=5, device=CPU)
    assert official.cfg.image_range == "official"
    assert torch.equal(official._for_target(g_out), g_out)  # raw tanh output to T
    noisy = official._real_for_d(x)
    assert bool(((noisy - x) >= 0).all()) and bool(((noisy - x) <= 1 / 256).all())
    assert float((noisy - x).abs().max()) > 0
    sym = PLGMI(PLGMIConfig(name="plgmi", image_range="symmetric"), image_shape=(1, 32, 32),
                num_classes=5, device=CPU)
    assert torch.equal(sym._real_for_d(x), x * 2 - 1)
    assert torch.equal(sym._for_target(g_out), (g_out + 1) / 2)
    cfg = dict(gen_width=2, disc_width=2, gan_steps=1, n_critic=1, gan_batch_size=4, top_n=3,
               iterations=1, samples_per_class=2, aug_flip=False)
    atk = PLGMI(PLGMIConfig(name="plgmi", **cfg), image_shape=(1, 32, 32), num_classes=2, device=CPU)
    target = LinearClassifier(2).eval()
    prior = atk.train_prior(torch.rand(10, 1, 32, 32), target, seed=0, progress=NULL_BARS)
    inv = atk.invert(target, prior, [0, 1], seed=0, progress=NULL_BARS)
    assert inv.protocol["image_range"] == "official"
    assert float(inv.images.min()) >= 0 and float(inv.images.max()) <= 1
