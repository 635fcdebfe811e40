"""Face datasets: identity-disjoint splits, the LFW counts, the CelebA identity rule, FFHQ /
FaceScrub / folder loading on tiny generated trees, the decoded-image cache, bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mi_bench import face_images, faces
from mi_bench.config import compose
from mi_bench.data import DatasetConfig, load_splits
from mi_bench.errors import DataUnavailable

from conftest import SHARED_DATA

LFW = SHARED_DATA / "lfw" / "lfw-deepfunneled"
ATT = SHARED_DATA / "att_faces"


def lfw_or_skip() -> Path:
    if not (LFW / "George_W_Bush").is_dir():
        pytest.skip(f"LFW not found at {LFW} (needs ../shared/data beside the repo)")
    return LFW


def face_cfg(tokens=(), dataset="lfw") -> DatasetConfig:
    return compose([f"dataset={dataset}", *tokens]).dataset


def _person(path: str) -> str:
    return path.rsplit("/", 1)[0]


# -- LFW on the real files (plans only: no decoding) ---------------------------------------------

@pytest.mark.data
def test_lfw_default_split_is_identity_disjoint_with_the_documented_counts():
    root = lfw_or_skip()
    by_id = faces.scan_identity_folders(root)
    assert len(by_id) == 5749 and sum(map(len, by_id.values())) == 13233
    cfg = face_cfg(["preset=paper"])  # every image (quick and cpu cap 60 per person)
    assert cfg.face.min_images == 20 and cfg.private_classes == 0  # the documented default
    plan = faces.plan_identities(by_id, cfg, dataset="lfw", order="name order")
    assert len(plan.private_ids) == 62
    assert len(plan.train) + len(plan.val) + len(plan.test) == 3023
    assert len(plan.public) == 13233 - 3023 == 10210
    assert plan.private_ids == sorted(plan.private_ids, key=faces.natural_key)  # labels in name order
    private_people = {_person(f) for f, _ in plan.train + plan.val + plan.test}
    public_people = {_person(f) for f, _ in plan.public}
    assert private_people == set(plan.private_ids) and not private_people & public_people
    assert not set(plan.public_ids) & set(plan.private_ids)
    # every private person is in train and test; labels 0..61 follow private_ids
    for part in (plan.train, plan.test):
        assert {lab for _, lab in part} == set(range(62))
    assert all(_person(f) == plan.private_ids[lab] for f, lab in plan.train)
    assert all(lab >= 62 for _, lab in plan.public)


@pytest.mark.data
@pytest.mark.parametrize("n,people,images", [(10, 158, 4324), (30, 34, 2370)])
def test_lfw_min_images_rule_matches_the_data_readme(n, people, images):
    by_id = faces.scan_identity_folders(lfw_or_skip())
    plan = faces.plan_identities(by_id, face_cfg(["preset=paper", f"dataset.face.min_images={n}"]),
                                 dataset="lfw", order="name order")
    assert len(plan.private_ids) == people
    assert len(plan.train) + len(plan.val) + len(plan.test) == images


@pytest.mark.data
def test_lfw_cpu_preset_caps_each_person_and_keeps_splits_stable():
    by_id = faces.scan_identity_folders(lfw_or_skip())
    cfg = face_cfg(["preset=cpu"])
    fc = cfg.face
    cpu = faces.plan_identities(by_id, cfg, dataset="lfw", order="name order")
    # the counts the stated rule gives, computed from the folder listing alone: the first
    # private_classes people (name order) with >= min_images images, each capped at
    # max_per_identity, split round(test_fraction n) test and val_fraction of the rest validation
    qualifying = [i for i in by_id if len(by_id[i]) >= fc.min_images][: cfg.private_classes or None]
    assert cpu.private_ids == qualifying
    want = {"train": 0, "val": 0, "test": 0}
    for ident in qualifying:
        n = min(len(by_id[ident]), fc.max_per_identity or len(by_id[ident]))
        n_test = min(max(1, round(cfg.test_fraction * n)), n - 1)
        n_val = min(round(cfg.val_fraction * (n - n_test)), n - n_test - 1)
        want["test"] += n_test
        want["val"] += n_val
        want["train"] += n - n_test - n_val
    assert {"train": len(cpu.train), "val": len(cpu.val), "test": len(cpu.test)} == want
    per = np.bincount([lab for _, lab in cpu.train + cpu.val + cpu.test])
    assert per.max() == fc.max_per_identity and per.min() >= fc.min_images
    public = sum(len(f) for i, f in by_id.items() if i not in set(qualifying))
    assert max(len(f) for i, f in by_id.items() if i not in set(qualifying)) < fc.max_per_identity
    assert len(cpu.public) == min(public, fc.public_size or public)  # the cap never bites there
    # an identity's split depends on the seed and the identity only, not on who else is private
    n10 = faces.plan_identities(by_id, face_cfg(["dataset.face.min_images=10"]), dataset="lfw",
                                order="name order")
    n20 = faces.plan_identities(by_id, face_cfg(), dataset="lfw", order="name order")
    test10 = {f for f, _ in n10.test}
    assert {f for f, _ in n20.test} <= test10
    other = faces.plan_identities(by_id, face_cfg(["dataset.split_seed=1"]), dataset="lfw",
                                  order="name order")
    assert {f for f, _ in other.test} != {f for f, _ in n20.test}


# -- tiny generated trees ------------------------------------------------------------------------

def _save(path: Path, size: tuple[int, int], value: int | tuple, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    Image.new("RGB", (w, h), value if isinstance(value, tuple) else (value,) * 3).save(path, fmt)


def _framed(path: Path, side: int, inner: int) -> None:
    """A black image with a white centred square of side ``inner``."""
    a = np.zeros((side, side, 3), np.uint8)
    o = (side - inner) // 2
    a[o:o + inner, o:o + inner] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)


def _identity_tree(root: Path, counts: dict[str, int], size=(40, 40)) -> None:
    for i, (name, n) in enumerate(counts.items()):
        for j in range(n):
            _save(root / name / f"{j + 1}.png", size, (20 * i % 256, 10 * j % 256, 90))


def test_folder_dataset_rules_on_a_generated_tree(tmp_path):
    counts = {"p10": 6, "p2": 5, "p1": 2, "p3": 7, "p4": 1}
    _identity_tree(tmp_path / "people", counts)
    cfg = face_cfg(["dataset.face.path=people", "dataset.face.min_images=5", "dataset.image_size=16",
                    "dataset.face.crop=0"], dataset="folder")
    s = load_splits(cfg, tmp_path, cache_dir=tmp_path / "cache")
    # natural order: p2 < p3 < p10 are the people with >= 5 images
    assert s.info["class_names"] == ["p2", "p3", "p10"]
    assert s.num_private_classes == 3 and s.num_domain_classes == 3
    assert s.image_shape == (3, 16, 16) and s.private_train[0].dtype == torch.float32
    n_priv = sum(s.counts()[k] for k in ("private_train", "private_val", "private_test"))
    assert n_priv == 5 + 7 + 6 and s.counts()["public"] == 2 + 1
    assert set(s.public[1].tolist()) == {3, 4}  # p1, p4 -> labels K + i
    assert s.info["identity_overlap"] == 0 and s.info["public_identities"] == 2
    assert s.eval_train is s.private_train  # the evaluator's domain is the private people
    assert set(s.private_test[1].tolist()) == {0, 1, 2}


def test_folder_dataset_bad_input(tmp_path):
    with pytest.raises(ValueError, match="dataset.face.path"):
        load_splits(face_cfg(dataset="folder"), tmp_path)
    with pytest.raises(DataUnavailable, match="not a folder"):
        load_splits(face_cfg(["dataset.face.path=nowhere"], dataset="folder"), tmp_path)
    _identity_tree(tmp_path / "few", {"a": 3, "b": 3})
    with pytest.raises(ValueError, match="min_images"):
        load_splits(face_cfg(["dataset.face.path=few"], dataset="folder"), tmp_path)
    with pytest.raises(ValueError, match="disjoint_classes"):
        load_splits(face_cfg(["dataset.face.path=few", "dataset.protocol=disjoint_samples"],
                             dataset="folder"), tmp_path)


def test_missing_lfw_says_where_to_put_it(tmp_path):
    cfg = face_cfg(["dataset.download=false"])
    with pytest.raises(DataUnavailable, match=r"LFW not found under .*lfw/lfw-deepfunneled.*MI_BENCH_DATA"):
        load_splits(cfg, tmp_path)


def _celeba(root: Path, per_identity: dict[int, int]) -> dict[str, int]:
    """A tiny CelebA: 218x178 aligned images named 000001.jpg..., identity_CelebA.txt."""
    ident = {}
    n = 0
    for number, k in per_identity.items():
        for _ in range(k):
            n += 1
            ident[f"{n:06d}.jpg"] = number
    for f, number in ident.items():
        _save(root / "celeba" / "img_align_celeba" / f, (178, 218), (number * 17 % 256, 60, 120), "JPEG")
    lines = [f"{f} {i}" for f, i in ident.items()]
    (root / "celeba" / "identity_CelebA.txt").write_text("\n".join(lines) + "\n")
    return ident


def test_celeba_identity_rule_on_a_synthetic_identity_file():
    # identity number -> images; min_images 4, 3 private identities
    ident = {}
    counts = {5: 3, 2: 4, 9: 6, 1: 5, 7: 4, 3: 2}
    n = 0
    for number, k in counts.items():
        for _ in range(k):
            n += 1
            ident[f"{n:06d}.jpg"] = number
    cfg = face_cfg(["dataset.private_classes=3", "dataset.face.min_images=4",
                    "dataset.face.public_size=0"], dataset="celeba")
    plan = faces.plan_celeba(ident, cfg)
    # qualifying by increasing identity number: 1, 2, 7, 9 -> the first three are private
    assert plan.private_ids == ["1", "2", "7"]
    by_label = {}
    for f, lab in plan.train + plan.val + plan.test:
        by_label.setdefault(lab, set()).add(ident[f])
    assert by_label == {0: {1}, 1: {2}, 2: {7}}
    assert sum(1 for _ in plan.train + plan.val + plan.test) == 5 + 4 + 4  # all their images
    public_ids = {ident[f] for f, _ in plan.public}
    assert public_ids == {3, 5, 9}  # every other identity, including a qualifying one beyond K
    assert len(plan.public) == 2 + 3 + 6


def test_celeba_loads_crops_108_and_caches_the_decoded_images(tmp_path, monkeypatch):
    ident = _celeba(tmp_path, {4: 3, 1: 4, 2: 4, 6: 2})
    cfg = face_cfg(["dataset.private_classes=2", "dataset.face.min_images=4",
                    "dataset.face.public_size=0", "dataset.image_size=16"], dataset="celeba")
    assert cfg.face.crop == 108 and cfg.test_fraction == 0.1
    cache = tmp_path / "cache"
    s = load_splits(cfg, tmp_path, cache_dir=cache)
    assert s.info["class_names"] == ["1", "2"] and s.num_private_classes == 2
    assert s.counts()["public"] == 3 + 2 and s.info["identity_overlap"] == 0
    assert s.image_shape == (3, 16, 16)
    assert "centre crop 108" in s.info["preprocessing"]["private"]
    assert any((cache / face_images.CACHE_KIND).iterdir())
    # the second load reads the cache: decoding would fail now
    monkeypatch.setattr(face_images, "decode_image", lambda *a, **k: (_ for _ in ()).throw(AssertionError("decoded")))
    s2 = load_splits(cfg, tmp_path, cache_dir=cache)
    assert torch.equal(s2.private_train[0], s.private_train[0]) and torch.equal(s2.public[0], s.public[0])
    # a changed file (size) is a new cache key -> decoded again
    f = next(iter(ident))
    _save(tmp_path / "celeba" / "img_align_celeba" / f, (178, 218), (1, 2, 3), "PNG")
    with pytest.raises(AssertionError, match="decoded"):
        load_splits(cfg, tmp_path, cache_dir=cache)


def test_celeba_split_files_and_their_identity_check(tmp_path):
    ident = _celeba(tmp_path, {1: 4, 2: 4, 3: 3})
    files = list(ident)
    base = tmp_path / "celeba"
    (base / "train.txt").write_text("".join(f"{f} {ident[f] - 1}\n" for f in files[:3] + files[4:7]))
    (base / "test.txt").write_text(f"{files[3]} 0\n{files[7]} 1\n")
    (base / "gan.txt").write_text("".join(f"{f}\n" for f in files[8:]))
    lists = ["dataset.face.train_list=train.txt", "dataset.face.test_list=test.txt",
             "dataset.face.public_list=gan.txt", "dataset.image_size=16", "dataset.val_fraction=0",
             "dataset.private_classes=0"]
    s = load_splits(face_cfg(lists, dataset="celeba"), tmp_path)
    assert s.counts()["private_train"] == 6 and s.counts()["private_test"] == 2
    assert s.counts()["public"] == 3 and s.info["identity_overlap"] == 0
    (base / "gan.txt").write_text(f"{files[0]}\n{files[9]}\n")  # identity 1 is private
    with pytest.raises(ValueError, match="1 identities are both private and public"):
        load_splits(face_cfg(lists, dataset="celeba"), tmp_path)


def test_missing_celeba_says_where_to_put_it(tmp_path):
    with pytest.raises(DataUnavailable, match=r"img_align_celeba.*identity_CelebA.txt"):
        load_splits(face_cfg(["dataset.download=false"], dataset="celeba"), tmp_path)


def test_ffhq_public_set_crops_88_of_128(tmp_path):
    _celeba(tmp_path, {1: 4, 2: 4})
    for i in range(5):
        _framed(tmp_path / "ffhq" / "thumbnails128x128" / "00000" / f"{i:05d}.png", 128, 88)
    s = load_splits(face_cfg(["dataset.face.public=ffhq", "dataset.private_classes=2",
                              "dataset.face.min_images=4", "dataset.image_size=16"], dataset="celeba"), tmp_path)
    assert s.counts()["public"] == 5 and set(s.public[1].tolist()) == {-1}
    assert float(s.public[0].min()) == 1.0  # only the white 88x88 centre survives the crop
    assert str(s.info["identity_overlap"]).startswith("unchecked")
    assert "centre crop 88" in s.info["preprocessing"]["public"]


def test_facescrub_public_set_resizes_to_64_then_crops_54(tmp_path):
    _celeba(tmp_path, {1: 4, 2: 4})
    for who in ("actors/faces/Aaron_Eckhart", "actresses/faces/Adrianne_Leon"):
        for i in range(3):
            _framed(tmp_path / "facescrub" / who / f"{i}.jpg", 96, 81)  # 81/96 = 54/64
    cfg = face_cfg(["dataset.face.public=facescrub", "dataset.private_classes=2",
                    "dataset.face.min_images=4", "dataset.image_size=16"], dataset="celeba")
    s = load_splits(cfg, tmp_path)
    assert s.counts()["public"] == 6 and set(s.public[1].tolist()) == {2, 3}
    assert "resize 64x64, centre crop 54" in s.info["preprocessing"]["public"]
    assert float(s.public[0][:, :, 2:-2, 2:-2].min()) > 0.9  # the crop keeps (mostly) the white square


@pytest.mark.data
def test_att_faces_twenty_private_people_twenty_public_grey():
    if not (ATT / "s40").is_dir():
        pytest.skip(f"AT&T faces not found at {ATT}")
    s = load_splits(face_cfg(dataset="att_faces"), SHARED_DATA)
    assert s.image_shape == (1, 32, 32)
    assert s.info["class_names"][:3] == ["s1", "s2", "s3"] and s.info["class_names"][-1] == "s20"
    c = s.counts()
    assert (c["private_train"], c["private_val"], c["private_test"], c["public"]) == (140, 20, 40, 200)
    assert s.info["public_identities"] == 20 and s.info["identity_overlap"] == 0


# -- the end-to-end smoke run ---------------------------------------------------------------------

@pytest.mark.data
def test_lfw_smoke_run_end_to_end_through_the_cli(tmp_path, monkeypatch):
    lfw_or_skip()
    from click.testing import CliRunner

    from mi_bench.cli import cli

    monkeypatch.setenv("MI_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["run", "dataset=lfw", "preset=smoke", "defense=bido", "attack=gmi",
                                 f"data_root={SHARED_DATA}", "--json", "--quiet"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)
    data = rec["protocol"]["data"]
    assert data["dataset"] == "lfw" and data["unit"] == "identity" and data["identity_overlap"] == 0
    assert data["class_names"] == ["Alejandro_Toledo", "Alvaro_Uribe", "Amelie_Mauresmo", "Andre_Agassi"]
    assert data["counts"]["public"] == 256 and "private identities only" in data["evaluation_domain"]
    assert rec["config"]["target"]["model"] == "vgg16_bn" and rec["config"]["target"]["sampler"] == "pk"
    assert rec["protocol"]["initialisation"]["target"].startswith("from scratch")
    assert rec["metrics"]["attack_acc"] is not None and rec["metrics"]["n_reconstructions"] == 8
    assert os.path.isfile(rec["grid"])


def test_cli_refuses_missing_faces_and_a_sample_protocol_with_exit_2(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from mi_bench.cli import cli

    monkeypatch.setenv("MI_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["run", "dataset=att_faces", "preset=smoke", f"data_root={tmp_path}"])
    assert r.exit_code == 2 and "AT&T faces not found under" in r.output
    _identity_tree(tmp_path / "people", {"a": 3, "b": 3, "c": 1})
    r = CliRunner().invoke(cli, ["run", "dataset=folder", "dataset.face.path=people",
                                 "dataset.protocol=disjoint_samples", f"data_root={tmp_path}"])
    assert r.exit_code == 2 and "set dataset.protocol=disjoint_classes" in r.output
    assert not (tmp_path / "results").exists()  # nothing half-written
