"""The four degradations as batched torch ops on any device: the data path of DeviceTrainStream.

Images are (N, 3, H, W) uint8 tensors in and out, one integer level per image (the level ranges of
`degradations.DEGRADATIONS`), random draws from a `torch.Generator` on the images' device. The CPU
module `degradations` stays the bit-exact reference; against it:
- blur is BIT-EXACT: the same float64 taps as scipy, summed in scipy's order (centre tap, then
  symmetric pairs from the outermost in), each 1-D pass truncated into uint8 as scipy does;
- jpeg is BIT-EXACT by construction: a `JpegBank` holds PIL's decoded copy of every training image
  at every banked quality, built once through `degradations.degrade_batch` and cached;
- awgn and salt-and-pepper have the reference's semantics (floor(clip(x + sigma*z)); pepper then
  an independent salt mask with `salt_value`) but another random stream, so they match in
  distribution only (float32 noise and uniforms instead of float64: a difference below 1e-6 of
  elements, far under the sampling noise).
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context

import numpy as np
import torch
from scipy import ndimage

from study import degradations
from study.cache import StageCache, content_key

__all__ = [
    "BLUR_RADIUS",
    "JpegBank",
    "awgn",
    "bank_qualities",
    "blur",
    "blur_weights",
    "build_jpeg_bank",
    "degrade",
    "has_operator",
    "random_levels",
    "saltpepper",
]

TRUNCATE = 3.0     # the reference's gaussian_filter(truncate=3.0)
BLUR_RADIUS = 15   # int(3.0 * 5.0 + 0.5): the widest kernel, sigma 5.0 (blur level 50)


def has_operator(name: str) -> bool:
    """Whether `name` can run on the device path: the built-ins can, a plugin when it brings a
    device operator."""
    return name in degradations.DEGRADATIONS or degradations.get(name).device is not None


def random_levels(name: str, n: int, generator: torch.Generator) -> torch.Tensor:
    """n integer levels uniform on [lo, hi] (both ends inclusive), on the generator's device."""
    d = degradations.get(name)
    return torch.randint(d.lo, d.hi + 1, (n,), generator=generator, device=generator.device)


def degrade(images: torch.Tensor, name: str, levels: torch.Tensor, generator: torch.Generator,
            salt_value: int = 1) -> torch.Tensor:
    """awgn, saltpepper, blur or a plugin's degradation of (N, 3, H, W) uint8 at one level per
    image (jpeg: JpegBank)."""
    _check(images, levels)
    d = degradations.get(name)
    if d.device is not None:
        out = d.device(images, levels, generator)
        if out.dtype != torch.uint8 or out.shape != images.shape:
            raise ValueError(f"degradation plugin {name!r}: its device operator must return "
                             f"uint8 images of shape {tuple(images.shape)}, got {out.dtype} "
                             f"{tuple(out.shape)}")
        return out
    if name == "awgn":
        return awgn(images, levels.to(torch.float32) / d.divisor, generator)
    if name == "saltpepper":
        return saltpepper(images, levels.to(torch.float64) / d.divisor, generator, salt_value)
    if name == "blur":
        return blur(images, levels)
    raise ValueError(f"degradation {name!r} has no device operator: awgn, saltpepper, blur and "
                     "plugins that declare one do (jpeg goes through a JpegBank); train it "
                     "with compute.data_path: reference")


def awgn(images: torch.Tensor, sigma: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """floor(clip(x + sigma * z, 0, 255)), one N(0, 1) draw per pixel and channel; sigma (N,) on
    the 0-255 scale. Floor, not round: the reference's np.uint8 truncation (-0.5 grey levels)."""
    z = torch.randn(images.shape, generator=generator, device=images.device)
    out = images.to(torch.float32) + z * sigma.to(torch.float32).view(-1, 1, 1, 1)
    return out.clamp_(0.0, 255.0).to(torch.uint8)   # the cast truncates, i.e. floors (>= 0)


def saltpepper(images: torch.Tensor, p: torch.Tensor, generator: torch.Generator,
               salt_value: int = 1) -> torch.Tensor:
    """Per element: with prob p/2 -> 0 (pepper), then an independent mask with prob p/2 ->
    salt_value, so salt overwrites pepper (P(pepper) = p/2 (1 - p/2), P(salt) = p/2); p (N,)."""
    if not 0 <= salt_value <= 255:
        raise ValueError(f"salt_value must be in [0, 255], got {salt_value}")
    # The reference hits iff U > exp(log(1 - p/2)) for U uniform on [0, 1); p = 0 -> threshold 1:
    # never hit. float32 uniforms step 2^-24, far finer than the 1/200 steps of p/2.
    threshold = torch.exp(torch.log1p(-p.to(torch.float64) / 2)).to(torch.float32)
    threshold = threshold.view(-1, 1, 1, 1)
    pepper = torch.rand(images.shape, generator=generator, device=images.device) > threshold
    salt = torch.rand(images.shape, generator=generator, device=images.device) > threshold
    return images.masked_fill(pepper, 0).masked_fill_(salt, salt_value)


# --- blur: scipy.ndimage.gaussian_filter(truncate=3.0, mode='nearest') on uint8, bit-exact -----


@functools.lru_cache(maxsize=1)
def blur_weights() -> np.ndarray:
    """(51, BLUR_RADIUS + 1) float64: per blur level, scipy's tap weights w[0] (centre) ..
    w[radius], zero beyond the level's radius int(3.0 * sigma + 0.5); level 0 is [1, 0, ...].

    Read off scipy itself (a float64 unit impulse through gaussian_filter1d returns each tap
    times 1.0 exactly), so a change in scipy's kernel shows up here rather than as a drift."""
    table = np.zeros((degradations.get("blur").hi + 1, BLUR_RADIUS + 1))
    table[0, 0] = 1.0
    for level in range(1, len(table)):
        sigma = degradations.get("blur").parameter(level)
        radius = int(TRUNCATE * sigma + 0.5)
        impulse = np.zeros(2 * radius + 1)
        impulse[radius] = 1.0
        taps = ndimage.gaussian_filter1d(impulse, sigma, truncate=TRUNCATE, mode="constant")
        table[level, : radius + 1] = taps[radius:]
    return table


@functools.lru_cache(maxsize=8)
def _weights_on(device: str) -> torch.Tensor:
    return torch.from_numpy(blur_weights()).to(device)   # one copy per device, not per call


def blur(images: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Gaussian blur at sigma = level / 10: a float64 pass over H truncated to uint8, then one
    over W truncated again, exactly as scipy filters a uint8 (H, W, 3) array."""
    w = _weights_on(str(images.device))[levels]     # (N, R + 1)
    return _blur_pass(_blur_pass(images, w, dim=2), w, dim=3)


def _blur_pass(images: torch.Tensor, w: torch.Tensor, dim: int) -> torch.Tensor:
    # scipy's NI_Correlate1D on a symmetric kernel: out = x[0] w[0]; for j = r .. 1:
    # out += (x[-j] + x[+j]) w[j], in double, each operation rounded (no FMA on x86-64 wheels).
    # Separate torch ops keep every rounding step: summing tap by tap instead changes 9% of the
    # outputs of tests/test_device_degrade.py's images by 1-2 levels. Taps past an image's
    # radius have weight 0 and adding 0.0 leaves a sum unchanged, so every image runs to
    # radius 15: no per-batch radius, no sync.
    r = BLUR_RADIUS
    size = images.shape[dim]
    edge = torch.arange(-r, size + r, device=images.device).clamp_(0, size - 1)  # mode='nearest'
    x = images.index_select(dim, edge).to(torch.float64)
    wv = w.view(-1, w.shape[1], 1, 1, 1)
    acc = x.narrow(dim, r, size) * wv[:, 0]
    pair = torch.empty_like(acc)   # reused: a fresh 3 MB tensor per tap tripled the CPU time
    for j in range(r, 0, -1):
        torch.add(x.narrow(dim, r - j, size), x.narrow(dim, r + j, size), out=pair)
        acc += pair.mul_(wv[:, j])
    return acc.to(torch.uint8)   # truncation toward zero, as scipy's cast of its double line


# --- jpeg: per-quality banks of PIL's decoded copies --------------------------------------------


@dataclass(frozen=True, eq=False)
class JpegBank:
    """PIL's JPEG encode+decode of a fixed image set (the training split) at every banked quality,
    on `data.device`. Level 101 is the identity and is never banked.

    Memory: F x Q x N x H x W x 3 bytes with F = 2 when `flips` (the mirrored images banked too,
    so flip -> JPEG is exact) and Q = len(qualities) <= 100: 3.1 GB for 5k CIFAR images and
    31 GB for 50k (100 levels, both orientations; half of each without flips).
    Without flips the lookup mirrors the JPEG of the unflipped image instead (JPEG does not
    commute with a flip: measured on 32x32 images, 20-40% of the elements of flipped images move,
    by 0.2-0.6 grey levels on average and up to 86 at q=1)."""

    qualities: tuple[int, ...]   # banked quality levels, ascending, in 1..100
    flips: bool
    data: torch.Tensor           # (F, Q, N, 3, H, W) uint8
    slot: torch.Tensor           # (102,) int64: level -> index of the nearest banked quality

    @property
    def nbytes(self) -> int:
        return self.data.numel()

    def effective_levels(self, levels: torch.Tensor) -> torch.Tensor:
        """The level a lookup really applies: the nearest banked quality, 101 stays 101."""
        q = torch.tensor(self.qualities, device=levels.device)[self.slot.to(levels.device)[levels]]
        return torch.where(levels == degradations.get("jpeg").identity_level, levels, q)

    def lookup(self, clean: torch.Tensor, index: torch.Tensor, levels: torch.Tensor,
               flipped: torch.Tensor) -> torch.Tensor:
        """JPEG of `clean` (N, 3, H, W) uint8 = rows `index` of the banked set, mirrored where
        `flipped`; level 101 returns `clean` itself."""
        _check(clean, levels)
        dev = self.data.device
        q = self.slot.to(dev)[levels.to(dev)]
        f = flipped.to(dev).long() if self.flips else torch.zeros_like(q)
        out = self.data[f, q, index.to(dev)].to(clean.device, non_blocking=True)
        if not self.flips:
            out = torch.where(flipped.view(-1, 1, 1, 1), out.flip(3), out)
        identity = (levels == degradations.get("jpeg").identity_level).view(-1, 1, 1, 1)
        return torch.where(identity, clean, out)


def bank_qualities(step: int) -> tuple[int, ...] | None:
    """Every `step`-th JPEG quality (1, 1 + step, ..., and 100) for build_jpeg_bank; step 1 is
    all 100 (None), the exact setting. Other levels then use the nearest banked quality."""
    if step < 1:
        raise ValueError(f"jpeg bank step must be >= 1, got {step}")
    return None if step == 1 else tuple(sorted({*range(1, 101, step), 100}))


def images_digest(images: np.ndarray) -> str:
    """Content hash of an image array (shape included): the bank's cache key part."""
    h = hashlib.sha256(str(images.shape).encode())
    h.update(np.ascontiguousarray(images).data)
    return h.hexdigest()[:20]


def bank_key(digest: str, quality: int, flipped: bool) -> str:
    return content_key("jpeg_bank", {"images": digest, "quality": quality, "flipped": flipped})


def build_jpeg_bank(images: np.ndarray, *, qualities: Sequence[int] | None = None,
                    flips: bool = True, cache: StageCache | None = None,
                    device: torch.device | str = "cpu", workers: int = 1,
                    log: Callable[[str], None] | None = None) -> JpegBank:
    """The bank of (N, H, W, 3) uint8 `images`: one StageCache entry "jpeg_bank/<key>" per
    (quality, orientation), keyed by the images' content, so every stage and trial on the same
    training split shares it. Missing entries are computed with PIL (`workers` processes; about
    0.2-0.8 ms per 32x32 image and quality on one core: 200 x 45k images ~ 10 core-minutes)."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"images must be (N, H, W, 3) uint8, got {images.shape} {images.dtype}")
    qs = tuple(sorted(set(range(1, 101) if qualities is None else qualities)))
    if not qs or qs[0] < 1 or qs[-1] > 100:
        raise ValueError(f"jpeg bank qualities must be in 1..100, got {list(qs)}")
    digest = images_digest(images)
    orientations = (False, True) if flips else (False,)
    n, h, w, _ = images.shape
    data = torch.empty((len(orientations), len(qs), n, 3, h, w), dtype=torch.uint8,
                       device=device)
    todo = []
    for fi, f in enumerate(orientations):
        for qi, q in enumerate(qs):
            arr = cache.load_array("jpeg_bank", bank_key(digest, q, f)) if cache else None
            if arr is None:
                todo.append((fi, qi))
            else:
                data[fi, qi] = torch.from_numpy(arr).permute(0, 3, 1, 2)
    if todo and log:
        log(f"jpeg bank: encoding {len(todo)} of {len(orientations) * len(qs)} (quality, "
            f"orientation) copies of {n} images with {workers} worker(s)")
    root = str(cache.root) if cache else None
    tasks = [(qs[qi], orientations[fi], digest, root) for fi, qi in todo]
    if workers > 1 and len(tasks) > 1:
        # spawn, not fork: the parent may hold CUDA and OpenMP state. The images go once per
        # worker through the initializer; with a cache, results come back through it.
        with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=get_context("spawn"),
                                 initializer=_init_worker, initargs=(images,)) as pool:
            results = list(pool.map(_bank_task, tasks))
    else:
        _init_worker(images)
        results = [_bank_task(t) for t in tasks]
        _init_worker(None)
    for (fi, qi), arr in zip(todo, results):
        if arr is None and cache is not None:
            arr = cache.load_array("jpeg_bank", bank_key(digest, qs[qi], orientations[fi]))
        if arr is None:
            raise RuntimeError(f"jpeg bank entry q={qs[qi]} flipped={orientations[fi]} was "
                               "written by a worker but cannot be read back from the cache")
        data[fi, qi] = torch.from_numpy(arr).permute(0, 3, 1, 2)
    # nearest banked quality for every level 0..101 (ties to the higher quality); 0 is unused
    slot = [max(range(len(qs)), key=lambda i: (-abs(qs[i] - lv), qs[i])) for lv in range(102)]
    return JpegBank(qs, flips, data, torch.tensor(slot, device=device))


_WORKER_IMAGES: np.ndarray | None = None


def _init_worker(images: np.ndarray | None) -> None:
    global _WORKER_IMAGES
    _WORKER_IMAGES = images


def _bank_task(task: tuple[int, bool, str, str | None]) -> np.ndarray | None:
    quality, flipped, digest, cache_root = task
    images = _WORKER_IMAGES
    assert images is not None
    src = np.ascontiguousarray(images[:, :, ::-1]) if flipped else images
    # degrade_batch is the reference path itself, so the bank is exact by construction
    out = degradations.degrade_batch(src, "jpeg", quality, np.random.default_rng(0))
    if cache_root is None:
        return out
    cache = StageCache(cache_root)
    meta = {"quality": quality, "flipped": flipped, "n_images": len(images), "pid": os.getpid()}
    cache.save_array("jpeg_bank", bank_key(digest, quality, flipped), out, meta)
    return None


def _check(images: torch.Tensor, levels: torch.Tensor) -> None:
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W) uint8, got {tuple(images.shape)} "
                         f"{images.dtype}")
    if levels.shape != (images.shape[0],):
        raise ValueError(f"levels must have shape ({images.shape[0]},), got "
                         f"{tuple(levels.shape)}")


def default_workers() -> int:
    """Bank-building processes: the CPUs this process may use (SLURM's cgroup or affinity)."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)

