"""Distribution and perceptual metrics of reconstructions: FID, KID and LPIPS.

All of them compare the reconstructions with the **private training images** (``lpips_nn``: of
the attacked class only). They are computed by :func:`mi_bench.metrics.score_perceptual`, which
``mi_bench.metrics.score_inversion`` calls once; this module holds the formulas and models.

FID (``fid_eval``, ``fid_inception``)
    Frechet distance between Gaussian fits of two feature sets: pytorch-fid's formula, with the
    trace of the matrix square root computed exactly from a singular value decomposition
    (:func:`frechet`; equal to pytorch-fid's ``calculate_frechet_distance``, tested). FID is biased upwards by small samples (the bias shrinks
    roughly like 1/n), so FIDs of runs with different numbers of reconstructions cannot be
    compared; use KID for that (``results/bench/fid_samples.py`` shows both against n).

KID (``kid_eval``, ``kid_inception``, each with ``*_se``)
    Kernel Inception Distance (Binkowski et al., *Demystifying MMD GANs*, ICLR 2018): the
    unbiased estimator of the squared MMD with the cubic polynomial kernel
    ``k(x, y) = (x.y / d + 1)^3`` (d = feature dimension). Both sets are used at their own sizes
    (the unbiased estimator does not need equal sizes). Reconstructions are a class-stratified
    sample by design (the same number per attacked class), so their within-set term averages
    each pair of classes separately and weights them by the classes' shares: the plain
    estimator would see too few same-class pairs and be biased low, by up to ~(1/K - (s-1)/(n-1))
    times the same-vs-other-class kernel gap (K classes, s per class; tested). The private set
    is treated as an i.i.d. sample. A set larger than
    ``eval.kid_subset_size`` (default 1000, as in the reference code) is subsampled without
    replacement, and the estimate is averaged over ``eval.kid_subsets`` (default 100) such
    subsets; when both sets fit, the single estimate on all images is exact and no subsets are
    drawn. Its expectation is the population MMD^2: 0 when reconstructions and private images
    come from one distribution, whatever the sample size, so KID can be negative. Standard
    error: the two-sample delete-one jackknife of the estimator on each subset (closed form
    from kernel row sums), combined as ``sqrt(mean of the subset variances)``, which bounds the
    variance of the subset average from above (conservative).

Inception features (``fid_inception``, ``kid_inception``)
    pytorch-fid's ``InceptionV3`` (the TensorFlow FID Inception weights, 2048-d final average
    pool), exactly as pytorch-fid prepares images: inputs in [0, 1] (clamped), resized
    bilinearly to 299x299 (``resize_input=True``, ``align_corners=False``) and scaled to
    [-1, 1] (``normalize_input=True``) inside the network; grayscale images are repeated to 3
    channels. The weights file is pytorch-fid's ``FID_WEIGHTS_URL``
    (``pt_inception-2015-12-05-6726825d.pth``) in the torch hub cache,
    ``torch.hub.get_dir()/checkpoints`` (``$TORCH_HOME/hub/checkpoints``), where pytorch-fid
    itself looks. Missing weights are downloaded there (progress bar on stderr) unless
    ``eval.download=false`` or ``MI_BENCH_OFFLINE=1``; when that is forbidden or fails the
    metrics are ``None`` with the reason, the file name and the folder in ``metric_absent``.
    Inception features of the private set are cached (``features-inception`` artifacts) when
    the caller passes an artifact store.

LPIPS (``lpips_nn``)
    For each reconstruction, the LPIPS distance (Zhang et al., CVPR 2018; the ``lpips``
    package, v0.1 linear calibration shipped with the package) to the nearest private training
    image *of the attacked class*, averaged over reconstructions. Network ``eval.lpips_net``
    (``alex`` default, or ``vgg``); its ImageNet backbone comes from torchvision's weights
    file in the same hub cache and is fetched or reported absent like Inception's. Inputs:
    grayscale repeated to 3 channels, scaled from [0, 1] to [-1, 1]; images smaller than
    ``eval.lpips_min_size`` (64) are upsampled bilinearly to it, because LPIPS was calibrated
    on 64x64 patches and AlexNet's stride-4 stem leaves 1x1 maps in its last three layers at
    32x32 (and fails below 31 pixels, e.g. MNIST's 28x28). Search: the backbone features of the
    class's private images are computed once, in chunks of ``chunk`` images, and all
    distances to them follow in closed form from those features (LPIPS is a weighted squared
    distance of unit-normalised features, averaged over positions); the distance to the nearest
    one is then recomputed with ``lpips.LPIPS.forward`` itself, which is the value reported.
    ``eval.lpips_candidates=K`` (> 0) restricts each search to the K nearest same-class images
    in pixel L2 (faster for VGG on large sets; the result is then an upper bound of the exact
    nearest-neighbour distance). Default 0: exact, over all of the class's images.
    :func:`mean_pairwise_lpips` gives the mean LPIPS between distinct members of one set (a
    diversity measure).
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator
from urllib.error import URLError
from urllib.parse import urlparse

import numpy as np
import torch
from torch.nn import functional as F

from mi_bench.errors import WeightsUnavailable
from mi_bench.images import to_uint8

log = logging.getLogger(__name__)

OFFLINE_ENV = "MI_BENCH_OFFLINE"
DOWNLOAD_TIMEOUT_S = 60
INCEPTION_FEATURES_VERSION = "1"


# -- weights files ------------------------------------------------------------------------------

@dataclass(frozen=True)
class WeightsFile:
    """A pretrained weights file that torch (hub) code loads from ``<hub dir>/checkpoints``."""

    what: str
    url: str
    check_hash: bool  # torchvision names carry a SHA-256 prefix; pytorch-fid does not check it

    @property
    def file(self) -> str:
        return os.path.basename(urlparse(self.url).path)

    def path(self) -> Path:
        return Path(torch.hub.get_dir()) / "checkpoints" / self.file


def inception_weights() -> WeightsFile:
    from pytorch_fid.inception import FID_WEIGHTS_URL

    return WeightsFile("Inception-v3 FID weights (pytorch-fid)", FID_WEIGHTS_URL, check_hash=False)


def lpips_backbone_weights(net: str) -> WeightsFile:
    """The torchvision ImageNet weights ``lpips.LPIPS(net=...)`` loads for its backbone."""
    from torchvision.models import AlexNet_Weights, VGG16_Weights

    urls = {"alex": AlexNet_Weights.IMAGENET1K_V1.url, "vgg": VGG16_Weights.IMAGENET1K_V1.url}
    if net not in urls:
        raise ValueError(f"lpips net {net!r} is not supported: choose one of {', '.join(urls)}")
    return WeightsFile(f"{net} ImageNet weights (torchvision, LPIPS backbone)", urls[net], check_hash=True)


def download_blocker(allow: bool = True) -> str | None:
    """Why downloads are forbidden (``MI_BENCH_OFFLINE`` or config), or None when allowed."""
    env = os.environ.get(OFFLINE_ENV, "").strip().lower()
    if env not in ("", "0", "false", "no"):
        return f"{OFFLINE_ENV}={os.environ[OFFLINE_ENV]}"
    if not allow:
        return "eval.download=false"
    return None


@contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    # torch.hub.download_url_to_file opens its URL without a timeout; a dropped connection
    # must not hang a run forever.
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def ensure_weights(w: WeightsFile, download: bool = True) -> Path:
    """Path of ``w`` on disk, downloading it first when it is missing and downloads are allowed.

    Raises :class:`WeightsUnavailable` (absent by design) when the file is missing and the
    download is forbidden or fails for network reasons; a corrupt download (hash mismatch) or a
    local I/O failure propagates as an error.
    """
    path = w.path()
    if path.is_file():
        return path
    hint = f"put {w.file} (from {w.url}) into {path.parent} to enable it"
    blocker = download_blocker(download)
    if blocker:
        raise WeightsUnavailable(f"{w.what} not on disk and downloads are off ({blocker}); {hint}")
    path.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s: %s -> %s", w.what, w.url, path)
    prefix = None
    if w.check_hash:
        stem = w.file.rsplit(".", 1)[0]
        prefix = stem.rsplit("-", 1)[-1] if "-" in stem else None
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            torch.hub.download_url_to_file(w.url, str(path), prefix, progress=True)
    except (URLError, TimeoutError, ConnectionError, socket.timeout) as exc:
        raise WeightsUnavailable(
            f"{w.what} not on disk and the download failed ({type(exc).__name__}: {exc}); {hint}"
        ) from None
    return path


_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def weights_info(path: Path) -> dict[str, str]:
    """File, folder and SHA-256 of a weights file (memoised by path, size and mtime)."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA_MEMO:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _SHA_MEMO[key] = h.hexdigest()
    return {"file": path.name, "folder": str(path.parent), "sha256": _SHA_MEMO[key]}


_MODELS: dict[str, tuple[tuple, torch.nn.Module]] = {}


def _memo_model(kind: str, key: tuple, build) -> torch.nn.Module:
    """Keep the last model of each kind (Inception, LPIPS) loaded between runs of one process."""
    hit = _MODELS.get(kind)
    if hit is None or hit[0] != key:
        _MODELS.pop(kind, None)
        _MODELS[kind] = (key, build())
    return _MODELS[kind][1]


def _to_rgb01(x: torch.Tensor) -> torch.Tensor:
    x = x.float().clamp(0, 1)
    return x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x


# -- Frechet distance and KID ------------------------------------------------------------------

def frechet(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussian fits (mean, unbiased covariance) of two feature sets.

    ``|mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr (S1 S2)^(1/2)`` - pytorch-fid's formula. The trace of
    the matrix square root is the sum of the square roots of the eigenvalues of ``S1 S2``,
    computed exactly instead of with scipy's ``sqrtm`` of the d x d product: with ``S = C.T C``
    (C = centred rows / sqrt(n-1)) these are the squared singular values of ``C1 C2.T``
    (n1 x n2, small whenever a set has fewer images than dimensions), else the eigenvalues of
    the symmetric ``S1^(1/2) S2 S1^(1/2)``. Same value as pytorch-fid's
    ``calculate_frechet_distance`` (tested), without its eps retry on singular covariances, and
    seconds instead of minutes for 2048-d Inception features on a CPU.
    """
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"needs at least 2 images per set (got {len(a)} and {len(b)})")
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ca = (a - a.mean(0)) / np.sqrt(len(a) - 1)
    cb = (b - b.mean(0)) / np.sqrt(len(b) - 1)
    if min(len(a), len(b)) <= a.shape[1]:
        tr_sqrt = np.linalg.svd(ca @ cb.T, compute_uv=False).sum()
    else:
        w, v = np.linalg.eigh(ca.T @ ca)
        root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(root @ (cb.T @ cb) @ root), 0, None)).sum()
    diff = a.mean(0) - b.mean(0)
    value = float(diff @ diff + (ca * ca).sum() + (cb * cb).sum() - 2 * tr_sqrt)
    if not np.isfinite(value):
        raise ValueError(f"Frechet distance is {value}")
    return value


def _mmd2_and_jackknife_var(kxx: torch.Tensor, kyy: torch.Tensor, kxy: torch.Tensor,
                            gx: torch.Tensor) -> tuple[float, float]:
    """Unbiased MMD^2 from kernel matrices, and its delete-one jackknife variance.

    ``x`` is a sample stratified by the groups ``gx`` (one group = an ordinary i.i.d. sample):
    its within-set term averages each block of group pairs separately (off-diagonal within a
    group) and weights the blocks by the groups' shares ``pi``, so fixed group sizes do not bias
    it; ``y`` is an i.i.d. sample. The jackknife leaves out one ``x`` (stratified: per group,
    shares kept) or one ``y`` at a time, all in closed form from block and row sums.
    """
    dt = kxx.dtype
    n, m = kxx.shape[0], kyy.shape[0]
    groups = torch.nn.functional.one_hot(gx).to(dt)  # (n, C)
    nc = groups.sum(0)
    pi = nc / n
    kxx0 = kxx - torch.diag(kxx.diagonal())
    r = kxx0 @ groups  # (n, C): row sums per group, self excluded
    blocks = groups.T @ r  # (C, C)
    denom = torch.outer(nc, nc) - torch.diag(nc)
    kappa = blocks / denom
    t_xx = pi @ kappa @ pi
    ry = kyy.sum(1) - kyy.diagonal()
    b = ry.sum()
    t_yy = b / (m * (m - 1))
    cx = kxy.sum(1)
    s_c = groups.T @ cx  # (C,)
    t_xy = (pi * s_c / (nc * m)).sum()
    mmd2 = t_xx + t_yy - 2 * t_xy

    # leave x_i out (group a = gx[i]); shares pi stay those of the design
    a = gx
    na = nc[a]
    row_new = (blocks[a] - r) / ((na - 1)[:, None] * nc[None, :])  # kappa'_{a,c}, c != a
    d_row = row_new - kappa[a]
    own = torch.arange(n, device=kxx.device)
    d_aa = (blocks[a, a] - 2 * r[own, a]) / ((na - 1) * (na - 2)) - kappa[a, a]
    d_row[own, a] = 0
    d_xx = 2 * pi[a] * (d_row * pi[None, :]).sum(1) + pi[a] ** 2 * d_aa
    d_xy = pi[a] * ((s_c[a] - cx) / ((na - 1) * m) - s_c[a] / (na * m))
    t_x = mmd2 + d_xx - 2 * d_xy
    # leave y_j out
    t_y = (t_xx + (b - 2 * ry) / ((m - 1) * (m - 2))
           - 2 * (pi[:, None] * (s_c[:, None] - groups.T @ kxy) / (nc[:, None] * (m - 1))).sum(0))
    if int(nc.min()) < 3 or m < 3:  # leaving one out of a 2-member set leaves no pair
        return float(mmd2), float("nan")
    var_x = torch.zeros((), dtype=dt, device=kxx.device)
    for c in range(groups.shape[1]):
        tc = t_x[gx == c]
        var_x = var_x + (len(tc) - 1) / len(tc) * ((tc - tc.mean()) ** 2).sum()
    var = var_x + (m - 1) / m * ((t_y - t_y.mean()) ** 2).sum()
    return float(mmd2), float(var)


def kid(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor, *, x_groups: Any = None,
        subsets: int = 100, subset_size: int = 1000, seed: int = 0,
        device: torch.device | str = "cpu") -> tuple[float, float]:
    """Kernel Inception Distance between feature sets ``x`` (n, d) and ``y`` (m, d).

    Returns ``(kid, standard_error)``; see the module docstring for the estimator.
    The standard error is NaN when a group or ``y`` has only 2 members (too few to jackknife).
    ``x_groups`` (n,) marks ``x`` as stratified by design (reconstructions: the same number per
    attacked class); its within-set term then weights group pairs by the groups' shares, which
    keeps the estimate unbiased for that mixture (without it, a class-stratified sample has too
    few same-class pairs and KID is biased low, most at few images per class). Each group, and
    ``y``, needs at least 2 members.
    """
    x = torch.as_tensor(np.asarray(x), dtype=torch.float64, device=device)
    y = torch.as_tensor(np.asarray(y), dtype=torch.float64, device=device)
    n, m = x.shape[0], y.shape[0]
    gx = torch.zeros(n, dtype=torch.long) if x_groups is None else torch.as_tensor(np.asarray(x_groups))
    gx = torch.unique(gx.long(), return_inverse=True)[1]
    smallest = int(torch.bincount(gx).min())
    if smallest < 2 or m < 2:
        raise ValueError(f"KID needs at least 2 images per set and group (got {smallest} and {m})")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dimensions differ ({x.shape[1]} vs {y.shape[1]})")
    d = x.shape[1]
    kern = lambda a, b: (a @ b.T / d + 1) ** 3  # noqa: E731
    gx = gx.to(device)
    if n <= subset_size and m <= subset_size:
        mmd2, var = _mmd2_and_jackknife_var(kern(x, x), kern(y, y), kern(x, y), gx)
        return mmd2, var ** 0.5
    g = torch.Generator().manual_seed(seed)
    counts = torch.bincount(gx).cpu()
    keep = (counts * min(1.0, subset_size / n)).floor().long().clamp_min(2)  # per group, proportional
    members = [torch.nonzero(gx.cpu() == c).flatten() for c in range(len(counts))]
    sy = min(m, subset_size)
    full = n + m <= 4096  # one Gram matrix, indexed per subset, when it fits comfortably
    z = torch.cat([x, y])
    gram_k = kern(z, z) if full else None
    vals, vars_ = [], []
    for _ in range(subsets):
        ix = torch.cat([mem[torch.randperm(len(mem), generator=g)[:k]] for mem, k in zip(members, keep)]).to(device)
        iy = (torch.randperm(m, generator=g)[:sy] + n).to(device)
        if gram_k is not None:
            kxx, kyy, kxy = gram_k[ix][:, ix], gram_k[iy][:, iy], gram_k[ix][:, iy]
        else:
            xs, ys = z[ix], z[iy]
            kxx, kyy, kxy = kern(xs, xs), kern(ys, ys), kern(xs, ys)
        v, s = _mmd2_and_jackknife_var(kxx, kyy, kxy, gx[ix])
        vals.append(v)
        vars_.append(s)
    return float(np.mean(vals)), float(np.mean(vars_)) ** 0.5


# -- Inception features --------------------------------------------------------------------------

def inception_model(device: torch.device | str = "cpu", download: bool = True) -> tuple[torch.nn.Module, Path]:
    """pytorch-fid's 2048-d FID InceptionV3 (weights fetched if allowed), and its weights path."""
    path = ensure_weights(inception_weights(), download)
    st = path.stat()

    def build() -> torch.nn.Module:
        from pytorch_fid.inception import InceptionV3

        # the weights are on disk now, so pytorch-fid's loader reads them without downloading
        net = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]], resize_input=True, normalize_input=True)
        return net.to(device).eval()

    return _memo_model("inception", (str(path), st.st_size, st.st_mtime_ns, str(device)), build), path


@torch.no_grad()
def inception_features(model: torch.nn.Module, x: torch.Tensor, batch: int = 50) -> np.ndarray:
    """2048-d pool features of images in [0, 1] (N, 1 or 3, H, W); float64 (N, 2048)."""
    dev = next(model.parameters()).device
    out = [model(_to_rgb01(xb).to(dev))[0].flatten(1).double().cpu() for xb in x.split(batch)]
    return torch.cat(out).numpy()


def real_inception_features(model, x_real: torch.Tensor, weights_sha: str, store) -> np.ndarray:
    if store is None:
        return inception_features(model, x_real)
    from mi_bench.config import stable_hash

    data = hashlib.sha256(to_uint8(x_real).numpy().tobytes())
    key = stable_hash({"weights": weights_sha, "data": data.hexdigest(), "shape": list(x_real.shape),
                       "version": INCEPTION_FEATURES_VERSION})
    if store.exists("features-inception", key):
        return store.load("features-inception", key)[0]["features"].numpy()
    feats = inception_features(model, x_real)
    store.save("features-inception", key, {"features": torch.from_numpy(feats)}, {"weights_sha256": weights_sha})
    return feats


# -- LPIPS -----------------------------------------------------------------------------------------

def lpips_model(net: str = "alex", device: torch.device | str = "cpu", download: bool = True) -> tuple[Any, Path]:
    """``lpips.LPIPS(net=net)`` (v0.1 linear layers from the package; backbone fetched if allowed)."""
    path = ensure_weights(lpips_backbone_weights(net), download)
    st = path.stat()

    def build() -> torch.nn.Module:
        import lpips

        with warnings.catch_warnings():  # torchvision's "pretrained is deprecated" notices
            warnings.simplefilter("ignore", UserWarning)
            model = lpips.LPIPS(net=net, version="0.1", verbose=False)
        for p in model.parameters():
            p.requires_grad_(False)
        return model.to(device).eval()

    return _memo_model("lpips", (net, str(path), st.st_size, st.st_mtime_ns, str(device)), build), path


def lpips_input(x: torch.Tensor, min_size: int = 64) -> torch.Tensor:
    """Images in [0, 1] -> LPIPS input: 3 channels, at least ``min_size`` pixels, in [-1, 1]."""
    x = _to_rgb01(x)
    if min(x.shape[-2:]) < min_size:
        h, w = x.shape[-2:]
        s = min_size / min(h, w)
        x = F.interpolate(x, size=(round(h * s), round(w * s)), mode="bilinear", align_corners=False)
    return x * 2 - 1


@torch.no_grad()
def _lpips_feats(model, x: torch.Tensor) -> list[torch.Tensor]:
    """Unit-normalised backbone features of prepared inputs, each layer weighted-ready (N, C, HW)."""
    import lpips

    outs = model.net.forward(model.scaling_layer(x))
    return [lpips.normalize_tensor(o).flatten(2) for o in outs]


def _lpips_weights(model) -> list[torch.Tensor]:
    return [lin.model[-1].weight.view(-1) for lin in model.lins]


def _pairwise_from_feats(fa: list[torch.Tensor], fb: list[torch.Tensor], weights: list[torch.Tensor]) -> torch.Tensor:
    """LPIPS between every a and every b: sum over layers of the position-averaged,
    channel-weighted squared difference, expanded as |a|_w^2 + |b|_w^2 - 2 <a, b>_w."""
    d = None
    for a, b, w in zip(fa, fb, weights):
        hw = a.shape[-1]
        wa = (a * w[None, :, None]).flatten(1)
        aa = (wa * a.flatten(1)).sum(1)
        bb = ((b * w[None, :, None]) * b).flatten(1).sum(1)
        part = (aa[:, None] + bb[None, :] - 2 * wa @ b.flatten(1).T) / hw
        d = part if d is None else d + part
    return d


def lpips_pairwise(model, a: torch.Tensor, b: torch.Tensor, *, min_size: int = 64, chunk: int = 256) -> torch.Tensor:
    """LPIPS distance matrix (len(a), len(b)) between two sets of images in [0, 1]."""
    dev = next(model.parameters()).device
    w = _lpips_weights(model)
    fa = _feats_chunked(model, a, min_size, chunk, dev)
    rows = []
    for bc in b.split(chunk):
        fb = _lpips_feats(model, lpips_input(bc, min_size).to(dev))
        rows.append(_pairwise_from_feats(fa, fb, w))
    return torch.cat(rows, 1).clamp_min(0).cpu()


def _feats_chunked(model, x, min_size, chunk, dev) -> list[torch.Tensor]:
    parts = [_lpips_feats(model, lpips_input(xc, min_size).to(dev)) for xc in x.split(chunk)]
    return [torch.cat(layer) for layer in zip(*parts)]


def mean_pairwise_lpips(model, images: torch.Tensor, *, min_size: int = 64, chunk: int = 256) -> float:
    """Mean LPIPS over all pairs of distinct members of ``images`` (N >= 2): a diversity measure.
    Pairs are unordered; an image is never compared with itself."""
    n = len(images)
    if n < 2:
        raise ValueError(f"mean pairwise LPIPS needs at least 2 images (got {n})")
    d = lpips_pairwise(model, images, images, min_size=min_size, chunk=chunk)
    iu = torch.triu_indices(n, n, offset=1)
    return float(d[iu[0], iu[1]].mean())


@torch.no_grad()
def lpips_nn(model, recon: torch.Tensor, recon_classes: torch.Tensor, reference: torch.Tensor,
             reference_classes: torch.Tensor, *, min_size: int = 64, candidates: int = 0,
             chunk: int = 256) -> torch.Tensor:
    """For each reconstruction, LPIPS to the nearest ``reference`` image of its class.

    Returns the per-reconstruction distances (N,), each computed by ``lpips.LPIPS.forward`` on
    the nearest pair found; ``candidates=K > 0`` limits the search to the K nearest same-class
    images in pixel L2.
    """
    dev = next(model.parameters()).device
    w = _lpips_weights(model)
    out = torch.empty(len(recon))
    for c in recon_classes.unique().tolist():
        idx = (recon_classes == c).nonzero().flatten()
        ref = reference[reference_classes == c]
        if len(ref) == 0:
            raise ValueError(f"no private training images of class {c}")
        r = recon[idx]
        if r.shape[-2:] != ref.shape[-2:]:
            r = F.interpolate(r, size=ref.shape[-2:], mode="bilinear", align_corners=False)
        fr = _feats_chunked(model, r, min_size, chunk, dev)
        if candidates and len(ref) > candidates:
            pix = torch.cdist(r.flatten(1), ref.flatten(1))
            cand = pix.topk(candidates, dim=1, largest=False).indices  # (n_c, K)
            union = cand.unique()
            d = torch.full((len(r), len(union)), float("inf"), device=dev)
            sub = lpips_pairwise(model, r, ref[union], min_size=min_size, chunk=chunk).to(dev)
            allowed = (cand[:, :, None] == union[None, None, :]).any(1).to(dev)
            d[allowed] = sub[allowed]
            nearest = union.to(dev)[d.argmin(1)].cpu()
        else:
            best = torch.full((len(r),), float("inf"), device=dev)
            nearest = torch.zeros(len(r), dtype=torch.long, device=dev)
            for start in range(0, len(ref), chunk):
                fb = _lpips_feats(model, lpips_input(ref[start:start + chunk], min_size).to(dev))
                d = _pairwise_from_feats(fr, fb, w)
                v, j = d.min(1)
                better = v < best
                best = torch.where(better, v, best)
                nearest = torch.where(better, j + start, nearest)
            nearest = nearest.cpu()
        exact = model(lpips_input(r, min_size).to(dev), lpips_input(ref[nearest], min_size).to(dev))
        out[idx] = exact.flatten().float().cpu()
    return out


# -- everything at once -------------------------------------------------------------------------


