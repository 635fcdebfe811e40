"""Issue 21 on the CPU: channels-last training gives the loss and gradients of NCHW on every
network family and stays out of hashes and artifact keys; ``amp=bf16`` autocasts on the CPU only
with native bfloat16 (else one warning and float32, bit for bit) and trains a smoke target close
to float32. Correctness only; the speed is benchmarked (results/bench/cpu_speed.md), never timed
in a test."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import mi_bench.cpu as cpu
from mi_bench.attacks.common import DCGANGenerator, WGANCritic, gradient_penalty
from mi_bench.config import compose, config_hash, to_dict
from mi_bench.data import DatasetConfig, load_splits
from mi_bench.face_models import IR18, VGG16BN
from mi_bench.interfaces import Defense
from mi_bench.models import MCNN, SCNN, MadryNet, ResNet8, ResNet20, build_model
from mi_bench.runtime import Accel
from mi_bench.train import TrainConfig, accuracy, predict, train_classifier

REPO = Path(__file__).resolve().parents[1]
CL = torch.channels_last

FAMILIES = {
    "mcnn": (lambda: MCNN(5, 1, 0.5), (1, 32, 32)),
    "scnn": (lambda: SCNN(5, 1, 0.25), (1, 32, 32)),
    "resnet8": (lambda: ResNet8(5, 1, 0.5), (1, 32, 32)),
    "resnet20": (lambda: ResNet20(5, 3, 0.5), (3, 32, 32)),
    "madrynet": (lambda: MadryNet(5, 1, 0.25), (1, 32, 32)),
    "vgg16_bn": (lambda: VGG16BN(5, 3, 0.125), (3, 32, 32)),
    "ir18": (lambda: IR18(5, 3, 0.25), (3, 32, 32)),
}


def _close_grads(a: nn.Module, b: nn.Module, tol: float) -> None:
    """Every gradient within ``tol`` of the network's largest gradient (absolute) and ``tol``
    relative. In float64 the layouts agree to ~1e-15. In float32 a pre-activation within ~1e-7 of
    0 may round to the other side of a ReLU in one layout (seen: 1 of 65,536 in ResNet-8's first
    block), which moves the gradients below it by up to ~1% of their largest value: that is
    rounding, as between two float32 runs on different kernels, so float32 gets ``tol`` = 2e-2."""
    scale = max(float(p.grad.abs().max()) for p in a.parameters() if p.grad is not None)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        if p.grad is None:
            assert q.grad is None, name
            continue
        torch.testing.assert_close(q.grad.contiguous(), p.grad, rtol=tol, atol=tol * scale,
                                   msg=lambda m, n=name: f"{n}: {m}")


def _twins(make, dtype=torch.float32) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    a = make().to(dtype)
    b = make().to(dtype)
    b.load_state_dict(a.state_dict())
    b.to(memory_format=CL)
    for m in (a, b):
        m.train()
        for d in m.modules():
            if isinstance(d, nn.Dropout):
                d.eval()  # dropout masks follow the memory layout; the maths is compared
    return a, b


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_channels_last_gives_the_nchw_loss_and_gradients(family, dtype):
    make, shape = FAMILIES[family]
    a, b = _twins(make, dtype)
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(8, *shape, generator=g).to(dtype), torch.arange(8) % 5
    la = F.cross_entropy(a(x), y)
    lb = F.cross_entropy(b(x.contiguous(memory_format=CL)), y)
    la.backward()
    lb.backward()
    f64 = dtype == torch.float64
    torch.testing.assert_close(lb, la, rtol=1e-12 if f64 else 1e-5, atol=1e-12 if f64 else 1e-5)
    _close_grads(a, b, 1e-10 if f64 else 2e-2)


@pytest.mark.parametrize("shape", [(1, 32, 32), (3, 32, 32)])
def test_channels_last_gives_the_nchw_wgan_gp_losses_and_gradients(shape):
    """The GMI prior's networks (they stay NCHW under auto, but the maths must agree): the critic
    loss with the gradient penalty (a double backward) and the generator loss."""
    torch.manual_seed(0)
    ga, da = DCGANGenerator(shape, 100, 8), WGANCritic(shape, 8)
    gb, db = DCGANGenerator(shape, 100, 8), WGANCritic(shape, 8)
    gb.load_state_dict(ga.state_dict())
    db.load_state_dict(da.state_dict())
    gb.to(memory_format=CL)
    db.to(memory_format=CL)
    z = torch.randn(8, 100)
    real = torch.rand(8, *shape)
    losses = []
    for g, d, r in ((ga, da, real), (gb, db, real.contiguous(memory_format=CL))):
        with torch.no_grad():
            fake = g(z)
        torch.manual_seed(5)  # the penalty's interpolation weights
        d_loss = d(fake).mean() - d(r).mean() + 10.0 * gradient_penalty(d, r, fake)
        d_loss.backward()
        g_loss = -d(g(z)).mean()
        g_loss.backward(inputs=list(g.parameters()))
        losses.append((d_loss.detach(), g_loss.detach()))
    for u, v in zip(*losses):
        torch.testing.assert_close(v, u, rtol=1e-4, atol=1e-5)
    _close_grads(da, db, 2e-2)
    _close_grads(ga, gb, 2e-2)


def test_auto_follows_the_measured_table_on_the_cpu_only():
    a = Accel(channels_last="auto")
    for name, on in cpu.CPU_CHANNELS_LAST.items():
        assert a.memory_format(name, "cpu") == (CL if on else torch.contiguous_format), name
    assert a.memory_format("mcnn", "cpu") == CL  # measured faster (results/bench/cpu_speed.md)
    assert a.memory_format("no_such_plugin_model", "cpu") == torch.contiguous_format
    assert a.memory_format("mcnn", "cuda") == torch.contiguous_format
    assert Accel(channels_last="always").memory_format("no_such_plugin_model", "cpu") == CL
    assert Accel().memory_format("mcnn", "cpu") == torch.contiguous_format  # Accel default: never
    with pytest.raises(ValueError, match="channels_last"):
        Accel(channels_last="on")


def test_channels_last_stays_out_of_hashes_and_artifact_keys():
    from mi_bench.stages import artifact_plan

    splits = load_splits(DatasetConfig(), REPO)
    base = compose(["preset=smoke"])
    assert base.channels_last == "auto"
    for value in ("always", "never"):
        other = compose(["preset=smoke", f"channels_last={value}"])
        assert config_hash(to_dict(other)) == config_hash(to_dict(base))
        assert artifact_plan(other, splits) == artifact_plan(base, splits)


def _digits_fit(accel: Accel, epochs: int = 2, width: float = 0.5, model: str = "mcnn", defense=None):
    s = load_splits(DatasetConfig(), REPO)
    cfg = TrainConfig(model=model, epochs=epochs, lr=0.01)
    make = lambda: build_model(model, num_classes=s.num_private_classes, in_channels=1, width=width)  # noqa: E731
    res = train_classifier(make, s.private_train, s.private_val, cfg, seed=0, accel=accel, defense=defense)
    return res, accuracy(res.model, *s.private_test)


def _bido():
    from mi_bench.defenses.bido import BiDO, BiDOConfig

    return BiDO(BiDOConfig(name="bido"), num_classes=5, input_shape=(1, 32, 32))


@pytest.mark.parametrize("defense", [None, "bido"])
def test_trainer_channels_last_matches_nchw_and_exports_contiguous_weights(defense):
    """The whole trainer, NCHW vs channels-last (BiDO: its HSIC terms read the tapped, channels-
    last block outputs), 1 epoch."""
    make_def = _bido if defense else (lambda: None)
    off, _ = _digits_fit(Accel(channels_last="never"), epochs=1, width=0.25, defense=make_def())
    on, _ = _digits_fit(Accel(channels_last="always"), epochs=1, width=0.25, defense=make_def())
    for k in off.history[-1]:
        if k not in ("seconds", "lr", "epoch", "batches"):
            assert on.history[-1][k] == pytest.approx(off.history[-1][k], rel=2e-2, abs=2e-2), k
    for k, b in on.model.state_dict().items():
        assert b.is_contiguous(), k  # stored weights keep the standard layout
    # an epoch of float32 rounding drift (a ReLU flip moves a step's update): the weights as one
    # vector within 1% (relative L2), the test predictions the same
    flat = [torch.cat([t.flatten() for t in m.state_dict().values() if t.is_floating_point()])
            for m in (off.model, on.model)]
    assert float((flat[1] - flat[0]).norm() / flat[0].norm()) < 1e-2
    x_test = load_splits(DatasetConfig(), REPO).private_test[0]
    agree = (predict(off.model, x_test).argmax(1) == predict(on.model, x_test).argmax(1)).float().mean()
    assert float(agree) >= 0.95
    assert on.history[-1]["val_acc"] == pytest.approx(off.history[-1]["val_acc"], abs=0.02)


class _LayoutSpy(Defense):
    """Plain cross-entropy, recording whether MCNN's second conv trains channels-last."""

    def __init__(self):
        super().__init__(None, num_classes=5, input_shape=(1, 32, 32))  # type: ignore[arg-type]
        self.layouts: set[bool] = set()

    def compute_loss(self, batch):
        w = batch.model.block2[0].weight  # (c2, c1, 5, 5): the two layouts differ
        self.layouts.add(w.is_contiguous(memory_format=CL) and not w.is_contiguous())
        return super().compute_loss(batch)


@pytest.mark.parametrize("setting,expected", [("auto", True), ("always", True), ("never", False)])
def test_the_trainer_trains_mcnn_channels_last_under_auto(setting, expected):
    spy = _LayoutSpy()
    res, _ = _digits_fit(Accel(channels_last=setting), epochs=1, width=0.25, defense=spy)
    assert spy.layouts == {expected}
    assert all(t.is_contiguous() for t in res.model.state_dict().values())


@pytest.mark.skipif(not cpu.cpu_has_native_bf16(), reason="this CPU has no native bfloat16")
def test_bf16_on_the_cpu_trains_a_smoke_target_within_5_points_of_float32():
    """digits, MCNN width 0.5, 3 epochs: bf16 autocast (native) vs float32, test accuracy."""
    f32, acc32 = _digits_fit(Accel(), epochs=3)
    bf16, acc16 = _digits_fit(Accel(amp="bf16"), epochs=3)
    assert acc32 > 0.5  # the float32 reference learned something
    assert abs(acc16 - acc32) <= 0.05, (acc16, acc32)
    assert any(not torch.equal(a, b) for a, b in zip(f32.model.state_dict().values(),
                                                        bf16.model.state_dict().values()))


def test_bf16_without_native_support_warns_once_and_runs_float32_bit_for_bit(monkeypatch, caplog):
    monkeypatch.setattr(cpu, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(cpu, "_warned", set())
    off, _ = _digits_fit(Accel(), epochs=1, width=0.25)
    with caplog.at_level(logging.WARNING, logger="mi_bench.cpu"):
        bf16, _ = _digits_fit(Accel(amp="bf16"), epochs=1, width=0.25)
        assert not Accel(amp="bf16").amp_on("cpu")
    warnings = [r for r in caplog.records if "no native bfloat16" in r.getMessage()]
    assert len(warnings) == 1
    for a, b in zip(off.model.state_dict().values(), bf16.model.state_dict().values()):
        assert torch.equal(a, b)
    assert Accel(amp="bf16").record("cpu")["amp_effective"] == "off"


def test_the_record_states_native_bf16_and_the_layout(monkeypatch):
    from mi_bench.record import machine

    info = machine(compose(["preset=smoke"]), torch.device("cpu"))
    assert info["cpu_native_bf16"] is cpu.cpu_has_native_bf16()
    assert info["channels_last"] == "auto"
    assert "amp_effective" not in info["accel"]
