"""The prior-quality measure (mi_bench.prior_quality): KID of prior samples against held-out
public images in evaluator features, recorded with every run; n/a for attacks without a prior."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from rich.console import Console

from mi_bench import prior_quality as pqm
from mi_bench.cli import cli
from mi_bench.prior_quality import kid_subsets, prior_quality, reference_images

from test_perceptual import naive_mmd2

REPO = Path(__file__).resolve().parents[1]


# unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, pair by pair (Binkowski et al. 2018, eq. 3)
naive_kid = naive_mmd2


def test_kid_equals_an_independent_pairwise_implementation():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 6)), rng.normal(0.3, 1.2, size=(40, 6))
    kid, std, s = kid_subsets(x, y)
    assert s == 40 and std == 0.0  # both sets fit in one subset: one estimate
    assert kid == pytest.approx(naive_kid(x, y), rel=1e-10, abs=1e-12)
    # and the benchmark's other KID (jackknife version, mi_bench.perceptual), on one subset
    from mi_bench.perceptual import kid as kid_jackknife

    assert kid == pytest.approx(kid_jackknife(x, y)[0], rel=1e-10, abs=1e-12)


def test_subset_average_is_the_full_sample_estimate_in_expectation():
    """Averaged over random subsets, the subset U-statistics have the full sample's value as
    their expectation; the kernel-matrix path and the per-subset path agree draw for draw."""
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(60, 5)), rng.normal(0.4, 1.0, size=(90, 5))
    full = naive_kid(x, y)
    kid, std, s = kid_subsets(x, y, subsets=3000, subset_size=25, seed=3)
    assert s == 25 and std > 0
    assert abs(kid - full) < 4 * std / math.sqrt(3000)
    # GRAM_MAX = 0 forces a kernel evaluation per subset: the same draws, the same numbers
    a = kid_subsets(x, y, subsets=20, subset_size=25, seed=5)
    old = pqm.GRAM_MAX
    try:
        pqm.GRAM_MAX = 0
        b = kid_subsets(x, y, subsets=20, subset_size=25, seed=5)
    finally:
        pqm.GRAM_MAX = old
    assert a[0] == pytest.approx(b[0], rel=1e-9) and a[1] == pytest.approx(b[1], rel=1e-6)
    # subset size is min(n, m, 1000)
    assert kid_subsets(rng.normal(size=(30, 3)), rng.normal(size=(12, 3)), subsets=2)[2] == 12


def test_kid_is_about_zero_for_one_distribution_and_grows_with_a_mean_shift():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 16, generator=g)
    y = torch.randn(600, 16, generator=g)
    same = [kid_subsets(x, torch.randn(600, 16, generator=g))[0] for _ in range(8)]
    assert max(abs(v) for v in same) < 0.01
    shifted = [kid_subsets(x, y + shift)[0] for shift in (0.0, 0.25, 0.5, 1.0)]
    assert shifted[0] < 0.01
    assert all(a < b for a, b in zip(shifted, shifted[1:])), shifted
    assert shifted[-1] > 10 * max(abs(v) for v in same)


def test_kid_refuses_what_it_cannot_estimate():
    with pytest.raises(ValueError, match="at least 2"):
        kid_subsets(np.zeros((1, 4)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="feature"):
        kid_subsets(np.zeros((3, 4)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        kid_subsets(np.full((3, 4), np.nan), np.zeros((5, 4)))


# -- the real images --------------------------------------------------------------------------

def test_reference_is_held_out_public_images_in_the_public_class_shares():
    from mi_bench.data import DatasetConfig, load_splits

    splits = load_splits(DatasetConfig(), REPO)
    ref, against = reference_images(splits)
    public = {bytes(r) for r in (splits.public[0] * 255).round().to(torch.uint8).flatten(1).numpy()}
    assert len(ref) >= pqm.MIN_REFERENCE and against.startswith("held-out public images")
    assert not any(bytes(r) in public for r in (ref * 255).round().to(torch.uint8).flatten(1).numpy())


def test_reference_without_held_out_images_is_the_public_set_and_says_so():
    x = torch.rand(80, 1, 8, 8)
    y = torch.arange(80) % 4
    splits = SimpleNamespace(public=(x, y), eval_test=(x[:40].clone(), y[:40].clone()))
    ref, against = reference_images(splits)
    assert len(ref) == 80 and "the public set itself" in against and "training images" in against


# -- failures are failures, never 0 -----------------------------------------------------------

class _Evaluator(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(64, 8)

    def embed(self, x):
        return self.lin(x.flatten(1))


class _Attack:
    name = "fake"
    device = torch.device("cpu")
    image_shape = (1, 8, 8)

    def __init__(self, images):
        self.images = images

    def prior_samples(self, prior, n, *, generator):
        if self.images is None:
            return None
        return (self.images[:n], torch.arange(n) % 2) if self.conditional else self.images[:n]

    conditional = False


def _fake_splits():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(200, 1, 8, 8, generator=g)
    y = torch.arange(200) % 2
    return SimpleNamespace(public=(x[:100], y[:100]), eval_test=(x[100:], y[100:]), image_shape=(1, 8, 8),
                           private_train=(torch.rand(40, 1, 8, 8, generator=g), torch.arange(40) % 2))


def test_a_conditional_prior_gets_its_per_class_diversity():
    """One image repeated per class: collapsed (ratio 0); distinct samples: not."""
    attack = _Attack(torch.rand(60, 1, 8, 8))
    attack.conditional = True
    pq, grid = prior_quality(attack, {}, _Evaluator(), _fake_splits(), n=60, seed=0)
    assert pq["diversity_ratio"] > 0.25 and pq["collapsed"] == [] and math.isfinite(pq["kid"])
    assert pqm.describe_diversity(pq)[0] == f"{pq['diversity_ratio']:.2f} x real"
    assert grid.shape == (16, 1, 8, 8)  # one row of 8 per class
    same = torch.rand(2, 1, 8, 8).repeat(30, 1, 1, 1)  # class c (i mod 2) is always image c
    attack = _Attack(same)
    attack.conditional = True
    pq, _ = prior_quality(attack, {}, _Evaluator(), _fake_splits(), n=60, seed=0)
    # identical images: a distance of 0 up to float rounding of the features' distances
    assert pq["diversity_ratio"] == pytest.approx(0, abs=1e-6)
    assert pq["collapsed"] == [0, 1] and pq["collapsed_classes"] == 2
    assert "COLLAPSED classes: [0, 1]" in pqm.describe_diversity(pq)[1]


def test_prior_quality_of_a_prior_and_of_no_prior():
    torch.manual_seed(0)
    pq, samples = prior_quality(_Attack(torch.rand(60, 1, 8, 8)), {"G.w": torch.zeros(1)}, _Evaluator(),
                                _fake_splits(), n=60, seed=0)
    assert math.isfinite(pq["kid"]) and pq["kid_std"] >= 0 and pq["n"] == 60 and samples.shape == (60, 1, 8, 8)
    assert pq["features"] == "evaluator" and pq["n_reference"] == 100 and "held-out" in pq["against"]
    pq, samples = prior_quality(_Attack(None), {}, _Evaluator(), _fake_splits(), n=60, seed=0)
    assert pq["kid"] is None and "not applicable" in pq["absent"] and samples is None
    assert pqm.describe(pq)[0] == "n/a"


def test_a_failing_prior_kid_is_failed_with_its_reason(monkeypatch):
    bad = torch.full((60, 1, 8, 8), float("nan"))
    with pytest.raises(ValueError, match="non-finite"):  # strict under pytest
        prior_quality(_Attack(bad), {}, _Evaluator(), _fake_splits(), n=60, seed=0)
    monkeypatch.delenv("MI_BENCH_STRICT_METRICS", raising=False)
    pq, _ = prior_quality(_Attack(bad), {}, _Evaluator(), _fake_splits(), n=60, seed=0)
    assert pq["kid"] is None and pq["kid_std"] is None and "non-finite" in pq["error"]
    assert pqm.describe(pq) == ("failed", pq["error"])
    pq, _ = prior_quality(_Attack(torch.rand(5, 1, 8, 8)), {}, _Evaluator(), _fake_splits(), n=60, seed=0)
    assert pq["kid"] is None and "expected (60, 1, 8, 8)" in pq["error"]


# -- through the pipeline ---------------------------------------------------------------------

def run_json(*args):
    r = CliRunner().invoke(cli, ["run", *args, "--json", "--quiet"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def table_text(rec) -> str:
    from mi_bench.tables import run_table

    console = Console(record=True, width=250)
    console.print(run_table(rec))
    return console.export_text()


@pytest.mark.slow  # an end-to-end smoke run (10-40 s): the slow lane
def test_smoke_runs_record_the_prior_kid_and_pixel_records_not_applicable(env):
    from mi_bench.config import config_hash

    rec = run_json("preset=smoke", "dataset=digits", "attack=gmi")
    pq = rec["protocol"]["prior_quality"]
    assert pq["kid"] is not None and math.isfinite(pq["kid"]) and pq["kid"] != 0
    assert pq["kid_std"] is not None and pq["kid_std"] >= 0 and pq["kid_se"] > 0
    assert pq["n"] == 1000 and pq["features"] == "evaluator" and pq["against"].startswith("held-out public")
    assert os.path.isfile(pq["grid"]) and os.path.dirname(pq["grid"]) == rec["run_dir"]
    assert "prior_quality" in rec["stage_seconds"]
    text = table_text(rec)
    assert "prior KID (eval feats)" in text and f"{pq['kid']:.3g}" in text
    # a measurement only: the config hash is the one without the setting, the artifacts are cached
    cfg = json.loads(json.dumps(rec["config"]))
    cfg["eval"].pop("prior_kid_samples")
    assert config_hash(cfg) == rec["config_hash"]
    off = run_json("preset=smoke", "dataset=digits", "attack=gmi", "eval.prior_kid_samples=0")
    assert off["trained"] == [] and off["metrics"]["attack_acc"] == rec["metrics"]["attack_acc"]
    assert off["metrics"]["evaluator_predictions"] == rec["metrics"]["evaluator_predictions"]
    assert off["artifacts"]["prior"]["key"] == rec["artifacts"]["prior"]["key"]
    assert off["protocol"]["prior_quality"]["kid"] is None and "disabled" in off["protocol"]["prior_quality"]["absent"]
    # random shares GMI's prior: the same samples, the same KID
    rnd = run_json("preset=smoke", "dataset=digits", "attack=random")
    assert rnd["protocol"]["prior_quality"]["kid"] == pytest.approx(pq["kid"], rel=1e-9)
    # the pixel baseline has no generative prior: n/a with the reason, never 0
    pix = run_json("preset=smoke", "dataset=digits", "attack=pixel")
    ppq = pix["protocol"]["prior_quality"]
    assert ppq["kid"] is None and ppq["kid_std"] is None and "not applicable" in ppq["absent"]
    text = table_text(pix)
    (line,) = [ln for ln in text.splitlines() if "prior KID (eval feats)" in ln]
    assert "n/a" in line and "not applicable" in line
    # the report shows each section's prior: its KID and grid; n/a for pixel
    path = env / "r.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in (rec, pix)))
    r = CliRunner().invoke(cli, ["report", "--records", str(path), "-o", str(env / "r.html")])
    assert r.exit_code == 0, r.output
    page = (env / "r.html").read_text()
    priors = page.split("<h3>Priors: KID of their samples against held-out public images</h3>")[1:]
    assert len(priors) == 2
    gmi_part, pixel_part = sorted(priors, key=lambda t: "not applicable" in t)
    assert f"{pq['kid']:.3g}" in gmi_part.split("</table>")[0] and 'src="data:image/png;base64,' in gmi_part
    assert "<td>n/a</td>" in pixel_part.split("</table>")[0]
    # a re-scoring keeps the prior's measurement (the prior is the old run's) and its grid
    r = CliRunner().invoke(cli, ["rescore", rec["run_dir"], "--json", "--quiet"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    (new,) = json.loads(r.stdout)
    npq = new["protocol"]["prior_quality"]
    assert npq["kid"] == pq["kid"] and os.path.isfile(npq["grid"]) and os.path.dirname(npq["grid"]) == new["run_dir"]


@pytest.mark.slow  # an end-to-end smoke run (10-40 s): the slow lane
@pytest.mark.parametrize("attack", ["kedmi", "plgmi"])
def test_per_target_priors_are_measured_too(env, attack):
    rec = run_json("preset=smoke", "dataset=digits", f"attack={attack}")
    pq = rec["protocol"]["prior_quality"]
    assert pq["kid"] is not None and math.isfinite(pq["kid"]) and pq["n"] == 1000
    assert os.path.isfile(pq["grid"])
    if attack == "plgmi":  # a conditional prior: its samples' diversity per class, as the table shows
        assert pq["diversity_ratio"] > 0 and set(pq["diversity_per_class"]) == {"0", "1", "2", "3", "4"}
        assert isinstance(pq["collapsed"], list) and pq["collapsed_classes"] == len(pq["collapsed"])
        (line,) = [ln for ln in table_text(rec).splitlines() if "prior diversity" in ln]
        assert f"{pq['diversity_ratio']:.2f} x real" in line
    else:
        assert "diversity_ratio" not in pq
