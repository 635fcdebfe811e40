"""Face datasets: LFW, AT&T (ORL), CelebA under the GMI/KED-MI/PLG-MI protocol, FFHQ and
FaceScrub as public sets, and any folder with one sub-folder per identity.

Protocol (every face dataset; stated in each result's ``protocol.data``):

* **Identities, not images, are split.** Private = identities with at least
  ``dataset.face.min_images`` images, the first ``dataset.private_classes`` of them in the
  dataset's identity order (0 = all that qualify); labels ``0..K-1`` follow that order. Each
  private identity's images (at most ``face.max_per_identity``, a random subset by
  ``split_seed``) are split into test (``test_fraction``, at least one image), validation
  (``val_fraction`` of the rest) and training images. Public = every image of the *other*
  identities (or of another collection: ``face.public=ffhq|facescrub|folder``), optionally a
  random ``face.public_size`` of them. Private and public never share an identity (tested);
  with another collection the overlap cannot be checked and the record says so.
* **The evaluation model's domain is the private identities.** Faces have no "whole domain"
  beyond the people in the data: as in the literature (GMI, KED-MI, PLG-MI, BiDO), the
  evaluation model is trained on the private training split with its own architecture, seed
  and augmentation, so ``eval_train/val/test`` *are* ``private_train/val/test`` and
  ``num_domain_classes = K``. It cannot answer "none of these people"; it can only say which
  private person a reconstruction looks most like. Judges of issue 12 train on the same split.
* **Preprocessing**, applied once per image with PIL (through torchvision's functional API):
  convert to RGB (or grey, ``face.channels=1``), optionally resize to ``face.pre_resize``,
  centre-crop a ``face.crop`` square (0 = the largest centred square), resize to
  ``dataset.image_size`` (bilinear, antialiased), round to 8 bits. CelebA's published crop is
  108 at offset (55, 35) of the 218x178 aligned image, which is exactly the centred crop here.
  ``face.align=detect`` (unaligned photos) replaces the centred crop by a square around the
  detected face, in every set loaded (:mod:`mi_bench.face_align`; stated in ``face_crops``).
* **Cache.** The decoded uint8 tensors are stored in the artifact cache (kind ``images``) under
  a key made of the file list (relative paths and sizes) and the preprocessing, so a second run
  reads one file instead of decoding thousands of JPEGs. Without a cache directory (direct
  library use) images are decoded every time, with the same result.

Datasets:

* ``lfw`` - Labeled Faces in the Wild, deep-funneled (``<root>/lfw/lfw-deepfunneled/<Name>/``),
  identities in name order. Default N = 20 (62 people, 3,023 images; see configs/dataset/lfw.yaml
  for the measurement behind it), 120-pixel centre crop.
* ``att_faces`` - AT&T/ORL (``<root>/att_faces/s1..s40``), 40 people x 10 grey 92x112 images.
  It has no separate public identities: its public set is the identities left after the private
  ones (default 20 private, 20 public = 200 images). That supports classifier training, defenses,
  GAN-free attacks and a pipeline check; a GAN prior trained on 200 images of 20 people is weak,
  so GMI/KED-MI/PLG-MI numbers on it say little about those attacks.
* ``celeba`` - the GMI/KED-MI/PLG-MI protocol: private = the first 1,000 identities by identity
  number with at least 30 images (all their images; ``identity_CelebA.txt``), public = 30,000
  images of the other identities, centre crop 108, resize 64. Or the official split files
  (``face.train_list`` / ``test_list`` / ``public_list``). ``face.public=ffhq`` (thumbnails, crop
  88 of 128) or ``facescrub`` (resized to 64, crop 54) swap the public set.
* ``folder`` - ``face.path`` with one sub-folder per identity, the same rules as ``lfw``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mi_bench import face_align
from mi_bench.data import DatasetConfig, DataSplits
from mi_bench.errors import DataUnavailable
from mi_bench.face_images import IMAGE_EXTS, Preprocess, load_decoded, preprocess
from mi_bench.registry import DATASETS

log = logging.getLogger(__name__)


# published preprocessing of the external public sets (KED-MI dataloader.py): crop, pre_resize
PUBLIC_DEFAULTS = {"ffhq": (88, 0), "facescrub": (54, 64)}

EVAL_DOMAIN = ("private identities only: the evaluation model (and every judge) is trained on the "
               "private training split, as in GMI/KED-MI/PLG-MI/BiDO; eval_* = private_*")


# -- file lists -------------------------------------------------------------------------------

def natural_key(text: str) -> list[Any]:
    """Sort key with numbers compared as numbers (s2 < s10, 2.pgm < 10.pgm)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTS


def scan_identity_folders(root: Path) -> dict[str, list[str]]:
    """Identity (the image folder's path under ``root``) -> its images (paths under ``root``),
    both in natural order. Images directly in ``root`` belong to no identity and are ignored."""
    out: dict[str, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort(key=natural_key)
        rel = Path(dirpath).relative_to(root).as_posix()
        images = sorted((f for f in filenames if _is_image(f)), key=natural_key)
        if images and rel != ".":
            out[rel] = [f"{rel}/{f}" for f in images]
    return dict(sorted(out.items(), key=lambda kv: natural_key(kv[0])))


def scan_images(root: Path) -> list[str]:
    """Every image under ``root`` (recursively), natural order (collections without identities)."""
    files = [Path(d, f).relative_to(root).as_posix()
             for d, _, names in os.walk(root) for f in names if _is_image(f)]
    return sorted(files, key=natural_key)


def read_list(path: Path, *, labelled: bool) -> list[tuple[str, int]]:
    """``<image> <label>`` lines (the official CelebA trainset.txt/testset.txt) or ``<image>``
    lines (ganset.txt; label -1)."""
    if not path.is_file():
        raise DataUnavailable(f"split file {path} does not exist: check dataset.face.*_list")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if labelled:
            if len(parts) < 2 or not parts[1].lstrip("-").isdigit():
                raise ValueError(f"{path} line {n}: expected '<image> <integer label>', got {line!r}")
            out.append((parts[0], int(parts[1])))
        else:
            out.append((parts[0], -1))
    return out


# -- the split --------------------------------------------------------------------------------

@dataclass
class FacePlan:
    """Which file goes where, decided from file lists alone (tests check it without decoding).
    Labels: private ``0..K-1``; public ``K + i`` for its i-th identity, -1 when it has none."""

    private_ids: list[str]
    train: list[tuple[str, int]]
    val: list[tuple[str, int]]
    test: list[tuple[str, int]]
    public: list[tuple[str, int]]
    public_ids: list[str] = field(default_factory=list)
    rules: dict[str, Any] = field(default_factory=dict)


def _identity_rng(seed: int, identity: str, salt: int = 0) -> np.random.Generator:
    """Per-identity randomness: an identity's split does not change when others are added."""
    h = int(hashlib.sha256(identity.encode()).hexdigest()[:8], 16)
    return np.random.default_rng([seed, h, salt])


def _capped(files: list[str], identity: str, cap: int, seed: int) -> list[str]:
    order = _identity_rng(seed, identity).permutation(len(files))
    if cap:
        order = order[:cap]
    return [files[i] for i in order]


def _split_identity(files: list[str], cfg: DatasetConfig) -> tuple[list[str], list[str], list[str]]:
    """(train, val, test) of one identity's (already shuffled) images."""
    n = len(files)
    n_test = int(round(cfg.test_fraction * n))
    if n >= 2:
        n_test = min(max(1, n_test), n - 1)
    test, rest = files[:n_test], files[n_test:]
    n_val = min(int(round(cfg.val_fraction * len(rest))), max(0, len(rest) - 1))
    return rest[n_val:], rest[:n_val], test


def _subsample(items: list, size: int, seed: int) -> list:
    if not size or size >= len(items):
        return items
    keep = np.sort(np.random.default_rng([seed, 7919]).permutation(len(items))[:size])
    return [items[i] for i in keep]


def _public_files(by_identity: dict[str, list[str]], first_label: int,
                  cfg: DatasetConfig) -> list[tuple[str, int]]:
    """Every image of these identities (at most ``face.max_per_identity`` each), labelled
    ``first_label + i`` for the i-th identity, in identity then file order."""
    out = []
    for j, (ident, files) in enumerate(by_identity.items()):
        kept = set(_capped(files, ident, cfg.face.max_per_identity, cfg.split_seed))
        out += [(f, first_label + j) for f in files if f in kept]
    return out


def plan_identities(by_identity: dict[str, list[str]], cfg: DatasetConfig, *, dataset: str,
                    order: str, public_own: bool = True) -> FacePlan:
    """Private = the first ``private_classes`` identities (in ``by_identity``'s order) with at
    least ``face.min_images`` images; public = all images of the other identities."""
    fc = cfg.face
    qualifying = [i for i, files in by_identity.items() if len(files) >= fc.min_images]
    k = cfg.private_classes or len(qualifying)
    if len(qualifying) < max(2, k):
        raise ValueError(
            f"{dataset}: {len(qualifying)} identities have at least {fc.min_images} images "
            f"(dataset.face.min_images) but {max(2, k)} private identities are needed "
            f"(dataset.private_classes={cfg.private_classes}); lower one of them"
        )
    private = qualifying[:k]
    plan = FacePlan(private_ids=private, train=[], val=[], test=[], public=[])
    for label, ident in enumerate(private):
        tr, va, te = _split_identity(_capped(by_identity[ident], ident, fc.max_per_identity,
                                             cfg.split_seed), cfg)
        plan.train += [(f, label) for f in tr]
        plan.val += [(f, label) for f in va]
        plan.test += [(f, label) for f in te]
    chosen = set(private)
    cap = f", at most {fc.max_per_identity} per identity (random, split_seed {cfg.split_seed})" \
        if fc.max_per_identity else ""
    plan.rules["private"] = (
        f"the first {len(private)} of the {len(qualifying)} identities with >= {fc.min_images} "
        f"images, in {order}; labels 0..{len(private) - 1} in that order{cap}; per identity "
        f"{cfg.test_fraction:g} test (at least 1), {cfg.val_fraction:g} of the rest validation"
    )
    if public_own:
        others = {i: files for i, files in by_identity.items() if i not in chosen}
        plan.public_ids = list(others)
        files = _public_files(others, len(private), cfg)
        plan.public = _subsample(files, fc.public_size, cfg.split_seed)
        size = f"a random {fc.public_size:,} of " if fc.public_size and fc.public_size < len(files) else ""
        plan.rules["public"] = (f"{size}all {len(files):,} images of the other {len(others):,} "
                                f"identities{cap}")
    return plan


# -- decoding and the cache --------------------------------------------------------------------


# -- assembling the splits ----------------------------------------------------------------------

def _ids_hash(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def _check_config(name: str, cfg: DatasetConfig) -> None:
    if cfg.protocol != "disjoint_classes":
        raise ValueError(
            f"dataset.protocol={cfg.protocol}: {name} splits identities, so private and public "
            "never share a person; set dataset.protocol=disjoint_classes"
        )
    if cfg.max_train_per_class or cfg.max_test_per_class:
        raise ValueError(
            f"{name}: dataset.max_train_per_class / max_test_per_class do not apply to face "
            "datasets; use dataset.face.max_per_identity"
        )


def build_face_splits(
    name: str, cfg: DatasetConfig, plan: FacePlan, *, private_root: Path, public_root: Path,
    private_pp: Preprocess, public_pp: Preprocess, cache_dir: Path | None,
    overlap: int | str,
) -> DataSplits:
    """Decode the planned files and assemble :class:`DataSplits` (eval_* = private_*)."""
    if len(plan.public) < 2:
        raise ValueError(f"{name}: the public set has {len(plan.public)} images; the attacker needs "
                         "public images (lower dataset.private_classes or use dataset.face.public)")
    if isinstance(overlap, int) and overlap:
        raise ValueError(f"{name}: {overlap} identities are both private and public; the split "
                         "files must list disjoint identities")
    parts = (plan.train, plan.val, plan.test)
    files = [f for part in parts for f, _ in part]
    crops = face_align.FaceCrops(cfg.face.no_face)  # align=detect: no-face counts and grids
    tensors, entry = load_decoded(private_root, files, private_pp, cache_dir, what=f"{name} private")
    x = tensors["images"]
    y = torch.tensor([lab for part in parts for _, lab in part], dtype=torch.long)
    a, b = len(plan.train), len(plan.train) + len(plan.val)
    if (keep := crops.add("private", tensors, files, entry)) is not None:  # no_face=drop
        a, b = int(keep[:a].sum()), int(keep[:b].sum())
        x, y = x[keep], y[keep]
        face_align.check_private_left(y, a, b, plan.private_ids, name)
    xf = x.float().div_(255.0)
    train, val, test = (xf[:a], y[:a]), (xf[a:b], y[a:b]), (xf[b:], y[b:])
    pub_files = [f for f, _ in plan.public]
    tensors, entry = load_decoded(public_root, pub_files, public_pp, cache_dir, what=f"{name} public")
    xp, yp = tensors["images"], torch.tensor([lab for _, lab in plan.public], dtype=torch.long)
    if (keep := crops.add("public", tensors, pub_files, entry)) is not None:
        xp, yp = xp[keep], yp[keep]
    xp = xp.float().div_(255.0)
    k = len(plan.private_ids)
    splits = DataSplits(
        name=name, protocol=cfg.protocol, image_shape=(private_pp.channels, cfg.image_size, cfg.image_size),
        private_classes=list(range(k)), num_domain_classes=k,
        private_train=train, private_val=val, private_test=test, public=(xp, yp),
        eval_train=train, eval_val=val, eval_test=test,
    )
    per_id = torch.bincount(y, minlength=k)
    splits.info = {
        "dataset": name, "protocol": cfg.protocol, "unit": "identity",
        "private_rule": plan.rules.get("private", ""), "public_rule": plan.rules.get("public", ""),
        "evaluation_domain": EVAL_DOMAIN,
        "private_classes": splits.private_classes, "class_names": list(plan.private_ids),
        "num_domain_classes": k,
        "images_per_private_identity": {"min": int(per_id.min()), "max": int(per_id.max()),
                                        "mean": round(float(per_id.float().mean()), 2)},
        "public_identities": len(plan.public_ids) if plan.public_ids else None,
        "public_identities_sha256": _ids_hash(plan.public_ids) if plan.public_ids else None,
        "identity_overlap": overlap,
        "preprocessing": {"private": private_pp.describe(), "public": public_pp.describe()},
        "counts": splits.counts(), "config": asdict(cfg),
    }
    if (face_crops := crops.info()) is not None:
        splits.info["face_crops"] = face_crops
    return splits


def _under(root: Path, path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else root / p


def _public_set(cfg: DatasetConfig, root: Path, plan: FacePlan, private_pp: Preprocess,
                *, default_root: Path) -> tuple[Path, Preprocess, int | str]:
    """Fill ``plan.public`` from the configured public set; returns its root, preprocessing and
    the identity overlap (a count when checkable, else the reason it is not)."""
    fc = cfg.face
    if not fc.public:
        crop = private_pp.crop if fc.public_crop < 0 else fc.public_crop
        return default_root, preprocess(cfg, crop, private_pp.pre_resize), 0
    k = len(plan.private_ids)
    if fc.public == "folder" and not fc.public_path:
        raise ValueError("dataset.face.public=folder needs dataset.face.public_path=<folder with one "
                         "sub-folder per identity>")
    where = _under(root, fc.public_path) if fc.public_path else _default_public_root(root, fc.public)
    if not where.is_dir():
        raise DataUnavailable(
            f"public set {fc.public} not found at {where}: put it there ({_PUBLIC_HELP[fc.public]}) "
            "or point dataset.face.public_path at it"
        )
    crop, pre = PUBLIC_DEFAULTS.get(fc.public, (fc.crop, fc.pre_resize))
    if fc.public_crop >= 0:
        crop = fc.public_crop
    pp = preprocess(cfg, crop, pre)
    if fc.public == "ffhq":
        files = [(f, -1) for f in scan_images(where)]
        plan.public_ids = []
        desc = f"FFHQ images under {where.name}/ (no identity labels)"
    else:
        by_id = scan_identity_folders(where)
        plan.public_ids = list(by_id)
        files = _public_files(by_id, k, cfg)
        desc = f"{fc.public} images of {len(by_id):,} identities"
    plan.public = _subsample(files, fc.public_size, cfg.split_seed)
    size = f"a random {fc.public_size:,} of " if fc.public_size and fc.public_size < len(files) else ""
    plan.rules["public"] = f"{size}all {len(files):,} {desc}"
    return where, pp, f"unchecked: {fc.public} identities are not matched against {cfg.name}'s"


_PUBLIC_HELP = {
    "ffhq": "the 128x128 thumbnails of FFHQ, e.g. ffhq/thumbnails128x128/00000/00000.png",
    "facescrub": "FaceScrub's face crops, one folder per person, e.g. facescrub/actors/faces/<Name>/",
    "folder": "one sub-folder per identity",
}


def _default_public_root(root: Path, public: str) -> Path:
    if public == "ffhq":
        thumbs = root / "ffhq" / "thumbnails128x128"
        return thumbs if thumbs.is_dir() else root / "ffhq"
    return root / public


def _folder_dataset(name: str, cfg: DatasetConfig, root: Path, images: Path, *, order: str,
                    cache_dir: Path | None) -> DataSplits:
    """Identity folders under ``images`` -> the private/public protocol above."""
    _check_config(name, cfg)
    fc = cfg.face
    by_id = scan_identity_folders(images)
    plan = plan_identities(by_id, cfg, dataset=name, order=order, public_own=not fc.public)
    pp = preprocess(cfg, fc.crop, fc.pre_resize)
    pub_root, pub_pp, overlap = _public_set(cfg, root, plan, pp, default_root=images)
    return build_face_splits(name, cfg, plan, private_root=images, public_root=pub_root,
                             private_pp=pp, public_pp=pub_pp, cache_dir=cache_dir, overlap=overlap)


# -- the registered datasets ----------------------------------------------------------------------

def _lfw_images(cfg: DatasetConfig, root: Path) -> Path:
    if cfg.face.path:
        where = _under(root, cfg.face.path)
        if where.is_dir():
            return where
        raise DataUnavailable(f"dataset.face.path={cfg.face.path}: {where} is not a folder")
    candidates = [root / "lfw" / "lfw-deepfunneled", root / "lfw-py" / "lfw-deepfunneled"]
    for c in candidates:
        if c.is_dir():
            return c
    if cfg.download:
        try:
            from torchvision.datasets import LFWPeople

            LFWPeople(str(root), image_set="deepfunneled", download=True)
        except Exception as exc:  # noqa: BLE001 - offline, server down, read-only root, ...
            log.debug("LFW download failed: %s", exc)
        if candidates[1].is_dir():
            return candidates[1]
    raise DataUnavailable(
        f"LFW not found under {candidates[0]} and it could not be downloaded: extract "
        "lfw-deepfunneled.tgz (http://vis-www.cs.umass.edu/lfw/) there, one folder per person, "
        "or point data_root=... / MI_BENCH_DATA at the folder that holds lfw/"
    )


@DATASETS.register("lfw")
def load_lfw_splits(cfg: DatasetConfig, root: Path, *, cache_dir: Path | None = None) -> DataSplits:
    """LFW deep-funneled: private = people with >= face.min_images images, public = the others."""
    return _folder_dataset("lfw", cfg, root, _lfw_images(cfg, root), order="name order",
                           cache_dir=cache_dir)


load_lfw_splits.summary = "LFW deep-funneled: private = people with >= N images, public = the rest"  # type: ignore[attr-defined]
load_lfw_splits.paper = "Huang et al. 2007; deep funneling: Huang, Mattar, Lee, Learned-Miller 2012"  # type: ignore[attr-defined]


@DATASETS.register("att_faces")
def load_att_splits(cfg: DatasetConfig, root: Path, *, cache_dir: Path | None = None) -> DataSplits:
    """AT&T/ORL: the first private_classes of s1..s40 are private, the remaining people public."""
    images = _under(root, cfg.face.path) if cfg.face.path else root / "att_faces"
    if not (images / "s1").is_dir():
        raise DataUnavailable(
            f"AT&T faces not found under {images}: put the 40 folders s1..s40 (1.pgm..10.pgm each) "
            "there, or point data_root=... / MI_BENCH_DATA at the folder that holds att_faces/"
        )
    return _folder_dataset("att_faces", cfg, root, images, order="subject order s1..s40",
                           cache_dir=cache_dir)


load_att_splits.summary = "AT&T/ORL faces, 40 people x 10 grey images; public = the non-private people"  # type: ignore[attr-defined]
load_att_splits.paper = "Samaria & Harter 1994; first MI attack: Fredrikson et al., CCS 2015"  # type: ignore[attr-defined]


@DATASETS.register("folder")
def load_folder_splits(cfg: DatasetConfig, root: Path, *, cache_dir: Path | None = None) -> DataSplits:
    """Any folder with one sub-folder per identity (``dataset.face.path``), the LFW rules."""
    if not cfg.face.path:
        raise ValueError("dataset=folder needs dataset.face.path=<folder with one sub-folder per identity>")
    images = _under(root, cfg.face.path)
    if not images.is_dir():
        raise DataUnavailable(f"dataset.face.path={cfg.face.path}: {images} is not a folder")
    return _folder_dataset("folder", cfg, root, images, order="natural order of the folder names",
                           cache_dir=cache_dir)


load_folder_splits.summary = "your own faces: one sub-folder per identity (dataset.face.path)"  # type: ignore[attr-defined]
load_folder_splits.paper = "-"  # type: ignore[attr-defined]


def read_celeba_identities(path: Path) -> dict[str, int]:
    """``identity_CelebA.txt``: ``<image> <identity number>`` per line."""
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].isdigit():
            raise ValueError(f"{path} line {n}: expected '<image> <identity number>', got {line!r}")
        out[parts[0]] = int(parts[1])
    return out


def _celeba_dir(cfg: DatasetConfig, root: Path) -> Path:
    base = _under(root, cfg.face.path) if cfg.face.path else root / "celeba"
    ident = base / "identity_CelebA.txt"
    needed = [base / "img_align_celeba"] + ([] if cfg.face.train_list else [ident])
    if all(p.exists() for p in needed):
        return base
    if cfg.download and not cfg.face.path:
        try:  # torchvision fetches CelebA from Google Drive into <root>/celeba/ (often over quota)
            from torchvision.datasets import CelebA

            CelebA(str(root), split="all", target_type="identity", download=True)
        except Exception as exc:  # noqa: BLE001 - offline, quota, read-only root, ...
            log.debug("CelebA download failed: %s", exc)
        if all(p.exists() for p in needed):
            return base
    raise DataUnavailable(
        f"CelebA not found: {base} must hold img_align_celeba/ (202,599 aligned JPEGs) and "
        "identity_CelebA.txt, from the CelebA page (mmlab.ie.cuhk.edu.hk/projects/CelebA.html; "
        "torchvision.datasets.CelebA(root, download=True) fetches both), or point data_root=... / "
        "MI_BENCH_DATA at the folder that holds celeba/"
    )


def plan_celeba(identities: dict[str, int], cfg: DatasetConfig) -> FacePlan:
    """Private = the first ``private_classes`` identities by identity number with at least
    ``face.min_images`` images, all their images; public = images of every other identity."""
    by_number: dict[int, list[str]] = {}
    for img in sorted(identities, key=natural_key):
        by_number.setdefault(identities[img], []).append(img)
    by_id = {str(i): by_number[i] for i in sorted(by_number)}
    return plan_identities(by_id, cfg, dataset="celeba", order="increasing CelebA identity number",
                           public_own=not cfg.face.public)


def _celeba_plan_from_lists(cfg: DatasetConfig, base: Path,
                            identities: dict[str, int] | None) -> tuple[FacePlan, int | str]:
    fc = cfg.face
    if not (fc.test_list and (fc.public_list or fc.public)):
        raise ValueError("dataset.face.train_list needs test_list and public_list (or face.public) too")
    train_all = read_list(_under(base, fc.train_list), labelled=True)
    test = read_list(_under(base, fc.test_list), labelled=True)
    labels = sorted({lab for _, lab in train_all})
    if labels != list(range(len(labels))) or any(lab not in set(labels) for _, lab in test):
        raise ValueError(f"{fc.train_list}: labels must be 0..K-1 (every one present), and the test "
                         "list may only use those labels")
    k = len(labels)
    if cfg.private_classes and cfg.private_classes != k:
        raise ValueError(f"dataset.private_classes={cfg.private_classes} but {fc.train_list} has "
                         f"{k} labels: set dataset.private_classes=0 or {k}")
    plan = FacePlan(private_ids=[str(i) for i in labels], train=[], val=[], test=test, public=[])
    for lab in labels:
        files = [f for f, y in train_all if y == lab]
        rng = _identity_rng(cfg.split_seed, f"label{lab}")
        files = [files[i] for i in rng.permutation(len(files))]
        n_val = min(int(round(cfg.val_fraction * len(files))), max(0, len(files) - 1))
        plan.val += [(f, lab) for f in files[:n_val]]
        plan.train += [(f, lab) for f in files[n_val:]]
    plan.rules["private"] = (f"the user's split files {fc.train_list} / {fc.test_list} ({k} labels); "
                             f"{cfg.val_fraction:g} of each label's training images validation")
    overlap: int | str = "unchecked: identity_CelebA.txt not found"
    if not fc.public:
        pub = read_list(_under(base, fc.public_list), labelled=False)
        if identities is not None:
            priv_ids = {identities.get(f) for f, _ in train_all + test}
            pub_ids = sorted({identities.get(f, -1) for f, _ in pub})
            plan.public_ids = [str(i) for i in pub_ids]
            lookup = {i: k + j for j, i in enumerate(pub_ids)}
            pub = [(f, lookup[identities.get(f, -1)]) for f, _ in pub]
            overlap = len(priv_ids & set(pub_ids))
        plan.public = _subsample(pub, fc.public_size, cfg.split_seed)
        plan.rules["public"] = f"the images of {fc.public_list}" + (
            f" (a random {fc.public_size:,})" if fc.public_size and fc.public_size < len(pub) else "")
    return plan, overlap


@DATASETS.register("celeba")
def load_celeba_splits(cfg: DatasetConfig, root: Path, *, cache_dir: Path | None = None) -> DataSplits:
    """CelebA, GMI/KED-MI/PLG-MI protocol: 1,000 private identities, 30,000 public images."""
    _check_config("celeba", cfg)
    base = _celeba_dir(cfg, root)
    images = base / "img_align_celeba"
    ident_file = base / "identity_CelebA.txt"
    identities = read_celeba_identities(ident_file) if ident_file.is_file() else None
    fc = cfg.face
    if fc.train_list:
        plan, overlap = _celeba_plan_from_lists(cfg, base, identities)
    else:
        assert identities is not None  # _celeba_dir checked it
        plan, overlap = plan_celeba(identities, cfg), 0
    pp = preprocess(cfg, fc.crop, fc.pre_resize)
    pub_root, pub_pp, pub_overlap = _public_set(cfg, root, plan, pp, default_root=images)
    if fc.public:
        overlap = pub_overlap
    return build_face_splits("celeba", cfg, plan, private_root=images, public_root=pub_root,
                             private_pp=pp, public_pp=pub_pp, cache_dir=cache_dir, overlap=overlap)


load_celeba_splits.summary = "CelebA, GMI/KED-MI/PLG-MI protocol: 1,000 private identities; public CelebA/FFHQ/FaceScrub"  # type: ignore[attr-defined]
load_celeba_splits.paper = "Liu et al. 2015 (CelebA); protocol of Zhang et al. CVPR 2020 (GMI)"  # type: ignore[attr-defined]
