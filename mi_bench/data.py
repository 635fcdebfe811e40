"""Datasets and the private/public protocols.

A dataset plugin turns a :class:`DatasetConfig` and a data root into :class:`DataSplits`:

* ``private_train`` / ``private_val`` / ``private_test`` - the data owner's private classes,
  labels remapped to ``0..K-1`` (``private_classes[k]`` is the original label of class ``k``);
  the target is trained on train, selected on val, reported on test.
* ``public`` - the attacker's auxiliary images (labels kept for diagnostics, never used by an
  attack). ``disjoint_classes``: only images of the non-private classes (the published
  protocol). ``disjoint_samples``: images of every class that are not in the private set (the
  private classes' *holdout* part plus the other classes).
* ``eval_train`` / ``eval_val`` / ``eval_test`` - the whole domain (all classes, original
  labels) for the evaluation model, which must be able to answer "not a private class".

Private and public never share an image (tested). All images are float32 in [0, 1], NCHW.
The split is determined by the dataset config and ``split_seed`` only - not by the run seed - so
targets trained with different seeds see the same data.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from mi_bench.errors import ConfigError, DataUnavailable  # noqa: F401 - raised here; importable from here too
from mi_bench.face_config import FaceConfig
from mi_bench.images import to_uint8
from mi_bench.params import param
from mi_bench.registry import DATASETS

log = logging.getLogger(__name__)

PROTOCOLS = ("disjoint_classes", "disjoint_samples")


@dataclass
class DatasetConfig:
    name: str = param("digits", help="dataset plugin name")
    protocol: str = param("disjoint_samples", choices=PROTOCOLS, help="public-data protocol")
    image_size: int = param(32, ge=8, le=512, help="side length images are resized to")
    private_classes: int = param(
        5, ge=0, help="classes 0..n-1 are private; the rest are public (face datasets: the first n "
        "qualifying identities, 0 = all of them)",
    )
    holdout_fraction: float = param(
        -1.0, ge=-1.0, lt=1.0,
        help="fraction of each private class's training images held out of the private set "
        "(public under disjoint_samples). -1 = dataset default (digits 0.5; mnist 0 under "
        "disjoint_classes, 0.5 under disjoint_samples)",
    )
    test_fraction: float = param(0.2, gt=0.0, lt=1.0, help="test share (datasets without a test split)")
    val_fraction: float = param(0.1, ge=0.0, lt=1.0, help="share of private/eval train used for model selection")
    max_train_per_class: int = param(0, ge=0, help="cap per class on training pools (0 = all)")
    max_test_per_class: int = param(0, ge=0, help="cap per class on test splits (0 = all)")
    split_seed: int = param(0, help="seed of the deterministic split (independent of the run seed)")
    download: bool = param(True, help="download missing files when a network is available")
    face: FaceConfig = param(default_factory=FaceConfig, help="face datasets only (mi_bench.faces)")


@dataclass
class DataSplits:
    name: str
    protocol: str
    image_shape: tuple[int, int, int]
    private_classes: list[int]  # original labels of private classes 0..K-1
    num_domain_classes: int
    private_train: tuple[torch.Tensor, torch.Tensor]
    private_val: tuple[torch.Tensor, torch.Tensor]
    private_test: tuple[torch.Tensor, torch.Tensor]
    public: tuple[torch.Tensor, torch.Tensor]
    eval_train: tuple[torch.Tensor, torch.Tensor]
    eval_val: tuple[torch.Tensor, torch.Tensor]
    eval_test: tuple[torch.Tensor, torch.Tensor]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_private_classes(self) -> int:
        return len(self.private_classes)

    def check_classes(self, classes: list[int], origin: str = "classes=") -> None:
        """Refuse an empty list or a class index that is not one of this dataset's private
        classes, with one line naming ``origin`` (the config key or file the classes came from)."""
        n = self.num_private_classes
        bad = [c for c in classes if not (isinstance(c, int) and 0 <= c < n)]
        if bad or not classes:
            raise ConfigError(f"{origin}{bad if bad else '[]'}: {'these are not' if bad else 'no'} private "
                              f"classes of {self.name}: use a non-empty list of indices 0..{n - 1}")

    def counts(self) -> dict[str, int]:
        return {
            k: int(getattr(self, k)[1].numel())
            for k in ("private_train", "private_val", "private_test", "public",
                      "eval_train", "eval_val", "eval_test")
        }

    def fingerprint(self, parts: tuple[str, ...]) -> str:
        """Content hash of the named splits (images and labels) plus the protocol."""
        h = hashlib.sha256(f"{self.name}|{self.protocol}|{self.image_shape}".encode())
        for p in parts:
            x, y = getattr(self, p)
            h.update(p.encode())
            h.update(to_uint8(x).numpy().tobytes())  # images in [0, 1]: clamping changes nothing
            h.update(y.to(torch.int64).numpy().tobytes())
        return h.hexdigest()[:16]


def resolve_data_root(configured: str) -> Path:
    """Config key ``data_root``, else ``$MI_BENCH_DATA``, else ``./data``."""
    return Path(configured or os.environ.get("MI_BENCH_DATA", "") or "data").expanduser()


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    out = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                        antialias=size < x.shape[-1])
    return out.clamp(0.0, 1.0)


def _perm(n: int, seed: int, salt: int) -> np.ndarray:
    return np.random.default_rng([seed, salt]).permutation(n)


def _cap(idx: np.ndarray, cap: int) -> np.ndarray:
    return idx[:cap] if cap > 0 else idx


def build_splits(
    name: str, cfg: DatasetConfig, *, train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor] | None, num_classes: int, default_holdout: float,
) -> DataSplits:
    """Apply the private/public protocol to a dataset given as train (and optional test) pools.

    ``train``/``test``: (images float [0,1] NCHW at native size, integer labels). Datasets without
    a test split pass ``test=None`` and a ``test_fraction`` of each class is used instead.
    """
    xs, ys = train
    n_priv = cfg.private_classes
    if n_priv < 2:
        raise ValueError(f"dataset.private_classes={n_priv}: {name} needs at least 2 private classes")
    if n_priv >= num_classes:
        raise ValueError(
            f"dataset.private_classes={n_priv} leaves no public classes: use fewer than {num_classes}"
        )
    holdout = cfg.holdout_fraction if cfg.holdout_fraction >= 0 else default_holdout
    if cfg.protocol == "disjoint_samples" and holdout <= 0:
        raise ValueError(
            "dataset.holdout_fraction must be > 0 under protocol=disjoint_samples "
            "(the public set needs images of the private classes)"
        )
    ylab = ys.numpy()
    tr_idx: dict[int, np.ndarray] = {}
    te_idx: dict[int, np.ndarray] = {}
    for c in range(num_classes):
        idx = np.flatnonzero(ylab == c)
        idx = idx[_perm(len(idx), cfg.split_seed, c)]
        if test is None:
            n_test = int(round(cfg.test_fraction * len(idx)))
            te_idx[c], tr_idx[c] = idx[:n_test], idx[n_test:]
        else:
            tr_idx[c] = idx
        tr_idx[c] = _cap(tr_idx[c], cfg.max_train_per_class)
    if test is None:
        xt, yt = xs, ys
    else:
        xt, yt = test
        tlab = yt.numpy()
        for c in range(num_classes):
            idx = np.flatnonzero(tlab == c)
            te_idx[c] = idx[_perm(len(idx), cfg.split_seed, 1000 + c)]
    for c in range(num_classes):
        te_idx[c] = _cap(te_idx[c], cfg.max_test_per_class)

    priv_tr, priv_val, hold, pub_other = [], [], [], []
    for c in range(num_classes):
        idx = tr_idx[c]
        if c < n_priv:
            n_hold = int(round(holdout * len(idx)))
            hold.append(idx[:n_hold])
            rest = idx[n_hold:]
            n_val = int(round(cfg.val_fraction * len(rest)))
            priv_val.append(rest[:n_val])
            priv_tr.append(rest[n_val:])
        else:
            pub_other.append(idx)
    public_tr = np.concatenate(pub_other + (hold if cfg.protocol == "disjoint_samples" else []))
    priv_te = np.concatenate([te_idx[c] for c in range(n_priv)])
    pub_te = np.concatenate([te_idx[c] for c in range(n_priv, num_classes)])

    size = cfg.image_size

    def take(x: torch.Tensor, y: torch.Tensor, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(np.sort(idx), dtype=torch.long)
        return _resize(x[t], size), y[t].clone()

    # Public images come from the train pool plus (disjoint_classes, as published for MNIST) the
    # test split of the public classes; private test images are never public.
    pub_x, pub_y = take(xs, ys, public_tr)
    if test is not None:
        px2, py2 = take(xt, yt, pub_te)
        pub_x, pub_y = torch.cat([pub_x, px2]), torch.cat([pub_y, py2])

    all_tr = np.concatenate([tr_idx[c] for c in range(num_classes)])
    ev_perm = all_tr[_perm(len(all_tr), cfg.split_seed, 99)]
    n_ev_val = int(round(cfg.val_fraction * len(ev_perm)))
    all_te = np.concatenate([te_idx[c] for c in range(num_classes)])

    splits = DataSplits(
        name=name,
        protocol=cfg.protocol,
        image_shape=(xs.shape[1], size, size),
        private_classes=list(range(n_priv)),
        num_domain_classes=num_classes,
        private_train=take(xs, ys, np.concatenate(priv_tr)),
        private_val=take(xs, ys, np.concatenate(priv_val)),
        private_test=take(xt, yt, priv_te),
        public=(pub_x, pub_y),
        eval_train=take(xs, ys, ev_perm[n_ev_val:]),
        eval_val=take(xs, ys, ev_perm[:n_ev_val]),
        eval_test=take(xt, yt, all_te),
    )
    splits.info = {
        "dataset": name, "protocol": cfg.protocol, "holdout_fraction": holdout,
        "private_classes": splits.private_classes, "num_domain_classes": num_classes,
        "public_classes": sorted(set(int(v) for v in pub_y.tolist())),
        "counts": splits.counts(), "config": asdict(cfg),
    }
    return splits


@DATASETS.register("digits")
def load_digits_splits(cfg: DatasetConfig, root: Path) -> DataSplits:
    """scikit-learn's bundled 8x8 digits (1,797 images), upscaled; needs no download."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    return build_splits("digits", cfg, train=(x, y), test=None, num_classes=10, default_holdout=0.5)


load_digits_splits.summary = "scikit-learn 8x8 digits upscaled to 32x32; bundled, no download"  # type: ignore[attr-defined]
load_digits_splits.paper = "Alpaydin & Kaynak 1998 (UCI optical digits)"  # type: ignore[attr-defined]


# name -> (idx magic number, item count, exact file size) of the four uncompressed MNIST files
MNIST_FILES = {
    "train-images-idx3-ubyte": (2051, 60000, 16 + 60000 * 28 * 28),
    "train-labels-idx1-ubyte": (2049, 60000, 8 + 60000),
    "t10k-images-idx3-ubyte": (2051, 10000, 16 + 10000 * 28 * 28),
    "t10k-labels-idx1-ubyte": (2049, 10000, 8 + 10000),
}


def check_mnist_files(raw: Path) -> None:
    """Refuse a truncated or corrupt MNIST idx file with its expected size (files that are
    absent are left to the loader, which downloads them or says where to put them)."""
    for name, (magic, count, size) in MNIST_FILES.items():
        path = raw / name
        if not path.is_file():
            continue
        actual = path.stat().st_size
        fix = "replace it with a fresh copy (or delete it and let mi-bench download it)"
        if actual < size:
            raise DataUnavailable(
                f"MNIST file {path} is truncated: {actual:,} bytes, expected {size:,} bytes "
                f"({count:,} items); {fix}")
        with open(path, "rb") as f:
            head = f.read(8)
        found_magic, found_count = int.from_bytes(head[:4], "big"), int.from_bytes(head[4:8], "big")
        if actual != size or found_magic != magic or found_count != count:
            raise DataUnavailable(
                f"MNIST file {path} is corrupt: {actual:,} bytes, magic {found_magic}, {found_count:,} "
                f"items; expected {size:,} bytes, magic {magic}, {count:,} items; {fix}")


@DATASETS.register("mnist")
def load_mnist_splits(cfg: DatasetConfig, root: Path) -> DataSplits:
    """MNIST under the BiDO/KED-MI protocol (private 0-4, public 5-9), 32x32."""
    from torchvision.datasets import MNIST

    check_mnist_files(Path(root) / "MNIST" / "raw")

    def load(train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            ds = MNIST(str(root), train=train, download=False)
        except RuntimeError:
            ds = None
            if cfg.download:
                try:
                    ds = MNIST(str(root), train=train, download=True)
                except Exception as exc:  # noqa: BLE001 - offline, read-only root, ...
                    log.debug("MNIST download failed: %s", exc)
            if ds is None:
                raise DataUnavailable(
                    f"MNIST not found under {root / 'MNIST' / 'raw'} and it could not be "
                    "downloaded: put train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                    "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte there, or point "
                    "data_root=... / MI_BENCH_DATA at the folder that holds MNIST/"
                ) from None
        return ds.data.unsqueeze(1).float() / 255.0, ds.targets.clone().long()

    default_holdout = 0.0 if cfg.protocol == "disjoint_classes" else 0.5
    return build_splits(
        "mnist", cfg, train=load(True), test=load(False), num_classes=10,
        default_holdout=default_holdout,
    )


load_mnist_splits.summary = "MNIST, BiDO protocol: private digits 0-4, public 5-9, 32x32"  # type: ignore[attr-defined]
load_mnist_splits.paper = "LeCun et al. 1998; protocol of Peng et al. KDD 2022 (BiDO)"  # type: ignore[attr-defined]


def load_splits(cfg: DatasetConfig, root: Path, *, cache_dir: Path | None = None) -> DataSplits:
    """Run the dataset plugin. ``cache_dir`` (the artifact cache) is passed to plugins that take a
    ``cache_dir`` keyword (the face datasets keep their decoded, resized images there)."""
    loader = DATASETS.get(cfg.name)
    if cache_dir is not None and "cache_dir" in inspect.signature(loader).parameters:
        return loader(cfg, root, cache_dir=cache_dir)
    return loader(cfg, root)


# -- batch samplers --------------------------------------------------------------------------

def random_batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A shuffled epoch; a trailing batch of a single sample is dropped (BatchNorm needs 2)."""
    perm = torch.randperm(n, generator=generator)
    batches = list(perm.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) < 2:
        batches.pop()
    return batches


def pk_batches(
    labels: torch.Tensor, p: int, k: int, generator: torch.Generator
) -> list[torch.Tensor]:
    """Class-balanced batches: ``p`` classes x ``k`` images each (BiDO's identity sampler).

    Each epoch has about ``n / (p k)`` batches; classes are drawn at random per batch (all of
    them when there are fewer than ``p``) and images without replacement within the class until
    it is exhausted, then reshuffled.
    """
    classes = torch.unique(labels)
    pools = {int(c): torch.nonzero(labels == c).flatten() for c in classes}
    order = {c: v[torch.randperm(len(v), generator=generator)] for c, v in pools.items()}
    pos = {c: 0 for c in pools}
    n_batches = max(1, len(labels) // (p * k))
    out = []
    for _ in range(n_batches):
        chosen = classes[torch.randperm(len(classes), generator=generator)[:p]]
        idx = []
        for c in chosen.tolist():
            if pos[c] + k > len(order[c]):
                order[c] = pools[c][torch.randperm(len(pools[c]), generator=generator)]
                pos[c] = 0
            take = order[c][pos[c]: pos[c] + k]
            pos[c] += k
            idx.append(take if len(take) == k else take.repeat(k)[:k])
        out.append(torch.cat(idx))
    return out
