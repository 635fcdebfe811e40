"""Tiny stand-ins shared by the attack tests: a linear classifier on flattened 1-channel images
and an attack built at a test's own tiny settings."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class LinearClassifier(nn.Module):
    """``k`` logits from a linear map of a flattened ``size`` x ``size`` image."""

    def __init__(self, k: int, size: int = 32) -> None:
        super().__init__()
        self.fc = nn.Linear(size * size, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def tiny_attack(cls: type, settings: dict[str, Any], num_classes: int = 3, **kw: Any) -> Any:
    """Attack class ``cls`` on 1x32x32 images of ``num_classes`` classes, on the CPU, with
    ``settings`` updated by ``kw``."""
    cfg = cls.Config(name=cls.name, **{**settings, **kw})
    return cls(cfg, image_shape=(1, 32, 32), num_classes=num_classes, device=torch.device("cpu"))
