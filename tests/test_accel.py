"""Issue 7 on the CPU: performance options (amp, compile, tf32) are typed and validated, keep
the hashes of runs that do not use them, and the training loops read losses back to the host
only every N steps (the NaN check included) - counted, not timed."""

from __future__ import annotations

import time
from pathlib import Path

import math

import pytest
import torch
from torch import nn

import mi_bench.runtime as rt
from mi_bench.config import compose, config_hash, to_dict
from mi_bench.data import DatasetConfig, load_splits
from mi_bench.errors import ConfigError
from mi_bench.interfaces import Defense, LossOutput
from mi_bench.models import build_model
from mi_bench.runtime import Accel, Bars, FiniteCheck
from mi_bench.train import TrainConfig, train_classifier

REPO = Path(__file__).resolve().parents[1]


# -- configuration -----------------------------------------------------------------------------

def test_accel_rejects_unknown_options():
    with pytest.raises(ValueError, match="bf16"):
        Accel(amp="fp16")
    with pytest.raises(ValueError, match="reduce-overhead"):
        Accel(compile="yes")
    with pytest.raises(ValueError, match="sync_every"):
        Accel(sync_every=-1)


@pytest.mark.parametrize("token,hint", [("amp=fp16", "bf16"), ("compile=true", "reduce-overhead"),
                                        ("tf32=maybe", "tf32")])
def test_bad_performance_options_are_config_errors(token, hint):
    with pytest.raises(ConfigError, match=hint):
        compose(["preset=smoke", token])


def test_text_options_spelled_like_yaml_booleans_keep_their_text():
    """``amp=off`` used to reach the config as ``'False'`` (YAML 1.1 reads off/on/yes/no as
    booleans) and was refused; text fields keep the text, boolean fields still read it."""
    cfg = compose(["preset=smoke", "amp=off", "compile=off", "channels_last=never", "tf32=off"])
    assert (cfg.amp, cfg.compile, cfg.channels_last, cfg.tf32) == ("off", "off", "never", False)
    with pytest.raises(ConfigError, match="amp='yes' is not allowed"):
        compose(["preset=smoke", "amp=yes"])


def test_performance_options_compose_and_leave_default_hashes_alone():
    base = to_dict(compose(["preset=smoke"]))
    assert (base["amp"], base["compile"], base["tf32"]) == ("off", "off", True)
    # the hash of a default run is what it was before these keys existed
    before = {k: v for k, v in base.items() if k not in ("amp", "compile", "tf32")}
    assert config_hash(base) == config_hash(before)
    # compile and tf32 change rounding only (like device); bf16 changes what is computed
    fast = to_dict(compose(["preset=smoke", "compile=reduce-overhead", "tf32=false", "device=auto"]))
    assert config_hash(fast) == config_hash(base)
    bf16 = to_dict(compose(["preset=smoke", "amp=bf16"]))
    assert bf16["amp"] == "bf16" and config_hash(bf16) != config_hash(base)


def test_amp_enters_the_target_and_prior_keys_but_not_the_evaluators():
    from mi_bench.stages import artifact_plan, prior_spec, target_spec

    splits = load_splits(DatasetConfig(), REPO)
    off, bf16 = compose(["preset=smoke"]), compose(["preset=smoke", "amp=bf16"])
    assert "amp" not in target_spec(off, splits) and "amp" not in prior_spec(off, splits, "t")
    plan_off, plan_bf16 = artifact_plan(off, splits), artifact_plan(bf16, splits)
    assert plan_off["target"] != plan_bf16["target"] and plan_off["prior"] != plan_bf16["prior"]
    assert plan_off["evaluator"] == plan_bf16["evaluator"]  # the judge stays float32


def test_machine_section_states_the_settings_and_auto_device():
    from mi_bench.record import machine

    cfg = compose(["preset=smoke", "device=auto"])
    dev = rt.resolve_device(cfg.device)
    assert dev.type == ("cuda" if torch.cuda.is_available() else "cpu")
    info = machine(cfg, torch.device("cpu"))
    assert info["accel"] == {"amp": "off", "compile": "off", "host_read_every": 1, "inversion_chunk": 512}
    assert "gpu" not in info
    assert rt.configure_device(torch.device("cpu")) == {}  # nothing to set on the CPU


def test_device_helpers_leave_cpu_tensors_alone():
    x, idx = torch.rand(10, 3), [torch.tensor([1, 2]), torch.tensor([3])]
    cpu = torch.device("cpu")
    assert rt.to_device(x, cpu) is x
    assert rt.upload(idx, cpu) is idx
    assert torch.equal(rt.gather(x, idx[0], cpu), x[idx[0]])


# -- host reads: counted -----------------------------------------------------------------------

@pytest.fixture
def reads(monkeypatch, to_host_reads):
    """Counts every read of a tensor value to the host: ``runtime.to_host`` and Tensor
    ``__float__`` / ``__int__`` / ``__bool__`` / ``item``, made by mi-bench. Not counted:
    torch.optim's reads of its step counters (CPU tensors whatever the device: no wait for a
    GPU), and kornia's (PLG-MI's augmentations check their sampled parameters with Python
    ``if``s, a few reads per call; kornia's code, left as it is)."""
    import sys

    counter = to_host_reads  # conftest's counter of runtime.to_host, and the Tensor reads here
    for name in ("__float__", "__int__", "__bool__", "item"):
        orig = getattr(torch.Tensor, name)

        def wrapped(self, *a, _orig=orig, **k):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if not caller.startswith(("torch.optim", "kornia", "torch.distributions")):
                counter["n"] += 1
            return _orig(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, wrapped)
    return counter


def _fit(n_train, defense=None, accel=Accel(), epochs=1, batch=8):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(n_train, 1, 32, 32, generator=g), torch.arange(n_train) % 5
    cfg = TrainConfig(epochs=epochs, batch_size=batch, drop_last=True)
    return train_classifier(lambda: build_model("mcnn", num_classes=5, in_channels=1, width=0.25),
                            (x, y), (x[:16], y[:16]), cfg, seed=0, defense=defense, accel=accel)


def _bido():
    from mi_bench.defenses.bido import BiDO, BiDOConfig

    return BiDO(BiDOConfig(name="bido"), num_classes=5, input_shape=(1, 32, 32))


@pytest.mark.parametrize("every,extra", [(8, 2), (0, 16)])
def test_trainer_reads_losses_every_n_steps(reads, every, extra):
    """16 more steps cost 16 / N more host reads (the NaN check); the loss terms, accuracy and
    validation are read once per epoch. On the CPU the default (0) reads every step (free)."""
    counts = []
    for n_train in (128, 256):  # 16 and 32 batches of 8
        reads["n"] = 0
        _fit(n_train, _bido(), Accel(sync_every=every))
        counts.append(reads["n"])
    assert counts[1] - counts[0] == extra, counts


class _NaNAt(Defense):
    """Cross-entropy, except NaN at one step; counts its calls."""

    def __init__(self, at):
        super().__init__(None, num_classes=5, input_shape=(1, 32, 32))  # type: ignore[arg-type]
        self.at, self.calls = at, 0

    def compute_loss(self, batch):
        self.calls += 1
        ce = nn.functional.cross_entropy(batch.logits, batch.y)
        return LossOutput(ce * float("nan") if batch.step == self.at else ce, {"ce": ce.detach()})


@pytest.mark.parametrize("every,where,calls", [(4, "steps 4-7", 8), (0, "step 5", 6)])
def test_nan_check_on_the_accumulated_loss_names_the_window(every, where, calls):
    d = _NaNAt(5)
    with pytest.raises(FloatingPointError, match=rf"train: loss became nan at epoch 1, {where}; lower"):
        _fit(128, d, Accel(sync_every=every))
    assert d.calls == calls  # stops at the end of the window that holds the NaN


def test_finite_check_flushes_a_partial_window():
    seen = []
    fc = FiniteCheck(10, lambda v, where: seen.append(where) or "boom", unit="iteration")
    for i in range(3):
        fc.add(torch.tensor(1.0 if i < 2 else float("inf")), i)
    with pytest.raises(FloatingPointError, match="boom"):
        fc.flush()
    assert seen == ["iterations 0-2"]


def _attack(name, **kw):
    from mi_bench.registry import ATTACKS

    cls = ATTACKS.get(name)
    return cls(cls.Config(name=name, **kw), image_shape=(1, 32, 32), num_classes=5,
               device=torch.device("cpu"))


SMALL = {
    "gmi": dict(gan_width=4, n_critic=2, gan_batch_size=16),
    "kedmi": dict(gen_width=4, disc_width=4, mbd_kernels=4, mbd_dim=3, n_critic=2, gan_batch_size=16),
    "plgmi": dict(gen_width=2, disc_width=2, n_critic=2, gan_batch_size=16, top_n=20, aug_flip=False),
}


@pytest.mark.parametrize("name,per_window", [("gmi", 0), ("kedmi", 2), ("plgmi", 1)])
def test_gan_priors_read_losses_every_n_steps(reads, name, per_window):
    """Doubling the prior's steps adds one NaN-check read per N steps (KED-MI counts D steps:
    n_critic = 2 per G step) and nothing else: losses on progress bars are never read by
    disabled bars (GMI has no NaN check)."""
    torch.manual_seed(0)
    pub = torch.rand(64, 1, 32, 32)
    target = build_model("mcnn", num_classes=5, in_channels=1, width=0.25).eval()
    counts = []
    for steps in (8, 16):
        atk = _attack(name, gan_steps=steps, **SMALL[name])
        atk.accel = Accel(sync_every=4)
        reads["n"] = 0
        atk.train_prior(pub, target, seed=0, progress=rt.NULL_BARS)
        counts.append(reads["n"])
    assert counts[1] - counts[0] == per_window * 8 // 4, counts


def test_gan_prior_nan_check_raises_within_n_steps(monkeypatch):
    import mi_bench.attacks.kedmi as kedmi

    monkeypatch.setattr(kedmi, "soft_cross_entropy", lambda logits, p: logits.sum() * float("nan"))
    atk = _attack("kedmi", gan_steps=8, **SMALL["kedmi"])
    atk.accel = Accel(sync_every=4)
    target = build_model("mcnn", num_classes=5, in_channels=1, width=0.25).eval()
    with pytest.raises(FloatingPointError, match="kedmi GAN: D loss became nan at steps 0-3; lower gan_lr"):
        atk.train_prior(torch.rand(32, 1, 32, 32), target, seed=0, progress=rt.NULL_BARS)


def test_progress_bars_read_tensor_info_at_most_every_interval(reads):
    with Bars(enabled=True, live=True) as bars, bars.task("t", total=2000) as bar:  # rich bars
        t0 = time.monotonic()
        for i in range(2000):
            bar.advance(1, loss=torch.tensor(float(i)), acc=torch.tensor(0.5))
        elapsed = time.monotonic() - t0
    # one stacked read per INFO_INTERVAL, plus the first advance and the close
    assert 2 <= reads["n"] <= 3 + elapsed / rt.INFO_INTERVAL


# -- amp and compile on the CPU ----------------------------------------------------------------

class _Spy(Defense):
    """BiDO's loss, recording the dtypes it saw."""

    def __init__(self):
        super().__init__(None, num_classes=5, input_shape=(1, 32, 32))  # type: ignore[arg-type]
        self.inner = _bido()
        self.dtypes = set()

    def tap_layers(self, model):
        return self.inner.tap_layers(model)

    def compute_loss(self, batch):
        out = self.inner.compute_loss(batch)
        self.dtypes.add((batch.logits.dtype, out.terms["d_xz"].dtype, out.total.dtype))
        return out


def test_amp_bf16_autocasts_the_forward_and_keeps_hsic_in_float32():
    spy = _Spy()
    res = _fit(64, spy, Accel(amp="bf16"), epochs=2)
    assert spy.dtypes == {(torch.bfloat16, torch.float64, torch.float32)}
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in res.model.parameters())
    assert all(math.isfinite(r["loss"]) for r in res.history)  # finite, logged


@pytest.fixture
def aot_eager(monkeypatch):
    """torch.compile with the aot_eager backend: the same tracing (dynamo + AOT autograd) without
    generating C++ on this CPU, so the test takes seconds."""
    orig = torch.compile

    def compile_(model, mode=None, **kw):
        return orig(model, backend="aot_eager")
    monkeypatch.setattr(torch, "compile", compile_)
    yield
    torch._dynamo.reset()


def test_compiled_trainer_keeps_taps_and_matches_eager(aot_eager):
    eager = _fit(64, _bido(), Accel())
    comp = _fit(64, _bido(), Accel(compile="default"))
    for (k, a), b in zip(eager.model.state_dict().items(), comp.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5), k
    assert comp.history[-1]["d_xz"] == pytest.approx(eager.history[-1]["d_xz"], rel=1e-4)


def test_compiled_gmi_prior_matches_eager(aot_eager):
    pub = torch.rand(64, 1, 32, 32)
    priors = []
    for mode in ("off", "default"):
        atk = _attack("gmi", gan_steps=3, **SMALL["gmi"])
        atk.accel = Accel(compile=mode)
        priors.append(atk.train_prior(pub, None, seed=0, progress=rt.NULL_BARS))
    for k in priors[0]:
        assert torch.allclose(priors[0][k].float(), priors[1][k].float(), rtol=1e-3, atol=1e-5), k


def test_compile_is_skipped_when_the_defense_wraps_the_model(aot_eager, caplog):
    from mi_bench.defenses.dpsgd import DPSGD, DPSGDConfig

    d = DPSGD(DPSGDConfig(name="dpsgd"), num_classes=5, input_shape=(1, 32, 32))
    with caplog.at_level("WARNING"):
        _fit(32, d, Accel(compile="default"))
    assert "compile=default skipped: the defense wraps the model" in caplog.text


def test_cuda_graph_option_keys_only_the_gmi_prior_and_falls_back_on_the_cpu(caplog):
    """``cuda_graph=true``: the GMI prior (whose training honours it) gets a key of its own, the
    target, the evaluator and KED-MI's prior keep theirs; the default run's hash is unchanged;
    on the CPU the prior trains eagerly, bit for bit as without it, and says so."""
    from mi_bench.record import machine
    from mi_bench.stages import artifact_plan
    from mi_bench.registry import ATTACKS
    from mi_bench.runtime import NULL_BARS

    splits = load_splits(DatasetConfig(), REPO)
    base = to_dict(compose(["preset=smoke"]))
    assert base["cuda_graph"] is False
    assert config_hash(base) == config_hash({k: v for k, v in base.items() if k != "cuda_graph"})
    for attack, prior_changes in (("gmi", True), ("kedmi", False)):
        off = artifact_plan(compose(["preset=smoke", f"attack={attack}"]), splits)
        on = artifact_plan(compose(["preset=smoke", f"attack={attack}", "cuda_graph=true"]), splits)
        assert (on["prior"] != off["prior"]) is prior_changes
        assert on["target"] == off["target"] and on["evaluator"] == off["evaluator"]
    cfg = compose(["preset=smoke", "cuda_graph=true"])
    assert machine(cfg, torch.device("cpu"))["accel"]["cuda_graph"] is False  # not on the CPU
    pub = torch.rand(80, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    priors = []
    for graph in (False, True):
        atk = ATTACKS.get("gmi")(cfg.attack, image_shape=(1, 32, 32), num_classes=10, device=torch.device("cpu"))
        atk.accel = rt.Accel(graph=graph)
        with caplog.at_level("INFO"):
            priors.append(atk.train_prior(pub, None, seed=0, progress=NULL_BARS))
    assert all(torch.equal(priors[0][k], priors[1][k]) for k in priors[0])
    assert "CUDA graph off" in caplog.text
