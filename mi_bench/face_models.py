"""Face classifiers of the CelebA protocol (methods.md section 1) and CPU-sized variants.

* ``vgg16_bn`` - VGG16-BN target: torchvision's ``vgg16_bn`` conv layers as five blocks (each
  ending in its max-pool), 512x2x2 = 2048-d feature at 64x64, BatchNorm1d with its bias frozen
  (as in KED-MI/BiDO ``classify.py``/``model.py``), linear head. ``hidden_layers`` are BiDO's
  published tap points: pooled blocks 1-4 and the 2048-d post-BN feature (``bn``).
* ``facenet64`` - IR-50 at 64x64 (face.evoLVe ``bottleneck_IR`` units 3/4/14/3, widths
  64/128/256/512) -> 512x4x4 -> BN2d, Dropout, Linear(8192, 512), BN1d -> Linear(512, K).
* ``ir152`` - the same with IR-152 units 3/8/36/3.
* ``facenet`` - the evaluation model: IR-50 at 112x112 (-> 512x7x7 -> Linear(25088, 512), BN1d),
  512-d feature. It resizes its own input to 112x112 (bilinear) inside ``embed``, so scoring code
  passes 64x64 reconstructions unchanged. (KED-MI upsamples reconstructions with PIL outside the
  model and trains E on 112x112 crops of the originals; here E is trained on the 64x64 data
  upsampled the same way as the reconstructions - a documented difference.)
* ``ir18`` - a CPU-sized IR network (units 2/2/2/2) at the data's own size: the small-ResNet
  evaluator of the ``cpu`` preset, a different family (residual, PReLU) from the VGG target.

``width`` scales every channel count (1 = published; the ``cpu`` preset uses less). An adaptive
average pool before the feature layer fixes its spatial size (VGG 2x2, IR 4x4, ``facenet``
7x7, ``ir18`` 2x2): at the published input size it is the identity, at smaller inputs it
replicates, so a 32x32 run has the same head shapes as the 64x64 one.

IR ``hidden_layers`` (mi-bench's choice; BiDO published taps only for VGG16 and ResNet-34): the
outputs of the four stages and the 512-d feature. Initialisation follows face.evoLVe (Xavier
for convolutions and linear layers inside the backbone, BatchNorm 1/0); KED-MI's 64x64 output
layer and every head keep PyTorch defaults. Module names follow face.evoLVe (``input_layer``,
``body``, ``output_layer``) so its backbone files load by name (``mi_bench.weights``);
``adapt_pretrained`` also maps torchvision, KED-MI and BiDO key names.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from torch.nn import functional as F

from mi_bench.models import ClassifierNet, channels
from mi_bench.registry import MODELS

VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
IR_UNITS = {18: (2, 2, 2, 2), 50: (3, 4, 14, 3), 152: (3, 8, 36, 3)}
IR_WIDTHS = (64, 128, 256, 512)


def _resize_to(x: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None or (x.shape[-1] == size and x.shape[-2] == size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def _strip(state: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        for p in prefixes:
            if k.startswith(p):
                k = k[len(p):]
        out[k] = v
    return out


@MODELS.register("vgg16_bn")
class VGG16BN(ClassifierNet):
    """VGG16-BN target of the CelebA protocol (64x64, 2048-d post-BN feature)."""

    summary = "VGG16-BN face target: 5 conv blocks, 2048-d BatchNorm feature at 64x64 (GMI/KED-MI/BiDO)"
    hidden_layers = ("block1", "block2", "block3", "block4", "bn")
    input_size: int | None = None

    def __init__(self, num_classes: int, in_channels: int = 3, width: float = 1.0):
        super().__init__()
        c_in = in_channels
        for b, stage in enumerate(VGG16_STAGES, 1):
            layers: list[nn.Module] = []
            for v in stage:
                c = channels(v, width)
                layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
                c_in = c
            layers.append(nn.MaxPool2d(2, 2))
            setattr(self, f"block{b}", nn.Sequential(*layers))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.feature_dim = c_in * 4
        self.bn = nn.BatchNorm1d(self.feature_dim)
        self.bn.bias.requires_grad_(False)  # "no shift", as in the official models
        self.head = nn.Linear(self.feature_dim, num_classes)

    def embed(self, x):
        h = x
        for b in range(1, 6):
            h = getattr(self, f"block{b}")(h)
        return self.bn(self.pool(h))

    def adapt_pretrained(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """torchvision ``features.N.*`` / KED-MI ``module.feature.N.*`` -> ``blockB.J.*``; BiDO's
        ``layerB.J.*`` -> ``blockB.J.*``; KED-MI/BiDO ``fc_layer`` -> ``head``."""
        index = {}  # torchvision features index -> (block, index in block)
        t = 0
        for b, stage in enumerate(VGG16_STAGES, 1):
            for j in range(len(stage)):
                for off in range(3):
                    index[t + off] = (b, 3 * j + off)
                t += 3
            index[t] = (b, 3 * len(stage))
            t += 1
        out = {}
        for k, v in _strip(state, ("module.",)).items():
            m = re.match(r"^(?:features|feature)\.(\d+)\.(.+)$", k)
            if m and int(m.group(1)) in index:
                b, j = index[int(m.group(1))]
                k = f"block{b}.{j}.{m.group(2)}"
            k = re.sub(r"^layer(\d)\.", r"block\1.", k)
            k = re.sub(r"^fc_layer\.", "head.", k)
            out[k] = v
        return out


class BottleneckIR(nn.Module):
    """face.evoLVe ``bottleneck_IR``: BN, conv3x3, PReLU, conv3x3 (stride), BN, plus shortcut."""

    def __init__(self, c_in: int, depth: int, stride: int):
        super().__init__()
        if c_in == depth:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(c_in, depth, 1, stride, bias=False),
                                                nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(c_in), nn.Conv2d(c_in, depth, 3, 1, 1, bias=False), nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False), nn.BatchNorm2d(depth),
        )

    def forward(self, x):
        return self.res_layer(x) + self.shortcut_layer(x)


def _xavier(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class IRNet(ClassifierNet):
    """face.evoLVe IR backbone + BN2d/Dropout/Linear/BN1d feature layer + linear head."""

    input_size: int | None = None
    depth: int = 50
    spatial: int = 4
    xavier_output = False

    def __init__(self, num_classes: int, in_channels: int = 3, width: float = 1.0):
        super().__init__()
        w = [channels(c, width) for c in IR_WIDTHS]
        self.input_layer = nn.Sequential(nn.Conv2d(in_channels, w[0], 3, 1, 1, bias=False),
                                         nn.BatchNorm2d(w[0]), nn.PReLU(w[0]))
        units: list[nn.Module] = []
        ends = []
        c_in = w[0]
        for stage, n in enumerate(IR_UNITS[self.depth]):
            for u in range(n):
                units.append(BottleneckIR(c_in, w[stage], 2 if u == 0 else 1))
                c_in = w[stage]
            ends.append(f"body.{len(units) - 1}")
        self.body = nn.Sequential(*units)
        self.pool = nn.AdaptiveAvgPool2d(self.spatial)
        feat = channels(512, width)
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(c_in), nn.Dropout(), nn.Flatten(),
            nn.Linear(c_in * self.spatial**2, feat), nn.BatchNorm1d(feat),
        )
        self.feature_dim = feat
        self.head = nn.Linear(feat, num_classes)
        self.hidden_layers = (*ends, "output_layer")
        _xavier(self.input_layer)
        _xavier(self.body)
        if self.xavier_output:
            _xavier(self.output_layer)

    def embed(self, x):
        h = self.body(self.input_layer(_resize_to(x, self.input_size)))
        return self.output_layer(self.pool(h))

    def adapt_pretrained(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """face.evoLVe backbones load by name; KED-MI/BiDO ``module.feature.*`` and ``fc_layer``
        are renamed."""
        out = {}
        for k, v in _strip(state, ("module.", "feature.")).items():
            out[re.sub(r"^fc_layer\.", "head.", k)] = v
        return out


@MODELS.register("facenet64")
class FaceNet64(IRNet):
    summary = "FaceNet64 = IR-50 at 64x64, 512-d feature (KED-MI/PLG-MI target)"
    depth, spatial = 50, 4


@MODELS.register("ir152")
class IR152(IRNet):
    summary = "IR-152 at 64x64, 512-d feature (KED-MI/PLG-MI target)"
    depth, spatial = 152, 4


@MODELS.register("facenet")
class FaceNet(IRNet):
    summary = "FaceNet evaluator = IR-50 at 112x112 (resizes its input), 512-d feature"
    depth, spatial, input_size, xavier_output = 50, 7, 112, True


@MODELS.register("ir18")
class IR18(IRNet):
    summary = "IR-18 (face.evoLVe units 2/2/2/2) at the data's size: the CPU-sized face evaluator"
    depth, spatial = 18, 2
