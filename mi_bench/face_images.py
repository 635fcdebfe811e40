"""Face images decoded once and cached: from image files to ``(N, C, S, S)`` uint8 tensors.

Each image is read with PIL (RGB or grey), optionally resized (``pre_resize``), cropped - the
largest centred square, a centred ``crop``, or with ``dataset.face.align=detect`` a square around
the detected face (``mi_bench.face_align``) - and resized to the protocol's side (bilinear,
antialiased). The decoded set is cached in the artifact cache (kind ``images``) under a key of
the relative paths, their sizes, the preprocessing (:meth:`Preprocess.key`) and
:data:`CACHE_VERSION`, so a second run decodes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mi_bench import face_align
from mi_bench.artifacts import ArtifactStore
from mi_bench.config import stable_hash
from mi_bench.data import DatasetConfig
from mi_bench.errors import ArtifactError, DataUnavailable

log = logging.getLogger(__name__)



IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".bmp", ".webp"})


CACHE_KIND = "images"


CACHE_VERSION = "1"


@dataclass(frozen=True)
class Preprocess:
    size: int
    channels: int = 3
    crop: int = 0  # 0 = largest centred square
    pre_resize: int = 0
    align: str = "center"  # "detect": a square around the detected face (mi_bench.face_align)
    align_margin: float = 0.0

    def describe(self) -> str:
        pre = f"resize {self.pre_resize}x{self.pre_resize}, " if self.pre_resize else ""
        crop = f"centre crop {self.crop}" if self.crop else "largest centred square"
        if self.align == "detect":
            crop = face_align.describe(self.align_margin, crop)
        colour = "RGB" if self.channels == 3 else "grey"
        return f"{colour}, {pre}{crop}, resize {self.size}x{self.size} (PIL bilinear, antialiased), uint8"

    def key(self) -> dict[str, Any]:
        """The cache key's part: under ``align=center`` exactly the four fields keys held before
        alignment existed (existing caches stay valid); under ``detect`` all, and the detector."""
        d = asdict(self)
        if self.align == "center":
            del d["align"], d["align_margin"]
            return d
        return {**d, "detector": face_align.detector_info()}


def preprocess(cfg: DatasetConfig, crop: int, pre_resize: int) -> Preprocess:
    fc = cfg.face
    return Preprocess(cfg.image_size, fc.channels, crop, pre_resize, fc.align, fc.align_margin)


def decode_image(path: Path, pp: Preprocess, found: list[bool] | None = None) -> np.ndarray:
    """One image file -> ``(C, size, size)`` uint8; whether a face was found (``align=detect``)
    is appended to ``found``."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    bilinear = InterpolationMode.BILINEAR
    try:
        with Image.open(path) as im:
            im = im.convert("RGB" if pp.channels == 3 else "L")
    except (OSError, UnidentifiedImageError) as exc:
        raise DataUnavailable(f"cannot read image {path} ({exc}): replace or remove the file") from None
    if pp.pre_resize:
        im = TF.resize(im, [pp.pre_resize, pp.pre_resize], interpolation=bilinear, antialias=True)
    face = face_align.crop_face(im, pp.align_margin) if pp.align == "detect" else None
    if found is not None:
        found.append(face is not None)
    side = min(im.size) if face is not None else pp.crop or min(im.size)
    if side > min(im.size):
        raise ValueError(f"crop {side} is larger than image {path} ({im.size[0]}x{im.size[1]}): "
                         "lower dataset.face.crop (or face.public_crop)")
    im = face if face is not None else TF.center_crop(im, [side, side])
    im = TF.resize(im, [pp.size, pp.size], interpolation=bilinear, antialias=True)
    a = np.array(im, dtype=np.uint8)  # a writable copy
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def images_key(files: list[str], root: Path, pp: Preprocess) -> str:
    """Cache key: relative paths, their sizes in bytes, the preprocessing and the code version."""
    entries = []
    for f in files:
        try:
            entries.append((f, (root / f).stat().st_size))
        except OSError:
            raise DataUnavailable(f"image {root / f} is missing: restore it, or fix the split files "
                                  "that list it") from None
    return stable_hash({"version": CACHE_VERSION, "files": entries, "pre": pp.key()}, n=24)


def load_images(root: Path, files: list[str], pp: Preprocess, cache_dir: Path | None,
                *, what: str) -> torch.Tensor:
    """Decode ``files`` (paths under ``root``) into one ``(N, C, S, S)`` uint8 tensor, through the
    cache when ``cache_dir`` is given."""
    return load_decoded(root, files, pp, cache_dir, what=what)[0]["images"]


def load_decoded(root: Path, files: list[str], pp: Preprocess, cache_dir: Path | None,
                 *, what: str) -> tuple[dict[str, torch.Tensor], Path | None]:
    """:func:`load_images` as ``{"images": ...}`` plus, under ``align=detect``, ``"face_found"``
    ((N,) uint8), and the cache entry's folder (None without a cache)."""
    key = images_key(files, root, pp)
    store = ArtifactStore(cache_dir) if cache_dir is not None else None
    entry = store.dir(CACHE_KIND, key) if store is not None else None
    if store is not None and store.exists(CACHE_KIND, key):
        try:
            tensors, _ = store.load(CACHE_KIND, key)
            log.info("%s: %d decoded images from the cache (%s)", what, len(files), key)
            return tensors, entry
        except ArtifactError as exc:  # corrupt entry: decode again and overwrite it
            log.warning("%s: %s - decoding again", what, exc)
    out = torch.empty((len(files), pp.channels, pp.size, pp.size), dtype=torch.uint8)
    step = max(1, len(files) // 10)
    found: list[bool] = []
    for i, f in enumerate(files):
        out[i] = torch.from_numpy(decode_image(root / f, pp, found))
        if (i + 1) % step == 0:
            log.info("%s: decoded %d/%d images", what, i + 1, len(files))
    tensors = {"images": out}
    if pp.align == "detect":
        tensors["face_found"] = torch.tensor(found, dtype=torch.uint8)
        log.info("%s: a face was found in %d of %d images", what, sum(found), len(files))
    if store is not None:
        try:
            store.save(CACHE_KIND, key, tensors,
                       {"what": what, "root": str(root), "n": len(files), "pre": pp.key()})
        except OSError as exc:
            log.warning("%s: could not cache the decoded images in %s (%s)", what, cache_dir, exc)
    return tensors, entry
