"""Kernel dependence measures shared by BiDO, the QAD-style and DESMIL-style defenses.

* :func:`gaussian_kernel` - ``k(a, b) = exp(-||a-b||^2 / (2 sigma^2 d))``: BiDO's bandwidth scales
  with the feature dimension ``d`` (methods.md section 2). The squared distances
  (:func:`sq_distances`) come from the squared norms and one Gram matrix,
  ``||a||^2 + ||b||^2 - 2 <a, b>``, clamped at 0 with an exact-zero diagonal, as the official
  ``distmat`` computes them (it takes ``abs`` where mi-bench clamps): one matrix product on
  features of up to 16k dimensions instead of an elementwise pairwise pass, forward and
  backward. The rows are centred first (distances do not change), which keeps the float32
  cancellation error small for ReLU features far from the origin.
* Every function here runs in the inputs' dtype with autocast off (bf16 matmuls would destroy
  the distances and the ridge solves), so ``amp=bf16`` training keeps the HSIC terms in float32;
  on CUDA their forward matmuls also run with TF32 off (TF32's 10-bit mantissa costs these
  ill-conditioned terms accuracy, and the matrices are tiny); backward follows the global
  setting.
* :func:`normalized_hsic` - BiDO-HSIC's ``tr(R_x R_y)`` with ``R = K~ (K~ + eps m I)^-1``,
  ``K~ = K H``. The ridge system is *solved* (``torch.linalg.solve_ex``) on the tensors' own
  device and dtype, never inverted on the CPU as the official code does.
* :func:`coco` - constrained covariance ``sqrt(||(HKH)(HLH)||) / m``; mi-bench uses the
  Frobenius norm like the official BiDO code (``norm="fro"``) and offers the textbook spectral
  norm (``norm="spectral"``).
* :func:`hsic` - the plain biased estimator ``tr(K H L H) / (m-1)^2``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


def _flat(z: torch.Tensor) -> torch.Tensor:
    return z.reshape(z.shape[0], -1)


@contextmanager
def _no_autocast(z: torch.Tensor) -> Iterator[None]:
    """Autocast off and, on CUDA, TF32 matmuls off (both restored on exit)."""
    with torch.autocast(z.device.type, enabled=False):
        if z.device.type != "cuda" or not torch.backends.cuda.matmul.allow_tf32:
            yield
            return
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = True


def _full(z: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 (autocast outputs) -> float32; other dtypes unchanged."""
    return z.float() if z.dtype in (torch.float16, torch.bfloat16) else z


def sq_distances(z: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances of the flattened rows of ``z`` (m x m): centred
    rows, ``||a||^2 + ||b||^2 - 2 <a, b>`` from one Gram matrix, clamped at 0, diagonal 0."""
    with _no_autocast(z):
        z = _full(_flat(z))
        z = z - z.mean(0, keepdim=True)
        sq = (z * z).sum(1)
        d = (sq[:, None] + sq[None, :] - 2.0 * (z @ z.T)).clamp_min(0.0)
        eye = torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
        return d.masked_fill(eye, 0.0)


def gaussian_kernel(z: torch.Tensor, sigma: float | torch.Tensor = 5.0) -> torch.Tensor:
    """Gaussian kernel matrix of the flattened rows of ``z`` with dimension-scaled bandwidth."""
    d = _flat(z).shape[1]
    return kernel_from_sq(sq_distances(z), 2.0 * sigma**2 * d)


def kernel_from_sq(sq: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """``exp(-sq / scale)`` for squared distances ``sq`` (``scale`` = 2 x the bandwidth)."""
    with _no_autocast(sq):
        return torch.exp(-sq / scale)


def linear_kernel(z: torch.Tensor) -> torch.Tensor:
    z = _flat(z)
    return z @ z.T


def label_kernel(y: torch.Tensor, num_classes: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Linear kernel on one-hot labels: ``Y Y^T`` (1 where two samples share a label), in
    ``dtype`` (default: torch's default dtype; pass the features' dtype to pair it with them).
    Built as ``y_i == y_j``: the same 0/1 matrix as ``one_hot(y) @ one_hot(y).T``, without
    ``one_hot``'s range check (a host read on a GPU); ``num_classes`` documents the labels'
    range."""
    return (y[:, None] == y[None, :]).to(dtype or torch.get_default_dtype())


def _centering(m: int, like: torch.Tensor) -> torch.Tensor:
    return torch.eye(m, dtype=like.dtype, device=like.device) - 1.0 / m


def _ridge_ratio(k: torch.Tensor, eps: float) -> torch.Tensor:
    """``R = K~ (K~ + eps m I)^-1`` with ``K~ = K H``, by solving ``R (K~ + eps m I) = K~``."""
    m = k.shape[0]
    kt = k @ _centering(m, k)
    eye = torch.eye(m, dtype=k.dtype, device=k.device)
    # solve_ex: the same LU solve as linalg.solve without its error check, which reads the
    # factorisation's status to the host (a GPU wait per call); a singular system gives
    # non-finite values, which the training loops' NaN check reports
    return torch.linalg.solve_ex(kt + eps * m * eye, kt, left=False)[0]


def normalized_hsic(kx: torch.Tensor, ky: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """BiDO's normalised HSIC ``tr(R_x R_y)`` of two m x m kernel matrices."""
    rx = _ridge_ratio(kx, eps)
    ry = _ridge_ratio(ky, eps)
    return (rx * ry.T).sum()  # tr(A B) = sum_ij A_ij B_ji


def coco(kx: torch.Tensor, ky: torch.Tensor, norm: str = "fro") -> torch.Tensor:
    """Constrained covariance ``sqrt(||(H Kx H)(H Ky H)||) / m``."""
    h = _centering(kx.shape[0], kx)
    return _coco_of_centred(h @ kx @ h, h @ ky @ h, norm)


def _coco_of_centred(a: torch.Tensor, b: torch.Tensor, norm: str) -> torch.Tensor:
    """``sqrt(||A B||) / m`` for centred kernel matrices ``A = H Kx H``, ``B = H Ky H``."""
    prod = a @ b
    if norm == "fro":
        n = torch.linalg.matrix_norm(prod, ord="fro")
    elif norm == "spectral":
        n = torch.linalg.matrix_norm(prod, ord=2)
    else:
        raise ValueError(f"unknown COCO norm {norm!r}: use 'fro' or 'spectral'")
    return torch.sqrt(n) / a.shape[0]


def hsic(kx: torch.Tensor, ky: torch.Tensor) -> torch.Tensor:
    """Biased HSIC estimator ``tr(Kx H Ky H) / (m-1)^2``."""
    m = kx.shape[0]
    h = _centering(m, kx)
    return ((kx @ h) * (ky @ h).T).sum() / (m - 1) ** 2


MEASURES = ("hsic", "coco", "plain_hsic")


def _check_measure(measure: str) -> None:
    if measure not in MEASURES:
        raise ValueError(f"unknown dependence measure {measure!r}: use hsic, coco or plain_hsic")


def prepare(measure: str, k: torch.Tensor, *, eps: float = 1e-5) -> torch.Tensor:
    """The part of :func:`dependence` that depends on one kernel matrix alone: ``R = K~ (K~ + eps
    m I)^-1`` (``hsic``), ``H K H`` (``coco``) or ``K H`` (``plain_hsic``). Pairing two prepared
    matrices with :func:`dependence_of` gives :func:`dependence` exactly (the same operations),
    and prepares each matrix once where it enters several pairs (BiDO: X and Y are paired with
    every tapped layer, each layer with both: 5 ridge solves instead of 12 for three layers)."""
    _check_measure(measure)
    with _no_autocast(k):
        k = _full(k)
        m = k.shape[0]
        if measure == "hsic":
            return _ridge_ratio(k, eps)
        h = _centering(m, k)
        return h @ k @ h if measure == "coco" else k @ h


def dependence_of(measure: str, a: torch.Tensor, b: torch.Tensor, *, coco_norm: str = "fro") -> torch.Tensor:
    """:func:`dependence` of two matrices prepared by :func:`prepare` with the same ``measure``."""
    _check_measure(measure)
    with _no_autocast(a):
        m = a.shape[0]
        if measure == "hsic":
            return (a * b.T).sum()  # tr(R_x R_y)
        if measure == "plain_hsic":
            return (a * b.T).sum() / (m - 1) ** 2
        return _coco_of_centred(a, b, coco_norm)


def dependence(
    measure: str, kx: torch.Tensor, ky: torch.Tensor, *, eps: float = 1e-5, coco_norm: str = "fro"
) -> torch.Tensor:
    """Dispatch by name: ``hsic`` (BiDO's normalised HSIC), ``coco`` or ``plain_hsic``
    (computed with autocast off, bf16/fp16 kernels promoted to float32); the same operations as
    :func:`normalized_hsic`, :func:`coco` and :func:`hsic`."""
    return dependence_of(measure, prepare(measure, kx, eps=eps), prepare(measure, ky, eps=eps),
                         coco_norm=coco_norm)
