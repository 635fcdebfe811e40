"""Calibration baselines: both run end to end on digits, `random` reuses GMI's cached prior (never
a second identical GAN), presets follow GMI's, they behave as specified, and the leaderboard
computes margins over them."""

import json

import pytest
import torch
from click.testing import CliRunner

from mi_bench.cli import cli
from mi_bench.config import compose
from mi_bench.params import prior_fields
from mi_bench.registry import ATTACKS
from mi_bench.runtime import NULL_BARS


def _run(*args):
    r = CliRunner().invoke(cli, ["run", "preset=smoke", "--json", "--quiet", *args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


@pytest.mark.slow  # an end-to-end smoke run (10-40 s): the slow lane
def test_baselines_run_end_to_end_and_share_gmis_prior(tmp_path, monkeypatch):
    monkeypatch.setenv("MI_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    rnd = _run("attack=random")  # cold: trains GMI's prior, under GMI's key
    assert "prior" in rnd["trained"]
    gmi = _run("attack=gmi")
    assert gmi["trained"] == []  # the same GAN: no second training
    assert gmi["artifacts"]["prior"]["key"] == rnd["artifacts"]["prior"]["key"]
    assert gmi["artifacts"]["prior"]["sha256"] == rnd["artifacts"]["prior"]["sha256"]
    assert (tmp_path / "cache" / "prior-gmi").is_dir() and not (tmp_path / "cache" / "prior-random").exists()
    pix = _run("attack=pixel")
    assert pix["trained"] == ["prior"] and pix["artifacts"]["prior"]["key"] != gmi["artifacts"]["prior"]["key"]
    for rec, name in ((rnd, "random"), (pix, "pixel")):
        m = rec["metrics"]
        assert rec["config"]["attack"]["name"] == name
        assert m["n_reconstructions"] == 5 * rec["config"]["attack"]["samples_per_class"]
        assert set(m["judges"]) == {"eval", "resnet", "robust"} and m["consensus_acc"] is not None
        assert rec["protocol"]["inversion"]["attack"] == name
    # the leaderboard's margins: gmi against both baselines on the same target, every judge
    from mi_bench.results import ResultStore, baseline_margins, render, leaderboard
    records = ResultStore("results/mi_bench.sqlite").records()
    margins = baseline_margins(records)
    assert [e["attack"] for e in margins] == ["gmi"]
    e = margins[0]
    for base, other in (("random", rnd), ("pixel", pix)):
        for j in ("eval", "resnet", "robust"):
            want = gmi["metrics"]["judges"][j]["acc"] - other["metrics"]["judges"][j]["acc"]
            assert e["margins"][base][j]["margin"] == pytest.approx(want)
            lo, hi = e["margins"][base][j]["ci"]
            assert lo <= want <= hi
    # gmi beats pixel under the robust judge exactly when that margin's interval is above zero
    robust = e["margins"]["pixel"]["robust"]
    assert e["beats_pixel_robust"] is (robust["ci"][0] > 0)
    assert e["flag"] == ("" if e["beats_pixel_robust"] else "does not beat pixel under the robust judge")
    assert "Margins over calibration baselines" in render(leaderboard(records), "markdown", margins)


@pytest.mark.parametrize("dataset", ["digits", "mnist", "lfw"])
@pytest.mark.parametrize("preset", ["smoke", "quick", "cpu", "paper"])
def test_baseline_presets_follow_gmi(preset, dataset):
    # per dataset too: gmi.yaml's `datasets.mnist.presets.quick` (2 critic steps, 1,500 G steps)
    # once left `random` on the 300-step prior, a weaker baseline than GMI's own samples
    gmi = compose([f"dataset={dataset}", "attack=gmi", f"preset={preset}"]).attack
    rnd = compose([f"dataset={dataset}", "attack=random", f"preset={preset}"]).attack
    pix = compose([f"dataset={dataset}", "attack=pixel", f"preset={preset}"]).attack
    assert prior_fields(rnd) == prior_fields(gmi)  # hence the same prior cache key
    assert pix.iterations == gmi.iterations  # the same iteration budget
    assert rnd.samples_per_class == pix.samples_per_class == gmi.samples_per_class
    assert ATTACKS.get("random").prior_name == "gmi"
    assert ATTACKS.get("random").prior_version == ATTACKS.get("gmi").prior_version
    # a user override of a prior field still applies (and would give another key)
    assert compose(["attack=random", f"preset={preset}", "attack.gan_width=12"]).attack.gan_width == 12


def test_random_keeps_the_candidate_the_target_prefers(digits_world):
    w = digits_world
    cfg = compose(["attack=random", "preset=smoke", "attack.n_candidates=64"]).attack
    atk = ATTACKS.get("random")(cfg, image_shape=(1, 32, 32), num_classes=5, device=torch.device("cpu"))
    prior = atk.train_prior(w.splits.public[0][:256], None, seed=0, progress=NULL_BARS)
    inv = atk.invert(w.target, prior, [0, 3], seed=0, progress=NULL_BARS)
    assert inv.images.shape == (2, cfg.samples_per_class, 1, 32, 32)
    from mi_bench.attacks.common import DCGANGenerator, load_prefixed
    gen = load_prefixed("G", DCGANGenerator((1, 32, 32), cfg.latent_dim, cfg.gan_width), prior).eval()
    with torch.no_grad():
        pool = w.target(gen(torch.randn(256, cfg.latent_dim)))
        kept = w.target(inv.images.flatten(0, 1))
    for i, y in enumerate([0, 3]):
        chosen = kept[i * cfg.samples_per_class:(i + 1) * cfg.samples_per_class, y]
        assert (chosen > pool[:, y].quantile(0.9)).all()  # best of 64 beats 90% of random draws


def test_pixel_inversion_fools_the_target_from_public_images(digits_world):
    w = digits_world
    cfg = compose(["attack=pixel", "preset=smoke", "attack.iterations=40", "attack.samples_per_class=4"]).attack
    atk = ATTACKS.get("pixel")(cfg, image_shape=(1, 32, 32), num_classes=5, device=torch.device("cpu"))
    prior = atk.train_prior(w.splits.public[0], None, seed=0, progress=NULL_BARS)
    assert prior["public"].shape == (cfg.pool_size, 1, 32, 32)
    inv = atk.invert(w.target, prior, list(range(5)), seed=0, progress=NULL_BARS)
    assert inv.images.min() >= 0 and inv.images.max() <= 1
    with torch.no_grad():
        pred = w.target(inv.images.flatten(0, 1)).argmax(1).view(5, 4)
    assert (pred == torch.arange(5)[:, None]).float().mean() >= 0.9
    # every sample starts from a public image of the pool (one tiny step: still that image)
    atk.cfg = compose(["attack=pixel", "preset=smoke", "attack.iterations=1", "attack.lr=0.0001"]).attack
    start = atk.invert(w.target, prior, list(range(5)), seed=0, progress=NULL_BARS)
    dist = torch.cdist(start.images.flatten(0, 1).flatten(1), prior["public"].flatten(1)).min(1).values
    assert (dist < 0.05).all()
