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
