"""The training data path: batches of (clean, degraded) pairs with the reference augmentation.

Order per image, as the reference code does it: random horizontal flip of the clean image ->
degradation at a fresh random level -> zero-pad 4 and the SAME random crop for both copies ->
to tensor + normalise -> Cutout (one hole, one mask shared by both copies; which copies get it is a
per-stage choice). A step draws `batch_size` images per degradation; an epoch is one pass of the
shuffled train set per degradation (len(train) / batch_size steps), as the reference's loaders do.

Two streams with one interface (`steps_per_epoch`, `epoch(e) -> Iterator[Batch]`):
- `TrainStream`: numpy on the CPU, the bit-exact reference (degradations.py), then a copy to the
  device. On a GPU it is bound by the CPU (PIL, scipy, numpy noise) and by the copies.
- `DeviceTrainStream`: the training set resident on the device as uint8, every step a handful of
  batched torch ops there (device_degrade.py). Same semantics; random draws come from
  torch.Generators instead of numpy, so it is not the same stream: given the same draws (a
  `StepPlan`) blur, jpeg (bank) and identity levels give bit-identical batches, awgn and
  salt-and-pepper the same distribution (tests/test_device_degrade.py).

What the chunks of a multi-degradation step share (`share`, both streams):
- "nothing": each chunk is its own shuffle of the training set: other images, other draws;
- "images": the same images in every chunk (one shuffle), each chunk drawing its own flips, crops,
  levels and Cutout masks;
- "geometry": the same images and, per image, the same flip and the same crop in every chunk
  (the clean copies of the chunks are then identical); levels and masks still per chunk;
- "reference": "geometry", plus the coupling the reference code gets from giving its four
  per-degradation loaders identically seeded generators. Read from its code (not run): its
  workers draw flip and crop from torch's RNG, the level from Python's `random.randint` and the
  Cutout centre from numpy's global RNG, and the four loaders' workers start from equal states
  of all three. Hence, per image: (a) flip and crop agree in every chunk (torch's RNG is used by
  nothing else); (b) blur (0..50, /10) and awgn (0..50) call randint over the same 51 values
  from equal states, so an image gets the same blur and noise level index; (c) jpeg and blur
  draw no numpy numbers before Cutout (PIL, scipy), so their chunks' Cutout masks agree, while
  the awgn and salt-and-pepper chunks draw their noise from numpy first and get other masks.
  We reproduce (a), (b) and (c) exactly as couplings: the awgn chunk takes the blur chunk's level
  per image and the blur chunk takes the jpeg chunk's Cutout centre per image (when both names
  of a pair are among the degradations; any other chunk, "clean" included, draws its own).
  What we do not reproduce: the reference's random streams themselves (ours are numpy
  Generators or torch.Generators seeded from (seed, epoch)); and a transient coupling of the
  jpeg and salt-and-pepper levels with the blur level. randint over 101, 51 and 26 values keeps
  the top 7, 6 and 5 bits of one 32-bit Mersenne Twister word and draws again when the value is
  too large; from equal states the three loaders read the same words, so while they stay in
  step an image gets blur = (jpeg - 1) // 2 and saltpepper = blur // 2. A word that one rejects
  and the other accepts puts them out of step: for jpeg and blur only a top-7 value of
  101 (1 word in 128; 101 in 128 give both an image, 26 in 128 are rejected by both), so the
  coupling lasts a geometric number of images, 101 on average (median 70); for blur and
  salt-and-pepper a top-6 value of 51 (1 in 64 against 51 accepted): 51 on average. It happens
  once per worker process: the reference's train loaders keep 2 persistent workers, seeded once
  for the whole run (torch's worker loop, then its seed_worker, seed Python's `random` with
  base_seed + worker id; base_seed is the first draw of the loader's generator, seeded 123 in
  all four loaders), and nothing else in a worker draws from Python's `random`. With those seeds
  (base_seed as torch 2.14 draws it) the coupling lasts 155 and 51 images of workers 0 and 1.
  Afterwards the streams fall back in step only by chance: over 200,000 draws of one state
  blur = (jpeg - 1) // 2 holds for 2.0% of images, chance level (1/51). The ~200 coupled
  images are 0.004% of the 5 million a 100-epoch run on 50,000 images draws per loader.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from study import degradations, device_degrade
from study.cache import StageCache
from study.data import Split
from study.degradations import CLEAN
from study.device_degrade import JpegBank

PAD = 4           # reference: RandomCrop(32, padding=4), fill 0
SHARE = ("nothing", "images", "geometry", "reference")   # see the module docstring
# Under share="reference": (source, follower) chunks where the follower takes the source's draw
# per image. blur and awgn: both levels are randint(0, 50) from equal Python states (sigma =
# level / 10 resp. level); jpeg and blur: equal numpy states at Cutout time.
LEVEL_TWINS = ("blur", "awgn")
MASK_TWINS = ("jpeg", "blur")


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
    cy = rng.integers(0, h, size=n)
    cx = rng.integers(0, w, size=n)
    return cutout_from_centres(cy, cx, h, w, length)


def cutout_from_centres(cy: np.ndarray, cx: np.ndarray, h: int, w: int, length: int
                        ) -> np.ndarray:
    """(N, 1, H, W) float32 mask, 0 in the length x length hole centred at (cy, cx), clipped."""
    cy, cx = np.asarray(cy)[:, None], np.asarray(cx)[:, None]
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
    levels = (np.zeros(n, dtype=np.int64) if degradation == CLEAN
              else degradations.random_levels(degradation, n, rng))
    clean, degraded = flip_degrade(images, flip, degradation, levels, rng, salt_value)
    oy, ox = rng.integers(0, 2 * PAD + 1, size=(2, n))
    return pad_crop(clean, oy, ox), pad_crop(degraded, oy, ox)


def flip_degrade(images: np.ndarray, flip: np.ndarray, degradation: str, levels: np.ndarray,
                 rng: np.random.Generator, salt_value: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference's flip -> degrade at given draws (rng only feeds the noise): (clean,
    degraded) uint8, uncropped. Also the oracle the device path is tested against."""
    clean = images.copy()
    clean[flip] = clean[flip, :, ::-1]
    if degradation == CLEAN:
        return clean, clean
    return clean, degradations.degrade_batch(clean, degradation, levels, rng, salt_value)


def check_share(share: str) -> str:
    if share not in SHARE:
        raise ValueError(f"share must be one of {', '.join(SHARE)}, got {share!r}")
    return share


def twin_rows(chunks: Sequence[tuple[str, slice]], pair: tuple[str, str]
              ) -> tuple[slice, slice] | None:
    """(source rows, follower rows) of a LEVEL_TWINS / MASK_TWINS pair, None unless both chunks
    are in the step."""
    rows = dict(chunks)
    src, dst = pair
    return (rows[src], rows[dst]) if src in rows and dst in rows else None


class TrainStream:
    """Epochs of augmented batches; epoch e is a pure function of (seed, e), so a resumed stage
    sees the same data it would have seen without the interruption. `share`: what the chunks of
    a step share (module docstring); "nothing" and "images" draw exactly as `same_images=False`
    and `True` did before `share` existed."""

    def __init__(self, split: Split, mean: Sequence[float], std: Sequence[float], *,
                 degradations: Sequence[str], batch_size: int, cutout: int, cutout_on: str,
                 share: str, salt_value: int, seed: int, device: torch.device | str):
        self.split, self.mean, self.std = split, tuple(mean), tuple(std)
        self.degradations = list(degradations)
        self.batch_size, self.cutout, self.cutout_on = batch_size, cutout, cutout_on
        self.share, self.salt_value = check_share(share), salt_value
        self.seed, self.device = seed, device

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.split) // self.batch_size)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        rng = np.random.default_rng([self.seed, epoch])
        n = len(self.split)
        shared = rng.permutation(n)
        orders = [shared if self.share != "nothing" else rng.permutation(n)
                  for _ in self.degradations]
        for step in range(self.steps_per_epoch):
            yield self._batch([o[step * self.batch_size:(step + 1) * self.batch_size]
                               for o in orders], rng)

    def _chunks(self, index: list[np.ndarray], rng: np.random.Generator
                ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per chunk (clean, degraded) uint8 after flip -> degrade -> shared pad-crop."""
        if self.share in ("nothing", "images"):   # every chunk its own draws
            pairs = [augment(self.split.images[idx], d, rng, self.salt_value)
                     for d, idx in zip(self.degradations, index)]
            return [c for c, _ in pairs], [g for _, g in pairs]
        images = self.split.images[index[0]]      # one shuffle: every chunk holds these images
        m = len(images)
        flip = rng.random(m) < 0.5                # one flip and one crop per image, all chunks
        oy, ox = rng.integers(0, 2 * PAD + 1, size=(2, m))
        twin = None
        if self.share == "reference" and set(LEVEL_TWINS) <= set(self.degradations):
            twin = degradations.random_levels(LEVEL_TWINS[0], m, rng)
        cleans, degs = [], []
        for d in self.degradations:
            if twin is not None and d in LEVEL_TWINS:
                levels = twin
            elif d == CLEAN:
                levels = np.zeros(m, dtype=np.int64)
            else:
                levels = degradations.random_levels(d, m, rng)
            c, g = flip_degrade(images, flip, d, levels, rng, self.salt_value)
            cleans.append(pad_crop(c, oy, ox))
            degs.append(pad_crop(g, oy, ox))
        return cleans, degs

    def _batch(self, index: list[np.ndarray], rng: np.random.Generator) -> Batch:
        cleans, degs = self._chunks(index, rng)
        labels, chunks, start = [], [], 0
        for d, idx in zip(self.degradations, index):
            labels.append(self.split.labels[idx])
            chunks.append((d, slice(start, start + len(idx))))
            start += len(idx)
        clean = normalise(np.concatenate(cleans), self.mean, self.std, self.device)
        degraded = normalise(np.concatenate(degs), self.mean, self.std, self.device)
        if self.cutout > 0 and self.cutout_on != "none":
            _, _, h, w = clean.shape
            cy = rng.integers(0, h, size=start)   # the draws of cutout_mask(start, ...)
            cx = rng.integers(0, w, size=start)
            rows = twin_rows(chunks, MASK_TWINS) if self.share == "reference" else None
            if rows is not None:
                cy[rows[1]], cx[rows[1]] = cy[rows[0]], cx[rows[0]]
            mask = torch.from_numpy(cutout_from_centres(cy, cx, h, w, self.cutout))
            mask = mask.to(self.device)
            if self.cutout_on in ("clean", "both"):
                clean = clean * mask
            if self.cutout_on in ("degraded", "both"):
                degraded = degraded * mask
        y = torch.from_numpy(np.concatenate(labels)).to(self.device)
        return Batch(clean, degraded, y, tuple(chunks))


# --- the device data path -------------------------------------------------------------------


@dataclass(frozen=True)
class StepPlan:
    """Every random draw of one step except the noise, as tensors on the stream's device.
    Rows run chunk after chunk, as in the Batch."""

    index: torch.Tensor      # (B,) int64 rows of the split
    flip: torch.Tensor       # (B,) bool, horizontal flip of the clean image
    levels: torch.Tensor     # (B,) int64 level applied (jpeg: the banked level; clean: 0)
    crop: torch.Tensor       # (B, 2) int64 crop offsets (oy, ox) in 0..2*PAD
    centre: torch.Tensor     # (B, 2) int64 Cutout hole centres (cy, cx)
    chunks: tuple[tuple[str, slice], ...]


def _known(name: str) -> None:
    if name != CLEAN:
        degradations.get(name)   # ValueError listing the valid names


def pad_crop_tensor(images: torch.Tensor, crop: torch.Tensor) -> torch.Tensor:
    """pad_crop on (N, C, H, W) tensors: zero-pad PAD, crop H x W at per-image (oy, ox)."""
    n, c, h, w = images.shape
    padded = F.pad(images, (PAD, PAD, PAD, PAD)).reshape(n, c, -1)
    dev = images.device
    rows = crop[:, :1] + torch.arange(h, device=dev)          # (N, H)
    cols = crop[:, 1:] + torch.arange(w, device=dev)          # (N, W)
    # one gather on the flattened padded image: 6x faster on the CPU than 4-D fancy indexing
    flat = (rows[:, :, None] * (w + 2 * PAD) + cols[:, None, :]).view(n, 1, h * w)
    return padded.gather(2, flat.expand(n, c, h * w)).view(n, c, h, w)


def cutout_tensor(centre: torch.Tensor, h: int, w: int, length: int) -> torch.Tensor:
    """cutout_from_centres on the device: (N, 1, H, W) float32, 0 in the hole."""
    dev = centre.device
    cy, cx = centre[:, :1], centre[:, 1:]
    ys, xs = torch.arange(h, device=dev), torch.arange(w, device=dev)
    in_y = (ys >= cy - length // 2) & (ys < cy + length - length // 2)
    in_x = (xs >= cx - length // 2) & (xs < cx + length - length // 2)
    return (~(in_y[:, :, None] & in_x[:, None, :])).to(torch.float32)[:, None]


class DeviceTrainStream:
    """TrainStream with the training set resident on `device` as uint8 and augmentation and
    degradations there in batches: about 40 kernel launches per step plus ~100 per blur chunk,
    no host work and no host-device copy after construction.

    Epoch e is a pure function of (seed, e) and the device type (CPU and CUDA generators are
    different streams): two torch.Generators seeded from SeedSequence([seed, e]) draw the plan
    (order, flips, levels, crops, Cutout centres) and the noise. jpeg needs a JpegBank of this
    split (built here, through `cache` when given, if none is passed)."""

    def __init__(self, split: Split, mean: Sequence[float], std: Sequence[float], *,
                 degradations: Sequence[str], batch_size: int, cutout: int, cutout_on: str,
                 share: str, salt_value: int, seed: int, device: torch.device | str,
                 jpeg_bank: JpegBank | None = None, cache: StageCache | None = None,
                 channels_last: bool = False):
        self.device = torch.device(device)
        self.degradations = list(degradations)
        for d in self.degradations:
            _known(d)
        self.batch_size, self.cutout, self.cutout_on = batch_size, cutout, cutout_on
        self.share, self.salt_value, self.seed = check_share(share), salt_value, seed
        self.channels_last = channels_last
        self.n = len(split)
        # (N, 3, H, W) uint8: 3 KB per CIFAR image, 150 MB for all 50k
        self.images = torch.from_numpy(split.images).to(self.device).permute(0, 3, 1, 2)
        self.images = self.images.contiguous()
        self.labels = torch.from_numpy(split.labels).to(self.device)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        if jpeg_bank is None and "jpeg" in self.degradations:
            jpeg_bank = device_degrade.build_jpeg_bank(split.images, cache=cache,
                                                       device=self.device)
        if jpeg_bank is not None and jpeg_bank.data.shape[2] != self.n:
            raise ValueError(f"jpeg bank holds {jpeg_bank.data.shape[2]} images but the split "
                             f"has {self.n}: build it from this split's images")
        self.jpeg_bank = jpeg_bank

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.n // self.batch_size)

    def generators(self, epoch: int) -> tuple[torch.Generator, torch.Generator]:
        """(plan, noise) generators of an epoch."""
        seeds = np.random.SeedSequence([self.seed, epoch]).generate_state(2, dtype=np.uint64)
        out = []
        for s in seeds.tolist():
            g = torch.Generator(device=self.device)
            g.manual_seed(int(s))
            out.append(g)
        return out[0], out[1]

    def plan(self, epoch: int, generator: torch.Generator | None = None) -> Iterator[StepPlan]:
        """The epoch's draws, drawn at once (6 + 2 per degradation launches per epoch). Every
        `share` draws the same numbers; "geometry" and "reference" then copy the first chunk's
        flips and crops to every chunk, and "reference" the twins' levels and centres, so
        "nothing" and "images" are the streams of `same_images=False` and `True`."""
        g = generator or self.generators(epoch)[0]
        dev, n, k = self.device, self.n, len(self.degradations)
        _, _, h, w = self.images.shape
        shared = torch.randperm(n, generator=g, device=dev)
        orders = torch.stack([shared if self.share != "nothing" or i == 0 else
                              torch.randperm(n, generator=g, device=dev) for i in range(k)])
        flips = torch.rand((k, n), generator=g, device=dev) < 0.5
        levels = torch.zeros((k, n), dtype=torch.int64, device=dev)
        for i, d in enumerate(self.degradations):
            if d != CLEAN:
                lv = device_degrade.random_levels(d, n, g)
                if d == "jpeg":
                    assert self.jpeg_bank is not None
                    lv = self.jpeg_bank.effective_levels(lv)
                levels[i] = lv
        crops = torch.randint(0, 2 * PAD + 1, (k, n, 2), generator=g, device=dev)
        centres = torch.stack([torch.randint(0, h, (k, n), generator=g, device=dev),
                               torch.randint(0, w, (k, n), generator=g, device=dev)], dim=2)
        if self.share in ("geometry", "reference"):   # column j is the same image in every row
            flips, crops = flips[:1].expand(k, n), crops[:1].expand(k, n, 2)
        if self.share == "reference":
            at = {d: i for i, d in enumerate(self.degradations)}
            if set(LEVEL_TWINS) <= at.keys():
                levels[at[LEVEL_TWINS[1]]] = levels[at[LEVEL_TWINS[0]]]
            if set(MASK_TWINS) <= at.keys():
                centres[at[MASK_TWINS[1]]] = centres[at[MASK_TWINS[0]]]
        for step in range(self.steps_per_epoch):
            sl = slice(step * self.batch_size, (step + 1) * self.batch_size)
            m = len(range(n)[sl])
            yield StepPlan(orders[:, sl].reshape(-1), flips[:, sl].reshape(-1),
                           levels[:, sl].reshape(-1), crops[:, sl].reshape(-1, 2),
                           centres[:, sl].reshape(-1, 2),
                           tuple((d, slice(i * m, (i + 1) * m))
                                 for i, d in enumerate(self.degradations)))

    def epoch(self, epoch: int) -> Iterator[Batch]:
        plan_g, noise_g = self.generators(epoch)
        for p in self.plan(epoch, plan_g):
            yield self.batch(p, noise_g)

    def images_for(self, p: StepPlan, noise: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """(clean, degraded) (B, 3, H, W) uint8 after flip -> degrade -> shared pad-crop."""
        x = self.images[p.index]
        clean = torch.where(p.flip.view(-1, 1, 1, 1), x.flip(3), x)
        if all(d == CLEAN for d, _ in p.chunks):
            out = pad_crop_tensor(clean, p.crop)
            return out, out
        pieces = []
        for d, rows in p.chunks:
            c = clean[rows]
            if d == CLEAN:
                pieces.append(c)
            elif d == "jpeg":
                assert self.jpeg_bank is not None
                pieces.append(self.jpeg_bank.lookup(c, p.index[rows], p.levels[rows],
                                                    p.flip[rows]))
            else:
                pieces.append(device_degrade.degrade(c, d, p.levels[rows], noise,
                                                     self.salt_value))
        both = pad_crop_tensor(torch.cat([clean, torch.cat(pieces)]), p.crop.repeat(2, 1))
        return both[: len(clean)], both[len(clean):]

    def batch(self, p: StepPlan, noise: torch.Generator) -> Batch:
        clean_u8, degraded_u8 = self.images_for(p, noise)
        b = len(clean_u8)
        same = clean_u8 is degraded_u8
        # the reference's normalise, op for op: float, / 255, - mean, / std
        x = clean_u8 if same else torch.cat([clean_u8, degraded_u8])
        x = (x.to(torch.float32).div_(255) - self.mean) / self.std
        clean, degraded = (x, x) if same else (x[:b], x[b:])
        if self.cutout > 0 and self.cutout_on != "none":
            _, _, h, w = x.shape
            mask = cutout_tensor(p.centre, h, w, self.cutout)
            if self.cutout_on in ("clean", "both"):
                clean = clean * mask
            if self.cutout_on in ("degraded", "both"):
                degraded = degraded * mask
        if self.channels_last:
            clean = clean.contiguous(memory_format=torch.channels_last)
            degraded = degraded.contiguous(memory_format=torch.channels_last)
        return Batch(clean, degraded, self.labels[p.index], p.chunks)
