"""Judges: independence, the reject option, PGD, consensus arithmetic, config validation and
what a run records."""

import dataclasses

import pytest
import torch
from torch import nn

from mi_bench.config import compose
from mi_bench.errors import ConfigError
from mi_bench.judges import (
    JUNK_KINDS, NONE, Judge, JudgeRecipe, background_noise, health, junk_images, pgd, score_judges,
)
from mi_bench.models import build_model
from mi_bench.train import train_classifier


def test_judges_are_independent_by_construction():
    for preset in ("smoke", "quick", "paper"):
        cfg = compose([f"preset={preset}"])
        arch = {"eval": cfg.evaluator.model, "resnet": cfg.judge.resnet.model, "robust": cfg.judge.robust.model}
        seeds = {"eval": cfg.eval_seed, "resnet": cfg.judge.resnet.seed, "robust": cfg.judge.robust.seed}
        assert len({arch["eval"], arch["resnet"].rstrip("0123456789"), arch["robust"]}) == 3, arch
        assert cfg.target.model not in arch.values()
        assert len(set(seeds.values())) == 3 and cfg.seed not in seeds.values()
        assert cfg.judge.resnet.augment == "crop_affine" and cfg.judge.resnet.adversarial == "none"
        assert cfg.judge.robust.adversarial == "pgd_l2" and cfg.judge.robust.eps == 1.5
        assert cfg.judges == ["eval", "resnet", "robust"]


def test_a_run_records_each_judge_its_architecture_seed_and_training(smoke_run):
    judges = smoke_run["protocol"]["judges"]
    assert list(judges) == ["eval", "resnet", "robust"]
    assert len({j["architecture"] for j in judges.values()}) == 3
    assert len({j["seed"] for j in judges.values()}) == 3
    assert judges["resnet"]["augmentation"] == "crop_affine" and judges["eval"]["augmentation"] == "none"
    assert judges["robust"]["adversarial"].startswith("PGD l2 eps=1.5")
    assert judges["eval"]["adversarial"] == "none" == judges["resnet"]["adversarial"]
    assert all("'none' class" in j["reject"] for j in judges.values())
    assert len({j["key"] for j in judges.values()}) == 3
    for name, kind in (("eval", "evaluator"), ("resnet", "judge-resnet"), ("robust", "judge-robust")):
        assert smoke_run["artifacts"][kind]["key"] == judges[name]["key"]
        assert len(smoke_run["artifacts"][kind]["sha256"]) == 64
    for j in judges.values():  # health checks computed once after training, recorded each run
        assert {"test_acc", "reject_rate_real", "reject_rate_junk", "rejects_black", "rejects_white",
                "reject_rate_noisy_gaussian", "reject_rate_noisy_uniform", "noisy_checks"} <= set(j)
        assert j["background_noise"].startswith("0.5 of real training images")
    assert "robust_acc" in judges["robust"] and "robust_acc" not in judges["resnet"]
    m = smoke_run["metrics"]
    assert set(m["judges"]) == {"eval", "resnet", "robust"}
    assert m["judges"]["eval"]["acc"] == m["attack_acc"]  # attack_acc stays the eval judge
    assert m["attack_acc_resnet"] == m["judges"]["resnet"]["acc"]
    assert m["consensus_acc"] <= min(r["acc"] for r in m["judges"].values())
    for r in m["judges"].values():
        assert r["acc_ci"][0] <= r["acc"] <= r["acc_ci"][1]


class _Fixed(nn.Module):
    """A 'judge' whose logits are given per input index (the inputs carry their index)."""

    def __init__(self, preds, k):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.preds, self.k = preds, k

    def forward(self, x):
        idx = x.flatten(1)[:, 0].round().long()
        out = torch.zeros(len(x), self.k + 1)
        out[torch.arange(len(x)), torch.tensor(self.preds)[idx]] = 1.0
        return out


def test_consensus_and_rejection_arithmetic():
    # 2 classes x 3 samples; private classes 0, 1 are domain labels 3, 7; 'none' is output 10
    images = torch.arange(6, dtype=torch.float32).view(2, 3, 1, 1, 1).expand(2, 3, 1, 2, 2).clone()
    a = _Fixed([3, 3, 10, 7, 7, 2], 10)     # right, right, rejected | right, right, wrong
    b = _Fixed([3, 5, 3, 7, 7, 7], 10)      # right, wrong, right    | right, right, right
    judges = {"eval": Judge("eval", a, 10), "robust": Judge("robust", b, 10)}
    out = score_judges(judges, images, [0, 1], [3, 7])
    assert out["judges"]["eval"]["acc"] == pytest.approx(4 / 6)
    assert out["judges"]["eval"]["rejected"] == pytest.approx(1 / 6)
    assert out["judges"]["eval"]["predictions"] == [[3, 3, NONE], [7, 7, 2]]
    assert out["judges"]["robust"]["per_class"] == {0: pytest.approx(2 / 3), 1: 1.0}
    assert out["attack_acc_robust"] == pytest.approx(5 / 6) and "attack_acc_eval" not in out
    assert out["consensus_acc"] == pytest.approx(3 / 6)  # samples 0, 3, 4
    assert out["consensus_judges"] == ["eval", "robust"]
    lo, hi = out["consensus_acc_ci"]
    assert lo < 0.5 < hi


@pytest.mark.parametrize("tokens,needle", [
    (["judges=[eval,vit]"], "unknown judge(s) vit"),
    (["judges=[robust]"], "must include eval"),
    (["judges=[eval,eval]"], "names a judge twice"),
    (["judges=[eval]", "judge.diversity_judge=robust"], "judge.diversity_judge=robust is not among"),
    (["judge.robust.adversarial=fgsm"], "choose one of none, pgd_l2, pgd_linf"),
    (["judge.none_fraction=1.5"], "judge.none_fraction=1.5 is out of range"),
])
def test_judge_config_is_validated(tokens, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        compose(tokens)


def test_judges_can_be_chosen():
    assert compose(["judges=[eval,robust]"]).judges == ["eval", "robust"]


def test_junk_images_cover_every_kind_in_range():
    g = torch.Generator().manual_seed(0)
    real = torch.rand(8, 3, 16, 16)
    x = junk_images(400, (3, 16, 16), real=real, generator=g)
    assert x.shape == (400, 3, 16, 16) and x.min() >= 0 and x.max() <= 1
    flat = x.flatten(1)
    assert (flat.std(1) < 1e-6).sum() > 10  # constant images, black and white among them
    assert (flat.amax(1) == 0).any() and (flat.amin(1) == 1).any()
    assert (flat.std(1) > 0.2).sum() > 10  # noise
    again = junk_images(400, (3, 16, 16), real=real, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, again)
    assert "negative" in JUNK_KINDS and junk_images(5, (1, 8, 8)).shape == (5, 1, 8, 8)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_pgd_stays_in_the_ball_and_raises_the_loss(norm):
    torch.manual_seed(0)
    model = build_model("madrynet", num_classes=4, in_channels=1, width=0.25)
    x, y = torch.rand(16, 1, 32, 32), torch.randint(0, 4, (16,))
    eps = 1.0 if norm == "l2" else 0.05
    adv = pgd(model, x, y, norm=norm, eps=eps, steps=5)
    d = (adv - x).flatten(1)
    size = d.norm(dim=1) if norm == "l2" else d.abs().amax(1)
    assert (size <= eps + 1e-5).all() and adv.min() >= 0 and adv.max() <= 1
    ce = nn.functional.cross_entropy
    assert ce(model(adv), y) > ce(model(x), y)
    assert model.training  # mode restored
    assert all(p.grad is None for p in model.parameters())


def test_recipe_adds_labelled_junk_and_adversarial_examples():
    cfg = compose(["preset=smoke"]).judge.robust
    recipe = JudgeRecipe(cfg, num_classes=10, input_shape=(1, 32, 32), none_fraction=0.5)
    model = build_model(cfg.model, num_classes=11, in_channels=1, width=cfg.width)
    x, y = torch.rand(8, 1, 32, 32), torch.randint(0, 10, (8,))
    x2, y2 = recipe.prepare_batch(model, x, y)
    assert x2.shape == (12, 1, 32, 32) and (y2[8:] == 10).all() and torch.equal(y2[:8], y)
    assert (x2[:8] - x).flatten(1).norm(dim=1).max() <= cfg.eps + 1e-5
    assert not torch.equal(x2[:8], x)


def test_reject_option_rejects_blank_images_and_keeps_real_ones(digits_world):
    """A judge trained with the 'none' class rejects blank and near-constant images while
    accepting real test digits; the same network trained without it cannot say no."""
    s = digits_world.splits
    cfg = dataclasses.replace(compose(["preset=quick"]).judge.resnet, epochs=4, augment="none")

    def train(none_fraction):
        recipe = JudgeRecipe(cfg, num_classes=10, input_shape=s.image_shape, none_fraction=none_fraction)
        res = train_classifier(lambda: build_model("resnet8", num_classes=11, in_channels=1, width=0.5),
                               s.eval_train, s.eval_val, cfg, seed=7, defense=recipe)
        return Judge("t", res.model, 10, cfg)

    judge = train(0.25)
    blank = torch.stack([torch.zeros(1, 32, 32), torch.ones(1, 32, 32), torch.full((1, 32, 32), 0.5),
                         (torch.rand(1, 32, 32) * 0.03)])
    assert (judge.predict(blank) == NONE).all()
    h = health(judge, s.eval_test)
    assert h["rejects_black"] and h["rejects_white"]
    assert h["reject_rate_real"] <= 0.05 and h["reject_rate_junk"] >= 0.9
    plain = train(0.0)
    assert (plain.predict(blank) != NONE).all()
    # it still learned the digits (chance is 0.1): with torch 2.14.1 (2026-12-04) 0.838 after these
    # 4 epochs against the plain network's 0.933, so the reject class costs about 10 points this
    # early; the preset judges train longer (their health is in every record)
    assert h["test_acc"] >= 0.8 and h["test_acc"] >= health(plain, s.eval_test)["test_acc"] - 0.15


def test_background_noise_is_bounded_reproducible_and_of_every_kind():
    x = torch.zeros(300, 1, 16, 16)
    out = background_noise(x, 0.1, generator=torch.Generator().manual_seed(0))
    again = background_noise(x, 0.1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again) and out.min() >= 0 and out.max() <= 1
    assert (out.flatten(1).amax(1) > 0).float().mean() > 0.95  # (almost) every image got noise
    assert out.mean() < 0.05  # amplitude ~ U(0, 0.1): faint, mean 0.025 on a black canvas
    # the three kinds: gaussian (half its pixels clamped to 0), speckle (no pixel left at 0),
    # smooth (neighbouring pixels nearly equal)
    zeros = (out.flatten(1) == 0).float().mean(1)
    assert ((zeros > 0.3) & (zeros < 0.7)).sum() > 50 and (zeros < 0.02).sum() > 100
    rough = (out[..., 1:] - out[..., :-1]).abs().mean((1, 2, 3)) / out.mean((1, 2, 3)).clamp_min(1e-6)
    assert (rough < 0.2).sum() > 50
    assert torch.equal(background_noise(x, 0.0), x)


def test_recipe_adds_background_noise_to_a_share_of_the_real_images():
    recipe = JudgeRecipe(None, num_classes=10, input_shape=(1, 32, 32), none_fraction=0.25,
                         noise_fraction=0.5, noise_amplitude=0.1)
    model = build_model("scnn", num_classes=11, in_channels=1, width=0.5)
    x, y = torch.zeros(8, 1, 32, 32), torch.randint(0, 10, (8,))
    x2, y2 = recipe.prepare_batch(model, x, y)
    assert x2.shape == (10, 1, 32, 32) and torch.equal(y2[:8], y) and (y2[8:] == 10).all()
    changed = x2[:8].flatten(1).amax(1) > 0
    assert changed[:4].all() and not changed[4:].any()  # the first round(0.5 * 8) real images


NOISY_REJECT_MAX = 0.05  # a judge may reject at most 5% of real test digits with faint noise added


@pytest.mark.slow  # minute-long on the 2-core machine: the slow lane
def test_small_judges_accept_noisy_real_digits(tmp_path):
    """Each judge, trained small on digits (~15 s together), rejects at most NOISY_REJECT_MAX of
    the real test digits with the health checks' Gaussian (sigma 0.05) or uniform (0.1) noise
    added, as recorded in protocol.judges. (digits images have grey backgrounds, so the texture
    shortcut does not show there: the MNIST test below reproduces it.)"""
    from mi_bench.data import load_splits, resolve_data_root
    from mi_bench.pipeline import Runner

    cfg = compose(["preset=smoke", f"cache_dir={tmp_path}", "evaluator.epochs=4", "judge.resnet.width=0.5",
                   "judge.resnet.lr=0.002", "judge.resnet.epochs=8", "judge.robust.epochs=3"])
    splits = load_splits(cfg.dataset, resolve_data_root(cfg.data_root))
    for name, judge in Runner(cfg).stages(splits).judges().items():
        info = judge.info
        assert info["test_acc"] >= 0.8, (name, info["test_acc"])
        for check in ("reject_rate_real", "reject_rate_noisy_gaussian", "reject_rate_noisy_uniform"):
            assert info[check] <= NOISY_REJECT_MAX, (name, check, info[check])


@pytest.mark.slow  # minute-long on the 2-core machine: the slow lane
def test_background_noise_stops_a_judge_rejecting_noisy_mnist(shared_data):
    """The defect of issue 12's MNIST benchmark, small: a ResNet judge trained with the junk
    class but no background noise rejects most real MNIST test digits once faint uniform noise is
    added (it learned 'textured background = junk'); with the noise augmentation it rejects at
    most NOISY_REJECT_MAX of them (~25 s)."""
    from mi_bench.data import load_splits

    cfg = compose(["dataset=mnist", "preset=smoke", "dataset.max_train_per_class=300"])
    s = load_splits(cfg.dataset, shared_data)
    jc = dataclasses.replace(cfg.judge.resnet, width=0.5, lr=0.002, epochs=6)

    def train(noise_fraction):
        recipe = JudgeRecipe(jc, num_classes=10, input_shape=s.image_shape, none_fraction=0.25,
                             noise_fraction=noise_fraction, noise_amplitude=0.1)
        res = train_classifier(lambda: build_model("resnet8", num_classes=11, in_channels=1, width=0.5),
                               s.eval_train, s.eval_val, jc, seed=2000, defense=recipe)
        return health(Judge("resnet", res.model, 10, jc), s.eval_test)

    plain, noisy = train(0.0), train(0.5)
    assert plain["reject_rate_real"] <= NOISY_REJECT_MAX and plain["reject_rate_noisy_uniform"] > 0.5
    assert noisy["reject_rate_noisy_uniform"] <= NOISY_REJECT_MAX
    assert noisy["reject_rate_noisy_gaussian"] <= NOISY_REJECT_MAX
    assert noisy["reject_rate_real"] <= NOISY_REJECT_MAX and noisy["test_acc"] >= 0.8
    assert noisy["reject_rate_junk"] >= 0.9 and noisy["rejects_black"] and noisy["rejects_white"]
