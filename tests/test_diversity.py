"""Per-class diversity: a class recovered as one repeated image is flagged; real images are not;
the perceptual-distance hook reports what is unavailable."""

import pytest
import torch

from mi_bench import diversity as div


def _setup(digits_world):
    s = digits_world.splits
    x, y = s.private_train
    real = [x[y == c] for c in range(5)]
    recon = torch.stack([real[c][-20:] for c in range(5)])  # 20 real images per class
    recon[2] = real[2][0].expand(20, -1, -1, -1)  # class 2: one image repeated
    recon[3] = real[3][0] + 0.01 * torch.randn(20, *real[3][0].shape)  # class 3: near-copies
    embed = lambda imgs: digits_world.evaluator.embed(imgs).detach()  # noqa: E731
    return recon.clamp(0, 1), real, embed


def test_repeated_image_is_flagged_and_real_images_are_not(digits_world):
    recon, real, embed = _setup(digits_world)
    report, absent = div.diversity(recon, list(range(5)), real, embed, judge="eval", collapse_ratio=0.25)
    per = report["diversity"]["per_class"]
    assert report["diversity"]["collapsed_classes"] == [2, 3] and report["collapsed_classes"] == 2
    assert per[2]["recon"] == pytest.approx(0.0, abs=1e-4) and per[2]["pixel_recon"] == pytest.approx(0.0, abs=1e-6)
    for c in (0, 1, 4):
        assert 0.5 < per[c]["ratio"] < 2.0 and not per[c]["collapsed"]
    assert "0.25" in report["diversity"]["rule"]
    assert "diversity_lpips" in absent  # nothing registered in this process


def test_mean_pairwise_excludes_the_diagonal():
    x = torch.tensor([[0.0], [3.0], [4.0]])
    assert div.mean_pairwise_l2(x) == pytest.approx((3 + 4 + 1) / 3)
    with pytest.raises(ValueError, match="at least 2"):
        div.mean_pairwise_l2(x[:1])


def test_registered_perceptual_distance_is_reported_or_absent(digits_world, monkeypatch):
    recon, real, embed = _setup(digits_world)
    monkeypatch.setattr(div, "PAIRWISE", {})
    div.register_pairwise("l1", lambda imgs: torch.cdist(imgs.flatten(1), imgs.flatten(1), p=1))
    report, absent = div.diversity(recon, list(range(5)), real, embed, judge="eval", collapse_ratio=0.25)
    assert report["diversity"]["per_class"][2]["l1_recon"] == pytest.approx(0.0)
    assert report["diversity"]["per_class"][0]["l1_real"] > 0 and "diversity_lpips" not in absent

    def missing(imgs):
        raise div.DistanceUnavailable("LPIPS weights not on disk")

    div.register_pairwise("lpips", missing)
    _, absent = div.diversity(recon, list(range(5)), real, embed, judge="eval", collapse_ratio=0.25)
    assert absent == {"diversity_lpips": "LPIPS weights not on disk"}
