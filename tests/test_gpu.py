"""Issue 7 on CUDA (``gpu`` marker: skipped without a CUDA device; ``python -m pytest -m gpu``).

Tolerances, stated before measurement (no GPU was available when they were written). On the
CPU, float32 against float64 on this batch: loss values within 1e-4, whole BiDO gradients within
0.9% (HSIC) and 7e-6 (COCO) per tensor, cosine >= 0.99996 (the normalised HSIC's own gradient is
4-10% off: its ridge solve is ill-conditioned, test_hsic.py). So:
* BiDO loss values on CUDA vs CPU, float32 with TF32 off: relative 1e-4 (CE, COCO) and 1e-3
  (normalised HSIC); with TF32 on (mi-bench's CUDA default; the HSIC forward itself runs
  without TF32): 2e-2.
* One BiDO training step, float64 on both devices: gradients and updated weights to 1e-7
  relative; float32 (TF32 off): gradient directions agree (cosine > 0.99 per tensor).
"""

from __future__ import annotations

from contextlib import contextmanager

import math

import pytest
import torch

import mi_bench.runtime as rt
from mi_bench.interfaces import TrainBatch
from mi_bench.models import build_model
from mi_bench.runtime import Accel
from mi_bench.train import Taps, TrainConfig, train_classifier

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


@contextmanager
def tf32(on: bool):
    keep = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = on
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = keep


@pytest.mark.parametrize("attack", ["gmi", "kedmi", "plgmi"])
def test_smoke_run_on_cuda(tmp_path, attack):
    from mi_bench.config import compose
    from mi_bench.pipeline import run

    cfg = compose(["preset=smoke", "defense=bido", f"attack={attack}", "device=cuda",
                   f"cache_dir={tmp_path / 'cache'}", f"results_db={tmp_path / 'r.sqlite'}",
                   f"results_dir={tmp_path / 'runs'}", "eval.download=false"])
    rec = run(cfg)
    m = rec["machine"]
    assert m["device"].startswith("cuda") and m["gpu"] == torch.cuda.get_device_name()
    assert m["backend"]["cudnn_benchmark"] is True and m["backend"]["tf32_matmul"] is True
    assert m["accel"] == {"amp": "off", "compile": "off", "host_read_every": rt.SYNC_EVERY,
                          "inversion_chunk": rt.INVERSION_CHUNK}
    assert rec["metrics"]["attack_acc"] is not None and rec["metrics"]["target_acc"] > 0
    assert set(rec["trained"]) >= {"target", "evaluator", "prior"}


def test_cuda_settings_and_device_data():
    dev = rt.resolve_device("cuda")
    assert dev.index is not None  # compares equal to tensors' devices
    settings = rt.configure_device(dev, tf32=True)
    assert settings["cudnn_benchmark"] and torch.backends.cudnn.benchmark
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert settings["float32_matmul_precision"] == torch.get_float32_matmul_precision()
    x = torch.rand(100, 3)
    xd = rt.to_device(x, dev)
    assert xd.device == dev
    parts = rt.upload([torch.tensor([3, 1]), torch.tensor([2])], dev)
    assert [p.device for p in parts] == [dev, dev] and parts[0].tolist() == [3, 1]
    assert torch.equal(rt.gather(xd, parts[0], dev).cpu(), x[[3, 1]])


def _bido_batch(measure, device, dtype, seed=0):
    from mi_bench.defenses.bido import BiDO, BiDOConfig

    torch.manual_seed(seed)
    model = build_model("mcnn", num_classes=5, in_channels=1, width=1.0).to(device, dtype)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(64, 1, 32, 32, generator=g).to(device, dtype)
    y = (torch.arange(64) % 5).to(device)
    lam = (0.05, 0.5) if measure == "hsic" else (1.0, 50.0)
    d = BiDO(BiDOConfig(name="bido", measure=measure, lambda_x=lam[0], lambda_y=lam[1]),
             num_classes=5, input_shape=(1, 32, 32))
    taps = Taps(model, d.tap_layers(model))
    out = d.compute_loss(TrainBatch(x, y, model(x), dict(taps.outputs), model, 0, 0, None))
    taps.remove()
    return model, out


@pytest.mark.parametrize("measure", ["hsic", "coco"])
def test_bido_loss_on_cuda_matches_cpu(measure):
    _, ref = _bido_batch(measure, "cpu", torch.float32)
    for tf32_on, tol in ((False, 1e-3 if measure == "hsic" else 1e-4), (True, 2e-2)):
        with tf32(tf32_on):
            _, got = _bido_batch(measure, CUDA, torch.float32)
        for k in ("ce", "d_xz", "d_zy", "loss"):
            assert float(got.terms[k]) == pytest.approx(float(ref.terms[k]), rel=tol, abs=1e-6), (k, tf32_on)


@pytest.mark.parametrize("measure", ["hsic", "coco"])
def test_bido_training_step_on_cuda_matches_cpu(measure):
    """One SGD step: float64 on both devices to 1e-7; float32 (TF32 off) by direction, for every
    tensor whose float64 gradient is not zero. The conv biases before BatchNorm have a zero
    gradient (float64: 1e-15); in float32 they carry rounding noise of about 3e-6 whose direction
    means nothing (the first H200 run compared those and failed at cosine -0.16), so they are
    only checked to be noise-sized on both devices."""
    with tf32(False):
        for dtype in (torch.float64, torch.float32):
            grads, weights = [], []
            for device in ("cpu", CUDA):
                model, out = _bido_batch(measure, device, dtype)
                opt = torch.optim.SGD(model.parameters(), lr=0.01)
                opt.zero_grad()
                out.total.backward()
                grads.append([p.grad.detach().cpu().double() for p in model.parameters()])
                opt.step()
                weights.append([p.detach().cpu().double() for p in model.parameters()])
            if dtype == torch.float64:
                exact = grads[0]  # float64 CPU: the reference for the float32 comparison below
            total = float(torch.sqrt(sum((g * g).sum() for g in exact)))
            for gc, gg, wc, wg, g64 in zip(*grads, *weights, exact):
                if dtype == torch.float64:
                    assert float((gc - gg).norm()) <= 1e-7 * float(gc.norm()) + 1e-12
                    assert float((wc - wg).norm()) <= 1e-7 * float(wc.norm())
                elif float(g64.norm()) > 1e-6 * total:
                    cos = float((gc * gg).sum() / (gc.norm() * gg.norm()))
                    assert cos > 0.99
                else:  # a conv bias before BatchNorm: zero gradient, float32 rounding noise only
                    assert float(gc.norm()) < 1e-5 * total and float(gg.norm()) < 1e-5 * total


def test_trainer_on_cuda_reads_losses_every_sync_every_steps(monkeypatch):
    """16 more steps (under SYNC_EVERY = 50) add no host read at all on CUDA."""
    from mi_bench.defenses.bido import BiDO, BiDOConfig

    calls = {"n": 0}
    orig = rt.to_host
    monkeypatch.setattr(rt, "to_host", lambda t: calls.__setitem__("n", calls["n"] + 1) or orig(t))
    counts = []
    for n in (128, 256):
        x, y = torch.rand(n, 1, 32, 32), torch.arange(n) % 5
        calls["n"] = 0
        train_classifier(lambda: build_model("mcnn", num_classes=5, in_channels=1, width=0.25), (x, y),
                         (x[:16], y[:16]), TrainConfig(epochs=1, batch_size=8, drop_last=True), seed=0,
                         defense=BiDO(BiDOConfig(name="bido"), num_classes=5, input_shape=(1, 32, 32)),
                         device=CUDA)
        counts.append(calls["n"])
    assert counts[0] == counts[1], counts


def test_amp_bf16_trains_on_cuda():
    from mi_bench.defenses.bido import BiDO, BiDOConfig

    x, y = torch.rand(128, 1, 32, 32), torch.arange(128) % 5
    res = train_classifier(lambda: build_model("mcnn", num_classes=5, in_channels=1, width=0.5), (x, y),
                           (x[:32], y[:32]), TrainConfig(epochs=2, batch_size=32), seed=0,
                           defense=BiDO(BiDOConfig(name="bido"), num_classes=5, input_shape=(1, 32, 32)),
                           device=CUDA, accel=Accel(amp="bf16"))
    assert all(torch.isfinite(p).all() for p in res.model.parameters())
    assert all(r["d_xz"] > 0 and math.isfinite(r["loss"]) for r in res.history)


def test_gmi_prior_as_one_cuda_graph_trains():
    """``Accel(graph=True)``: the whole WGAN-GP step (5 critic steps with the double-backward
    penalty, then the generator step) is captured after 3 eager warm-up steps and replayed; the
    prior trains (weights move, stay finite) and is close to eager training after the same steps
    (cuDNN autotuning and the graph's random stream may differ, so only roughly)."""
    from mi_bench.config import compose
    from mi_bench.registry import ATTACKS
    from mi_bench.runtime import NULL_BARS

    cfg = compose(["preset=smoke", "dataset=mnist", "attack=gmi", "attack.gan_steps=8"])
    pub = torch.rand(256, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    priors = {}
    for graph in (False, True):
        atk = ATTACKS.get("gmi")(cfg.attack, image_shape=(1, 32, 32), num_classes=10, device=CUDA)
        atk.accel = Accel(graph=graph)
        priors[graph] = atk.train_prior(pub, None, seed=0, progress=NULL_BARS)
    torch.manual_seed(0)
    init = ATTACKS.get("gmi")(cfg.attack, image_shape=(1, 32, 32), num_classes=10, device=CUDA)._nets()
    g0 = dict(init[0].state_dict())
    moved = [k for k, v in g0.items() if v.is_floating_point() and not torch.equal(v, priors[True][f"G.{k}"])]
    assert moved, "the graphed prior did not train"
    assert all(torch.isfinite(v).all() for v in priors[True].values() if v.is_floating_point())
    # close to eager training: the graphed generator ends nearer the eager one than either is to
    # its initialisation (the same steps from the same seed; only cuDNN/RNG-stream differences)
    def dist(a, b):
        return sum(float((a[k].float() - b[k].float()).norm()) for k in moved)
    eager = {k.removeprefix("G."): v for k, v in priors[False].items() if k.startswith("G.")}
    graphed = {k.removeprefix("G."): v for k, v in priors[True].items() if k.startswith("G.")}
    init = {k: v.to(CUDA) for k, v in g0.items()}
    assert dist(graphed, eager) < 0.5 * dist(eager, init), (dist(graphed, eager), dist(eager, init))
