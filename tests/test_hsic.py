"""HSIC / COCO against textbook computations, and their behaviour under (in)dependence."""

import numpy as np
import pytest
import torch

from mi_bench.data import pk_batches
from mi_bench.hsic import coco, gaussian_kernel, hsic, label_kernel, normalized_hsic


def _textbook_kernel(z, sigma):
    z = z.reshape(len(z), -1).double().numpy()
    d = z.shape[1]
    k = np.empty((len(z), len(z)))
    for i in range(len(z)):
        for j in range(len(z)):
            k[i, j] = np.exp(-np.sum((z[i] - z[j]) ** 2) / (2 * sigma**2 * d))
    return k


def _textbook_nhsic(kx, ky, eps=1e-5):
    m = len(kx)
    h = np.eye(m) - np.ones((m, m)) / m
    rx = kx @ h @ np.linalg.inv(kx @ h + eps * m * np.eye(m))
    ry = ky @ h @ np.linalg.inv(ky @ h + eps * m * np.eye(m))
    return np.trace(rx @ ry)


def test_gaussian_kernel_matches_textbook():
    z = torch.randn(7, 3, 2, 2, dtype=torch.float64)
    np.testing.assert_allclose(gaussian_kernel(z, 5.0).numpy(), _textbook_kernel(z, 5.0), rtol=1e-10)


def test_normalized_hsic_matches_textbook():
    torch.manual_seed(0)
    x, z = torch.randn(12, 5, dtype=torch.float64), torch.randn(12, 4, dtype=torch.float64)
    kx, kz = gaussian_kernel(x, 1.0), gaussian_kernel(z, 1.0)
    ours = float(normalized_hsic(kx, kz))
    ref = _textbook_nhsic(kx.numpy(), kz.numpy())
    assert ours == pytest.approx(ref, rel=1e-6)


def test_coco_matches_textbook_both_norms():
    torch.manual_seed(1)
    kx = gaussian_kernel(torch.randn(9, 3, dtype=torch.float64), 1.0)
    ky = gaussian_kernel(torch.randn(9, 2, dtype=torch.float64), 1.0)
    m = 9
    h = np.eye(m) - 1.0 / m
    prod = (h @ kx.numpy() @ h) @ (h @ ky.numpy() @ h)
    assert float(coco(kx, ky, "fro")) == pytest.approx(np.sqrt(np.linalg.norm(prod, "fro")) / m, rel=1e-9)
    assert float(coco(kx, ky, "spectral")) == pytest.approx(np.sqrt(np.linalg.norm(prod, 2)) / m, rel=1e-9)


def test_plain_hsic_matches_textbook():
    torch.manual_seed(2)
    kx = gaussian_kernel(torch.randn(10, 3, dtype=torch.float64), 1.0).numpy()
    ky = gaussian_kernel(torch.randn(10, 3, dtype=torch.float64), 1.0).numpy()
    h = np.eye(10) - 0.1
    ref = np.trace(kx @ h @ ky @ h) / 81
    assert float(hsic(torch.tensor(kx), torch.tensor(ky))) == pytest.approx(ref, rel=1e-9)


@pytest.mark.parametrize(
    "measure,sigma,ratio",
    # COCO takes a square root of a norm, so its independent baseline is relatively higher.
    [("nhsic", 5.0, 0.1), ("coco", 1.0, 0.4), ("hsic", 1.0, 0.1)],
)
def test_near_zero_when_independent_and_growing_with_dependence(measure, sigma, ratio):
    g = torch.Generator().manual_seed(0)
    m = 200
    x = torch.randn(m, 2, generator=g, dtype=torch.float64)
    noise = torch.randn(m, 2, generator=g, dtype=torch.float64)

    def d(a, b):
        ka, kb = gaussian_kernel(a, sigma), gaussian_kernel(b, sigma)
        if measure == "nhsic":
            return float(normalized_hsic(ka, kb))
        if measure == "coco":
            return float(coco(ka, kb))
        return float(hsic(ka, kb))

    # independent, then x + s * noise with decreasing noise scale s
    values = [d(x, noise)] + [d(x, x + s * noise) for s in (1.0, 0.3, 0.0)]
    assert all(b > a for a, b in zip(values, values[1:])), values
    assert values[0] < ratio * values[-1], values


def test_label_term_carries_no_information_with_distinct_labels_but_does_under_pk():
    """With m distinct labels Y Y^T = I whatever the labels: permuting them leaves d(Z, Y)
    unchanged. Under P x K batches the term depends on which sample has which label."""
    torch.manual_seed(0)
    m = 16
    z = torch.nn.functional.one_hot(torch.arange(m) % 4, 4).double() * 3 + 0.1 * torch.randn(m, 4, dtype=torch.float64)
    kz = gaussian_kernel(z, 1.0)
    y = torch.arange(m)
    perm = torch.randperm(m)
    a = float(normalized_hsic(kz, label_kernel(y, m).double()))
    b = float(normalized_hsic(kz, label_kernel(y[perm], m).double()))
    assert a == pytest.approx(b, rel=1e-9)

    labels = torch.arange(40).remainder(4)
    batch = pk_batches(labels, 4, 4, torch.Generator().manual_seed(0))[0]
    yb = labels[batch]
    assert sorted(torch.bincount(yb).tolist()) == [4, 4, 4, 4]
    following = torch.nn.functional.one_hot(yb, 4).double() * 3  # features that encode the label
    kf = gaussian_kernel(following, 1.0)
    d_true = float(normalized_hsic(kf, label_kernel(yb, 4).double()))
    d_shuffled = float(normalized_hsic(kf, label_kernel(yb[torch.randperm(16)], 4).double()))
    assert d_true > 1.5 * d_shuffled


def test_normalized_hsic_scale_at_m64_with_onehot_labels():
    """methods.md: at m = 64 with one-hot labels the values lie roughly in 7-62."""
    torch.manual_seed(0)
    y = torch.randint(0, 5, (64,))
    z = torch.randn(64, 32)
    v = float(normalized_hsic(gaussian_kernel(z, 5.0), label_kernel(y, 5)))
    assert 1.0 < v < 64.0


# -- the Gram-matrix kernel equals the elementwise (cdist) kernel it replaced (issue 7) ----------

def _cdist_kernel(z, sigma=5.0):
    """The implementation before issue 7: elementwise pairwise distances."""
    z = z.reshape(z.shape[0], -1)
    sq = torch.cdist(z, z, compute_mode="donot_use_mm_for_euclid_dist").pow(2)
    return torch.exp(-sq / (2.0 * sigma**2 * z.shape[1]))


# MCNN's tapped BiDO layers at batch 64 (and the input), ReLU-like features off the origin
SHAPES = [((64, 1, 32, 32), 0.5), ((64, 64, 14, 14), 3.0), ((64, 128, 5, 5), 0.0), ((64, 256, 1, 1), 10.0)]


def _features(shape, offset, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) + offset).relu().to(dtype)


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("shape,offset", SHAPES)
@pytest.mark.parametrize("dtype,tol_k,tol_g", [(torch.float64, 1e-12, 1e-10), (torch.float32, 1e-6, 1e-4)])
def test_gram_kernel_equals_cdist_kernel_with_gradients(shape, offset, dtype, tol_k, tol_g):
    z = _features(shape, offset, dtype)
    a, b = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
    ka, kb = gaussian_kernel(a, 5.0), _cdist_kernel(b, 5.0)
    assert ka.dtype == dtype
    assert float((ka - kb).detach().abs().max()) <= tol_k
    assert torch.equal(ka.diagonal(), torch.ones(64, dtype=dtype))  # exact zero self-distance
    w = torch.randn(64, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    (ga,) = torch.autograd.grad((ka * w).sum(), a)
    (gb,) = torch.autograd.grad((kb * w).sum(), b)
    assert _rel(ga, gb) <= tol_g


@pytest.mark.parametrize("measure", ["hsic", "coco", "plain_hsic"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_dependence_values_and_gradients_equal_the_cdist_implementation(measure, dtype):
    """BiDO's d(X, Z) and d(Z, Y) with the new kernel against the old one. float64: equal to
    1e-9. float32: values to 1e-5; gradients to 1e-2 for the normalised HSIC (its ridge solve,
    eps m = 6.4e-4, is ill-conditioned: the float32 gradient of *either* kernel is 4-10% from
    float64, measured, while the two float32 versions differ by ~1e-3) and 1e-4 otherwise."""
    from mi_bench.hsic import dependence

    y = torch.arange(64) % 5
    ky = label_kernel(y, 5, dtype=dtype)
    x = _features((64, 1, 32, 32), 0.0, dtype, seed=3)
    for shape, offset in SHAPES[1:]:
        z = _features(shape, offset, dtype)
        a, b = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
        va = dependence(measure, gaussian_kernel(x), gaussian_kernel(a)) - dependence(measure, gaussian_kernel(a), ky)
        vb = dependence(measure, _cdist_kernel(x), _cdist_kernel(b)) - dependence(measure, _cdist_kernel(b), ky)
        (ga,) = torch.autograd.grad(va, a)
        (gb,) = torch.autograd.grad(vb, b)
        if dtype == torch.float64:
            assert float(va) == pytest.approx(float(vb), rel=1e-9)
            assert _rel(ga, gb) <= 1e-9
        else:
            assert float(va) == pytest.approx(float(vb), rel=1e-5, abs=1e-6)
            assert _rel(ga, gb) <= (1e-2 if measure == "hsic" else 1e-4)


def test_desmil_median_kernel_equals_the_cdist_version():
    """DESMIL's median-heuristic kernel (now computed on the device, no host read) against the
    previous cdist + float(median) construction."""
    import math

    from mi_bench.defenses.desmil import chunk_kernel

    z = _features((64, 64), 0.5, torch.float64).requires_grad_(True)
    sq = torch.cdist(z.detach(), z.detach()).pow(2)
    med = float(sq[~torch.eye(64, dtype=torch.bool)].median())
    ref = _cdist_kernel(z, math.sqrt(med / 64))
    got = chunk_kernel(z, 0.0)
    assert float((got - ref).detach().abs().max()) < 1e-12
    (ga,) = torch.autograd.grad(got.sum(), z)
    (gb,) = torch.autograd.grad(ref.sum(), z)
    assert _rel(ga, gb) < 1e-10
    # a constant chunk (all distances 0) falls back to sigma = 1: every entry 1
    assert torch.equal(chunk_kernel(torch.ones(8, 4, dtype=torch.float64), 0.0), torch.ones(8, 8, dtype=torch.float64))


def test_kernels_and_dependence_ignore_bf16_autocast():
    """Under amp=bf16 the HSIC terms stay float32 (bf16 Gram matrices would destroy them)."""
    from mi_bench.hsic import dependence

    z = _features((16, 8, 4, 4), 1.0, torch.float32)
    ky = label_kernel(torch.arange(16) % 4, 4)
    ref = dependence("hsic", gaussian_kernel(z), ky)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        k = gaussian_kernel(z)
        got = dependence("hsic", k, ky)
        from_bf16 = gaussian_kernel(z.bfloat16())
    assert k.dtype == torch.float32 and got.dtype == torch.float32 and from_bf16.dtype == torch.float32
    assert float(got) == pytest.approx(float(ref), rel=1e-6)


@pytest.mark.parametrize("measure", ["hsic", "coco", "plain_hsic"])
def test_prepared_pairs_equal_dependence_and_the_named_functions(measure):
    """``dependence_of(prepare(Kx), prepare(Ky))`` is ``dependence`` and the named function
    bit for bit: BiDO prepares X, Y and each layer once per batch and must not change a value."""
    from mi_bench.hsic import dependence, dependence_of, prepare

    g = torch.Generator().manual_seed(3)
    kx = gaussian_kernel(torch.randn(32, 50, generator=g), 2.0)
    ky = gaussian_kernel(torch.randn(32, 7, generator=g), 2.0)
    named = {"hsic": lambda a, b: normalized_hsic(a, b, 1e-5), "coco": coco, "plain_hsic": hsic}[measure]
    got = dependence_of(measure, prepare(measure, kx), prepare(measure, ky))
    assert torch.equal(got, dependence(measure, kx, ky))
    assert torch.equal(got, named(kx, ky))
    with pytest.raises(ValueError, match="unknown dependence measure"):
        prepare("hsci", kx)


@pytest.mark.parametrize("measure", ["hsic", "coco"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bido_loss_equals_the_sum_of_pairwise_dependences(measure, dtype):
    """BiDO's loss, with X's, Y's and each layer's kernel prepared once, equals CE + sum_j
    [lambda_x d(X, Z_j) - lambda_y d(Z_j, Y)] computed pair by pair from the raw kernels; gradients
    agree to float rounding (the summation order of the shared parts differs)."""
    from mi_bench.defenses.bido import BiDO, BiDOConfig
    from mi_bench.hsic import dependence
    from mi_bench.interfaces import TrainBatch
    from mi_bench.models import build_model
    from mi_bench.train import Taps

    def loss(pairwise: bool):
        torch.manual_seed(0)
        model = build_model("mcnn", num_classes=5, in_channels=1, width=0.5).to(dtype)
        x = torch.rand(32, 1, 32, 32, generator=torch.Generator().manual_seed(1)).to(dtype)
        y = torch.arange(32) % 5
        d = BiDO(BiDOConfig(name="bido", measure=measure, lambda_x=1.0, lambda_y=5.0),
                 num_classes=5, input_shape=(1, 32, 32))
        taps = Taps(model, d.tap_layers(model))
        logits = model(x)
        if pairwise:
            kx, ky = gaussian_kernel(x, 5.0), label_kernel(y, 5, dtype=dtype)
            total = torch.nn.functional.cross_entropy(logits, y)
            for z in taps.outputs.values():
                kz = gaussian_kernel(z, 5.0)
                total = total + dependence(measure, kx, kz) - 5.0 * dependence(measure, kz, ky)
        else:
            total = d.compute_loss(TrainBatch(x, y, logits, dict(taps.outputs), model, 0, 0, None)).total
        taps.remove()
        total.backward()
        return total.detach(), [p.grad for p in model.parameters()]

    (got, g_got), (ref, g_ref) = loss(False), loss(True)
    # float32: the ridge solves are ill-conditioned, so the changed summation order alone moves
    # the nHSIC gradient by about 2.5e-5 of its norm (measured); float64 pins the algebra
    tol = 1e-12 if dtype == torch.float64 else 1e-4
    assert float(got) == pytest.approx(float(ref), rel=tol)
    total_norm = float(torch.sqrt(sum((g * g).sum() for g in g_ref)))
    for a, b in zip(g_got, g_ref):
        assert float((a - b).norm()) <= tol * total_norm
