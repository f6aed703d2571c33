"""Contrast reduction: each image pulled towards its own mean grey level.

Level l in 0..50 keeps a fraction 1 - l/100 of the contrast (level 50: half of it), so
out = rint(m + (x - m) * (1 - l/100)) with m the image's mean over pixels and channels.
Deterministic: it draws nothing from the stream it is given. Both operators compute m from the
exact integer sum and then the same float64 operations one at a time, rounding half to even
(np.rint, torch.round), so the device operator returns the CPU operator's bytes (bit_exact).
Level 0 returns the image unchanged: (x - m) * 1 + m is within 1e-13 of the integer x, which
rint restores.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from study.degradations import Degradation

if TYPE_CHECKING:
    import torch

__all__ = ["CONTRAST"]


def contrast_cpu(images: np.ndarray, levels: np.ndarray, rng: np.random.Generator
                 ) -> np.ndarray:
    """(N, H, W, 3) uint8, (N,) int64 levels -> (N, H, W, 3) uint8."""
    n = len(images)
    total = images.reshape(n, -1).sum(axis=1, dtype=np.int64)
    mean = (total / images[0].size).reshape(n, 1, 1, 1)
    keep = (1.0 - levels / 100.0).reshape(n, 1, 1, 1)
    out = (images - mean) * keep + mean
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def contrast_device(images: torch.Tensor, levels: torch.Tensor, generator: torch.Generator
                    ) -> torch.Tensor:
    """(N, 3, H, W) uint8 tensor, (N,) int64 levels -> (N, 3, H, W) uint8, on their device."""
    import torch  # the CPU path, and validating a study file, need no torch

    n = len(images)
    total = images.reshape(n, -1).sum(dim=1, dtype=torch.int64)
    mean = (total.to(torch.float64) / images[0].numel()).view(n, 1, 1, 1)
    keep = (1.0 - levels.to(torch.float64) / 100.0).view(n, 1, 1, 1)
    out = (images.to(torch.float64) - mean) * keep + mean
    return out.round().clamp(0, 255).to(torch.uint8)


CONTRAST = Degradation("contrast", 0, 50, identity_level=0, stochastic=False, bit_exact=True,
                       cpu=contrast_cpu, device=contrast_device)
