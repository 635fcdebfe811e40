"""Classifiers: the MNIST-protocol target ``MCNN`` and evaluation model ``SCNN``, and the
architectures of the extra judges (``mi_bench.judges``): a CIFAR-style ``ResNet`` and the
``MadryNet`` of Madry et al.'s MNIST challenge.

Every classifier exposes the same small interface used across mi-bench:

* ``embed(x)``        the penultimate feature (used by KNN distance and FID on E's features);
* ``head``            the final ``nn.Linear`` (MID swaps it for a variational bottleneck);
* ``forward(x)``      ``head(embed(x))``;
* ``hidden_layers``   names of the modules whose outputs defenses tap by default (BiDO's
                      "conv-block outputs"); reachable with ``model.get_submodule(name)``;
* ``feature_dim``     size of ``embed(x)``.

Architectures follow methods.md section 1 at ``width=1``. ``width`` scales every channel count
(a CPU-sized deviation used by the smoke/quick presets; ``paper`` uses 1). A final adaptive
average pool makes the networks accept other input sizes; at 32x32 it is the identity.
"""

from __future__ import annotations

from torch import nn

from mi_bench.registry import MODELS


def channels(c: int, width: float) -> int:
    """A channel count ``c`` scaled by ``width`` (at least 4): the CPU-sized networks' rule."""
    return max(4, int(round(c * width)))


def _block(cin: int, cout: int, k: int, pad: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, padding=pad), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2)
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class ClassifierNet(nn.Module):
    """Base of the built-in classifiers: ``forward = head(embed(x))``; satisfies
    :class:`mi_bench.interfaces.Classifier`."""

    hidden_layers: tuple[str, ...] = ()
    feature_dim: int

    def embed(self, x):  # pragma: no cover - overridden
        raise NotImplementedError

    def forward(self, x):
        return self.head(self.embed(x))


@MODELS.register("mcnn")
class MCNN(ClassifierNet):
    """Target network of the MNIST protocol (BiDO/KED-MI): three conv blocks, ~1.0 M params."""

    summary = "MNIST-protocol target: 3 conv blocks (64-128-256) + linear (BiDO/KED-MI)"
    hidden_layers = ("block1", "block2", "block3")

    def __init__(self, num_classes: int, in_channels: int = 1, width: float = 1.0):
        super().__init__()
        c1, c2, c3 = channels(64, width), channels(128, width), channels(256, width)
        self.block1 = _block(in_channels, c1, 7, 1, pool=True)
        self.block2 = _block(c1, c2, 5, 0, pool=True)
        self.block3 = _block(c2, c3, 5, 0, pool=False)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.feature_dim = c3
        self.head = nn.Linear(c3, num_classes)

    def embed(self, x):
        return self.pool(self.block3(self.block2(self.block1(x))))


@MODELS.register("scnn")
class SCNN(ClassifierNet):
    """Evaluation network of the MNIST protocol: five conv blocks (32-64-128-256-512)."""

    summary = "MNIST-protocol evaluator: 5 conv blocks (32-...-512) + linear (BiDO)"
    hidden_layers = ("block1", "block2", "block3", "block4", "block5")

    def __init__(self, num_classes: int, in_channels: int = 1, width: float = 1.0):
        super().__init__()
        c = [channels(v, width) for v in (32, 64, 128, 256, 512)]
        self.block1 = _block(in_channels, c[0], 7, 1, pool=True)
        self.block2 = _block(c[0], c[1], 5, 0, pool=True)
        self.block3 = _block(c[1], c[2], 5, 0, pool=False)
        self.block4 = _block(c[2], c[3], 3, 1, pool=False)
        self.block5 = _block(c[3], c[4], 3, 1, pool=False)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.feature_dim = c[4]
        self.head = nn.Linear(c[4], num_classes)

    def embed(self, x):
        h = x
        for name in self.hidden_layers:
            h = getattr(self, name)(h)
        return self.pool(h)


class _BasicBlock(nn.Module):
    """He et al. (2016) basic residual block: two 3x3 convs with BatchNorm; 1x1 projection
    shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
        )
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.body(x) + self.shortcut(x))


class ResNet(ClassifierNet):
    """CIFAR-style ResNet (He et al., CVPR 2016, section 4.2): a 3x3 stem, three stages of
    ``blocks`` basic blocks with 16-32-64 channels (stride 2 between stages), global average
    pooling, linear head; depth ``6 * blocks + 2``. A different family from MCNN/SCNN (residual
    connections, 3x3 kernels only, no max-pooling)."""

    hidden_layers = ("stem", "stage1", "stage2", "stage3")
    blocks = 1

    def __init__(self, num_classes: int, in_channels: int = 1, width: float = 1.0):
        super().__init__()
        c = [channels(v, width) for v in (16, 32, 64)]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(c[0]), nn.ReLU())
        stages, cin = [], c[0]
        for i, cout in enumerate(c):
            layers = [_BasicBlock(cin if j == 0 else cout, cout, 2 if (i > 0 and j == 0) else 1)
                      for j in range(self.blocks)]
            stages.append(nn.Sequential(*layers))
            cin = cout
        self.stage1, self.stage2, self.stage3 = stages
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.feature_dim = c[2]
        self.head = nn.Linear(c[2], num_classes)

    def embed(self, x):
        return self.pool(self.stage3(self.stage2(self.stage1(self.stem(x)))))


@MODELS.register("resnet8")
class ResNet8(ResNet):
    summary = "judge: CIFAR-style ResNet-8 (1 basic block per stage, 16-32-64, He et al. 2016)"
    blocks = 1


@MODELS.register("resnet20")
class ResNet20(ResNet):
    summary = "judge: CIFAR-style ResNet-20 (3 basic blocks per stage, 16-32-64, He et al. 2016)"
    blocks = 3


@MODELS.register("madrynet")
class MadryNet(ClassifierNet):
    """The MNIST network of Madry et al. (ICLR 2018, their public MNIST challenge model):
    conv 5x5 (32) + ReLU + max-pool, conv 5x5 (64) + ReLU + max-pool, fully connected 1024 +
    ReLU, linear head. No BatchNorm, so the network attacked by PGD during adversarial training
    is exactly the one used at test time. An adaptive average pool to 8x8 (the identity at 32x32)
    lets it accept other input sizes."""

    summary = "judge: Madry et al. 2018 MNIST network (2 conv 5x5 32-64 + FC 1024), no BatchNorm"
    hidden_layers = ("conv1", "conv2", "fc")

    def __init__(self, num_classes: int, in_channels: int = 1, width: float = 1.0):
        super().__init__()
        c1, c2, f = channels(32, width), channels(64, width), channels(1024, width)
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2))
        self.conv2 = nn.Sequential(nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                                   nn.AdaptiveAvgPool2d(8), nn.Flatten())
        self.fc = nn.Sequential(nn.Linear(c2 * 64, f), nn.ReLU())
        self.feature_dim = f
        self.head = nn.Linear(f, num_classes)

    def embed(self, x):
        return self.fc(self.conv2(self.conv1(x)))


def build_model(name: str, *, num_classes: int, in_channels: int, width: float,
                pretrained: str = "", pretrained_sha256: str = "", what: str = "model") -> ClassifierNet:
    """A registered model; with ``pretrained`` it is initialised from that weights file after
    checking its SHA-256 (``mi_bench.weights``)."""
    model = MODELS.get(name)(num_classes=num_classes, in_channels=in_channels, width=width)
    if pretrained:
        from mi_bench.weights import load_pretrained

        load_pretrained(model, pretrained, pretrained_sha256, what=what)
    return model
