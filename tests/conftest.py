"""Shared fixtures. Tests run on one torch thread (see results/threads.md for why)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
# Tests never download weights (Inception, LPIPS backbones); subprocesses inherit this. Tests of
# the download path remove it with monkeypatch.
os.environ.setdefault("MI_BENCH_OFFLINE", "1")
# A metric that fails raises under pytest instead of being recorded as "failed" (subprocesses
# inherit it): a programming error on the metric path cannot pass as a failed column. Tests of
# the recorded-failure path remove it with monkeypatch.
os.environ.setdefault("MI_BENCH_STRICT_METRICS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MI_BENCH_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_mnist_or_skip() -> Path:
    if not (SHARED_DATA / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        pytest.skip(f"MNIST not found at {SHARED_DATA}/MNIST/raw (needs ../shared/data beside the repo)")
    return SHARED_DATA


@pytest.fixture
def to_host_reads(monkeypatch) -> dict[str, int]:
    """``{"n": calls of mi_bench.runtime.to_host}`` (mi-bench's device-to-host reads) while the
    test runs."""
    from mi_bench import runtime

    counter = {"n": 0}
    orig = runtime.to_host

    def to_host(t):
        counter["n"] += 1
        return orig(t)

    monkeypatch.setattr(runtime, "to_host", to_host)
    return counter


def pytest_collection_modifyitems(config, items):
    """``gpu``-marked tests need CUDA: skipped, with the reason, where torch sees none."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (gpu marker); torch.cuda.is_available() is False")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture()
def env(tmp_path, monkeypatch):
    """A test's own artifact cache and working directory (results land under tmp_path)."""
    monkeypatch.setenv("MI_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return shared_mnist_or_skip()


@dataclass
class World:
    splits: object
    target: torch.nn.Module
    evaluator: torch.nn.Module


@pytest.fixture(scope="session")
def digits_world() -> World:
    """The digits dataset (disjoint_samples), an undefended MCNN target and a 10-class SCNN
    evaluator, trained once per session (~20 s on one thread)."""
    from mi_bench.data import DatasetConfig, load_splits
    from mi_bench.models import build_model
    from mi_bench.train import TrainConfig, train_classifier

    splits = load_splits(DatasetConfig(), REPO)
    target = train_classifier(
        lambda: build_model("mcnn", num_classes=5, in_channels=1, width=1.0),
        splits.private_train, splits.private_val, TrainConfig(epochs=15), seed=0,
    ).model
    evaluator = train_classifier(
        lambda: build_model("scnn", num_classes=10, in_channels=1, width=1.0),
        splits.eval_train, splits.eval_val, TrainConfig(model="scnn", epochs=10, seed_offset=1),
        seed=0,
    ).model
    for p in [*target.parameters(), *evaluator.parameters()]:
        p.requires_grad_(False)
    return World(splits=splits, target=target.eval(), evaluator=evaluator.eval())


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """One `preset=smoke` GMI run on digits through the pipeline (its own cache, database and
    run folder): the record, with reconstructions saved in ``record["run_dir"]`` (~15 s)."""
    from mi_bench.config import compose
    from mi_bench.pipeline import run

    root = tmp_path_factory.mktemp("smoke_run")
    cfg = compose(["preset=smoke", f"cache_dir={root / 'cache'}", f"results_db={root / 'r.sqlite'}",
                   f"results_dir={root / 'runs'}", f"data_root={root / 'data'}"])
    return run(cfg)


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    """A headless Chromium driven by Selenium (Debian's chromium and chromium-driver), with a
    fresh profile and no network side channels (``mi_bench.results.report.headless_chromium``); its
    console messages are kept (``browser.get_log("browser")``). Skipped, with the reason, when
    the binaries or selenium are missing. Reusable by any test that needs to drive a real page."""
    from mi_bench.results.report import headless_chromium

    try:
        driver = headless_chromium(tmp_path_factory.mktemp("chromium-profile"))
    except RuntimeError as exc:
        pytest.skip(str(exc))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
