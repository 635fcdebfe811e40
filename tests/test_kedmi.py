"""KED-MI: losses against hand computations, networks, parameter checks, and the attack on digits."""

from __future__ import annotations

import math

import pytest
import torch

from mi_bench.attacks.kedmi import (
    KEDMI, KEDDiscriminator, KEDMIConfig, MinibatchDiscrimination, entropy,
    feature_matching_loss, realness_loss, semi_supervised_loss, soft_cross_entropy,
)
from mi_bench.params import prior_fields, validate_dataclass
from mi_bench.runtime import NULL_BARS
from tiny import LinearClassifier, tiny_attack

torch.set_num_threads(1)


def _lse(row):
    return math.log(sum(math.exp(v) for v in row))


def _softplus(v):
    return math.log1p(math.exp(v))


def test_soft_cross_entropy_hand():
    logits = torch.tensor([[0.0, math.log(3.0)], [1.0, 1.0]])  # softmax: [1/4, 3/4], [1/2, 1/2]
    p = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    expect = (-(0.5 * math.log(0.25) + 0.5 * math.log(0.75)) - math.log(0.5)) / 2
    assert soft_cross_entropy(logits, p).item() == pytest.approx(expect, rel=1e-6)


def test_semi_supervised_terms_hand():
    u = torch.tensor([[0.0, 1.0, -1.0], [2.0, 0.5, 0.0]])
    f = torch.tensor([[-3.0, -2.0, -1.0]])
    lu = [_lse(r) for r in u.tolist()]
    lf = _lse(f[0].tolist())
    expect = 0.5 * (sum(_softplus(v) for v in lu) / 2 - sum(lu) / 2 + _softplus(lf))
    assert semi_supervised_loss(u, f).item() == pytest.approx(expect, rel=1e-6)
    # -log sigmoid(lse) of the inversion's prior term
    assert realness_loss(f).item() == pytest.approx(-math.log(1 / (1 + math.exp(-lf))), rel=1e-6)


def test_feature_matching_hand():
    fake = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # mean [2, 3]
    real = torch.tensor([[0.0, 0.0], [0.0, 2.0], [3.0, 1.0]])  # mean [1, 1]
    assert feature_matching_loss(fake, real).item() == pytest.approx((1 + 2) / 2)


def test_entropy_hand():
    logits = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]])
    expect = (math.log(2) + -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))) / 2
    assert entropy(logits).item() == pytest.approx(expect, rel=1e-6)


def test_minibatch_discrimination_shape_and_value():
    torch.manual_seed(0)
    mbd = MinibatchDiscrimination(6, 4, 3)
    x = torch.randn(5, 6)
    out = mbd(x)
    assert out.shape == (5, 6 + 4)
    assert torch.equal(out[:, :6], x)
    # hand value for o_b(x_0): sum over j != 0 of exp(-||M_0b - M_jb||_1)
    m = (x @ mbd.T.view(6, -1)).view(5, 4, 3)
    o0 = sum(torch.exp(-(m[0] - m[j]).abs().sum(1)) for j in range(1, 5))
    assert torch.allclose(out[0, 6:], o0, atol=1e-6)


@pytest.mark.parametrize("shape,feat", [((1, 32, 32), 32 * 16), ((3, 64, 64), 32 * 16)])
def test_discriminator_shapes(shape, feat):
    d = KEDDiscriminator(shape, num_classes=7, width=8, mbd_kernels=5, mbd_dim=3)
    f, logits = d(torch.rand(4, *shape))
    assert f.shape == (4, feat) and logits.shape == (4, 7)
    assert d.fc.in_features == feat + 5


def test_published_discriminator_is_4096_wide():
    d = KEDDiscriminator((3, 64, 64), num_classes=10, width=64)
    assert d.feat_dim == 4096 and tuple(d.mbd.T.shape) == (4096, 64, 50)
    assert d.fc.in_features == 4160


def test_bad_parameters_named():
    errs = validate_dataclass(KEDMIConfig(name="kedmi", lr=-0.1))
    assert len(errs) == 1 and "lr" in errs[0]
    errs = validate_dataclass(KEDMIConfig(name="kedmi", latent_clamp="sometimes"))
    assert len(errs) == 1 and "latent_clamp" in errs[0]


def test_prior_fields_exclude_inversion_settings():
    pf = prior_fields(KEDMIConfig())
    assert {"gan_steps", "disc_width", "mbd_kernels", "entropy_weight"} <= set(pf)
    assert not {"iterations", "lr", "lambda_ce", "samples_per_class", "latent_clamp"} & set(pf)


SMOKE = dict(gen_width=4, disc_width=4, mbd_kernels=4, mbd_dim=3, gan_steps=2, n_critic=2, gan_batch_size=16,
             iterations=3, samples_per_class=2)


def _tiny_attack(**kw):
    return tiny_attack(KEDMI, SMOKE, **kw)


def test_smoke_seeded_and_shapes():
    torch.manual_seed(0)
    target = LinearClassifier(3)  # left in train mode on purpose: train_prior must not change its mode
    public = torch.rand(40, 1, 32, 32)
    a = _tiny_attack()
    p1 = a.train_prior(public, target, seed=3, progress=NULL_BARS)
    p2 = a.train_prior(public, target, seed=3, progress=NULL_BARS)
    assert target.training and all(p.requires_grad for p in target.parameters())
    assert set(p1) == set(p2) and all(torch.equal(p1[k], p2[k]) for k in p1)
    inv1 = a.invert(target, p1, [0, 2], seed=5, progress=NULL_BARS)
    inv2 = a.invert(target, p1, [0, 2], seed=5, progress=NULL_BARS)
    assert inv1.images.shape == (2, 2, 1, 32, 32) and inv1.classes == [0, 2]
    assert torch.equal(inv1.images, inv2.images)
    assert 0 <= inv1.images.min() and inv1.images.max() <= 1
    assert inv1.protocol["samples_per_class"] == 2 and "each scored" in inv1.protocol["selection"]
    assert all(p.grad is None for p in target.parameters())  # the target stays frozen


def test_soft_labels_use_eval_mode_without_grad():
    from mi_bench.attacks.common import target_probs

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.BatchNorm1d(8),
                              torch.nn.Dropout(0.9), torch.nn.Linear(8, 3))
    net.train()
    x = torch.rand(10, 1, 4, 4)
    probs = target_probs(net, x, torch.device("cpu"), batch_size=3)
    assert net.training and not probs.requires_grad
    assert torch.equal(net.state_dict()["2.running_mean"], torch.zeros(8))  # no BN update
    net.eval()
    with torch.no_grad():
        assert torch.allclose(probs, torch.softmax(net(x), 1), atol=1e-6)


def test_latent_clamp_is_applied():
    target = LinearClassifier(3).eval()
    a = _tiny_attack(latent_clamp="mu", lr=5.0, iterations=5)
    prior = a.train_prior(torch.rand(20, 1, 32, 32), target, seed=0, progress=NULL_BARS)
    inv = a.invert(target, prior, [1], seed=0, progress=NULL_BARS)
    assert inv.extra["mu"].abs().max() <= 1.0 + 1e-6
    assert inv.extra["mu"].abs().max() > 0  # mu did move
    a = _tiny_attack(latent_clamp="z")
    z = a._sample_z(torch.zeros(100, 10), torch.full((100, 10), 4.0))
    assert z.abs().max() <= 1.0 and (z.abs() == 1.0).any()


def test_wrong_classes_raise():
    target = LinearClassifier(3).eval()
    a = _tiny_attack()
    prior = a.train_prior(torch.rand(20, 1, 32, 32), target, seed=0, progress=NULL_BARS)
    with pytest.raises(ValueError, match="0..2"):
        a.invert(target, prior, [0, 3], seed=0, progress=NULL_BARS)
    with pytest.raises(ValueError, match="prior lacks"):
        a.invert(target, {}, [0], seed=0, progress=NULL_BARS)
