"""Image conversions shared by saving, hashing and showing images.

Images in mi-bench are float tensors in [0, 1], (..., C, H, W). Two conversions, each written
once: :func:`to_uint8` (the 8-bit tensor that run folders store and content hashes read) and
:func:`to_hwc_uint8` (one image as an ``H x W x C`` array for PNG files and web pages).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] as uint8 (clamped, rounded to the nearest of 256 levels), contiguous,
    on the CPU."""
    import torch

    return (images.detach().cpu().float().clamp(0, 1) * 255).round().to(torch.uint8).contiguous()


def to_hwc_uint8(image: torch.Tensor) -> np.ndarray:
    """One (C, H, W) image in [0, 1] as an ``H x W x C`` uint8 array."""
    return to_uint8(image).permute(1, 2, 0).numpy()
