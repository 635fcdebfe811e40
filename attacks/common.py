"""What the built-in attacks share (public: any attack plugin may use it, through
``mi_bench.api`` or directly): GMI's DCGAN generator and WGAN-GP critic, the GAN image-size rule
(:func:`n_stages`), priors as flat state dicts (:func:`prefixed` / :func:`load_prefixed`),
endless index batches (:func:`sample_batches`), and a frozen target (:func:`frozen`,
:func:`target_probs`: eval mode, no gradients, both restored after).

The GAN networks:

At ``width=64`` these are the published networks (methods.md section 3):
* 32x32x1 (MNIST): Linear(100 -> 256*4*4) + BN + ReLU, transposed convs 256->128->64->1, sigmoid;
  critic 1->64->128->256 (conv5 s2; InstanceNorm(affine) + LReLU after the first) -> conv4.
* 64x64x3 (CelebA): Linear(100 -> 512*4*4), 512->256->128->64->3; critic 3->64->128->256->512.
Other sizes follow the same rule (one stride-2 layer per doubling from 4x4). ``width`` below 64
is the CPU-sized deviation used by the smoke/quick presets.

Devices (issue 7, shared by the three attacks' GAN loops): the public images are moved to the
device once when they fit (``mi_bench.runtime.to_device``), batches are gathered there from
index permutations sent once per epoch (:func:`sample_batches`), losses shown on progress bars
and NaN checks are read every ``Attack.accel.every(device)`` steps (every step on the CPU), and
``Attack.accel`` adds bf16 autocast and ``torch.compile`` to prior training only (the WGAN-GP
gradient penalty always runs the uncompiled critic: compiled graphs do not support the double
backward it needs). The maths and every random draw are those of the CPU code.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from mi_bench.runtime import upload


def n_stages(size: int) -> int:
    """Stride-2 stages from 4x4 to ``size`` (32 -> 3, 64 -> 4); ValueError unless size = 4 * 2^k."""
    n = int(round(math.log2(size / 4)))
    if n < 1 or 4 * 2**n != size:
        raise ValueError(f"GAN image size must be 4 * 2^k (e.g. 32, 64); got {size}")
    return n


class DCGANGenerator(nn.Module):
    def __init__(self, image_shape: tuple[int, int, int], latent_dim: int = 100, width: int = 64):
        super().__init__()
        c_out, size, _ = image_shape
        n = n_stages(size)
        chans = [width * 2 ** (n - 1 - i) for i in range(n)]  # e.g. 256, 128, 64
        self.latent_dim = latent_dim
        self.fc = nn.Sequential(
            nn.Linear(latent_dim, chans[0] * 16, bias=False), nn.BatchNorm1d(chans[0] * 16), nn.ReLU()
        )
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.ConvTranspose2d(cin, cout, 5, 2, padding=2, output_padding=1, bias=False),
                       nn.BatchNorm2d(cout), nn.ReLU()]
        layers += [nn.ConvTranspose2d(chans[-1], c_out, 5, 2, padding=2, output_padding=1), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)
        self._c0 = chans[0]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(z.shape[0], self._c0, 4, 4)
        return self.net(h)


class WGANCritic(nn.Module):
    """``features(x)`` is the last 4x4 map, flattened; ``forward`` the scalar critic value."""

    def __init__(self, image_shape: tuple[int, int, int], width: int = 64):
        super().__init__()
        c_in, size, _ = image_shape
        n = n_stages(size)
        chans = [width * 2**i for i in range(n)]  # 64, 128, 256 (, 512)
        layers: list[nn.Module] = [nn.Conv2d(c_in, chans[0], 5, 2, 2), nn.LeakyReLU(0.2)]
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(cin, cout, 5, 2, 2), nn.InstanceNorm2d(cout, affine=True), nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(chans[-1], 1, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x)).view(-1)


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """WGAN-GP: ``E[(||grad_x D(x_hat)||_2 - 1)^2]`` on random interpolates."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
    x_hat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    out = critic(x_hat)
    (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def prefixed(prefix: str, module: nn.Module) -> dict[str, torch.Tensor]:
    """A module's state dict with keys prefixed (priors are stored as one flat dict)."""
    return {f"{prefix}.{k}": v.detach().cpu().clone() for k, v in module.state_dict().items()}


def load_prefixed(prefix: str, module: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    sub = {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}
    module.load_state_dict(sub)
    return module


def sample_batches(n: int, batch_size: int, generator: torch.Generator,
                   device: torch.device | None = None):
    """Endless shuffled index batches over ``n`` items (GAN training iterates by steps).

    The permutations come from the CPU ``generator`` (the same stream on every device); with an
    accelerator ``device`` each permutation is sent there in one copy and the batches are
    slices of it, so indexing data on the device needs no copy (and no host wait) per step."""
    while True:
        perm = torch.randperm(n, generator=generator)
        if device is not None and device.type != "cpu":
            perm = upload([perm], device)[0]
        for i in range(0, n - batch_size + 1, batch_size):
            yield perm[i:i + batch_size]
        if n < batch_size:
            yield perm


# -- a frozen target -------------------------------------------------------------------------

@contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Eval mode and ``requires_grad=False`` on every parameter; both restored on exit."""
    saved = []
    for m in modules:
        saved.append((m, m.training, [(p, p.requires_grad) for p in m.parameters()]))
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)
    try:
        yield
    finally:
        for m, was, flags in saved:
            m.train(was)
            for p, rg in flags:
                p.requires_grad_(rg)


@torch.no_grad()
def target_probs(target: nn.Module, x: torch.Tensor, device: torch.device,
                 batch_size: int = 256) -> torch.Tensor:
    """softmax(T(x)) with T in eval mode, under no_grad (CPU tensor)."""
    with frozen(target):
        return torch.cat([F.softmax(target(xb.to(device)).float(), 1).cpu()
                          for xb in x.split(batch_size)])
