"""The four degradations against the reference operators (imagedegrade 0.2.3, test-only oracle)."""

from __future__ import annotations

import io

import imagedegrade.np as ref
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy import ndimage
from scipy.special import ndtr

from study import degradations
from study.degradations import DEGRADATIONS, degrade, degrade_batch, get, random_levels


def natural_image(size: int, seed: int) -> np.ndarray:
    """A deterministic natural-looking RGB image: smooth gradients, hard edges, fine texture and
    saturated 0/255 areas (so clipping paths are exercised)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    f = rng.uniform(0.5, 2.0, 3)
    img = np.stack(
        [
            40 + 150 * xx + 30 * np.sin(2 * np.pi * f[0] * yy),
            60 + 120 * yy + 25 * np.cos(2 * np.pi * f[1] * xx),
            90 + 80 * (1 - xx) * yy + 20 * np.sin(2 * np.pi * f[2] * (xx + yy)),
        ],
        axis=-1,
    )
    cx, cy, r = rng.uniform(0.3, 0.7, 3) * (1, 1, 0.5)
    img[(xx - cx) ** 2 + (yy - cy) ** 2 < r**2] = rng.uniform(0, 255, 3)  # a disk: sharp edges
    img[: size // 8, :] = 0.0  # a black bar
    img[-size // 8 :, : size // 2] = 255.0  # a white bar
    img += ndimage.gaussian_filter(rng.normal(0, 14, img.shape), (0.7, 0.7, 0))  # texture
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


IMAGES = [natural_image(32, 0), natural_image(32, 1), natural_image(64, 2)]


def legacy_generator(seed: int) -> np.random.Generator:
    """A Generator on the same MT19937 stream as `np.random.seed(seed)` (the reference's RNG)."""
    bit_generator = np.random.MT19937()
    bit_generator.state = np.random.RandomState(seed).get_state(legacy=False)
    return np.random.Generator(bit_generator)


def reference_uint8(out: np.ndarray) -> np.ndarray:
    """What FusionDistill's datasets do to a non-jpeg operator's output."""
    return np.uint8(out.clip(0, 255))


# --- registry ------------------------------------------------------------------------------------


def test_registry_ranges_parameters_and_levels():
    expected = {  # name: (lo, hi, identity, stochastic, n_levels)
        "jpeg": (1, 101, 101, False, 101),
        "blur": (0, 50, 0, False, 51),
        "awgn": (0, 50, 0, True, 51),
        "saltpepper": (0, 25, 0, True, 26),
    }
    assert list(DEGRADATIONS) == list(expected)
    for name, (lo, hi, ident, stoch, n) in expected.items():
        d = get(name)
        assert (d.name, d.lo, d.hi, d.identity_level, d.stochastic) == (name, lo, hi, ident, stoch)
        assert d.levels() == list(range(lo, hi + 1)) and len(d.levels()) == n
    # the test protocol of docs/method.md
    assert sum(len(d.levels()) for d in DEGRADATIONS.values()) == 229

    # The reference divides the integer level: deg_lev / deg_adj.
    assert get("jpeg").parameter(1) == 1.0 and get("jpeg").parameter(101) == 101.0
    assert get("blur").parameter(37) == 37 / 10.0 == 3.7 and get("blur").parameter(50) == 5.0
    assert get("awgn").parameter(50) == 50.0
    assert get("saltpepper").parameter(25) == 0.25 and get("saltpepper").parameter(7) == 0.07
    assert get("blur").parameter(np.int64(3)) == 0.3

    assert get("jpeg").levels(10) == [1, 11, 21, 31, 41, 51, 61, 71, 81, 91, 101]
    assert get("saltpepper").levels(7) == [0, 7, 14, 21, 25]  # hi always included
    assert get("blur").levels(100) == [0, 50]
    with pytest.raises(ValueError):
        get("blur").levels(0)
    for bad in (-1, 51, 2.5, True):
        with pytest.raises(ValueError, match="blur level"):
            get("blur").parameter(bad)
    with pytest.raises(ValueError, match=r"\[1, 101\]"):
        degrade(IMAGES[0], "jpeg", 0, np.random.default_rng(0))


def test_get_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="jpeg, blur, awgn, saltpepper") as err:
        get("gaussian")
    assert "'gaussian'" in str(err.value)
    with pytest.raises(ValueError, match="valid names"):
        degrade(IMAGES[0], "noise", 3, np.random.default_rng(0))


def test_bad_image_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="uint8"):
        degrade(IMAGES[0].astype(np.float32), "blur", 3, rng)
    with pytest.raises(ValueError, match="shape"):
        degrade(IMAGES[0][..., :1], "blur", 3, rng)
    with pytest.raises(ValueError, match="shape"):
        degrade_batch(IMAGES[0], "blur", 3, rng)
    with pytest.raises(ValueError, match="levels must be"):
        degrade_batch(np.stack(IMAGES[:2]), "blur", np.array([1, 2, 3]), rng)
    with pytest.raises(ValueError, match="salt_value"):
        degrade(IMAGES[0], "saltpepper", 3, rng, salt_value=256)


# --- identity ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(DEGRADATIONS))
def test_identity_level_returns_input_unchanged(name):
    d = get(name)
    for img in IMAGES:
        out = degrade(img, name, d.identity_level, np.random.default_rng(0))
        assert out is not img and out.dtype == np.uint8
        np.testing.assert_array_equal(out, img)
    batch = np.stack(IMAGES[:2])
    out = degrade_batch(batch, name, d.identity_level, np.random.default_rng(0))
    np.testing.assert_array_equal(out, batch)
    # ...and every non-identity extreme changes a natural image.
    worst = d.lo if d.identity_level == d.hi else d.hi
    assert not np.array_equal(degrade(IMAGES[2], name, worst, np.random.default_rng(0)), IMAGES[2])


# --- deterministic operators: bit-exact -----------------------------------------------------------


@pytest.mark.parametrize("quality", [1, 5, 10, 25, 50, 75, 90, 100])
def test_jpeg_bit_exact_vs_pil_and_imagedegrade(quality):
    for img in IMAGES:
        out = degrade(img, "jpeg", quality, np.random.default_rng(0))
        np.testing.assert_array_equal(out, ref.jpeg(img, quality))
        buf = io.BytesIO()
        # PIL's default for RGB is 4:2:0 (subsampling=2): spell it out to pin "PIL defaults".
        Image.fromarray(img).save(buf, "JPEG", quality=quality, subsampling=2)
        np.testing.assert_array_equal(out, np.asarray(Image.open(io.BytesIO(buf.getvalue()))))
        assert out.shape == img.shape and out.dtype == np.uint8
        assert not np.array_equal(out, img)
    # Lower quality, more error (q=1 is far worse than q=100).
    err = {
        q: np.abs(
            degrade(IMAGES[2], "jpeg", q, np.random.default_rng(0)).astype(int) - IMAGES[2]
        ).mean()
        for q in (1, 100)
    }
    assert err[1] > 5 * err[100]


@pytest.mark.parametrize("level", [1, 3, 8, 17, 24, 27, 50])
def test_blur_bit_exact_vs_scipy_and_imagedegrade(level):
    sigma = level / 10.0  # the reference's deg_lev / 10.0
    for img in IMAGES:
        out = degrade(img, "blur", level, np.random.default_rng(0))
        np.testing.assert_array_equal(out, reference_uint8(ref.blur(img, sigma)))
        direct = ndimage.gaussian_filter(img, sigma=(sigma, sigma, 0), truncate=3.0, mode="nearest")
        np.testing.assert_array_equal(out, direct)
        # Channels are blurred separately: blurring one channel alone gives the same plane.
        np.testing.assert_array_equal(
            out[..., 1],
            degrade(np.repeat(img[..., 1:2], 3, axis=-1), "blur", level, np.random.default_rng(0))[
                ..., 0
            ],
        )


def test_blur_keeps_the_reference_truncation():
    # scipy writes each 1-D pass into uint8 by truncation, so the reference darkens some flat
    # regions by a grey level (a flat 128 image at sigma 0.3 comes back 127). We keep that.
    flat = np.full((16, 16, 3), 128, np.uint8)
    out = degrade(flat, "blur", 3, np.random.default_rng(0))
    np.testing.assert_array_equal(out, reference_uint8(ref.blur(flat, 0.3)))
    assert out.max() < 128
    np.testing.assert_array_equal(
        degrade(flat, "blur", 10, np.random.default_rng(0)), flat
    )  # sigma 1.0 is exact


# --- awgn ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [1, 7, 25, 50])
def test_awgn_arithmetic_matches_reference_given_the_same_noise(sigma):
    # The reference draws N(0, sigma) from numpy's global legacy RNG (Box-Muller), which a
    # Generator cannot reproduce; so pin the arithmetic (float64 add, clip, truncate) exactly by
    # feeding our helper the reference's own noise, and check the draws in distribution below.
    for seed, img in enumerate(IMAGES):
        np.random.seed(seed)
        expected = reference_uint8(ref.noise(img, sigma))
        np.random.seed(seed)
        noise = np.random.normal(0.0, sigma, img.shape)
        np.testing.assert_array_equal(degradations._apply_noise(img, noise), expected)


def test_awgn_distribution():
    n = 256
    grey = np.full((n, n, 3), 128, np.uint8)
    out = degrade(grey, "awgn", 10, np.random.default_rng(0)).astype(np.float64)
    # floor(128 + N(0, 10)): mean 127.5, variance 100 + 1/12 (no clipping at 12.8 sigma).
    for c in range(3):
        assert abs(out[..., c].mean() - 127.5) < 0.15  # SE 0.04
        assert abs(out[..., c].std() - np.sqrt(100 + 1 / 12)) < 0.12  # SE 0.03
    # Independent per pixel AND channel: no correlation across channels or neighbours.
    z = (out - out.mean()).reshape(-1, 3)
    corr = np.corrcoef(z.T)
    assert np.abs(corr[np.triu_indices(3, 1)]).max() < 0.02  # SE 0.004
    assert abs(np.corrcoef(out[:, :-1, 0].ravel(), out[:, 1:, 0].ravel())[0, 1]) < 0.02

    # Truncation, not rounding, at the clip: x=10, sigma=20 gives 0 iff 10 + n < 1.
    dark = np.full((n, n, 3), 10, np.uint8)
    zeros = (degrade(dark, "awgn", 20, np.random.default_rng(1)) == 0).mean()
    assert abs(zeros - ndtr(-9 / 20)) < 0.004  # 0.326; rounding would give 0.317, SE 0.001
    np.random.seed(1)
    ref_zeros = (reference_uint8(ref.noise(dark, 20)) == 0).mean()
    assert abs(zeros - ref_zeros) < 0.006
    bright = np.full((n, n, 3), 250, np.uint8)
    full = (degrade(bright, "awgn", 20, np.random.default_rng(2)) == 255).mean()
    assert abs(full - ndtr(-5 / 20)) < 0.004  # 255 iff 250 + n >= 255


# --- salt and pepper -----------------------------------------------------------------------------


@pytest.mark.parametrize("level", [1, 10, 25])
def test_saltpepper_bit_exact_on_the_reference_stream(level):
    # On the same MT19937 stream our uniform thresholds make exactly numpy's binomial masks, so the
    # output equals imagedegrade's (pepper mask over the whole image first, then salt mask).
    p = level / 100.0
    for seed, img in enumerate(IMAGES):
        np.random.seed(seed)
        expected = reference_uint8(ref.saltpepper(img, p))  # the paper: salt = 1
        out = degrade(img, "saltpepper", level, legacy_generator(seed))
        np.testing.assert_array_equal(out, expected)
        np.random.seed(seed)
        expected_255 = reference_uint8(ref.saltpepper(img, p, (0, 255)))
        out_255 = degrade(img, "saltpepper", level, legacy_generator(seed), salt_value=255)
        np.testing.assert_array_equal(out_255, expected_255)
        # A batch of one draws the same stream as one image.
        batch = degrade_batch(img[None], "saltpepper", level, legacy_generator(seed))
        np.testing.assert_array_equal(batch[0], expected)


def test_saltpepper_fractions_and_independence():
    n = 256
    grey = np.full((n, n, 3), 128, np.uint8)
    out = degrade(grey, "saltpepper", 20, np.random.default_rng(0))  # p = 0.2
    assert set(np.unique(out).tolist()) == {0, 1, 128}
    salt, pepper = out == 1, out == 0
    for c in range(3):  # SE about 0.0012 each
        assert abs(salt[..., c].mean() - 0.1) < 0.005  # p/2
        assert abs(pepper[..., c].mean() - 0.1 * 0.9) < 0.005  # p/2, unless salt overwrote it
    # Per element, not per pixel: channels hit independently.
    assert abs((salt[..., 0] & salt[..., 1]).mean() - 0.01) < 0.002
    assert abs((pepper[..., 0] & salt[..., 2]).mean() - 0.009) < 0.002


def test_salt_value_1_vs_255():
    grey = np.full((64, 64, 3), 128, np.uint8)
    out_1 = degrade(grey, "saltpepper", 25, np.random.default_rng(5))
    out_255 = degrade(grey, "saltpepper", 25, np.random.default_rng(5), salt_value=255)
    assert set(np.unique(out_1).tolist()) == {0, 1, 128}
    assert set(np.unique(out_255).tolist()) == {0, 128, 255}
    np.testing.assert_array_equal(out_1 == 1, out_255 == 255)  # same masks, other salt
    np.testing.assert_array_equal(out_1 == 0, out_255 == 0)
    assert (out_1 == 1).mean() > 0.1


# --- reproducibility and batches -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["awgn", "saltpepper"])
def test_stochastic_reproducible_from_seed(name):
    img, batch = IMAGES[2], np.stack(IMAGES[:2])
    level = get(name).hi // 2
    a = degrade(img, name, level, np.random.default_rng(7))
    np.testing.assert_array_equal(a, degrade(img, name, level, np.random.default_rng(7)))
    assert not np.array_equal(a, degrade(img, name, level, np.random.default_rng(8)))
    b = degrade_batch(batch, name, level, np.random.default_rng(7))
    np.testing.assert_array_equal(b, degrade_batch(batch, name, level, np.random.default_rng(7)))
    assert not np.array_equal(b, degrade_batch(batch, name, level, np.random.default_rng(8)))
    # A scalar level is the same as that level for every image.
    levels = np.full(len(batch), level)
    np.testing.assert_array_equal(b, degrade_batch(batch, name, levels, np.random.default_rng(7)))


@pytest.mark.parametrize("name", ["jpeg", "blur"])
def test_deterministic_batch_equals_per_image(name):
    images = np.stack([IMAGES[0], IMAGES[1], IMAGES[0], IMAGES[1], IMAGES[0]])
    d = get(name)
    levels = np.array([d.identity_level, 3, 3, d.hi if name == "blur" else 1, 27])
    out = degrade_batch(images, name, levels, np.random.default_rng(0))
    assert out.shape == images.shape and out.dtype == np.uint8
    for i in range(len(images)):
        np.testing.assert_array_equal(
            out[i], degrade(images[i], name, int(levels[i]), np.random.default_rng(0))
        )


def test_stochastic_batch_uses_each_images_level():
    grey = np.full((6, 64, 64, 3), 128, np.uint8)
    sigmas = np.array([0, 5, 40, 0, 20, 1])
    out = degrade_batch(grey, "awgn", sigmas, np.random.default_rng(0)).astype(float)
    for i, s in enumerate(sigmas):
        if s == 0:
            np.testing.assert_array_equal(out[i], grey[i])
        else:  # floor(x + s z): std sqrt(s^2 + 1/12); SE s / 110
            assert abs(out[i].std() - np.sqrt(s**2 + 1 / 12)) < 0.06 * s + 0.05

    levels = np.array([0, 25, 10, 0, 2, 25])
    out = degrade_batch(grey, "saltpepper", levels, np.random.default_rng(0), salt_value=255)
    for i, lv in enumerate(levels):
        hit = (out[i] != 128).mean()
        expected = 1 - (1 - lv / 200) ** 2  # hit by pepper or salt
        assert abs(hit - expected) < 0.02 if lv else hit == 0.0
    assert set(np.unique(out).tolist()) == {0, 128, 255}


def test_random_levels_cover_both_ends():
    rng = np.random.default_rng(0)
    for name in DEGRADATIONS:
        d = get(name)
        lv = random_levels(name, 20_000, rng)
        assert lv.shape == (20_000,) and np.issubdtype(lv.dtype, np.integer)
        assert lv.min() == d.lo and lv.max() == d.hi
        counts = np.bincount(lv - d.lo, minlength=d.hi - d.lo + 1)
        assert len(counts) == d.hi - d.lo + 1 and counts.min() > 0  # every level, ends included
        uniform = 20_000 / len(counts)
        assert np.abs(counts - uniform).max() < 6 * np.sqrt(uniform)
    np.testing.assert_array_equal(
        random_levels("blur", 50, np.random.default_rng(3)),
        random_levels("blur", 50, np.random.default_rng(3)),
    )


# --- properties ----------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    name=st.sampled_from(list(DEGRADATIONS)),
    height=st.integers(4, 40),
    width=st.integers(4, 40),
    seed=st.integers(0, 2**32 - 1),
    salt_value=st.sampled_from([1, 255]),
)
def test_property_shape_dtype_and_no_mutation(data, name, height, width, seed, salt_value):
    d = get(name)
    level = data.draw(st.integers(d.lo, d.hi), label="level")
    img = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    before = img.copy()
    out = degrade(img, name, level, np.random.default_rng(seed), salt_value=salt_value)
    assert out.shape == img.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(img, before)  # the input is never written
    if level == d.identity_level:
        np.testing.assert_array_equal(out, img)
    if name == "saltpepper":  # only ever pepper or the salt value replaces an element
        changed = out != img
        assert np.isin(out[changed], [0, salt_value]).all()
    if not d.stochastic:
        batch = degrade_batch(img[None], name, level, np.random.default_rng(0))
        np.testing.assert_array_equal(batch[0], out)
