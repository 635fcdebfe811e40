"""``dataset.face.align=detect``: real LFW photos pasted small onto larger backgrounds at random
places; the folder loader must crop each to its face, drop or centre images without one, state
it in ``protocol.data.face_crops`` with a grid of crops, and leave ``align=center`` untouched."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mi_bench import face_align, face_images
from mi_bench.artifacts import ArtifactStore
from mi_bench.config import compose, config_hash, stable_hash, to_dict
from mi_bench.data import load_splits
from mi_bench.errors import ConfigError

from conftest import SHARED_DATA

LFW = SHARED_DATA / "lfw" / "lfw-deepfunneled"
PEOPLE = ("Colin_Powell", "Tony_Blair", "Gerhard_Schroeder")  # the third one is public
PHOTO = 100  # side of the pasted 250x250 LFW photo; its face is then about 45 px wide
BG_W, BG_H = 320, 240
FACE = 0.46  # the face: the central 46% of a deep-funneled LFW photo (alt2 box ~113 of 250 px)


@pytest.fixture
def detector():
    pytest.importorskip("cv2", reason="align=detect needs opencv-python-headless<5: pip install 'mi-bench[faces]'")
    face_align._cascade.cache_clear()


def _pasted_tree(root: Path, per_person: int = 5) -> dict[str, tuple[int, int]]:
    """``root/<person>/<j>.png``: an LFW photo resized to PHOTO px, pasted at a random place on a
    320x240 plain (even j) or noisy (odd j) background. Returns file -> paste corner (x, y)."""
    if not (LFW / PEOPLE[0]).is_dir():
        pytest.skip(f"LFW not found at {LFW} (needs ../shared/data beside the repo)")
    rng = np.random.default_rng(0)
    corners = {}
    for person in PEOPLE:
        for j in range(per_person):
            photo = Image.open(LFW / person / f"{person}_{j + 1:04d}.jpg").convert("RGB")
            photo = photo.resize((PHOTO, PHOTO), Image.BILINEAR)
            if j % 2:
                bg = rng.integers(0, 256, (BG_H, BG_W, 3), dtype=np.uint8)
            else:
                bg = np.full((BG_H, BG_W, 3), int(rng.integers(60, 200)), np.uint8)
            x, y = int(rng.integers(0, BG_W - PHOTO)), int(rng.integers(0, BG_H - PHOTO))
            bg[y:y + PHOTO, x:x + PHOTO] = np.asarray(photo)
            (root / person).mkdir(parents=True, exist_ok=True)
            Image.fromarray(bg).save(root / person / f"{j}.png")
            corners[f"{person}/{j}.png"] = (x, y)
    return corners


def _no_face(path: Path) -> None:
    """A horizontal grey ramp: no face, and its centred crop differs from any other crop."""
    ramp = np.tile(np.linspace(0, 255, BG_W).astype(np.uint8), (BG_H, 1))
    Image.fromarray(ramp).convert("RGB").save(path)


def _cfg(*tokens: str):
    return compose(["dataset=folder", "dataset.face.path=people", "dataset.face.min_images=5",
                    "dataset.private_classes=2", "dataset.image_size=64", *tokens]).dataset


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float().mean(0).flatten(), b.float().mean(0).flatten()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def test_each_crop_contains_the_pasted_face(tmp_path, detector):
    corners = _pasted_tree(tmp_path / "people")
    margin = 0.05
    for rel, (x, y) in corners.items():
        gray = np.asarray(Image.open(tmp_path / "people" / rel).convert("L"))
        box = face_align.detect_face(gray)
        assert box is not None, rel
        left, top, side = face_align.face_square(box, BG_W, BG_H, margin)
        cx, cy = x + PHOTO / 2, y + PHOTO / 2  # the pasted face's centre
        assert left <= cx < left + side and top <= cy < top + side, rel
        # the face with its margin, not the pasted photo (or the background) around it
        assert 0.8 * FACE * PHOTO <= side <= 1.3 * FACE * PHOTO * (1 + 2 * margin), (rel, side)
        assert x <= left and left + side <= x + PHOTO and y <= top and top + side <= y + PHOTO, rel

    # what the loader decodes and caches is that crop: it looks like the face patch at the
    # known paste position, and the centred crop of the same file does not
    files = list(corners)
    pp = face_images.Preprocess(64, align="detect", align_margin=margin)
    tensors, _ = face_images.load_decoded(tmp_path / "people", files, pp, None, what="test")
    assert tensors["face_found"].tolist() == [1] * len(files)
    centred = face_images.load_images(tmp_path / "people", files, face_images.Preprocess(64), None, what="test")
    o, s = round((1 - FACE) / 2 * PHOTO), round(FACE * PHOTO)
    for i, rel in enumerate(files):
        x, y = corners[rel]
        src = Image.open(tmp_path / "people" / rel).convert("RGB")
        patch = src.crop((x + o, y + o, x + o + s, y + o + s)).resize((64, 64), Image.BILINEAR)
        ref = torch.from_numpy(np.array(patch)).permute(2, 0, 1)
        assert _corr(tensors["images"][i], ref) > 0.35 > _corr(centred[i], ref), rel


def test_folder_run_records_the_detector_the_no_face_images_and_a_grid(tmp_path, detector, monkeypatch):
    _pasted_tree(tmp_path / "people")
    _no_face(tmp_path / "people" / "Colin_Powell" / "9.png")
    cache = tmp_path / "cache"
    s = load_splits(_cfg("dataset.face.align=detect"), tmp_path, cache_dir=cache)
    fc = s.info["face_crops"]
    assert fc["detector"]["model"] == face_align.CASCADE and fc["detector"]["library"].startswith("opencv ")
    assert fc["private"]["images"] == 11 and fc["private"]["no_face"] == 1
    assert fc["private"]["no_face_action"] == "dropped"
    assert fc["private"]["no_face_examples"] == ["Colin_Powell/9.png"]
    assert fc["public"]["images"] == 5 and fc["public"]["no_face"] == 0
    c = s.counts()
    assert c["private_train"] + c["private_val"] + c["private_test"] == 10 and c["public"] == 5
    assert "Haar cascade" in s.info["preprocessing"]["private"]
    # the grid sits in the decoded-image cache entry; no-face images come first, framed red
    grid = Path(fc["private"]["grid"])
    assert grid.parent.parent == cache / face_images.CACHE_KIND
    assert ArtifactStore(cache).exists(face_images.CACHE_KIND, grid.parent.name)
    with Image.open(grid) as im:
        assert im.format == "PNG" and im.width == 8 * 100
        assert im.convert("RGB").getpixel((0, 0)) == (210, 30, 30)
        assert im.convert("RGB").getpixel((100, 0)) == (40, 160, 40)
    # cached with the decoded images: a second load decodes nothing and reports the same
    monkeypatch.setattr(face_images, "decode_image", lambda *a, **k: (_ for _ in ()).throw(AssertionError("decoded")))
    again = load_splits(_cfg("dataset.face.align=detect"), tmp_path, cache_dir=cache)
    assert again.info["face_crops"]["private"] == fc["private"]
    assert torch.equal(again.private_train[0], s.private_train[0])


def test_no_face_center_keeps_the_centred_crop(tmp_path, detector):
    _pasted_tree(tmp_path / "people")
    blank = tmp_path / "people" / "Colin_Powell" / "9.png"
    _no_face(blank)
    s = load_splits(_cfg("dataset.face.align=detect", "dataset.face.no_face=center"), tmp_path)
    assert s.info["face_crops"]["private"]["no_face_action"] == "kept centred"
    x = torch.cat([s.private_train[0], s.private_val[0], s.private_test[0]])
    assert len(x) == 11
    centred = torch.from_numpy(face_images.decode_image(blank, face_images.Preprocess(64))).float() / 255
    assert sum(torch.equal(row, centred) for row in x) == 1


def test_dropping_every_test_image_of_a_person_names_the_fix(tmp_path, detector):
    _pasted_tree(tmp_path / "people")
    for j in range(5):  # Tony Blair's photos replaced by images without a face
        _no_face(tmp_path / "people" / "Tony_Blair" / f"{j}.png")
    with pytest.raises(ConfigError, match="no_face=center"):
        load_splits(_cfg("dataset.face.align=detect"), tmp_path)


def test_face_square_is_clamped_to_the_image():
    assert face_align.face_square((40, 30, 20, 20), 100, 100, 0.25) == (35, 25, 30)  # centred
    assert face_align.face_square((90, 30, 20, 20), 100, 100, 0.25) == (70, 25, 30)  # shifted in
    assert face_align.face_square((0, 0, 60, 60), 100, 80, 0.5) == (0, 0, 80)  # at most 80
    assert face_align.face_square((10, 50, 30, 40), 100, 100, 0.0) == (5, 50, 40)  # square of max(w, h)


def test_align_center_keeps_cache_keys_and_config_hashes(tmp_path):
    root = tmp_path / "people"
    (root / "a").mkdir(parents=True)
    for j in range(3):
        Image.new("RGB", (40 + j, 30), (9 * j, 80, 200)).save(root / "a" / f"{j}.png")
    files = [f"a/{j}.png" for j in range(3)]
    entries = [(f, (root / f).stat().st_size) for f in files]
    before = stable_hash({"version": face_images.CACHE_VERSION, "files": entries,
                          "pre": {"size": 32, "channels": 3, "crop": 0, "pre_resize": 0}}, n=24)
    assert face_images.images_key(files, root, face_images.Preprocess(32)) == before
    assert face_images.images_key(files, root, face_images.Preprocess(32, align="center", align_margin=0.4)) == before
    base = to_dict(compose(["dataset=folder"]))
    same = to_dict(compose(["dataset=folder", "dataset.face.align=center", "dataset.face.no_face=drop",
                            "dataset.face.align_margin=0.05"]))
    assert config_hash(same) == config_hash(base)
    assert config_hash(to_dict(compose(["dataset=folder", "dataset.face.align=detect"]))) != config_hash(base)


def test_align_detect_has_its_own_cache_key(detector, tmp_path):
    (tmp_path / "a").mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "a" / "0.png")
    keys = {face_images.images_key(["a/0.png"], tmp_path, face_images.Preprocess(32, align=a, align_margin=m))
            for a, m in (("center", 0.05), ("detect", 0.05), ("detect", 0.2))}
    assert len(keys) == 3


def test_without_opencv_align_detect_is_one_line_naming_the_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 -> ImportError
    face_align._cascade.cache_clear()
    try:
        (tmp_path / "people" / "a").mkdir(parents=True)
        with pytest.raises(ConfigError, match=r"pip install 'mi-bench\[faces\]'") as err:
            face_images.images_key([], tmp_path / "people", face_images.Preprocess(32, align="detect"))
        assert "\n" not in str(err.value)
    finally:
        face_align._cascade.cache_clear()
