"""Face crops for unaligned folders: ``dataset.face.align=detect``.

Every published MI protocol (GMI, KED-MI, PLG-MI, BiDO) trains on aligned face crops (CelebA's
aligned images, FFHQ, FaceScrub crops, LFW deep-funneled). A folder of in-the-wild photos
(whole people, small faces) under the default ``align=center`` gives the largest centred square,
so classifiers and the GAN prior would learn clothes and backgrounds. ``align=detect`` instead:

* **Detect** the faces of each image (after ``face.pre_resize``, on its grey version, downscaled
  to at most ``DETECT_MAX_SIDE`` pixels on its longer side for speed) and keep the *largest* box.
* **Crop a square** centred on that box, of side ``max(w, h) * (1 + 2 * face.align_margin)``
  (the margin is the fraction of the box added on each side), clamped to the image: shifted to
  lie inside it and at most its shorter side. The crop is then resized to ``dataset.image_size``
  like every other crop. ``face.crop`` does not apply to a detected face.
* **No face found**: ``face.no_face=drop`` removes the image *after* the identity split (the
  split is still decided from file lists alone), and a private person left without a training
  or test image is an error naming the fix; ``face.no_face=center`` keeps the image with the
  centred crop that ``align=center`` gives (``face.crop``, or the largest centred square).
* **Cached with the decoded images**: the crops are what is decoded and cached; the cache key
  holds the align settings and the detector (model file, parameters, OpenCV version), so
  ``align=center`` keys are unchanged. A per-image "face found" flag is cached beside them.
* **Stated in the record** (``protocol.data.face_crops``): the detector, per set (private,
  public) how many images had no face and whether they were dropped or kept centred, and the
  path of a grid of crops (``face_crops.png`` in the cache entry's folder; no-face images first,
  framed red) for the user to check.

The detector is OpenCV's Haar cascade ``haarcascade_frontalface_alt2.xml`` (Viola & Jones 2001;
Lienhart & Maydt 2002), which the ``opencv-python-headless`` 4.x wheel carries in
``cv2.data.haarcascades``: nothing is downloaded at run time. Why this one (checked when it was
chosen; the numbers are from 300 LFW people, one photo each):

* OpenCV 5.x wheels carry no cascades and no ``CascadeClassifier``; YuNet
  (``cv2.FaceDetectorYN``) needs an ONNX file that no wheel carries. Hence ``opencv<5``.
* mediapipe 1.2.x has no face model in its wheel (its FaceDetector task takes a downloaded
  ``.tflite``); 0.10.21, the last with a bundled BlazeFace, pins ``numpy<2`` and pulls jax and
  the GUI build of OpenCV, which conflicts with the headless one.
* Of the bundled frontal cascades, ``alt2`` found 296/300 LFW faces (box centre within 19 px of
  the image centre, box side 102-123 px) and 131/150 LFW photos pasted at 60x60 px (faces ~26 px)
  onto a 320x240 background; ``default`` found as many but also boxed non-faces 55 px off centre,
  ``alt`` found fewer small faces. About 26 ms per 250x250 image and 0.5 s per photo of
  640 px or more (detection runs at 640 px on the longer side) on a 2-core CPU, once: cached.
* Frontal faces only: profiles and strongly tilted faces are missed (counted as "no face").

The default margin, 0.05, makes the crop of an LFW photo (alt2 box: median 113 px) 124 px, the
framing of ``configs/dataset/lfw.yaml``'s 120-pixel crop, so a folder run sees faces framed as in
the LFW protocol.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mi_bench.errors import ConfigError

ALIGN = ("center", "detect")
NO_FACE = ("drop", "center")
DETECTOR = "opencv-haar-cascade"
CASCADE = "haarcascade_frontalface_alt2.xml"
SCALE_FACTOR = 1.1
MIN_NEIGHBORS = 5
MIN_SIZE = 20  # pixels of the detection image (the cascade's window is 20x20)
DETECT_MAX_SIDE = 640  # faces down to 20/640 ~ 3% of the longer side are found
GRID_NAME = "face_crops.png"
INSTALL = "pip install 'mi-bench[faces]' (that is: pip install 'opencv-python-headless>=4.10,<5')"


@functools.lru_cache(maxsize=1)
def _cascade() -> tuple[Any, Any, Path]:
    """(cv2, the loaded cascade, its file); a one-line :class:`ConfigError` when unavailable."""
    try:
        import cv2
    except ImportError:
        raise ConfigError(f"dataset.face.align=detect needs OpenCV's face detector: {INSTALL}") from None
    path = Path(getattr(getattr(cv2, "data", None), "haarcascades", "") or ".") / CASCADE
    if not path.is_file() or not hasattr(cv2, "CascadeClassifier"):
        raise ConfigError(f"dataset.face.align=detect: OpenCV {cv2.__version__} carries no {CASCADE} "
                          f"(OpenCV 5 dropped the Haar cascades): {INSTALL}")
    cascade = cv2.CascadeClassifier(str(path))
    if cascade.empty():
        raise ConfigError(f"dataset.face.align=detect: OpenCV cannot load {path}: reinstall it ({INSTALL})")
    return cv2, cascade, path


def detector_info() -> dict[str, Any]:
    """What the record states about the detector (and what the cache key holds)."""
    cv2, _, path = _cascade()
    return {
        "name": DETECTOR, "library": f"opencv {cv2.__version__}", "model": CASCADE,
        "model_sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:16],
        "params": {"scale_factor": SCALE_FACTOR, "min_neighbors": MIN_NEIGHBORS, "min_size": MIN_SIZE,
                   "max_side": DETECT_MAX_SIDE, "keep": "largest box"},
    }


def detect_face(gray: np.ndarray) -> tuple[int, int, int, int] | None:
    """The largest face ``(x, y, w, h)`` in an ``H x W`` uint8 image, in its pixels; None if none."""
    cv2, cascade, _ = _cascade()
    scale = min(1.0, DETECT_MAX_SIDE / max(gray.shape))
    small = gray if scale == 1.0 else cv2.resize(
        gray, (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale))),
        interpolation=cv2.INTER_AREA)
    boxes = cascade.detectMultiScale(np.ascontiguousarray(small), scaleFactor=SCALE_FACTOR,
                                     minNeighbors=MIN_NEIGHBORS, minSize=(MIN_SIZE, MIN_SIZE))
    if len(boxes) == 0:
        return None
    x, y, w, h = max((tuple(int(v) for v in b) for b in boxes), key=lambda b: (b[2] * b[3], b))
    return round(x / scale), round(y / scale), round(w / scale), round(h / scale)


def face_square(box: tuple[int, int, int, int], width: int, height: int,
                margin: float) -> tuple[int, int, int]:
    """``(left, top, side)`` of the square of side ``max(w, h) * (1 + 2 margin)`` centred on
    ``box``, clamped to a ``width x height`` image (shifted inside it, at most its shorter side)."""
    x, y, w, h = box
    side = max(1, min(round(max(w, h) * (1 + 2 * margin)), width, height))
    left = min(max(0, round(x + w / 2 - side / 2)), width - side)
    top = min(max(0, round(y + h / 2 - side / 2)), height - side)
    return left, top, side


def crop_face(im: Any, margin: float) -> Any | None:
    """The square face crop of a PIL image (see :func:`face_square`), or None without a face."""
    box = detect_face(np.asarray(im.convert("L")))
    if box is None:
        return None
    left, top, side = face_square(box, im.width, im.height, margin)
    return im.crop((left, top, left + side, top + side))


# -- what the record states ---------------------------------------------------------------------

class FaceCrops:
    """Collects, per decoded set, the no-face count and the grid; says which images to keep."""

    def __init__(self, no_face: str) -> None:
        if no_face not in NO_FACE:
            raise ConfigError(f"dataset.face.no_face={no_face!r}: choose one of {', '.join(NO_FACE)}")
        self.no_face = no_face
        self.sets: dict[str, dict[str, Any]] = {}

    def add(self, which: str, tensors: dict[str, torch.Tensor], files: list[str],
            entry: Path | None) -> torch.Tensor | None:
        """Record set ``which``; returns the boolean mask of the images to keep, or None to keep
        all (no detection, ``no_face=center``, or every image had a face)."""
        if "face_found" not in tensors:
            return None
        found = tensors["face_found"].bool()
        missing = [files[i] for i in torch.nonzero(~found).flatten().tolist()]
        grid = write_grid(entry / GRID_NAME, tensors["images"], found, files) if entry is not None else None
        self.sets[which] = {
            "images": len(files), "no_face": len(missing),
            "no_face_action": "dropped" if self.no_face == "drop" else "kept centred",
            "no_face_examples": missing[:10], "grid": str(grid) if grid else None,
        }
        if self.no_face == "drop" and len(files) - len(missing) < 2 and files:
            raise ConfigError(f"no face was detected in {len(missing)} of the {len(files)} {which} "
                              "images: set dataset.face.no_face=center, or use photos with visible faces")
        return found if self.no_face == "drop" and missing else None

    def info(self) -> dict[str, Any] | None:
        if not self.sets:
            return None
        return {"detector": detector_info(), **self.sets}


def check_private_left(y: torch.Tensor, a: int, b: int, names: list[str], dataset: str) -> None:
    """After dropping no-face images: every private person keeps a training and a test image."""
    for part, ys in (("training", y[:a]), ("test", y[b:])):
        have = set(ys.tolist())
        lost = [names[k] for k in range(len(names)) if k not in have]
        if lost:
            raise ConfigError(
                f"{dataset}: no face was detected in any {part} image of {len(lost)} private "
                f"identities ({', '.join(lost[:3])}{', ...' if len(lost) > 3 else ''}): set "
                "dataset.face.no_face=center to keep them centred, or add photos where the face is visible"
            )


def _tile_label(path: str, width: int) -> str:
    parts = path.split("/")
    text = "/".join(parts[-2:])
    limit = max(4, width // 6)
    return text if len(text) <= limit else "..." + text[-(limit - 3):]


def write_grid(path: Path, images: torch.Tensor, found: torch.Tensor, files: list[str],
               n: int = 64, tile: int = 96) -> Path:
    """An 8x8 PNG of decoded crops with their source names: the no-face images first (framed
    and named in red, at most a quarter of the grid), then evenly spaced crops with a face
    (framed green).
    Written once per cache entry."""
    if path.is_file():
        return path
    from PIL import Image, ImageDraw, ImageFont

    from mi_bench.fsutil import atomic_write

    idx_missing = torch.nonzero(~found).flatten().tolist()[: n // 4]
    idx_found = torch.nonzero(found).flatten().tolist()
    take = n - len(idx_missing)
    if len(idx_found) > take:
        idx_found = [idx_found[round(i * (len(idx_found) - 1) / max(1, take - 1))] for i in range(take)]
    order = idx_missing + idx_found
    cols = 8
    rows = max(1, -(-len(order) // cols))
    label_h = 12
    sheet = Image.new("RGB", (cols * (tile + 4), rows * (tile + 4 + label_h)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for j, i in enumerate(order):
        a = images[i].numpy()
        a = np.repeat(a, 3, axis=0) if a.shape[0] == 1 else a
        im = Image.fromarray(a.transpose(1, 2, 0)).resize((tile, tile), Image.BILINEAR)
        x0, y0 = (j % cols) * (tile + 4), (j // cols) * (tile + 4 + label_h)
        draw.rectangle((x0, y0, x0 + tile + 3, y0 + tile + 3),
                       fill=(40, 160, 40) if bool(found[i]) else (210, 30, 30))
        sheet.paste(im, (x0 + 2, y0 + 2))
        draw.text((x0 + 2, y0 + tile + 4), _tile_label(files[i], tile),
                  fill=(0, 0, 0) if bool(found[i]) else (210, 30, 30), font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: sheet.save(p, format="PNG"))
    return path


def describe(margin: float, fallback: str) -> str:
    """The preprocessing's crop step under ``align=detect`` (for ``protocol.data.preprocessing``)."""
    return (f"square around the largest face found by OpenCV's Haar cascade {os.path.splitext(CASCADE)[0]} "
            f"(margin {margin:g} of the box on each side, clamped to the image; an image without a "
            f"face is dropped (face.no_face=drop) or gets the {fallback} (face.no_face=center))")
