"""Tests of the mid, qad, desmil and dpsgd defenses: invariants (switched off = plain training),
the formulas against independent computations, and parameter validation. ~20 s on one thread."""

from __future__ import annotations

import copy
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from mi_bench.data import DatasetConfig, load_splits
from mi_bench.defenses.desmil import (
    DESMIL, DESMILConfig, SampleWeighter, decorrelation_loss, pair_mask, rff, stablenet_rff,
    weighted_cov,
)
from mi_bench.defenses.dpsgd import DPSGD, DPSGDConfig
from mi_bench.defenses.mid import MID, MIDConfig, VIBHead, kl_divergence, vib_stats
from mi_bench.defenses.none import NoDefense
from mi_bench.defenses.qad import (
    QAD, QADConfig, apply_degradation, awp_perturbation, degrade,
)
from mi_bench.interfaces import LossOutput, TrainBatch
from mi_bench.models import MCNN
from mi_bench.params import PluginConfig, validate_dataclass
from mi_bench.train import Taps, TrainConfig, train_classifier

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
KW = dict(num_classes=5, input_shape=(1, 32, 32))


@pytest.fixture(scope="module")
def data():
    s = load_splits(DatasetConfig(), REPO)
    x, y = s.private_train
    return (x[:100], y[:100]), (s.private_val[0][:30], s.private_val[1][:30])


def small():
    return MCNN(5, width=0.25)


def train(data, defense, make=small, epochs=2, seed=0):
    tr, va = data
    cfg = TrainConfig(epochs=epochs, batch_size=32, selection="last")
    return train_classifier(make, tr, va, cfg, seed=seed, defense=defense)


def same_state(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def max_diff(a, b) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa)


def error_names(cfg, field: str) -> bool:
    errs = validate_dataclass(cfg)
    return len(errs) == 1 and errs[0].startswith(field + "=")


def none_defense():
    return NoDefense(PluginConfig(name="none"), **KW)


# -- MID ------------------------------------------------------------------------------------

def test_mid_kl_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    enc = torch.randn(4, 6, generator=g, dtype=torch.float64) * 3
    mu, sigma = vib_stats(enc)
    hand = 0.0
    for b in range(4):
        kl_b = 0.0
        for k in range(3):
            m, s = float(enc[b, k]), float(enc[b, 3 + k])
            sg = math.log1p(math.exp(s - 5.0))
            kl_b += -0.5 * (1 + 2 * math.log(sg) - m * m - sg * sg)
        hand += kl_b / 4
    assert float(kl_divergence(mu, sigma)) == pytest.approx(hand, rel=1e-12)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, sigma), torch.distributions.Normal(0.0, 1.0)
    ).sum(1).mean()
    assert float(kl_divergence(mu, sigma)) == pytest.approx(float(ref), rel=1e-10)


def test_mid_bottleneck_shapes_and_inference_modes():
    model = MID(MIDConfig(), **KW).build_model(small())
    assert isinstance(model.head, VIBHead)
    assert (model.head.encoder.in_features, model.head.encoder.out_features) == (64, 64)
    assert (model.head.classifier.in_features, model.head.classifier.out_features) == (32, 5)
    x = torch.rand(3, 1, 32, 32)
    assert model(x).shape == (3, 5)
    m2 = MID(MIDConfig(bottleneck=10), **KW).build_model(small())
    assert m2.head.encoder.out_features == 20 and m2.head.classifier.in_features == 10
    model.eval()
    assert not torch.equal(model(x), model(x))  # official: sampled at test time too
    mean = MID(MIDConfig(inference="mean"), **KW).build_model(small()).eval()
    assert torch.equal(mean(x), mean(x))
    mu, _ = vib_stats(mean.head.encoder(mean.embed(x)))
    assert torch.allclose(mean(x), mean.head.classifier(mu))
    mean.train()
    assert not torch.equal(mean(x), mean(x))  # training always samples


def test_mid_loss_is_ce_plus_beta_kl():
    d = MID(MIDConfig(beta=0.3), **KW)
    model = d.build_model(small())
    taps = Taps(model, d.tap_layers(model))
    x, y = torch.rand(8, 1, 32, 32), torch.arange(8) % 5
    logits = model(x)
    out = d.compute_loss(TrainBatch(x, y, logits, taps.outputs, model, 0, 0, None))
    mu, sigma = vib_stats(model.head.encoder(model.embed(x)))
    expect = F.cross_entropy(logits, y) + 0.3 * kl_divergence(mu, sigma)
    assert float(out.total.detach()) == pytest.approx(float(expect.detach()), rel=1e-6)
    assert float(out.terms["kl"]) > 0


def test_mid_beta0_is_plain_training_of_the_bottleneck_network(data):
    cfg = MIDConfig(beta=0.0)
    make = lambda: MID(cfg, **KW).build_model(small())  # noqa: E731
    base = train(data, none_defense(), make=make).model
    assert same_state(train(data, MID(cfg, **KW)).model, base)
    assert not same_state(train(data, MID(MIDConfig(beta=0.1), **KW)).model, base)


def test_mid_bad_params():
    assert error_names(MIDConfig(beta=-1.0), "beta")
    assert error_names(MIDConfig(inference="mode"), "inference")
    assert error_names(MIDConfig(bottleneck=-2), "bottleneck")


# -- QAD ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["jpeg", "blur", "resample", "noise"])
def test_qad_degradations_differentiable_shape_range(name):
    torch.manual_seed(0)
    x = torch.rand(6, 1, 32, 32).clamp(0.05, 0.95).requires_grad_(True)
    y = apply_degradation(name, x, QADConfig()).clamp(0, 1)
    assert y.shape == x.shape and float(y.detach().min()) >= 0.0 and float(y.detach().max()) <= 1.0
    assert float((y - x).detach().abs().mean()) > 1e-3  # it really degrades
    (y * torch.rand_like(y)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and float(x.grad.abs().sum()) > 0


@pytest.mark.parametrize("mode", ["one", "chain"])
def test_qad_degrade_modes(mode):
    torch.manual_seed(1)
    x = torch.rand(8, 3, 32, 32, requires_grad=True)
    y = degrade(x, QADConfig(degrade_mode=mode))
    assert y.shape == x.shape and float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    y.sum().backward()
    assert float(x.grad.abs().sum()) > 0
    off = QADConfig(jpeg=False, blur=False, resample=False, noise=False)
    assert degrade(x, off) is x


def test_qad_hsic_term_is_maximised():
    torch.manual_seed(0)
    model = small()
    d_on = QAD(QADConfig(alpha_q=0.5), **KW)
    d_off = QAD(QADConfig(alpha_q=0.0), **KW)
    taps = Taps(model, d_on.tap_layers(model))
    assert list(taps.outputs) == [] and d_on.tap_layers(model) == ["block1", "block2", "block3"]

    def fwd(x):
        taps.outputs = {}
        out = model(x)
        return out, taps.outputs

    x, y = torch.rand(16, 1, 32, 32), torch.arange(16) % 5
    logits, tapped = fwd(x)

    def loss(d):
        torch.manual_seed(5)  # same degradations for both
        return d.compute_loss(TrainBatch(x, y, logits, tapped, model, 0, 0, fwd))

    on, off = loss(d_on), loss(d_off)
    dq = float(on.terms["hsic_clean_degraded"])
    assert dq > 0
    assert float(on.total) == pytest.approx(float(off.total) - 0.5 * dq, rel=1e-5)
    taps.remove()


def test_qad_switched_off_is_plain_training(data):
    off = QADConfig(alpha_q=0.0, alpha_r=0.0, jpeg=False, blur=False, resample=False,
                    noise=False, awp_gamma=0.0)
    base = train(data, none_defense()).model
    assert same_state(train(data, QAD(off, **KW)).model, base)
    on = QADConfig(alpha_q=0.0, alpha_r=0.0, awp_gamma=0.0)  # degraded views only
    assert not same_state(train(data, QAD(on, **KW)).model, base)


def _ce_closure(model, x, y):
    return lambda: LossOutput(F.cross_entropy(model(x), y))


def test_awp_perturbation_norms_and_no_side_effects():
    torch.manual_seed(0)
    model = small().train()
    x, y = torch.rand(16, 1, 32, 32), torch.arange(16) % 5
    before = copy.deepcopy(model.state_dict())
    gamma = 0.005
    diff = awp_perturbation(model, _ce_closure(model, x, y), gamma)
    params = dict(model.named_parameters())
    assert set(diff) == {n for n, p in params.items() if p.dim() > 1}
    for n, v in diff.items():
        assert float(v.norm()) == pytest.approx(gamma * float(params[n].norm()), rel=1e-5)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN stats


def test_awp_step_equals_update_at_perturbed_point():
    torch.manual_seed(0)
    model = small().train()
    x, y = torch.rand(16, 1, 32, 32), torch.arange(16) % 5
    gamma, lr = 0.01, 0.1
    w0 = copy.deepcopy(model)

    # independent reference: a real proxy copy taking one loss-increasing SGD step
    proxy = copy.deepcopy(w0)
    popt = torch.optim.SGD(proxy.parameters(), lr=0.01)
    popt.zero_grad()
    (-F.cross_entropy(proxy(x), y)).backward()
    popt.step()
    pert = copy.deepcopy(w0)
    p0, pp = dict(w0.named_parameters()), dict(proxy.named_parameters())
    with torch.no_grad():
        for n, p in pert.named_parameters():
            if p.dim() > 1:
                dw = pp[n] - p0[n]
                p.add_(gamma * p0[n].norm() / (dw.norm() + 1e-20) * dw)
    pert.zero_grad()
    F.cross_entropy(pert(x), y).backward()
    grads = {n: p.grad for n, p in pert.named_parameters()}
    expected = {n: p0[n] - lr * grads[n] for n in p0}

    d = QAD(QADConfig(awp_gamma=gamma, awp_warmup=0), **KW)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    d.configure(model, opt, n_train=16, batch_size=16, epochs=1, generator=torch.Generator())
    assert d.awp_active()
    d.optimizer_step(model, opt, _ce_closure(model, x, y))
    for n, p in model.named_parameters():
        assert torch.allclose(p, expected[n], atol=1e-6, rtol=1e-5), n
    # BN running stats updated exactly once (the perturbed forward), as with a separate proxy
    for (n, b), (_, b_ref) in zip(model.named_buffers(), pert.named_buffers()):
        assert torch.allclose(b.float(), b_ref.float(), atol=1e-6), n
    # a plain step would differ: the perturbation matters
    plain = copy.deepcopy(w0)
    popt2 = torch.optim.SGD(plain.parameters(), lr=lr)
    F.cross_entropy(plain(x), y).backward()
    popt2.step()
    assert max_diff(plain, model) > 1e-6


def test_awp_warmup(data):
    d = QAD(QADConfig(alpha_q=0.0, jpeg=False, blur=False, resample=False, noise=False,
                      awp_gamma=0.002, awp_warmup=1), **KW)
    train(data, d, epochs=2)
    assert d.report()["awp_steps"] == 4  # 100 images / 32 = 4 batches, second epoch only


def test_qad_awp_ascent_and_perturbed_pass_share_one_degraded_view(monkeypatch):
    """AWP calls the loss twice per step (ascent at w, then at w + v): both must see the same
    randomly degraded batch, and the ascent uses the full objective (HSIC term included)."""
    import mi_bench.defenses.qad as qad

    calls = []
    real_degrade = qad.degrade
    monkeypatch.setattr(qad, "degrade", lambda x, cfg: calls.append(1) or real_degrade(x, cfg))
    torch.manual_seed(0)
    model = small().train()
    d = QAD(QADConfig(awp_gamma=0.002, awp_warmup=0), **KW)
    taps = Taps(model, d.tap_layers(model))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    d.configure(model, opt)

    def forward(x):
        taps.outputs = {}
        return model(x), taps.outputs

    losses = []
    for step in range(2):
        x, y = torch.rand(16, 1, 32, 32), torch.arange(16) % 5

        def closure(x=x, y=y, step=step):
            logits, tapped = forward(x)
            out = d.compute_loss(TrainBatch(x, y, logits, dict(tapped), model, 0, step, forward))
            losses.append(out.terms)
            return out

        d.optimizer_step(model, opt, closure)
        assert len(calls) == step + 1  # one draw per batch, not one per loss evaluation
    assert d.report()["awp_steps"] == 2
    assert all("hsic_clean_degraded" in t for t in losses)  # the ascent's loss is the full one
    taps.remove()


def test_qad_bad_params():
    assert error_names(QADConfig(alpha_q=-1.0), "alpha_q")
    assert error_names(QADConfig(jpeg_quality_max=120.0), "jpeg_quality_max")
    assert error_names(QADConfig(awp_gamma=-0.1), "awp_gamma")
    assert error_names(QADConfig(degrade_mode="all"), "degrade_mode")
    with pytest.raises(ValueError, match="layer_weights"):  # MCNN has 3 hidden layers
        QAD(QADConfig(layer_weights=[1.0, 1.0, 1.0, 1.0]), **KW).tap_layers(small())
    with pytest.raises(ValueError, match="layer_weights"):
        QAD(QADConfig(layers=["block1"]), **KW).tap_layers(small())
    two = QAD(QADConfig(layer_weights=[1.0, 2.0]), **KW)
    assert two.tap_layers(small()) == ["block1", "block2"]


# -- DESMIL ---------------------------------------------------------------------------------

def _correlated(n=64, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(n, 1, generator=g)
    return common + 0.3 * torch.randn(n, d, generator=g)


def test_rff_and_weighted_cov_against_direct_computation():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(10, 4, generator=g, dtype=torch.float64)
    a = torch.randn(4, generator=g, dtype=torch.float64)
    b = 2 * math.pi * torch.rand(4, generator=g, dtype=torch.float64)
    phi = rff(h, a, b)
    u = float(a[2] * h[3, 2] + b[2])
    assert float(phi[3, 2]) == pytest.approx(math.sqrt(2) * (math.cos(u) + math.sin(u)), rel=1e-12)
    w = torch.softmax(torch.randn(10, generator=g, dtype=torch.float64), 0)
    ref = np.cov(phi.numpy().T, aweights=w.numpy(), bias=True)
    np.testing.assert_allclose(weighted_cov(phi, w).numpy(), ref, rtol=1e-10, atol=1e-12)
    # masked objective vs an explicit double loop over pairs of different interests
    logits = torch.randn(10, generator=g, dtype=torch.float64)
    mask = pair_mask(4, 2)
    got = float(decorrelation_loss(phi, logits, 6, mask, 70.0))
    c = np.cov(phi.numpy().T, aweights=torch.softmax(logits, 0).numpy(), bias=True)
    chunk = [0, 0, 1, 1]
    lossb = sum(c[i, j] ** 2 for i in range(4) for j in range(4) if chunk[i] != chunk[j])
    lossp = float(torch.softmax(logits[:6], 0).pow(2).sum())
    assert got == pytest.approx(lossb / 70.0 + lossp, rel=1e-10)


def test_pair_mask():
    m = pair_mask(8, 4)
    assert not m[0, 1] and m[0, 2] and not m[6, 7] and m[1, 7] and not m.diagonal().any()
    assert int(pair_mask(5, 0).sum()) == 20  # every i != j: StableNet


def _anti_correlated(n=64, d=16, seed=0):
    """Half of the dimensions follow a common factor, the other half its negative: dependence
    that survives StableNet's per-sample rescale (a common shift of every dimension does not)."""
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(n, 1, generator=g)
    h = 0.3 * torch.randn(n, d, generator=g)
    h[:, : d // 2] += common
    h[:, d // 2:] -= common
    return h


def _check_weights(w, n=64):
    assert w.shape == (n,) and float(w.min()) >= 0.0
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("memory", [0, 128])
def test_desmil_per_dim_rff_weights_and_inner_loop_decreases(memory):
    torch.manual_seed(0)
    w_learner = SampleWeighter(DESMILConfig(memory=memory, interests=4, lambda_p=7.0, rff="per_dim"))
    for seed in range(3):  # several batches: the memory fills
        w = w_learner.learn(_correlated(seed=seed))
        _check_weights(w)
        losses = w_learner.last_losses  # fixed features over the inner loop: comparable losses
        assert losses[-1] < 0.9 * losses[0]
        assert float(w.max() - w.min()) > 1e-4  # not left uniform
    if memory:
        assert w_learner.mem_feat.shape == (128, 8) and float(w_learner.mem_feat.abs().sum()) > 0


@pytest.mark.parametrize("memory", [0, 128])
def test_desmil_stablenet_rff_lowers_the_expected_objective(memory):
    """StableNet's features are redrawn at every inner step, so single losses are noisy: judge
    the learned weights by the decorrelation objective averaged over 50 fixed draws."""
    torch.manual_seed(0)
    w_learner = SampleWeighter(DESMILConfig(memory=memory, interests=4, lambda_p=0.1))
    assert w_learner.cfg.rff == "stablenet"
    mask = pair_mask(16, 4)

    def objective(feat, w):
        torch.manual_seed(99)
        return sum(float((weighted_cov(stablenet_rff(feat), w).pow(2) * mask).sum())
                   for _ in range(50)) / 50

    for seed in range(3):
        feat = _anti_correlated(seed=seed)
        w = w_learner.learn(feat)
        _check_weights(w)
        assert objective(feat, w) < 0.9 * objective(feat, torch.full((64,), 1 / 64))


def test_stablenet_rff_formula_and_redraw_every_inner_step(monkeypatch):
    import mi_bench.defenses.desmil as desmil

    h = torch.randn(6, 5, dtype=torch.float64)
    torch.manual_seed(4)
    a = torch.randn((), dtype=torch.float64)  # one frequency shared by every dimension
    b = 2 * math.pi * torch.rand(5, dtype=torch.float64)  # one phase per dimension
    u = h * a + b
    lo, hi = u.min(1, keepdim=True).values, u.max(1, keepdim=True).values
    u = (u - lo) / (hi - lo) * math.pi / 2  # per-sample min-max rescale to [0, pi/2]
    torch.manual_seed(4)
    got = stablenet_rff(h)
    torch.testing.assert_close(got, math.sqrt(2) * (torch.cos(u) + torch.sin(u)))
    assert float(got.min()) >= math.sqrt(2) - 1e-12 and float(got.max()) <= 2 + 1e-12
    calls = []
    monkeypatch.setattr(desmil, "stablenet_rff", lambda x: calls.append(1) or stablenet_rff(x))
    SampleWeighter(DESMILConfig(memory=0, inner_steps=7)).learn(torch.randn(16, 8))
    assert len(calls) == 7 + 1  # one draw per inner step, one for the final loss
    calls.clear()
    SampleWeighter(DESMILConfig(memory=0, inner_steps=7, rff="per_dim")).learn(torch.randn(16, 8))
    assert not calls


def test_desmil_memory_is_a_ring_buffer_fully_used(monkeypatch):
    """Batch 64, memory 128: StableNet's positional rule would leave slots 64-127 at zero for
    ever; the ring buffer fills them on the second batch and refreshes every slot."""
    torch.manual_seed(0)
    w = SampleWeighter(DESMILConfig(memory=128, inner_steps=2))
    b1, b2, b3 = (torch.randn(64, 8) for _ in range(3))
    w.learn(b1)
    assert int((w.mem_count > 0).sum()) == 64 and w.ptr == 64
    torch.testing.assert_close(w.mem_feat[:64], b1)  # a slot's first write is the value itself
    import mi_bench.defenses.desmil as desmil

    seen = {}

    def spy(phi, logits, n, mask, lp):
        seen["memory_slots"] = len(logits) - n
        return decorrelation_loss(phi, logits, n, mask, lp)

    monkeypatch.setattr(desmil, "decorrelation_loss", spy)
    w.learn(b2)  # the softmax runs over the batch and the 64 filled slots only
    assert seen["memory_slots"] == 64
    w.learn(b3)
    assert seen["memory_slots"] == 128
    assert bool((w.mem_count > 0).all()) and w.ptr == 64
    torch.testing.assert_close(w.mem_feat[64:], b2)
    torch.testing.assert_close(w.mem_feat[:64], (b1 + b3) / 2)  # warm start: running mean
    assert w.mem_count.tolist() == [2] * 64 + [1] * 64


def test_desmil_memory_smaller_than_the_batch_and_ema_after_warm_start():
    torch.manual_seed(0)
    w = SampleWeighter(DESMILConfig(memory=32, inner_steps=1, memory_ema=0.9))
    feats = [torch.randn(48, 4) for _ in range(11)]
    for f in feats[:10]:
        w.learn(f)
    assert bool((w.mem_count == 10).all())  # 32 slots, 32 written per batch (the first 32 rows)
    mean10 = torch.stack([f[:32] for f in feats[:10]]).mean(0)
    torch.testing.assert_close(w.mem_feat, mean10)
    w.learn(feats[10])
    torch.testing.assert_close(w.mem_feat, 0.9 * mean10 + 0.1 * feats[10][:32])


def test_desmil_switched_off_is_plain_training(data):
    base = train(data, none_defense()).model
    off = DESMILConfig(reweight=False, beta_dec=0.0)
    assert same_state(train(data, DESMIL(off, **KW)).model, base)
    assert not same_state(train(data, DESMIL(DESMILConfig(), **KW)).model, base)
    assert not same_state(train(data, DESMIL(DESMILConfig(reweight=False, beta_dec=1.0),
                                             **KW)).model, base)


def test_desmil_loss_is_weighted_ce_with_detached_weights():
    torch.manual_seed(0)
    d = DESMIL(DESMILConfig(memory=0), **KW)
    model = small()
    taps = Taps(model, d.tap_layers(model))
    x, y = torch.rand(16, 1, 32, 32), torch.arange(16) % 5
    logits = model(x)
    torch.manual_seed(3)
    out = d.compute_loss(TrainBatch(x, y, logits, dict(taps.outputs), model, 0, 0, None))
    torch.manual_seed(3)
    w = SampleWeighter(DESMILConfig(memory=0)).learn(taps.outputs["pool"])
    ce = F.cross_entropy(logits, y, reduction="none")
    assert float(out.total) == pytest.approx(float((w * ce).sum()), rel=1e-6)
    grads = torch.autograd.grad(out.total, logits)[0]
    ref = torch.autograd.grad((w.detach() * ce).sum(), logits)[0]
    assert torch.allclose(grads, ref, atol=1e-7)
    taps.remove()


def test_desmil_direct_decorrelation_term():
    from mi_bench.defenses.desmil import chunk_kernel
    from mi_bench.hsic import hsic

    feat = _correlated(n=16, d=8).requires_grad_(True)
    k = chunk_kernel(feat.detach(), 0.0)  # median heuristic: exp(-sq / (2 median sq))
    sq = torch.cdist(feat.detach(), feat.detach()).pow(2)
    off = ~torch.eye(16, dtype=torch.bool)
    assert torch.allclose(k, torch.exp(-sq / (2 * sq[off].median())), atol=1e-6)
    d = DESMIL(DESMILConfig(reweight=False, beta_dec=2.0, interests=4), **KW)
    logits = torch.zeros(16, 5, requires_grad=True)
    y = torch.arange(16) % 5
    batch = TrainBatch(torch.zeros(16, 1, 4, 4), y, logits, {"pool": feat}, None, 0, 0, None)
    out = d.compute_loss(batch)
    chunks = feat.tensor_split(4, dim=1)
    ks = [chunk_kernel(c, 0.0) for c in chunks]
    dec = sum(hsic(ks[i], ks[j]) for i in range(4) for j in range(i + 1, 4))
    assert float(dec) > 1e-3  # correlated interests: clearly dependent
    expect = F.cross_entropy(logits, y) + 2.0 * dec
    assert float(out.total.detach()) == pytest.approx(float(expect.detach()), rel=1e-6)
    (g,) = torch.autograd.grad(out.total, feat)
    assert float(g.abs().sum()) > 0  # back-propagates into the network
    assert sq.shape == (16, 16)


def test_desmil_bad_params():
    assert error_names(DESMILConfig(lambda_p=0.0), "lambda_p")
    assert error_names(DESMILConfig(interests=-1), "interests")
    assert error_names(DESMILConfig(memory_ema=1.0), "memory_ema")
    assert error_names(DESMILConfig(beta_dec=-1.0), "beta_dec")
    with pytest.raises(ValueError, match="interests"):
        DESMIL(DESMILConfig(beta_dec=1.0, interests=0), **KW)


# -- DP-SGD ---------------------------------------------------------------------------------

def test_dpsgd_reported_epsilon_matches_independent_accountant(data):
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    d = DPSGD(DPSGDConfig(noise_multiplier=1.1, max_grad_norm=1.0, delta=1e-5), **KW)
    rep = train(data, d, epochs=2).defense_report
    q = 32 / 100
    steps = 2 * round(100 / 32)
    assert rep["steps"] == steps and rep["sample_rate"] == pytest.approx(q)
    orders = RDPAccountant.DEFAULT_ALPHAS
    eps, _ = get_privacy_spent(orders=orders, rdp=compute_rdp(q=q, noise_multiplier=1.1,
                                                              steps=steps, orders=orders),
                               delta=1e-5)
    assert rep["epsilon"] == pytest.approx(eps, rel=1e-9)
    assert rep["delta"] == 1e-5 and 0 < rep["epsilon"] < math.inf


def test_dpsgd_target_epsilon(data):
    d = DPSGD(DPSGDConfig(target_epsilon=8.0), **KW)
    rep = train(data, d, epochs=2).defense_report
    assert 7.8 <= rep["epsilon"] <= 8.0 + 1e-9
    assert rep["noise_multiplier"] > 0


def test_dpsgd_model_has_no_batchnorm_and_exports_plain_module(data):
    from opacus.validators import ModuleValidator

    d = DPSGD(DPSGDConfig(), **KW)
    model = d.build_model(small())
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert any(isinstance(m, torch.nn.GroupNorm) for m in model.modules())
    assert ModuleValidator.validate(model, strict=False) == []
    out = train(data, DPSGD(DPSGDConfig(), **KW), epochs=1).model
    assert type(out) is MCNN and not any(k.startswith("_module") for k in out.state_dict())
    for _, mod in out.named_modules():  # Opacus' hooks are gone after training
        assert not mod._forward_hooks and not mod._backward_hooks
    assert all(not hasattr(p, "grad_sample") for p in out.parameters())


@pytest.mark.parametrize("poisson", [True, False])
def test_dpsgd_forbids_grad_accumulation_under_poisson(poisson):
    """As PrivacyEngine.make_private: with Poisson sampling a step may not mix two batches."""
    d = DPSGD(DPSGDConfig(poisson=poisson), **KW)
    model = d.build_model(small())
    gsm, _ = d.configure(model, torch.optim.SGD(model.parameters(), lr=0.1), n_train=100,
                         batch_size=10, epochs=1, generator=torch.Generator())
    assert gsm.grad_accumulation_allowed is (not poisson)
    x, y = torch.rand(4, 1, 32, 32), torch.arange(4)
    F.cross_entropy(gsm(x), y).backward()
    if poisson:
        with pytest.raises(ValueError, match="accumulat"):
            F.cross_entropy(gsm(x), y).backward()
    d.release()


def test_dpsgd_poisson_batches():
    d = DPSGD(DPSGDConfig(), **KW)
    d.sample_rate, d.steps_per_epoch = 0.25, 4
    g = torch.Generator().manual_seed(0)
    labels = torch.zeros(200, dtype=torch.long)
    sizes = [len(b) for _ in range(50) for b in d.epoch_batches(labels, 50, g)]
    assert len(sizes) == 200 and len(set(sizes)) > 5  # variable sizes
    assert abs(np.mean(sizes) - 50) < 2.5
    assert d.epoch_batches(labels, 50, g) is not None
    assert DPSGD(DPSGDConfig(poisson=False), **KW).epoch_batches(labels, 50, g) is None


def test_dpsgd_without_clipping_and_noise_is_plain_training(data):
    """Compared on the same GroupNorm architecture, in float64: GroupNorm over the 1x1 block3
    output (groups of 2 values at width 0.25) amplifies float32 summation-order differences of
    the per-sample gradients ~20x per step, which would hide a real discrepancy."""
    from opacus.validators import ModuleValidator

    def make():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ModuleValidator.fix(small()).double()

    (xt, yt), (xv, yv) = data
    data64 = ((xt.double(), yt), (xv.double(), yv))
    base = train(data64, none_defense(), make=make).model
    off = DPSGD(DPSGDConfig(noise_multiplier=0.0, max_grad_norm=0.0, poisson=False), **KW)
    res = train(data64, off, make=make)
    assert max_diff(res.model, base) < 1e-9  # per-sample sums change float summation order
    assert res.defense_report["epsilon"] == math.inf
    clipped = DPSGD(DPSGDConfig(noise_multiplier=0.0, max_grad_norm=0.01, poisson=False), **KW)
    assert max_diff(train(data64, clipped, make=make).model, base) > 1e-3


def test_dpsgd_bad_params():
    assert error_names(DPSGDConfig(noise_multiplier=-1.0), "noise_multiplier")
    assert error_names(DPSGDConfig(delta=0.0), "delta")
    assert error_names(DPSGDConfig(accountant="moments"), "accountant")
    with pytest.raises(ValueError, match="max_grad_norm"):
        DPSGD(DPSGDConfig(max_grad_norm=0.0, noise_multiplier=1.0), **KW)
