"""The device data path against the CPU reference.

device_degrade vs degradations.py: blur and jpeg (bank) bit-exact; awgn and salt-and-pepper the
same distribution within stated tolerances (another random stream). DeviceTrainStream vs the
reference augmentation on the SAME draws (its StepPlan replayed through augment.flip_degrade,
pad_crop, normalise and cutout_from_centres): bit-identical batches for clean, blur and jpeg
chunks; noise chunks equal outside the noise and equal in distribution inside it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from study import augment, degradations
from study import device_degrade as dd
from study.augment import Batch, DeviceTrainStream, StepPlan
from study.cache import StageCache
from study.data import Split, make_synthetic

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _images(n_each: int = 10, seed: int = 0) -> np.ndarray:
    """Real-looking 32x32 images: oriented gratings (data.make_synthetic), 1/f noise (the power
    spectrum of photographs), piecewise-flat blocks with sharp edges, and flat greys, which are
    the hardest case for the truncating passes (a flat 128 comes back 126 at sigma 0.3)."""
    rng = np.random.default_rng(seed)
    gratings = make_synthetic(n_each, 10, seed=seed).train.images
    f = np.fft.fftfreq(32)
    amp = 1 / np.maximum(np.hypot(f[:, None], f[None, :]), 1 / 32)
    phase = rng.uniform(0, 2 * np.pi, (n_each, 32, 32, 3))
    pink = np.real(np.fft.ifft2(amp[None, :, :, None] * np.exp(1j * phase), axes=(1, 2)))
    pink = (pink - pink.mean((1, 2), keepdims=True)) / pink.std((1, 2), keepdims=True)
    pink = (pink * 50 + rng.uniform(40, 215, (n_each, 1, 1, 3))).clip(0, 255)
    blocks = np.repeat(np.repeat(rng.integers(0, 256, (n_each, 4, 4, 3)), 8, 1), 8, 2)
    greys = np.linspace(0, 255, n_each).round()
    greys[n_each // 2] = 128
    greys = greys[:, None, None, None] * np.ones((1, 32, 32, 3))
    return np.concatenate([gratings, pink, blocks, greys]).astype(np.uint8)


def _nchw(a: np.ndarray, device: str = "cpu") -> torch.Tensor:
    return torch.from_numpy(a).permute(0, 3, 1, 2).contiguous().to(device)


def _nhwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(0, 2, 3, 1).cpu().numpy()


# --- the operators -------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_blur_is_bit_exact_at_every_level(device: str) -> None:
    imgs = _images()
    x = _nchw(imgs, device)
    rng = np.random.default_rng(0)
    for level in range(51):
        ref = degradations.degrade_batch(imgs, "blur", level, rng)
        out = dd.blur(x, torch.full((len(imgs),), level, device=device))
        assert np.array_equal(_nhwc(out), ref), f"blur level {level}"
    mixed = rng.integers(0, 51, len(imgs))
    out = dd.blur(x, torch.from_numpy(mixed).to(device))
    assert np.array_equal(_nhwc(out), degradations.degrade_batch(imgs, "blur", mixed, rng))
    # each of the two passes truncates: a flat 128 loses one level per pass at sigma 0.3
    flat = torch.full((1, 3, 8, 8), 128, dtype=torch.uint8, device=device)
    assert dd.blur(flat, torch.tensor([3], device=device)).unique().tolist() == [126]


def test_awgn_matches_reference_in_distribution() -> None:
    # 100 images, ~180k mid-range elements at sigma 20: the standard error of a mean residual
    # is ~0.05, of its standard deviation ~0.03; tolerances are 6 standard errors.
    imgs = np.repeat(_images(10)[10:30], 5, axis=0)             # 1/f noise and blocks
    mid = (imgs >= 70) & (imgs <= 185)                           # 3 sigma from either clip
    g = torch.Generator().manual_seed(0)
    out = _nhwc(dd.degrade(_nchw(imgs), "awgn", torch.full((len(imgs),), 20), g))
    ref = degradations.degrade_batch(imgs, "awgn", 20, np.random.default_rng(0))
    for o in (out, ref):
        r = o.astype(float)[mid] - imgs[mid]
        assert abs(r.mean() - (-0.5)) < 0.3       # floor, not round: -0.5 grey levels
        assert abs(r.std() - np.sqrt(20**2 + 1 / 12)) < 0.2
    assert abs((out.astype(float)[mid] - ref[mid]).mean()) < 0.3
    # one draw per element: residuals of the three channels are uncorrelated
    res = out.astype(float) - imgs
    assert abs(np.corrcoef(res[..., 0].ravel(), res[..., 1].ravel())[0, 1]) < 0.02
    assert np.array_equal(_nhwc(dd.degrade(_nchw(imgs), "awgn", torch.zeros(len(imgs),
                                                                              dtype=torch.long),
                                           g)), imgs)
    white = np.full((8, 32, 32, 3), 255, np.uint8)               # clipped at 255, never wraps
    hi = _nhwc(dd.degrade(_nchw(white), "awgn", torch.full((8,), 50), g))
    assert hi.min() < 200 and (hi == 255).mean() > 0.45


@pytest.mark.parametrize("salt", [1, 255])
def test_saltpepper_matches_reference_in_distribution(salt: int) -> None:
    # p = 0.25: P(salt) = p/2 = 0.125 and P(pepper survives) = p/2 (1 - p/2) = 0.109; with
    # 196,608 elements the standard error is 0.0008, the tolerance 0.004 (5 SE).
    grey = np.full((64, 32, 32, 3), 100, np.uint8)
    g = torch.Generator().manual_seed(1)
    out = _nhwc(dd.degrade(_nchw(grey), "saltpepper", torch.full((64,), 25), g, salt))
    ref = degradations.degrade_batch(grey, "saltpepper", 25, np.random.default_rng(1), salt)
    for o in (out, ref):
        assert set(np.unique(o).tolist()) == {0, salt, 100}
        assert abs((o == salt).mean() - 0.125) < 0.004
        assert abs((o == 0).mean() - 0.125 * 0.875) < 0.004
    # masks per element (per channel): all three channels salt with prob 0.125^3, not 0.125
    assert abs((out == salt).all(-1).mean() - 0.125**3) < 0.001
    zero = torch.zeros(64, dtype=torch.long)
    assert np.array_equal(_nhwc(dd.degrade(_nchw(grey), "saltpepper", zero, g, salt)), grey)


def test_degrade_rejects_bad_input() -> None:
    g = torch.Generator()
    x = torch.zeros((2, 3, 4, 4), dtype=torch.uint8)
    with pytest.raises(ValueError, match="jpeg goes through a JpegBank"):
        dd.degrade(x, "jpeg", torch.ones(2, dtype=torch.long), g)
    with pytest.raises(ValueError, match="levels must have shape"):
        dd.degrade(x, "blur", torch.ones(3, dtype=torch.long), g)
    with pytest.raises(ValueError, match="uint8"):
        dd.degrade(x.float(), "blur", torch.ones(2, dtype=torch.long), g)


# --- the JPEG bank -------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_jpeg_bank_is_pil_exact_for_both_orientations(device: str) -> None:
    imgs = _images(3)
    qs = (1, 10, 50, 100)
    bank = dd.build_jpeg_bank(imgs, qualities=qs, flips=True, device=device)
    assert bank.data.shape == (2, 4, len(imgs), 3, 32, 32) and bank.nbytes == 2 * 4 * imgs.size
    rng = np.random.default_rng(0)
    index = rng.integers(0, len(imgs), 40)
    levels = rng.choice([1, 10, 50, 100, 101], 40)
    flip = rng.random(40) < 0.5
    clean = imgs[index].copy()
    clean[flip] = clean[flip, :, ::-1]
    want = degradations.degrade_batch(clean, "jpeg", levels, rng)
    got = bank.lookup(_nchw(clean, device), torch.from_numpy(index).to(device),
                      torch.from_numpy(levels).to(device), torch.from_numpy(flip).to(device))
    assert np.array_equal(_nhwc(got), want)
    # the nearest banked quality stands in for the others (ties to the higher), 101 stays
    eff = bank.effective_levels(torch.tensor([1, 3, 6, 30, 76, 99, 101], device=device))
    assert eff.tolist() == [1, 1, 10, 50, 100, 100, 101]


def test_jpeg_without_flip_bank_mirrors_the_jpeg_and_that_differs() -> None:
    imgs = _images(3)
    bank = dd.build_jpeg_bank(imgs, qualities=(10,), flips=False)
    n = len(imgs)
    flip = torch.ones(n, dtype=torch.bool)
    got = _nhwc(bank.lookup(_nchw(imgs[:, :, ::-1].copy()), torch.arange(n),
                            torch.full((n,), 10), flip))
    jpeg = degradations.degrade_batch(imgs, "jpeg", 10, np.random.default_rng(0))
    assert np.array_equal(got, jpeg[:, :, ::-1])
    exact = degradations.degrade_batch(np.ascontiguousarray(imgs[:, :, ::-1]), "jpeg", 10,
                                       np.random.default_rng(0))
    # JPEG does not commute with a flip (encoder rounding, chroma subsampling): why the
    # default bank holds both orientations
    assert (got != exact).mean() > 0.01


def test_jpeg_bank_goes_through_the_cache_and_worker_processes(tmp_path, monkeypatch) -> None:
    imgs = _images(2)
    cache = StageCache(tmp_path)
    built = dd.build_jpeg_bank(imgs, qualities=(5, 60), cache=cache, workers=2)
    assert cache.summary() == {"jpeg_bank": 4}

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("encoded again instead of loading the cache")
    monkeypatch.setattr(degradations, "degrade_batch", boom)
    again = dd.build_jpeg_bank(imgs, qualities=(60, 5), cache=cache)
    assert torch.equal(again.data, built.data)
    monkeypatch.undo()
    serial = dd.build_jpeg_bank(imgs, qualities=(5, 60))
    assert torch.equal(serial.data, built.data)
    other = dd.build_jpeg_bank(imgs[:3], qualities=(5,), cache=cache)   # another content key
    assert other.data.shape[2] == 3 and cache.summary() == {"jpeg_bank": 6}


# --- DeviceTrainStream -----------------------------------------------------------------------


def _split(n: int = 40) -> tuple[Split, tuple, tuple]:
    ds = make_synthetic(n, 10, seed=0)
    return ds.train, ds.mean, ds.std


def _stream(split: Split, mean: tuple, std: tuple, names: list[str], **kw: object
            ) -> DeviceTrainStream:
    args = dict(degradations=names, batch_size=16, cutout=8, cutout_on="degraded",
                share="images", salt_value=1, seed=3, device="cpu")
    return DeviceTrainStream(split, mean, std, **(args | kw))


def _reference(stream: DeviceTrainStream, split: Split, mean: tuple, std: tuple, p: StepPlan,
               rng: np.random.Generator) -> tuple[Batch, np.ndarray, np.ndarray]:
    """The CPU reference augmentation replayed on the device stream's draws."""
    idx, flip, lv = p.index.numpy(), p.flip.numpy(), p.levels.numpy()
    cleans, degs = [], []
    for d, rows in p.chunks:
        c, g = augment.flip_degrade(split.images[idx[rows]], flip[rows], d, lv[rows], rng,
                                    stream.salt_value)
        cleans.append(c)
        degs.append(g)
    oy, ox = p.crop.numpy().T
    clean_u8 = augment.pad_crop(np.concatenate(cleans), oy, ox)
    deg_u8 = augment.pad_crop(np.concatenate(degs), oy, ox)
    clean, degraded = augment.normalise(clean_u8, mean, std), augment.normalise(deg_u8, mean, std)
    cy, cx = p.centre.numpy().T
    mask = torch.from_numpy(augment.cutout_from_centres(cy, cx, 32, 32, stream.cutout))
    if stream.cutout_on in ("clean", "both"):
        clean = clean * mask
    if stream.cutout_on in ("degraded", "both"):
        degraded = degraded * mask
    return Batch(clean, degraded, torch.from_numpy(split.labels[idx]), p.chunks), clean_u8, deg_u8


@pytest.mark.parametrize(("cutout_on", "share"), [("degraded", "nothing"), ("both", "nothing"),
                                                   ("clean", "nothing"), ("both", "reference")])
def test_device_stream_equals_reference_on_the_same_draws(cutout_on: str, share: str) -> None:
    # "reference": the plan's shared flips, crops and jpeg/blur Cutout centres replay through
    # the CPU operators as well
    split, mean, std = _split()
    bank = dd.build_jpeg_bank(split.images, qualities=(1, 20, 40, 60, 80, 100))
    s = _stream(split, mean, std, ["clean", "blur", "jpeg"], jpeg_bank=bank,
                cutout_on=cutout_on, share=share)
    plan_g, noise_g = s.generators(0)
    steps = 0
    for p in s.plan(0, plan_g):
        got = s.batch(p, noise_g)
        want, _, _ = _reference(s, split, mean, std, p, np.random.default_rng(0))
        assert got.chunks == want.chunks
        assert torch.equal(got.labels, want.labels)
        assert torch.equal(got.clean, want.clean)
        assert torch.equal(got.degraded, want.degraded)
        steps += 1
    assert steps == s.steps_per_epoch == 3          # 40 images, 16 a step: 16, 16, 8
    jpeg_levels = next(iter(s.plan(0))).levels[32:48]
    assert set(jpeg_levels.tolist()) <= {1, 20, 40, 60, 80, 100, 101}


def test_device_stream_noise_matches_reference_in_distribution() -> None:
    # Same draws, different noise stream. Outside the noise (level-0 rows, elements no mask
    # hit) the batches are equal; inside it, mean, spread and hit rate agree within the
    # tolerances below (>= 4 standard errors at 80 images x 3072 elements per chunk).
    split, mean, std = _split(80)
    s = _stream(split, mean, std, ["awgn", "saltpepper"], batch_size=80)
    plan_g, noise_g = s.generators(0)
    p = next(s.plan(0, plan_g))
    clean, deg = (_nhwc(t) for t in s.images_for(p, noise_g))
    _, ref_clean, ref_deg = _reference(s, split, mean, std, p, np.random.default_rng(0))
    assert np.array_equal(clean, ref_clean)
    lv = p.levels.numpy()
    (_, aw), (_, sp) = p.chunks
    for name in ("awgn", "saltpepper"):
        rows = aw if name == "awgn" else sp
        zero = np.flatnonzero(lv[rows] == 0) + rows.start
        assert np.array_equal(deg[zero], ref_deg[zero])
    res, ref_res = (d[aw].astype(float) - clean[aw] for d in (deg, ref_deg))
    assert abs(res.mean() - ref_res.mean()) < 0.4        # SE of the difference ~0.085
    assert abs(res.std() / ref_res.std() - 1) < 0.03
    c, d, r = clean[sp], deg[sp], ref_deg[sp]
    hit, ref_hit = (d != c), (r != c)
    assert abs(hit.mean() - ref_hit.mean()) < 0.005
    assert np.isin(d[hit], [0, 1]).all() and np.isin(r[ref_hit], [0, 1]).all()


def test_device_stream_is_a_pure_function_of_seed_and_epoch() -> None:
    split, mean, std = _split()
    bank = dd.build_jpeg_bank(split.images, qualities=(30, 90))
    names = ["jpeg", "blur", "awgn", "saltpepper"]
    a = _stream(split, mean, std, names, jpeg_bank=bank)
    b = _stream(split, mean, std, names, jpeg_bank=bank)
    e1 = list(a.epoch(1))
    for x, y in zip(e1, b.epoch(1)):
        assert torch.equal(x.degraded, y.degraded) and torch.equal(x.clean, y.clean)
        assert torch.equal(x.labels, y.labels)
    e0 = next(iter(a.epoch(0)))
    assert not torch.equal(e0.degraded, e1[0].degraded)
    assert torch.equal(next(iter(a.epoch(1))).degraded, e1[0].degraded)   # no hidden state
    other = _stream(split, mean, std, names, jpeg_bank=bank, seed=4)
    assert not torch.equal(next(iter(other.epoch(1))).labels, e1[0].labels)
    # the TrainStream interface: same steps, shapes, chunk layout; the four chunks hold the
    # same images (share="images") but independent flips
    ref = augment.TrainStream(split, mean, std, degradations=names, batch_size=16, cutout=8,
                              cutout_on="degraded", share="images", salt_value=1, seed=3,
                              device="cpu")
    r0 = next(iter(ref.epoch(0)))
    assert a.steps_per_epoch == ref.steps_per_epoch and e0.chunks == r0.chunks
    assert e0.clean.shape == r0.clean.shape == (64, 3, 32, 32) and e0.clean.dtype == r0.clean.dtype
    assert all(torch.equal(e0.labels[:16], e0.labels[r]) for _, r in e0.chunks)
    p0 = next(iter(a.plan(0)))
    assert not torch.equal(p0.flip[:16], p0.flip[16:32])
    with pytest.raises(ValueError, match="valid names"):
        _stream(split, mean, std, ["fog"])
    with pytest.raises(ValueError, match="jpeg bank holds"):
        _stream(split, mean, std, ["jpeg"], jpeg_bank=dd.build_jpeg_bank(split.images[:5],
                                                                         qualities=(50,)))


def test_device_stream_base_stage_shares_one_copy() -> None:
    split, mean, std = _split()
    s = _stream(split, mean, std, ["clean"], cutout_on="clean")
    b = next(iter(s.epoch(0)))
    holes = (b.clean == 0).all(1).flatten(1).sum(1)
    assert (holes >= 16).all() and (b.degraded == 0).all(1).sum() == 0   # Cutout on clean only
    assert torch.equal(b.degraded * (b.clean != 0), b.clean)   # same image outside the hole
