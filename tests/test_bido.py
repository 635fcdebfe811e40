"""BiDO: strength 0 is exactly undefended training; non-zero strengths change training."""

from pathlib import Path

import pytest
import torch

from mi_bench.data import DatasetConfig, load_splits
from mi_bench.defenses.bido import BiDO, BiDOConfig
from mi_bench.defenses.none import NoDefense
from mi_bench.models import build_model
from mi_bench.params import validate_dataclass
from mi_bench.train import TrainConfig, train_classifier


@pytest.fixture(scope="module")
def small():
    s = load_splits(DatasetConfig(), Path("."))
    x, y = s.private_train
    return (x[:192], y[:192]), s.private_val


def _train(defense, data, sampler="random"):
    train, val = data
    make = lambda: build_model("mcnn", num_classes=5, in_channels=1, width=0.25)  # noqa: E731
    cfg = TrainConfig(epochs=2, batch_size=32, sampler=sampler, pk_classes=4)
    return train_classifier(make, train, val, cfg, seed=7, defense=defense)


def _defense(cls, cfg):
    return cls(cfg, num_classes=5, input_shape=(1, 32, 32))


@pytest.mark.parametrize("measure", ["hsic", "coco"])
@pytest.mark.parametrize("sampler", ["random", "pk"])
def test_bido_with_zero_lambdas_reproduces_none_exactly(small, measure, sampler):
    ref = _train(_defense(NoDefense, None), small, sampler).model.state_dict()
    got = _train(_defense(BiDO, BiDOConfig(name="bido", measure=measure, lambda_x=0.0, lambda_y=0.0)),
                 small, sampler).model.state_dict()
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k


@pytest.mark.parametrize("measure", ["hsic", "coco"])
def test_bido_with_nonzero_lambdas_changes_training_and_logs_terms(small, measure):
    ref = _train(_defense(NoDefense, None), small).model.state_dict()
    res = _train(_defense(BiDO, BiDOConfig(name="bido", measure=measure, lambda_x=0.05, lambda_y=0.5)), small)
    assert any(not torch.equal(ref[k], v) for k, v in res.model.state_dict().items())
    row = res.history[-1]
    assert row["d_xz"] > 0 and row["d_zy"] > 0
    # d_xz / d_zy are logged as means over MCNN's 3 tapped layers; the loss sums the layers
    assert row["loss"] == pytest.approx(row["ce"] + 3 * (0.05 * row["d_xz"] - 0.5 * row["d_zy"]),
                                        rel=0.2, abs=0.5)


def _one_batch(dtype):
    from mi_bench.interfaces import TrainBatch
    from mi_bench.train import Taps

    torch.manual_seed(0)
    model = build_model("mcnn", num_classes=5, in_channels=1, width=0.25).to(dtype)
    x, y = torch.rand(16, 1, 32, 32, dtype=dtype), torch.arange(16) % 5
    taps = Taps(model, list(model.hidden_layers))
    logits = model(x)
    out = dict(taps.outputs)
    taps.remove()
    return TrainBatch(x, y, logits, out, model, 0, 0, None)


@pytest.mark.parametrize("measure", ["hsic", "coco"])
def test_bido_terms_are_layer_means_and_float64_taps_work(measure):
    """The official log prints the mean over layers (the loss sums them); the label kernel is
    built in the taps' dtype, so float64 taps no longer raise with COCO."""
    from mi_bench.hsic import dependence, gaussian_kernel, label_kernel

    d = _defense(BiDO, BiDOConfig(name="bido", measure=measure, lambda_x=0.5, lambda_y=2.0))
    for dtype in (torch.float32, torch.float64):
        batch = _one_batch(dtype)
        out = d.compute_loss(batch)
        assert out.total.dtype == dtype
        kx, ky = gaussian_kernel(batch.x, 5.0), label_kernel(batch.y, 5, dtype=dtype)
        dxs = [float(dependence(measure, kx, gaussian_kernel(z, 5.0))) for z in batch.taps.values()]
        dys = [float(dependence(measure, gaussian_kernel(z, 5.0), ky)) for z in batch.taps.values()]
        assert float(out.terms["d_xz"]) == pytest.approx(sum(dxs) / 3, rel=1e-5)
        assert float(out.terms["d_zy"]) == pytest.approx(sum(dys) / 3, rel=1e-5)
        ce = torch.nn.functional.cross_entropy(batch.logits, batch.y)
        assert float(out.total) == pytest.approx(float(ce) + 0.5 * sum(dxs) - 2.0 * sum(dys), rel=1e-5)


def test_measure_flag_reaches_the_loss(small):
    """The official code's --measure never reached the loss; here HSIC and COCO differ."""
    a = _train(_defense(BiDO, BiDOConfig(name="bido", measure="hsic", lambda_x=0.05, lambda_y=0.5)), small)
    b = _train(_defense(BiDO, BiDOConfig(name="bido", measure="coco", lambda_x=0.05, lambda_y=0.5)), small)
    assert a.history[-1]["d_zy"] != pytest.approx(b.history[-1]["d_zy"], rel=0.01)


def test_bido_bad_parameters_are_rejected():
    errs = validate_dataclass(BiDOConfig(name="bido", lambda_x=-1.0))
    assert errs and "lambda_x" in errs[0] and ">=" in errs[0]
    errs = validate_dataclass(BiDOConfig(name="bido", measure="mi"))
    assert errs and "measure" in errs[0] and "hsic" in errs[0]


def test_bido_unknown_tap_layer_is_a_clear_error(small):
    d = _defense(BiDO, BiDOConfig(name="bido", layers=["block9"]))
    with pytest.raises(ValueError, match="layer 'block9' not found.*block1"):
        _train(d, small)


def test_taps_are_removed_after_training(small):
    train, val = small
    made = {}

    def make():
        made["m"] = build_model("mcnn", num_classes=5, in_channels=1, width=0.25)
        return made["m"]

    train_classifier(make, train, val, TrainConfig(epochs=1, batch_size=32), seed=0,
                     defense=_defense(BiDO, BiDOConfig(name="bido")))
    for name in ("block1", "block2", "block3"):
        assert len(made["m"].get_submodule(name)._forward_hooks) == 0
