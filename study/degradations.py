"""The four degradations of docs/method.md on uint8 RGB images: the CPU reference path; and what
a degradation is (`Degradation`), for them and for the plugins of the `study.degradations`
entry points (study/registry.py, docs/plugins.md).

The reference is the PyPI package `imagedegrade` 0.2.3 as FusionDistill's datasets call it:
jpeg gets the PIL image, the other three get `np.asarray(pil_image)` (uint8, H x W x 3) and their
float/int result goes through `np.uint8(out.clip(0, 255))`, which TRUNCATES toward zero. Every
operator here reproduces that chain; the tests check them against `imagedegrade` itself.

Levels are integers (both ends inclusive); `Degradation.parameter` maps a level to the operator's
parameter exactly as the reference divides it (`level / 10.0` for blur, `level / 100.0` for
salt-and-pepper).

A plugin's degradation brings its own batched operators (`cpu`, and optionally `device`); the
four here are this module's reference operators, dispatched by name below (`salt_value` is
theirs alone). Either way `get(name)` finds a degradation, through the registry.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from scipy import ndimage

from study import registry

if TYPE_CHECKING:
    import torch

__all__ = [
    "CLEAN",
    "DEGRADATIONS",
    "CpuOperator",
    "Degradation",
    "DeviceOperator",
    "degrade",
    "degrade_batch",
    "get",
    "random_levels",
    "stream_index",
]

# (N, H, W, 3) uint8 images, (N,) int64 levels, the random stream to draw from -> (N, H, W, 3)
# uint8. Whatever it draws comes from `rng` (the copies' and the training stream's seeds make
# it reproducible); an identity-level image must come back unchanged.
CpuOperator = Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]
# The same on the device path: (N, 3, H, W) uint8 tensor, (N,) int64 levels on its device, a
# torch.Generator on that device -> (N, 3, H, W) uint8.
DeviceOperator = Callable[["torch.Tensor", "torch.Tensor", "torch.Generator"], "torch.Tensor"]


@dataclass(frozen=True)
class Degradation:
    name: str
    lo: int  # integer level range, both ends inclusive
    hi: int
    identity_level: int  # the level that returns the input unchanged
    stochastic: bool  # True when the output depends on the rng
    divisor: float = 1.0  # parameter = level / divisor, the reference's `deg_adj`
    # True when `device` returns `cpu`'s bytes for the same images and levels (a stochastic one
    # draws from a torch stream instead of numpy's: the same distribution, so False)
    bit_exact: bool = False
    cpu: CpuOperator | None = None  # a plugin's operator; None: this module's reference one
    device: DeviceOperator | None = None  # None: no device path (a plugin then trains on the CPU
    # path; for the built-ins device_degrade holds theirs)

    def parameter(self, level: int) -> float:
        """The operator's parameter for an integer level (jpeg q, blur sigma, awgn sigma, p)."""
        return _check_level(self, level) / self.divisor

    def levels(self, step: int = 1) -> list[int]:
        """range(lo, hi + 1, step), with hi always included (the test protocol's grid)."""
        if step < 1:
            raise ValueError(f"step must be >= 1, got {step}")
        out = list(range(self.lo, self.hi + 1, step))
        if out[-1] != self.hi:
            out.append(self.hi)
        return out


# The pseudo-degradation of the clean images: the base stage's stream, the test protocol's
# undegraded copy.
CLEAN = "clean"

# The built-ins, as the registry's entry points name them (bit_exact: device_degrade's ops).
# q in 1..100 is a PIL encode+decode; 101 is the reference's "clean" (any q outside [1, 100]).
JPEG = Degradation("jpeg", 1, 101, identity_level=101, stochastic=False, bit_exact=True)
# sigma 0.0-5.0 in steps of 0.1 pixels.
BLUR = Degradation("blur", 0, 50, identity_level=0, stochastic=False, divisor=10.0,
                   bit_exact=True)
# sigma 0-50 on the 0-255 scale.
AWGN = Degradation("awgn", 0, 50, identity_level=0, stochastic=True)
# p 0.00-0.25: up to 12.5% pepper and 12.5% salt per element.
SALTPEPPER = Degradation("saltpepper", 0, 25, identity_level=0, stochastic=True, divisor=100.0)
DEGRADATIONS: dict[str, Degradation] = {d.name: d for d in (JPEG, BLUR, AWGN, SALTPEPPER)}


def get(name: str) -> Degradation:
    """The degradation `name`, built-in or plugin; ValueError listing the installed names."""
    if name in DEGRADATIONS:
        return DEGRADATIONS[name]
    found = registry.load(registry.DEGRADATIONS, name)
    return _checked_plugin(name, found)


def _checked_plugin(name: str, d: Any) -> Degradation:
    """A plugin's entry point holds to the contract (docs/plugins.md), or a PluginError says
    which part it breaks."""
    where = f"degradation plugin {name!r} ({registry.find(registry.DEGRADATIONS, name).label})"
    if not isinstance(d, Degradation):
        raise registry.PluginError(f"{where}: the entry point must name a "
                                   f"study.degradations.Degradation, got {type(d).__name__}")
    problems = []
    if d.name != name:
        problems.append(f"its name is {d.name!r}, the entry point's {name!r}")
    if not d.lo <= d.identity_level <= d.hi:
        problems.append(f"identity_level {d.identity_level} outside [{d.lo}, {d.hi}]")
    if d.cpu is None:
        problems.append("it has no cpu operator")
    if problems:
        raise registry.PluginError(f"{where}: " + "; ".join(problems))
    return d


def stream_index(name: str) -> int:
    """A degradation's number in the seeds of its copies: a built-in's place (jpeg 0, blur 1,
    awgn 2, saltpepper 3, fixed forever), a plugin's from its name alone, so installing another
    plugin never changes the copies of this one."""
    if name in DEGRADATIONS:
        return list(DEGRADATIONS).index(name)
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")


def random_levels(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """n integer levels drawn uniformly from [lo, hi], both ends inclusive (int64)."""
    d = get(name)
    return rng.integers(d.lo, d.hi, size=n, endpoint=True, dtype=np.int64)


def degrade(
    image: np.ndarray,
    name: str,
    level: int,
    rng: np.random.Generator,
    salt_value: int = 1,
) -> np.ndarray:
    """One (H, W, 3) uint8 image -> its degraded (H, W, 3) uint8 copy at an integer level."""
    d = get(name)
    level = _check_level(d, level)
    _check_images(image, ndim=3)
    _check_salt(salt_value)
    if d.cpu is not None:   # a plugin: its batched operator on a batch of one
        return degrade_batch(image[None], name, level, rng)[0]
    if level == d.identity_level:
        return image.copy()
    p = d.parameter(level)
    if name == "jpeg":
        return _jpeg(image, int(p))
    if name == "blur":
        return _blur(image, p)
    if name == "awgn":
        return _apply_noise(image, rng.standard_normal(image.shape) * p)
    # saltpepper
    threshold = _binomial_threshold(p / 2)
    pepper = rng.random(image.shape) > threshold
    salt = rng.random(image.shape) > threshold
    return _apply_saltpepper(image, pepper, salt, salt_value)


def degrade_batch(
    images: np.ndarray,
    name: str,
    levels: np.ndarray | int,
    rng: np.random.Generator,
    salt_value: int = 1,
) -> np.ndarray:
    """(N, H, W, 3) uint8 images with one level each (scalar or (N,)) -> (N, H, W, 3) uint8.

    awgn and saltpepper draw the whole batch at once, so the output is reproducible from the rng
    state but is not the stream that N calls of `degrade` would consume.
    """
    d = get(name)
    _check_images(images, ndim=4)
    _check_salt(salt_value)
    n = images.shape[0]
    lv = np.asarray(levels)
    if lv.ndim == 0:
        lv = np.full(n, lv)
    if lv.shape != (n,):
        raise ValueError(f"levels must be a scalar or shape ({n},), got shape {lv.shape}")
    lv = np.array([_check_level(d, x) for x in lv.tolist()], dtype=np.int64)

    if d.cpu is not None:
        return _plugin_output(d, d.cpu(images, lv, rng), images.shape)
    if name == "awgn":
        # Same arithmetic as `degrade`: x + sigma * z in float64, clip, truncate. Level-0 images get
        # noise * 0 = 0 and come back unchanged.
        noise = rng.standard_normal(images.shape)
        noise *= (lv / d.divisor)[:, None, None, None]
        return _apply_noise(images, noise)
    if name == "saltpepper":
        thresholds = np.array([_binomial_threshold(d.parameter(x) / 2) for x in lv.tolist()])
        thresholds = thresholds[:, None, None, None]  # level 0 -> threshold 1.0: never hit
        pepper = rng.random(images.shape) > thresholds
        salt = rng.random(images.shape) > thresholds
        return _apply_saltpepper(images, pepper, salt, salt_value)

    out = images.copy()
    if name == "jpeg":
        for i, x in enumerate(lv.tolist()):
            if x != d.identity_level:
                out[i] = _jpeg(images[i], x)
        return out
    # blur: one 4-D filter per distinct sigma. sigma 0 on the batch axis makes scipy skip it, and
    # the H then W passes (uint8 in between) are the same as per image, so this is bit-exact.
    for x in np.unique(lv).tolist():
        if x == d.identity_level:
            continue
        idx = np.flatnonzero(lv == x)
        s = d.parameter(x)
        out[idx] = ndimage.gaussian_filter(
            images[idx], sigma=(0.0, s, s, 0.0), truncate=3.0, mode="nearest"
        )
    return out


# --- the operators -------------------------------------------------------------------------------


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    # imagedegrade.im.jpeg: PIL save with only `quality` set, so PIL defaults (4:2:0 chroma
    # subsampling, baseline, libjpeg's standard tables scaled by q), then decode.
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as decoded:
        return np.asarray(decoded.convert("RGB"), dtype=np.uint8).copy()


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    # imagedegrade.np.blur on a uint8 array: scipy keeps the input dtype and TRUNCATES each 1-D
    # pass (H, then W) into uint8, so the result is about 1 grey level darker than a rounded float
    # blur (only 12% of elements agree with round() at sigma 0.3) and a flat 128 image comes back
    # 127 at sigma 0.3. Calling scipy identically keeps that bit-exact; a GPU path must copy it.
    return ndimage.gaussian_filter(image, sigma=(sigma, sigma, 0.0), truncate=3.0, mode="nearest")


def _apply_noise(images: np.ndarray, noise: np.ndarray) -> np.ndarray:
    # imagedegrade.np.noise returns x + N(0, sigma) in float64 (one draw per pixel AND channel);
    # the caller's np.uint8(clip(0, 255)) then truncates, so the output is floor(clip(x + n)):
    # a mean shift of about -0.5 grey levels versus rounding, kept on purpose.
    noise += images
    np.clip(noise, 0.0, 255.0, out=noise)
    return noise.astype(np.uint8)


def _binomial_threshold(p: float) -> float:
    # imagedegrade.np.saltpepper draws np.random.binomial(1, p/2, shape). numpy's binomial for
    # n=1, p <= 0.5 is inversion: one uniform U per element, hit iff U > exp(1 * log(1 - p)).
    # Computing the same threshold with libm's exp/log makes `rng.random(shape) > threshold` the
    # same masks as `rng.binomial(1, p, shape)` on the same stream (the tests check this against
    # the reference with a legacy-seeded MT19937) at a tenth of the cost for per-image p.
    if p <= 0.0:
        return 1.0  # U < 1 always: never hit (binomial returns 0 without drawing)
    return math.exp(1.0 * math.log(1.0 - p))


def _apply_saltpepper(
    images: np.ndarray, pepper: np.ndarray, salt: np.ndarray, salt_value: int
) -> np.ndarray:
    # imagedegrade.np.saltpepper(x, p) with its default intensity_range (0, 1): first every element
    # independently with prob p/2 -> 0 (pepper), then, with a second independent mask over ALL
    # elements, prob p/2 -> 1 (salt), so salt overwrites pepper where both hit: P(salt) = p/2,
    # P(pepper) = p/2 * (1 - p/2). Masks are per element, i.e. per channel. The paper setting
    # keeps salt_value=1 (the reference's quirk); 255 is classic salt.
    out = images.copy()
    out[pepper] = 0
    out[salt] = salt_value
    return out


def _plugin_output(d: Degradation, out: Any, shape: tuple[int, ...]) -> np.ndarray:
    if not isinstance(out, np.ndarray) or out.dtype != np.uint8 or out.shape != shape:
        got = (f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray)
               else type(out).__name__)
        raise registry.PluginError(f"degradation plugin {d.name!r}: its cpu operator must return "
                                   f"uint8 images of shape {shape}, got {got}")
    return out


# --- argument checks -----------------------------------------------------------------------------


def _check_level(d: Degradation, level: object) -> int:
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)):
        raise ValueError(f"{d.name} level must be an integer, got {level!r}")
    if not d.lo <= level <= d.hi:
        raise ValueError(f"{d.name} level must be in [{d.lo}, {d.hi}], got {level}")
    return int(level)


def _check_images(images: np.ndarray, ndim: int) -> None:
    shape = "(H, W, 3)" if ndim == 3 else "(N, H, W, 3)"
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise ValueError(f"expected a uint8 numpy array of shape {shape}")
    if images.ndim != ndim or images.shape[-1] != 3:
        raise ValueError(f"expected shape {shape}, got {images.shape}")


def _check_salt(salt_value: int) -> None:
    if not 0 <= salt_value <= 255:
        raise ValueError(f"salt_value must be in [0, 255], got {salt_value}")
