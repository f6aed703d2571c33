"""The device data path draws every level of each degradation, both ends included, as the CPU
path does (tests/test_degradations.py::test_random_levels_cover_both_ends).

docs/method.md section 2: "A level is an integer drawn uniformly from its range, both ends
included". torch.randint's upper bound is exclusive where numpy's `endpoint=True` is not, so an
off-by-one here silently trains every device-path expert without its strongest degradation (or,
for jpeg, without the undegraded level 101). The oracle is the level table of the method
specification, written out here, and the binomial spread of uniform draws.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from study import augment, degradations
from study import device_degrade as dd
from study.augment import PAD, DeviceTrainStream
from study.data import Split

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# docs/method.md section 2: name -> (lowest level, highest level)
LEVELS = {"jpeg": (1, 101), "blur": (0, 50), "awgn": (0, 50), "saltpepper": (0, 25)}
N = 20_000


def test_the_level_table_is_the_method_specifications() -> None:
    assert {n: (d.lo, d.hi) for n, d in degradations.DEGRADATIONS.items()} == LEVELS


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(LEVELS))
def test_device_levels_cover_every_level_both_ends_included(name: str, device: str) -> None:
    lo, hi = LEVELS[name]
    g = torch.Generator(device=device)
    g.manual_seed(7)
    lv = dd.random_levels(name, N, g)
    assert lv.device.type == device and lv.dtype == torch.int64
    counts = np.bincount(lv.cpu().numpy() - lo, minlength=hi - lo + 1)
    assert len(counts) == hi - lo + 1            # nothing above hi, nothing below lo
    assert counts[0] > 0 and counts[-1] > 0      # both ends
    # uniform: each of the k levels N/k times, within 6 binomial standard deviations
    k = hi - lo + 1
    expected, sd = N / k, np.sqrt(N * (1 / k) * (1 - 1 / k))
    assert np.abs(counts - expected).max() < 6 * sd, counts


def _split(n: int, size: int = 8, seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    return Split(rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
                 rng.integers(0, 10, n).astype(np.int64))


def test_device_stream_plans_reach_both_ends_of_every_range() -> None:
    """DeviceTrainStream's per-image draws over 10 epochs of 200 images (2,000 a chunk): the
    levels of each chunk span their whole range, and so do the crop offsets (0..2*PAD) and the
    Cutout centres (every row and column of the image)."""
    split = _split(200)
    # a two-quality bank: jpeg levels 1..50 apply quality 1, 51..100 quality 100, 101 none
    bank = dd.build_jpeg_bank(split.images, qualities=(1, 100))
    names = ["jpeg", "blur", "awgn", "saltpepper"]
    stream = DeviceTrainStream(split, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), degradations=names,
                               batch_size=64, cutout=4, cutout_on="degraded", share="nothing",
                               salt_value=1, seed=11, device="cpu", jpeg_bank=bank)
    levels: dict[str, list[int]] = {d: [] for d in names}
    crops, centres = [], []
    for epoch in range(10):
        for p in stream.plan(epoch):
            for d, rows in p.chunks:
                levels[d] += p.levels[rows].tolist()
            crops.append(p.crop)
            centres.append(p.centre)
    for d in ("blur", "awgn", "saltpepper"):
        lo, hi = LEVELS[d]
        assert len(levels[d]) == 2000
        assert set(levels[d]) == set(range(lo, hi + 1)), d   # every level, ends included
    jpeg = np.array(levels["jpeg"])
    assert set(jpeg.tolist()) == {1, 100, 101}
    # 101 (no compression) is 1 of the 101 levels: ~20 of 2,000; quality 1 takes levels 1..50
    assert 5 <= (jpeg == 101).sum() <= 45
    assert abs((jpeg == 1).mean() - 50 / 101) < 0.05
    crop, centre = torch.cat(crops), torch.cat(centres)
    assert set(crop.flatten().tolist()) == set(range(2 * PAD + 1))
    assert set(centre.flatten().tolist()) == set(range(8))


def test_device_batches_apply_the_top_levels() -> None:
    """The drawn level is the one applied: a blur level 50 row is blurred at sigma 5.0 and a
    salt-and-pepper level 25 row carries about 25% hit elements, as the CPU operators give."""
    split = _split(64, size=16, seed=3)
    stream = DeviceTrainStream(split, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0),
                               degradations=["blur", "saltpepper"], batch_size=64, cutout=0,
                               cutout_on="none", share="nothing", salt_value=255, seed=5,
                               device="cpu")
    plan_g, noise_g = stream.generators(0)
    p = next(stream.plan(0, plan_g))
    clean, degraded = stream.images_for(p, noise_g)
    (_, blur_rows), (_, sp_rows) = p.chunks
    lv = p.levels
    top_blur = [i for i in range(blur_rows.start, blur_rows.stop) if lv[i] == 50]
    assert top_blur, "seed 5 no longer draws blur level 50 in the first step: pick another"
    # the CPU reference on the same draws: flip, blur at level 50 (sigma 5.0), pad-crop
    idx, flip, (oy, ox) = p.index[top_blur].numpy(), p.flip[top_blur].numpy(), p.crop[top_blur].T
    _, cpu = augment.flip_degrade(split.images[idx], flip, "blur", np.full(len(idx), 50),
                                  np.random.default_rng(0), 255)
    cpu = augment.pad_crop(cpu, oy.numpy(), ox.numpy())
    assert np.array_equal(degraded[top_blur].permute(0, 2, 3, 1).numpy(), cpu)
    # the share of changed elements inside the image (the crop's zero padding never changes):
    # pepper (0) or salt (255) hits an element with probability 1 - (1 - p/2)^2 = p - p^2/4
    oy, ox = p.crop[:, 0, None], p.crop[:, 1, None]
    at = torch.arange(16)
    inside = (((at >= PAD - oy) & (at < 16 + PAD - oy))[:, :, None]
              & ((at >= PAD - ox) & (at < 16 + PAD - ox))[:, None, :])[:, None]   # (B,1,H,W)
    changed = (degraded != clean) & inside
    hits = (changed.flatten(1).sum(1) / (3 * inside.flatten(1).sum(1)))[sp_rows].double()
    p_sp = lv[sp_rows].double() / 100
    assert lv[sp_rows].max() == 25
    assert torch.allclose(hits, p_sp - p_sp**2 / 4, atol=0.06)
