"""The training data path: batches of (clean, degraded) pairs with the reference augmentation.

Order per image, as the reference code does it: random horizontal flip of the clean image ->
degradation at a fresh random level -> zero-pad 4 and the SAME random crop for both copies ->
to tensor + normalise -> Cutout (one hole, one mask shared by both copies; which copies get it is a
per-stage choice). A step draws `batch_size` images per degradation; an epoch is one pass of the
shuffled train set per degradation (len(train) / batch_size steps), as the reference's loaders do.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from study import degradations
from study.data import Split

CLEAN = "clean"   # the pseudo-degradation of the base stage: the degraded copy is the clean one
PAD = 4           # reference: RandomCrop(32, padding=4), fill 0


@dataclass(frozen=True)
class Batch:
    clean: torch.Tensor      # (B, 3, H, W) float, normalised
    degraded: torch.Tensor   # (B, 3, H, W) float, normalised
    labels: torch.Tensor     # (B,) int64
    chunks: tuple[tuple[str, slice], ...]   # which rows belong to which degradation


def normalise(images: np.ndarray, mean: Sequence[float], std: Sequence[float],
              device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32, (x/255 - mean) / std."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    # contiguous NCHW: a channels_last input from the permute segfaulted torch 2.14 CPU convs
    # with one thread and ran several times slower with two.
    x = x.permute(0, 3, 1, 2).contiguous().float().div_(255)
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1)
    return (x - m) / s


def pad_crop(images: np.ndarray, oy: np.ndarray, ox: np.ndarray) -> np.ndarray:
    """Zero-pad PAD pixels and crop back to H x W at per-image offsets (0..2*PAD)."""
    n, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)))
    rows = (oy[:, None] + np.arange(h))[:, :, None]
    cols = (ox[:, None] + np.arange(w))[:, None, :]
    return padded[np.arange(n)[:, None, None], rows, cols]


def cutout_mask(n: int, h: int, w: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """(N, 1, H, W) float mask with one length x length hole per image, centre uniform, clipped."""
    cy = rng.integers(0, h, size=n)[:, None]
    cx = rng.integers(0, w, size=n)[:, None]
    ys, xs = np.arange(h)[None, :], np.arange(w)[None, :]
    in_y = (ys >= cy - length // 2) & (ys < cy + length - length // 2)
    in_x = (xs >= cx - length // 2) & (xs < cx + length - length // 2)
    hole = in_y[:, :, None] & in_x[:, None, :]
    return (~hole).astype(np.float32)[:, None]


def augment(images: np.ndarray, degradation: str, rng: np.random.Generator,
            salt_value: int) -> tuple[np.ndarray, np.ndarray]:
    """One chunk: flip -> degrade (random level per image) -> shared pad-crop. uint8 in and out."""
    n = len(images)
    flip = rng.random(n) < 0.5
    clean = images.copy()
    clean[flip] = clean[flip, :, ::-1]
    if degradation == CLEAN:
        degraded = clean
    else:
        levels = degradations.random_levels(degradation, n, rng)
        degraded = degradations.degrade_batch(clean, degradation, levels, rng, salt_value)
    oy, ox = rng.integers(0, 2 * PAD + 1, size=(2, n))
    return pad_crop(clean, oy, ox), pad_crop(degraded, oy, ox)


class TrainStream:
    """Epochs of augmented batches; epoch e is a pure function of (seed, e), so a resumed stage
    sees the same data it would have seen without the interruption."""

    def __init__(self, split: Split, mean: Sequence[float], std: Sequence[float], *,
                 degradations: Sequence[str], batch_size: int, cutout: int, cutout_on: str,
                 same_images: bool, salt_value: int, seed: int, device: torch.device | str):
        self.split, self.mean, self.std = split, tuple(mean), tuple(std)
        self.degradations = list(degradations)
        self.batch_size, self.cutout, self.cutout_on = batch_size, cutout, cutout_on
        self.same_images, self.salt_value = same_images, salt_value
        self.seed, self.device = seed, device

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.split) // self.batch_size)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        rng = np.random.default_rng([self.seed, epoch])
        n = len(self.split)
        shared = rng.permutation(n)
        orders = [shared if self.same_images else rng.permutation(n) for _ in self.degradations]
        for step in range(self.steps_per_epoch):
            yield self._batch([o[step * self.batch_size:(step + 1) * self.batch_size]
                               for o in orders], rng)

    def _batch(self, index: list[np.ndarray], rng: np.random.Generator) -> Batch:
        cleans, degs, labels, chunks, start = [], [], [], [], 0
        for d, idx in zip(self.degradations, index):
            c, g = augment(self.split.images[idx], d, rng, self.salt_value)
            cleans.append(c)
            degs.append(g)
            labels.append(self.split.labels[idx])
            chunks.append((d, slice(start, start + len(idx))))
            start += len(idx)
        clean = normalise(np.concatenate(cleans), self.mean, self.std, self.device)
        degraded = normalise(np.concatenate(degs), self.mean, self.std, self.device)
        if self.cutout > 0 and self.cutout_on != "none":
            _, _, h, w = clean.shape
            mask = torch.from_numpy(cutout_mask(start, h, w, self.cutout, rng)).to(self.device)
            if self.cutout_on in ("clean", "both"):
                clean = clean * mask
            if self.cutout_on in ("degraded", "both"):
                degraded = degraded * mask
        y = torch.from_numpy(np.concatenate(labels)).to(self.device)
        return Batch(clean, degraded, y, tuple(chunks))
