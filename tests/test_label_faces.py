"""The label page on face runs (issue 20: it crashed on every one): an LFW smoke run and a
smoke run on a user's own folder, through the page's endpoints; the LFW one also in headless
Chromium. Face items show the attacked person's real images (checked pixel for pixel against
the run's data) and two other people's, named."""

from __future__ import annotations

import io
import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mi_bench.labelling import LabelServer, load_labels, session_for_run

from conftest import SHARED_DATA as SHARED

REPO = Path(__file__).resolve().parents[1]


def _run(tokens: list[str], root: Path) -> dict:
    from mi_bench.config import compose
    from mi_bench.pipeline import run

    cfg = compose(["preset=smoke", *tokens, f"cache_dir={root / 'cache'}", f"results_db={root / 'r.sqlite'}",
                   f"results_dir={root / 'runs'}"])
    return run(cfg)


def _people(root: Path, n_people: int = 6, n_images: int = 22) -> Path:
    """A user's folder: one sub-folder per person, each person a distinct colour pattern."""
    rng = np.random.default_rng(0)
    for p in range(n_people):
        base = rng.integers(0, 255, size=(8, 8, 3))
        for i in range(n_images):
            img = np.clip(base + rng.integers(-20, 20, size=base.shape), 0, 255).astype(np.uint8)
            d = root / f"person_{p:02d}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).resize((48, 40), Image.NEAREST).save(d / f"{i:03d}.jpg", quality=95)
    return root


@pytest.fixture(scope="module", params=["lfw", "folder"])
def face_run(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"label-{request.param}")
    if request.param == "lfw":
        if not (SHARED / "lfw" / "lfw-deepfunneled" / "George_W_Bush").is_dir():
            pytest.skip(f"LFW not found at {SHARED / 'lfw'} (needs ../shared/data beside the repo)")
        rec = _run(["dataset=lfw", f"data_root={SHARED}"], root)
    else:
        folder = _people(root / "faces")
        rec = _run(["dataset=folder", f"dataset.face.path={folder}", "dataset.face.public_size=0"], root)
    return request.param, rec


@pytest.fixture()
def server(face_run):
    kind, rec = face_run
    srv = LabelServer(session_for_run(rec), port=0)
    srv.start_background()
    yield kind, rec, srv
    srv.shutdown()
    srv.server_close()


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=20) as r:
        assert r.status == 200
        return r.read()


def _png(url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(_get(url))).convert("RGB"))


@pytest.mark.slow  # a face smoke run each (about 15-60 s)
def test_face_items_show_the_attacked_persons_real_images_and_two_others(server):
    from mi_bench.data import load_splits
    from mi_bench.images import to_hwc_uint8
    from mi_bench.record import dataset_config

    kind, rec, srv = server
    items = json.loads(_get(srv.url + "api/items"))
    n = rec["metrics"]["n_reconstructions"]
    assert items["n"] == n and sorted(it["index"] for it in items["items"]) == list(range(n))
    splits = load_splits(dataset_config(rec), Path(rec["config"]["data_root"] or SHARED),
                         cache_dir=Path(rec["config"]["cache_dir"]))
    names = rec["protocol"]["data"]["class_names"]
    import torch

    parts = [splits.private_train, splits.private_val, splits.private_test]
    x = torch.cat([p[0] for p in parts])
    y = torch.cat([p[1] for p in parts])
    for it in items["items"][:3]:
        refs = {r["role"]: r for r in it["references"] if r["role"] == "attacked"}
        others = [r for r in it["references"] if r["role"] == "other"]
        assert len(others) == 2 and len({r["class"] for r in others} | {it["class"]}) == 3
        attacked = refs["attacked"]
        assert attacked["class"] == it["class"]
        # the person is named, not only numbered
        assert attacked["class_name"] != str(it["class"]) and "class" in attacked["class_name"]
        assert attacked["class_name"].startswith(str(names[it["class"]]))
        # every real image shown is one of that person's images, pixel for pixel
        real_c = [to_hwc_uint8(im) for im in x[y == it["class"]]]
        for url in attacked["images"]:
            shown = _png(srv.url + url.lstrip("/"))
            k = shown.shape[0] // real_c[0].shape[0]  # shown enlarged by an integer factor
            shown = shown[::k, ::k]
            assert any(np.array_equal(shown, r) for r in real_c), f"{kind}: {url} is not class {it['class']}"
        for url in (it["image"], it["sheet"]):
            assert _get(srv.url + url.lstrip("/"))[:4] == b"\x89PNG"
    first = items["items"][0]
    req = urllib.request.Request(srv.url + "api/label", method="POST",
                                 data=json.dumps({"index": first["index"], "label": "same"}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert json.loads(r.read())["ok"]
    assert load_labels(rec["run_dir"])[first["index"]]["label"] == "same"


@pytest.mark.slow
def test_the_label_page_works_on_a_face_run_in_a_real_browser(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    kind, rec, srv = server
    if kind != "lfw":
        pytest.skip("the browser pass runs on the LFW run (the endpoints are checked on both)")
    browser.get(srv.url)
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: "labelled" in d.find_element(By.ID, "status").text)
    first = int(browser.find_element(By.ID, "recon").get_attribute("data-index"))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#refs .row")) == 3
    wait.until(lambda d: d.execute_script(
        "return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"))
    done = len(load_labels(rec["run_dir"]))  # the endpoint test may have labelled one already
    browser.find_element(By.ID, "same").click()
    wait.until(lambda d: d.find_element(By.ID, "status").text.startswith(f"{done + 1} / "))
    assert load_labels(rec["run_dir"])[first]["label"] == "same"
