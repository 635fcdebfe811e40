"""FID / KID / LPIPS (mi_bench.perceptual): the estimators, the weights handling (offline ->
absent with a reason, never 0; failed download -> absent; corrupt weights -> error), and the
metrics computed from weights files placed where pytorch-fid and torchvision look.

The weights used here are randomly initialised networks of the right architecture saved under
the real file names in a temporary TORCH_HOME: enough to exercise every code path, not to give
meaningful FID/LPIPS values."""

from __future__ import annotations

import math
import shutil
from urllib.error import URLError

import numpy as np
import pytest
import torch

from mi_bench import perceptual as P
from mi_bench.config import EvalConfig
from mi_bench.metrics import score_perceptual


# -- FID ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("n,m,d", [(50, 80, 8), (300, 200, 16), (10, 300, 64), (100, 10, 64)])
def test_frechet_equals_pytorch_fids_calculate_frechet_distance(n, m, d):
    from pytorch_fid.fid_score import calculate_frechet_distance

    rng = np.random.default_rng(n + m + d)
    a, b = rng.normal(size=(n, d)), rng.normal(size=(m, d)) * 1.3 + 0.2
    ref = calculate_frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert P.frechet(a, b) == pytest.approx(ref, rel=1e-6)
    assert P.frechet(a, a) == pytest.approx(0, abs=1e-8)


# -- KID ----------------------------------------------------------------------------------------

def naive_mmd2(x, y):
    d = x.shape[1]
    k = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


def test_kid_is_the_unbiased_polynomial_mmd_with_a_jackknife_error():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 4)), rng.normal(size=(9, 4)) + 0.3
    value, se = P.kid(x, y)
    assert value == pytest.approx(naive_mmd2(x, y), rel=1e-10)
    # the jackknife, spelled out: leave each point out, recompute, combine
    lo_x = [naive_mmd2(np.delete(x, i, 0), y) for i in range(6)]
    lo_y = [naive_mmd2(x, np.delete(y, j, 0)) for j in range(9)]
    var = 5 / 6 * np.sum((np.array(lo_x) - np.mean(lo_x)) ** 2) + 8 / 9 * np.sum((np.array(lo_y) - np.mean(lo_y)) ** 2)
    assert se == pytest.approx(math.sqrt(var), rel=1e-8)
    with pytest.raises(ValueError, match="at least 2"):
        P.kid(x[:1], y)
    two = P.kid(x[:2], y)  # an estimate, but too few to jackknife
    assert two[0] == pytest.approx(naive_mmd2(x[:2], y)) and math.isnan(two[1])


def test_kid_is_unbiased_near_zero_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(1)
    same = [P.kid(rng.normal(size=(25, 16)), rng.normal(size=(300, 16))) for _ in range(200)]
    vals, ses = np.array([v for v, _ in same]), np.array([s for _, s in same])
    # unbiased: the mean over 200 draws is 0 within 3 standard errors of that mean
    assert abs(vals.mean()) < 3 * vals.std() / math.sqrt(len(vals))
    # each draw's own SE covers 0 (the jackknife is conservative under the null)
    assert np.mean(np.abs(vals) < 2 * ses) > 0.9
    assert 0.7 < ses.mean() / vals.std() < 2.0
    # a different distribution: clearly positive, several SEs away from 0
    v, s = P.kid(rng.normal(size=(25, 16)), rng.normal(size=(300, 16)) + 0.5)
    assert v > 4 * s > 0


def test_kid_of_a_class_stratified_sample_is_unbiased_with_its_groups():
    """Reconstructions come k per class: the grouped estimator stays unbiased, the plain one
    is biased low (too few same-class pairs)."""
    rng = np.random.default_rng(4)
    classes, d, k = 5, 8, 5
    means = rng.normal(size=(classes, d)) * 1.5
    groups = np.repeat(np.arange(classes), k)
    grouped, plain = [], []
    for _ in range(200):
        x = means[groups] + rng.normal(size=(classes * k, d))
        y = means[rng.integers(0, classes, 300)] + rng.normal(size=(300, d))
        grouped.append(P.kid(x, y, x_groups=groups)[0])
        plain.append(P.kid(x, y)[0])
    grouped, plain = np.array(grouped), np.array(plain)
    assert abs(grouped.mean()) < 3 * grouped.std() / math.sqrt(len(grouped))
    assert plain.mean() < -5 * plain.std() / math.sqrt(len(plain))


def test_grouped_kid_and_jackknife_match_a_direct_computation():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(11, 4)), rng.normal(size=(7, 4)) + 0.2
    g = np.array([0] * 4 + [1] * 3 + [2] * 4)
    pi = np.bincount(g) / len(g)
    kern = lambda a, b: (a @ b.T / a.shape[1] + 1) ** 3  # noqa: E731

    def est(x, g, y):
        t = 0.0
        for a in range(3):
            for b in range(3):
                k = kern(x[g == a], x[g == b])
                t += pi[a] * pi[b] * ((k.sum() - np.trace(k)) / (len(k) * (len(k) - 1)) if a == b else k.mean())
            t -= 2 * pi[a] * kern(x[g == a], y).mean()
        ky = kern(y, y)
        return t + (ky.sum() - np.trace(ky)) / (len(y) * (len(y) - 1))
    value, se = P.kid(x, y, x_groups=g)
    assert value == pytest.approx(est(x, g, y), rel=1e-10)
    var = 0.0
    for c in range(3):
        t = np.array([est(np.delete(x, i, 0), np.delete(g, i), y) for i in np.nonzero(g == c)[0]])
        var += (len(t) - 1) / len(t) * ((t - t.mean()) ** 2).sum()
    t = np.array([est(x, g, np.delete(y, j, 0)) for j in range(7)])
    var += 6 / 7 * ((t - t.mean()) ** 2).sum()
    assert se == pytest.approx(math.sqrt(var), rel=1e-8)
    assert math.isnan(P.kid(x, y, x_groups=[0] * 9 + [1] * 2)[1])


def test_kid_subsets_average_when_a_set_is_larger_than_the_subset_size():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(20, 8)), rng.normal(size=(200, 8)) + 0.4
    full, _ = P.kid(x, y)
    sub, sub_se = P.kid(x, y, subsets=50, subset_size=60, seed=3)
    assert sub != full and sub == pytest.approx(full, rel=0.25) and sub_se > 0
    assert P.kid(x, y, subsets=50, subset_size=60, seed=3) == (sub, sub_se)  # seeded
    # a stratified x larger than the subset size is subsampled within its groups
    g = np.repeat([0, 1], 10)
    grouped, _ = P.kid(x, y, x_groups=g, subsets=20, subset_size=12, seed=3)
    assert grouped == pytest.approx(P.kid(x, y, x_groups=g)[0], rel=0.25)


# -- weights files in a temporary torch hub ------------------------------------------------------

@pytest.fixture(scope="session")
def fake_hub(tmp_path_factory):
    """A TORCH_HOME holding randomly initialised FID-Inception and AlexNet weights."""
    import torchvision
    from pytorch_fid import inception as I

    home = tmp_path_factory.mktemp("torch_home")
    ckpt = home / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.manual_seed(0)
    # pytorch-fid's FID Inception architecture (fid_inception_v3 without its weight download)
    net = I._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b, net.Mixed_5c = I.FIDInceptionA(192, pool_features=32), I.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = I.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = I.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c, net.Mixed_6d = I.FIDInceptionC(768, channels_7x7=160), I.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = I.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b, net.Mixed_7c = I.FIDInceptionE_1(1280), I.FIDInceptionE_2(2048)
    for mod in net.modules():  # keep activations O(1) through 90 random layers
        if isinstance(mod, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(mod.weight)
    torch.save(net.state_dict(), ckpt / P.inception_weights().file)
    torch.save(torchvision.models.alexnet().state_dict(), ckpt / P.lpips_backbone_weights("alex").file)
    return home


@pytest.fixture()
def empty_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home" / "hub" / "checkpoints"


def _digits(n, seed=0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, 32, 32)
    x[:, :, 8:24, 13:19] = 0.8  # a vertical bar with noise: a crude "1"
    return (x + 0.1 * torch.rand(n, 1, 32, 32, generator=g) + shift).clamp(0, 1)


def _score(recon, real, options=None, inception=True):
    y = torch.zeros(len(real), dtype=torch.long)
    ev = lambda x: x.flatten(1)[:, ::64].contiguous()  # noqa: E731 - 16-d stand-in for E's features
    return score_perceptual(recon, torch.zeros(len(recon), dtype=torch.long), ev(recon), ev(real),
                              (real, y), options=options, inception=inception)


INC = ("fid_inception", "kid_inception", "kid_inception_se")


def test_offline_without_weights_gives_none_with_file_and_folder_never_zero(empty_hub, monkeypatch):
    monkeypatch.setenv("MI_BENCH_OFFLINE", "1")
    called = []
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: called.append(a))
    s = _score(_digits(6), _digits(8, seed=1))
    assert not called
    for k in (*INC, "lpips_nn"):
        assert s.values[k] is None and k in s.absent and k not in s.errors
    assert "MI_BENCH_OFFLINE=1" in s.absent["fid_inception"]
    assert P.inception_weights().file in s.absent["fid_inception"]
    assert str(empty_hub) in s.absent["fid_inception"]
    assert "alexnet-owt-7be5be79.pth" in s.absent["lpips_nn"] and str(empty_hub) in s.absent["lpips_nn"]
    # evaluator-feature FID and KID need no weights
    assert math.isfinite(s.values["fid_eval"]) and math.isfinite(s.values["kid_eval"])
    assert s.values["kid_eval_se"] > 0 and not s.errors


def test_kid_se_with_two_reconstructions_per_class_is_none_with_a_reason():
    recon, real = _digits(4), _digits(8, seed=1)
    ev = lambda x: x.flatten(1)[:, ::64].contiguous()  # noqa: E731
    s = score_perceptual(recon, torch.tensor([0, 0, 1, 1]), ev(recon), ev(real),
                           (real, torch.tensor([0, 1] * 4)), options=EvalConfig(fid_inception=False, lpips=False))
    assert math.isfinite(s.values["kid_eval"]) and s.values["kid_eval_se"] is None
    assert "at least 3 reconstructions per class" in s.absent["kid_eval_se"] and not s.errors


def test_config_forbids_downloads_and_can_disable_metrics(empty_hub, monkeypatch):
    monkeypatch.delenv("MI_BENCH_OFFLINE", raising=False)
    called = []
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: called.append(a))
    s = _score(_digits(6), _digits(8, seed=1), options=EvalConfig(download=False))
    assert not called and "eval.download=false" in s.absent["fid_inception"]
    s = _score(_digits(6), _digits(8, seed=1), options=EvalConfig(fid_inception=False, lpips=False))
    assert not called and s.absent["kid_inception"].startswith("disabled") and s.absent["lpips_nn"].startswith("disabled")


def test_failed_download_is_absent_and_tries_pytorch_fids_url_into_the_hub_cache(empty_hub, monkeypatch):
    from pytorch_fid.inception import FID_WEIGHTS_URL

    monkeypatch.delenv("MI_BENCH_OFFLINE", raising=False)
    calls = []

    def no_network(url, dst, hash_prefix=None, progress=True):
        calls.append((url, dst, hash_prefix, progress))
        raise URLError("[Errno -2] Name or service not known")
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    s = _score(_digits(6), _digits(8, seed=1))
    assert calls[0] == (FID_WEIGHTS_URL, str(empty_hub / P.inception_weights().file), None, True)
    assert calls[1][0].endswith("alexnet-owt-7be5be79.pth") and calls[1][2] == "7be5be79"
    for k in (*INC, "lpips_nn"):
        assert s.values[k] is None and "download failed" in s.absent[k] and k not in s.errors
    assert str(empty_hub) in s.absent["fid_inception"]


def test_downloaded_weights_are_used_and_corrupt_ones_are_an_error(fake_hub, empty_hub, monkeypatch):
    monkeypatch.delenv("MI_BENCH_OFFLINE", raising=False)
    src = fake_hub / "hub" / "checkpoints"

    def fake_download(url, dst, hash_prefix=None, progress=True):
        name = url.rsplit("/", 1)[-1]
        if name.startswith("alexnet"):
            shutil.copy(src / name, dst)
        else:  # a truncated Inception file: loading it is a real failure, not "absent"
            with open(dst, "wb") as f:
                f.write(b"not a checkpoint")
    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    # under MI_BENCH_STRICT_METRICS (the test suite's default) the failure is raised ...
    with pytest.raises(Exception, match="load key|checkpoint|pickle"):
        _score(_digits(4), _digits(6, seed=1))
    # ... and without it recorded as failed (not absent), the other metrics kept
    monkeypatch.delenv("MI_BENCH_STRICT_METRICS", raising=False)
    s = _score(_digits(4), _digits(6, seed=1))
    assert s.values["lpips_nn"] is not None and s.weights["lpips"]["net"] == "alex"
    assert (empty_hub / "alexnet-owt-7be5be79.pth").is_file()
    for k in INC:
        assert s.values[k] is None and k in s.errors and k not in s.absent


def test_inception_fid_and_kid_from_weights_on_disk_with_cached_private_features(fake_hub, monkeypatch, tmp_path):
    from mi_bench.artifacts import ArtifactStore

    monkeypatch.setenv("TORCH_HOME", str(fake_hub))
    model, path = P.inception_model()
    assert model.resize_input and model.normalize_input  # pytorch-fid: 299x299 bilinear, [0,1] -> [-1,1]
    gray = _digits(2)
    assert np.allclose(P.inception_features(model, gray), P.inception_features(model, gray.repeat(1, 3, 1, 1)))
    recon, real = _digits(5), torch.cat([_digits(3, seed=1), torch.rand(3, 1, 32, 32)])
    y = torch.zeros(len(real), dtype=torch.long)
    ev = lambda x: x.flatten(1)[:, ::64].contiguous()  # noqa: E731 - 16-d stand-in for E's features
    store = ArtifactStore(tmp_path / "cache")
    runs = [score_perceptual(recon, torch.zeros(len(recon), dtype=torch.long), ev(recon), ev(real), (real, y),
                               options=EvalConfig(lpips=False), store=store) for _ in range(2)]
    s = runs[0]
    for k in INC:
        assert s.values[k] is not None and math.isfinite(s.values[k]), (k, s.errors)
    assert s.values["fid_inception"] > 0 and s.values["kid_inception_se"] > 0
    assert s.weights["inception"]["file"] == P.inception_weights().file
    assert len(s.weights["inception"]["sha256"]) == 64 and not s.errors
    # the private set's Inception features were stored once and reused
    assert len(list((tmp_path / "cache" / "features-inception").iterdir())) == 1
    assert runs[1].values["kid_inception"] == pytest.approx(s.values["kid_inception"])


# -- LPIPS ---------------------------------------------------------------------------------------

@pytest.fixture()
def alex(fake_hub, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(fake_hub))
    return P.lpips_model("alex")[0]


def test_lpips_pairwise_matches_the_lpips_forward(alex):
    a, b = torch.rand(3, 1, 32, 32), torch.rand(4, 3, 32, 32)
    d = P.lpips_pairwise(alex, a, b, chunk=3)
    ref = torch.tensor([[float(alex(P.lpips_input(a[i:i + 1]), P.lpips_input(b[j:j + 1]))) for j in range(4)]
                        for i in range(3)])
    assert torch.allclose(d, ref, rtol=1e-4, atol=1e-6) and (ref > 0).all()
    assert P.lpips_input(a).shape == (3, 3, 64, 64)  # grayscale -> RGB, 32 px -> 64 px
    assert P.lpips_input(a).min() >= -1 and P.lpips_input(a).max() <= 1


def test_lpips_nn_orders_a_copied_private_image_below_noise(alex):
    real = torch.cat([_digits(5, seed=1), _digits(5, seed=2, shift=0.2)])
    real_y = torch.tensor([0] * 5 + [1] * 5)
    copy_of_private = real[[2, 7]]
    noise = torch.rand(2, 1, 32, 32)
    cls = torch.tensor([0, 1])
    d_copy = P.lpips_nn(alex, copy_of_private, cls, real, real_y, chunk=3)
    d_noise = P.lpips_nn(alex, noise, cls, real, real_y, chunk=3)
    assert (d_copy == 0).all() and (d_noise > 0).all()
    # only same-class images count: class 1's copy searched among class 0 is not 0
    assert (P.lpips_nn(alex, copy_of_private[1:], torch.tensor([0]), real, real_y) > 0).all()
    # pixel-L2 prefiltering still finds an exact copy
    assert (P.lpips_nn(alex, copy_of_private, cls, real, real_y, candidates=2) == 0).all()
    with pytest.raises(ValueError, match="no private training images of class 3"):
        P.lpips_nn(alex, noise[:1], torch.tensor([3]), real, real_y)


def test_mean_pairwise_lpips_is_zero_for_copies_and_positive_for_a_varied_set(alex):
    assert P.mean_pairwise_lpips(alex, _digits(1).repeat(4, 1, 1, 1)) < 1e-6
    assert P.mean_pairwise_lpips(alex, torch.rand(4, 1, 32, 32)) > 1e-3
    with pytest.raises(ValueError):
        P.mean_pairwise_lpips(alex, _digits(1))


def test_score_perceptual_lpips_nn_from_weights_on_disk(fake_hub, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(fake_hub))
    real = _digits(6, seed=1)
    s_copy = _score(real[:3], real, inception=False)
    s_noise = _score(torch.rand(3, 1, 32, 32), real, inception=False)
    assert s_copy.values["lpips_nn"] == 0.0 < s_noise.values["lpips_nn"]
    assert s_copy.weights["lpips"]["file"] == "alexnet-owt-7be5be79.pth"
