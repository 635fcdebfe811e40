"""PLG-MI: losses and top-n selection against hand computations, networks, parameter checks, and
the attack on digits."""

from __future__ import annotations

import pytest
import torch

from mi_bench.attacks.plgmi import (
    PLGMI, ConditionalBatchNorm2d, PLGMIConfig, ResNetGenerator, SNProjectionDiscriminator,
    augmentations, hinge_d_loss, hinge_g_loss, max_margin_loss, resolve_top_n, top_n_selection,
)
from mi_bench.params import prior_fields, validate_dataclass
from mi_bench.runtime import NULL_BARS
from tiny import LinearClassifier, tiny_attack

torch.set_num_threads(1)


def test_hinge_losses_hand():
    real = torch.tensor([2.0, 0.5, -1.0])  # relu(1 - r): 0, 0.5, 2
    fake = torch.tensor([-2.0, 0.0])  # relu(1 + f): 0, 1
    assert hinge_d_loss(real, fake).item() == pytest.approx(2.5 / 3 + 0.5)
    assert hinge_g_loss(fake).item() == pytest.approx(1.0)


def test_max_margin_hand():
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 4.0], [1.0, 1.0, 0.0]])
    y = torch.tensor([0, 2, 1])
    # row 0: -3 + 2; row 1: -4 + 5; row 2: -1 + 1 (tie with the other class)
    assert max_margin_loss(logits, y).item() == pytest.approx((-1 + 1 + 0) / 3)


def test_top_n_selection_hand():
    probs = torch.tensor([
        [0.70, 0.20, 0.10],
        [0.45, 0.45, 0.10],  # top-2 for class 0 *and* class 1
        [0.10, 0.80, 0.10],
        [0.20, 0.10, 0.70],
        [0.05, 0.05, 0.90],
    ])
    idx, lab = top_n_selection(probs, 2)
    assert idx.tolist() == [0, 1, 2, 1, 4, 3]
    assert lab.tolist() == [0, 0, 1, 1, 2, 2]
    assert resolve_top_n(0, 1000, 7) == 142 and resolve_top_n(30, 1000, 7) == 30
    assert resolve_top_n(0, 3, 10) == 1


def test_conditional_batchnorm():
    torch.manual_seed(0)
    cbn = ConditionalBatchNorm2d(4, num_classes=3)
    assert cbn.weight.weight.shape == (3, 4) and cbn.bias.weight.shape == (3, 4)
    with torch.no_grad():
        cbn.weight.weight.copy_(torch.tensor([[1.0] * 4, [2.0] * 4, [-1.0] * 4]))
        cbn.bias.weight.copy_(torch.tensor([[0.0] * 4, [1.0] * 4, [3.0] * 4]))
    x = torch.randn(6, 4, 5, 5)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    out = cbn(x, y)
    assert out.shape == x.shape
    h = (x - x.mean((0, 2, 3), keepdim=True)) / torch.sqrt(x.var((0, 2, 3), unbiased=False, keepdim=True) + 1e-5)
    assert torch.allclose(out[0], h[0], atol=1e-5)
    assert torch.allclose(out[1], 2 * h[1] + 1, atol=1e-5)
    assert torch.allclose(out[2], -h[2] + 3, atol=1e-5)
    # the same input under two classes gives two different outputs
    cbn.eval()
    same = x[:1].repeat(2, 1, 1, 1)
    o = cbn(same, torch.tensor([0, 1]))
    assert not torch.allclose(o[0], o[1])


@pytest.mark.parametrize("shape,blocks", [((1, 32, 32), 3), ((3, 64, 64), 4)])
def test_generator_and_discriminator_shapes(shape, blocks):
    g = ResNetGenerator(shape, num_classes=4, latent_dim=128, width=4)
    d = SNProjectionDiscriminator(shape, num_classes=4, width=4)
    assert len(g.blocks) == blocks and len(d.blocks) == blocks + 1
    y = torch.tensor([0, 1, 3])
    x = g(torch.randn(3, 128), y)
    assert x.shape == (3, *shape) and x.min() >= -1 and x.max() <= 1
    assert d(x, y).shape == (3,)


def test_projection_head_uses_the_label():
    torch.manual_seed(0)
    d = SNProjectionDiscriminator((1, 32, 32), num_classes=3, width=4).eval()
    x = torch.rand(1, 1, 32, 32).repeat(2, 1, 1, 1)
    out = d(x, torch.tensor([0, 2]))
    assert not torch.allclose(out[0], out[1])


def test_augmentation_switches():
    assert len(augmentations(32, crop=True, jitter=True, flip=True, rotate=True, jitter_p=0.5)) == 4
    none = augmentations(32, crop=False, jitter=False, flip=False, rotate=False, jitter_p=1.0)
    x = torch.rand(2, 1, 32, 32)
    assert torch.equal(none(x), x)
    aug = augmentations(32, crop=True, jitter=True, flip=False, rotate=True, jitter_p=1.0)
    assert aug[1].p == 1.0 and aug(x).shape == x.shape


def test_bad_parameters_named():
    errs = validate_dataclass(PLGMIConfig(name="plgmi", lr=-1.0))
    assert len(errs) == 1 and "lr" in errs[0]
    errs = validate_dataclass(PLGMIConfig(name="plgmi", top_n=-3))
    assert len(errs) == 1 and "top_n" in errs[0]


def test_prior_fields_exclude_inversion_settings():
    pf = prior_fields(PLGMIConfig())
    assert {"top_n", "gan_steps", "alpha", "aug_flip"} <= set(pf)
    assert not {"iterations", "lr", "samples_per_class"} & set(pf)


SMOKE = dict(gen_width=2, disc_width=2, gan_steps=2, n_critic=2, gan_batch_size=8, top_n=5,
             iterations=3, samples_per_class=2)


def _tiny_attack(**kw):
    return tiny_attack(PLGMI, SMOKE, **kw)


def test_smoke_seeded_selection_recorded():
    torch.manual_seed(0)
    target = LinearClassifier(3)
    public = torch.rand(30, 1, 32, 32)
    a = _tiny_attack()
    p1 = a.train_prior(public, target, seed=1, progress=NULL_BARS)
    p2 = a.train_prior(public, target, seed=1, progress=NULL_BARS)
    assert target.training and all(p.requires_grad for p in target.parameters())
    assert all(p.grad is None for p in target.parameters())
    assert set(p1) == set(p2) and all(torch.equal(p1[k], p2[k]) for k in p1)
    with torch.no_grad():
        probs = torch.softmax(target.eval()(public), 1)
    target.train()
    idx, lab = top_n_selection(probs, 5)
    assert torch.equal(p1["selection.index"], idx) and torch.equal(p1["selection.label"], lab)
    inv1 = a.invert(target, p1, [2, 0], seed=4, progress=NULL_BARS)
    inv2 = a.invert(target, p1, [2, 0], seed=4, progress=NULL_BARS)
    assert inv1.images.shape == (2, 2, 1, 32, 32) and inv1.classes == [2, 0]
    assert torch.equal(inv1.images, inv2.images)
    assert 0 <= inv1.images.min() and inv1.images.max() <= 1
    assert inv1.protocol["samples_per_class"] == 2 and inv1.protocol["top_n"] == 5


def test_wrong_classes_raise():
    target = LinearClassifier(3)
    a = _tiny_attack()
    prior = a.train_prior(torch.rand(20, 1, 32, 32), target, seed=0, progress=NULL_BARS)
    with pytest.raises(ValueError, match="0..2"):
        a.invert(target, prior, [5], seed=0, progress=NULL_BARS)
    with pytest.raises(ValueError, match="target"):
        a.train_prior(torch.rand(20, 1, 32, 32), None, seed=0, progress=NULL_BARS)
