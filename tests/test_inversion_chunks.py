"""Inversion in memory-bounded chunks (issue 21): GMI and PLG-MI run their latents forward and
backward ``inversion_chunk`` at a time and take one optimiser step for all of them.

* chunked = all at once (GMI exactly up to float rounding; PLG-MI with its random augmentations
  off, since those are drawn chunk by chunk);
* no network ever sees more than ``inversion_chunk`` latents (the memory bound);
* the passes per iteration are ceil(latents / chunk), however the latents split into classes
  (no per-class loop: the cost per iteration is linear in the latents);
* the option stays out of config hashes and bad values are refused."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from mi_bench.attacks.gmi import GMI, GMIConfig
from mi_bench.attacks.plgmi import PLGMI, PLGMIConfig
from mi_bench.config import ConfigError, compose, config_hash, to_dict
from mi_bench.models import build_model
from mi_bench.runtime import NULL_BARS, Accel

CPU = torch.device("cpu")
SHAPE = (1, 32, 32)


class Counting(nn.Module):
    """``net`` that counts its calls and remembers the largest batch it saw."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.calls, self.largest = net, 0, 0

    def forward(self, x, *rest):
        self.calls += 1
        self.largest = max(self.largest, len(x))
        return self.net(x, *rest)


@pytest.fixture(scope="module")
def target():
    torch.manual_seed(0)
    net = build_model("mcnn", num_classes=5, in_channels=1, width=0.25).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def _gmi(chunk: int, **kw) -> GMI:
    cfg = GMIConfig(name="gmi", gan_width=8, gan_steps=1, n_critic=1, iterations=5, restarts=2,
                    samples_per_class=2, lr=1.0, **kw)  # a large step: the images move
    atk = GMI(cfg, image_shape=SHAPE, num_classes=5, device=CPU)
    atk.accel = Accel(inversion_chunk=chunk)
    return atk


def _plgmi(chunk: int) -> PLGMI:
    cfg = PLGMIConfig(name="plgmi", latent_dim=16, gen_width=4, disc_width=4, gan_steps=1, n_critic=1,
                      gan_batch_size=8, iterations=5, samples_per_class=3, aug_crop=False,
                      aug_jitter=False, aug_flip=False, aug_rotate=False)
    atk = PLGMI(cfg, image_shape=SHAPE, num_classes=5, device=CPU)
    atk.accel = Accel(inversion_chunk=chunk)
    return atk


@pytest.fixture(scope="module")
def priors(target):
    public = torch.rand(64, *SHAPE, generator=torch.Generator().manual_seed(1))
    return {"gmi": _gmi(0).train_prior(public, None, seed=0, progress=NULL_BARS),
            "plgmi": _plgmi(0).train_prior(public, target, seed=0, progress=NULL_BARS)}


@pytest.mark.parametrize("make,name", [(_gmi, "gmi"), (_plgmi, "plgmi")])
def test_chunked_inversion_equals_the_whole_batch(make, name, target, priors):
    classes = [0, 2, 3]
    whole = make(0).invert(target, priors[name], classes, seed=3, progress=NULL_BARS)
    # how far the iterations move the images (4 of 5 steps): chunking must differ by far less
    short = dataclasses.replace(make(0).cfg, iterations=1)
    one = type(make(0))(short, image_shape=SHAPE, num_classes=5, device=CPU).invert(
        target, priors[name], classes, seed=3, progress=NULL_BARS)
    movement = (one.images - whole.images).abs().max().item()
    assert movement > 1e-4
    for chunk in (1, 5):  # 12 (GMI) / 9 (PLG-MI) latents in uneven chunks
        part = make(chunk).invert(target, priors[name], classes, seed=3, progress=NULL_BARS)
        assert part.images.shape == whole.images.shape and part.classes == whole.classes
        diff = (part.images - whole.images).abs().max().item()
        assert diff <= min(2e-5, movement / 20), (chunk, diff, movement)


@pytest.mark.parametrize("make,name,latents_per_class", [(_gmi, "gmi", 4), (_plgmi, "plgmi", 3)])
def test_no_network_sees_more_than_a_chunk_and_passes_do_not_depend_on_classes(
        make, name, latents_per_class, target, priors):
    chunk = 5
    seen = {}
    for classes in ([1], [0, 1, 2, 3, 4]):
        atk = make(chunk)
        counted = Counting(target)
        atk.invert(counted, priors[name], classes, seed=0, progress=NULL_BARS)
        n = len(classes) * latents_per_class
        iters = atk.cfg.iterations
        calls_per_pass = 1 if name == "gmi" else 2  # PLG-MI: two augmented views per pass
        # the iterations' passes, then one forward per chunk to keep the best / final images
        finals = math.ceil(n / chunk) if name == "gmi" else 0
        assert counted.calls == iters * calls_per_pass * math.ceil(n / chunk) + finals, classes
        assert counted.largest == min(chunk, n)
        seen[len(classes)] = counted.calls / n
    # cost per latent does not grow with the number of classes: 20 latents in 4 chunks cost
    # at most the passes of 4 latents in 1 chunk, per latent
    assert seen[5] <= seen[1]


def test_the_chunk_is_a_non_semantic_run_option_and_bad_values_are_refused():
    assert config_hash(to_dict(compose(["inversion_chunk=7"]))) == config_hash(to_dict(compose([])))
    assert compose(["inversion_chunk=7"]).inversion_chunk == 7
    with pytest.raises(ConfigError, match="inversion_chunk"):
        compose(["inversion_chunk=-1"])
    with pytest.raises(ValueError, match="inversion_chunk=-1"):
        Accel(inversion_chunk=-1)
    assert Accel(inversion_chunk=0).latent_chunks(7) == [slice(0, 7)]
    assert Accel(inversion_chunk=3).latent_chunks(7) == [slice(0, 3), slice(3, 6), slice(6, 7)]
    assert Accel(inversion_chunk=3).latent_chunks(0) == [slice(0, 0)]
