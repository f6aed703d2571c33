"""Datasets as uint8 arrays in memory: CIFAR-10/100, Tiny ImageNet, an image folder, synthetic.

Every loader returns a `Dataset` whose splits hold (N, H, W, 3) uint8 images and (N,) int64
labels; augmentation, degradations and normalisation happen downstream (on the GPU), so nothing
here converts to float. Nothing here downloads: a missing dataset raises `DataNotFoundError`
with the path that was looked at and the exact command that fetches it.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
from PIL import Image

from study import registry
from study.errors import DataError

__all__ = [
    "DATASETS",
    "DataFormatError",
    "DataNotFoundError",
    "Dataset",
    "Split",
    "get",
    "load_dataset",
    "make_synthetic",
    "split_validation",
]

# Normalisation of the paper setting (docs/method.md), in [0, 1] units.
CIFAR10_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
CIFAR10_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)
CIFAR100_MEAN = (129.3 / 255, 124.1 / 255, 112.4 / 255)
CIFAR100_STD = (68.2 / 255, 65.4 / 255, 70.4 / 255)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

TINYIMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"


class DataNotFoundError(DataError):
    """A dataset's files are not where they were looked for; the message says how to get them."""


class DataFormatError(DataError, ValueError):
    """A dataset's files are there but unusable (empty, truncated, not an image, inconsistent),
    or a split asked of it cannot be made. The message names the file. `field` is the loader
    argument at fault ("root": the files under it; "val_size", "classes"), for the caller to
    name its own key. Also a ValueError, for code that checks arguments."""

    def __init__(self, message: str, field: str = "root"):
        super().__init__(message)
        self.field = field


# eq=False: the generated __eq__/__hash__ would compare/hash numpy arrays, which raises;
# identity semantics are what callers get anyway.
@dataclass(frozen=True, eq=False)
class Split:
    images: np.ndarray  # (N, H, W, 3) uint8
    labels: np.ndarray  # (N,) int64

    def __post_init__(self) -> None:
        im, lab = self.images, self.labels
        if im.dtype != np.uint8 or im.ndim != 4 or im.shape[3] != 3:
            raise ValueError(f"images must be (N, H, W, 3) uint8, got {im.shape} {im.dtype}")
        if lab.dtype != np.int64 or lab.ndim != 1 or len(lab) != len(im):
            raise ValueError(
                f"labels must be ({len(im)},) int64 to match the images, "
                f"got {lab.shape} {lab.dtype}"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray) -> Split:
        idx = np.asarray(idx)
        return Split(self.images[idx], self.labels[idx])


@dataclass(frozen=True, eq=False)
class Dataset:
    name: str
    classes: list[str]
    mean: tuple[float, float, float]  # normalisation, in [0, 1] units
    std: tuple[float, float, float]
    train: Split
    test: Split

    def __post_init__(self) -> None:
        if self.train.images.shape[1:] != self.test.images.shape[1:] and len(self.test) > 0:
            raise DataFormatError(
                f"{self.name}: train images are {self.train.images.shape[1:]} but test images are "
                f"{self.test.images.shape[1:]}"
            )
        for split_name, split in (("train", self.train), ("test", self.test)):
            if len(split) and (split.labels.min() < 0 or split.labels.max() >= len(self.classes)):
                raise DataFormatError(
                    f"{self.name}: {split_name} labels span [{split.labels.min()}, "
                    f"{split.labels.max()}] but there are {len(self.classes)} classes"
                )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int:
        return int(self.train.images.shape[1])


# ---------------------------------------------------------------------------------------------
# Validation hold-out


def split_validation(train: Split, size: int, seed: int) -> tuple[Split, Split]:
    """Stratified hold-out of `size` images: returns (train_rest, val), both in original order.

    Each class gives size * n_c / N images, rounded by largest remainder so the quotas sum to
    exactly `size` (ties go to the lower class id); which images is drawn from `seed` alone.
    """
    n = len(train)
    if size < 0:
        raise DataFormatError(f"validation size must be >= 0, got {size}", "val_size")
    if size >= n:
        raise DataFormatError(
            f"validation size {size} leaves no training images: the training split has only {n}"
            f" images; allowed: 0 <= val_size <= {n - 1}", "val_size"
        )
    if size == 0:
        return train, train.subset(np.zeros(0, dtype=np.int64))
    classes, counts = np.unique(train.labels, return_counts=True)
    ideal = size * counts / n
    quota = np.floor(ideal).astype(np.int64)
    short = size - int(quota.sum())
    quota[np.argsort(-(ideal - quota), kind="stable")[:short]] += 1
    rng = np.random.default_rng(seed)
    val_idx = [
        rng.permutation(np.flatnonzero(train.labels == c))[:q]
        for c, q in zip(classes, quota, strict=True)
    ]
    is_val = np.zeros(n, dtype=bool)
    is_val[np.concatenate(val_idx)] = True
    return train.subset(np.flatnonzero(~is_val)), train.subset(np.flatnonzero(is_val))


# ---------------------------------------------------------------------------------------------
# Helpers shared by the loaders


Stats = tuple[float, float, float]


def _channel_stats(images: np.ndarray) -> tuple[Stats, Stats]:
    """Per-channel mean and std in [0, 1] units, exact, from 256-bin histograms: 5x faster than
    float sums and no float copy (which would be 10 GB for 100k 64x64 images)."""
    if len(images) == 0:
        raise ValueError("cannot compute normalisation statistics of an empty training split")
    hist = np.zeros((3, 256))
    for start in range(0, len(images), 4096):
        chunk = images[start : start + 4096]
        for c in range(3):
            hist[c] += np.bincount(chunk[..., c].ravel(), minlength=256)
    values = np.arange(256) / 255
    count = hist.sum(axis=1)
    mean = hist @ values / count
    std = np.sqrt(np.maximum(hist @ values**2 / count - mean**2, 0.0))
    m, sd = [float(v) for v in mean], [float(v) for v in std]
    return (m[0], m[1], m[2]), (sd[0], sd[1], sd[2])


def _read_images(paths: Sequence[Path], size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode image files to one (N, H, W, 3) uint8 array (grayscale/RGBA/palette -> RGB,
    16-bit samples -> 8: `_rgb8`).

    All images must share one size (the first file's unless `size` is given); the error names the
    offending file. Decoding runs in threads because PIL releases the GIL while decoding, which
    matters for Tiny ImageNet's 110,000 JPEGs.
    """

    def read(path: Path) -> np.ndarray:
        try:
            with Image.open(path) as img:
                return _rgb8(img, path)
        except DataFormatError:   # _rgb8's own, which names the file already
            raise
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
            # PIL raises OSError for empty, truncated and unknown files, SyntaxError/ValueError
            # from some format plugins on damaged headers
            raise DataFormatError(_unreadable_image(path, exc)) from None

    if not paths:
        return np.zeros((0, *(size or (0, 0)), 3), dtype=np.uint8)
    first = read(paths[0])
    if size is None:
        size = first.shape[:2]
    out = np.empty((len(paths), *size, 3), dtype=np.uint8)

    def place(i: int) -> None:
        arr = first if i == 0 else read(paths[i])
        if arr.shape[:2] != size:
            raise DataFormatError(
                f"image {paths[i]} is {arr.shape[1]}x{arr.shape[0]} (WxH) but the dataset's "
                f"images are {size[1]}x{size[0]}: all images must have one size"
            )
        out[i] = arr

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(place, range(len(paths))))  # list() re-raises the first error
    return out


# Modes in which PIL hands over 16 bits per sample: a 16-bit grayscale PNG or TIFF ("I;16...";
# PIL 10 opens the PNG as "I", whose 32 bits a PNG fills with 16 at most).
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def _rgb8(img: Image.Image, path: Path) -> np.ndarray:
    """The image as (H, W, 3) uint8, every sample scaled to 8 bits. PIL's convert("RGB") clips
    a 16-bit grayscale image instead (any value over 255 turns white: a mid grey 0x8001 too).
    16 bits become 8 as v >> 8, the high byte: what PIL itself keeps of a 16-bit RGB PNG
    (0x12ff -> 18, where v / 257 gives 19), so a picture reads the same in both forms, and an
    8-bit image widened the usual way (v * 257) comes back exactly. 32-bit integer and float
    pixels have no white level a format fixes (0..1? 0..65535?): scaling them is a guess, so
    they are refused."""
    if img.mode in _SIXTEEN_BIT or (img.mode == "I" and img.format == "PNG"):
        gray = (np.asarray(img).astype(np.uint32) >> 8).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if img.mode in ("I", "F"):
        raise DataFormatError(
            f"image {path} has {'32-bit integer' if img.mode == 'I' else 'floating-point'} "
            "pixels, whose range no format fixes, so they cannot be scaled to the 8-bit "
            "images the pipeline trains on without a guess; save it as an 8-bit (or 16-bit) "
            "PNG first")
    return np.asarray(img.convert("RGB"))


def _unreadable_image(path: Path, exc: BaseException) -> str:
    try:
        size = path.stat().st_size
    except OSError:
        size = -1
    if size == 0:
        why = "the file is empty (0 bytes)"
    elif path.suffix.lower() not in _IMAGE_SUFFIXES:
        why = f"it is not an image ({path.suffix or 'no suffix'}: {exc})"
    else:
        why = f"it is damaged or truncated ({size} bytes: {exc})"
    return (f"cannot read image {path}: {why}. Every file of the dataset's image folders must "
            "be an image PIL decodes: copy it again from the original archive, or move it out "
            "(files whose name starts with '.' are ignored)")


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DataFormatError(f"cannot read {path}: {e}") from None


def _need_root(name: str, root: str | None) -> Path:
    if root is None:
        raise DataNotFoundError(
            f"dataset {name!r} needs a data root directory (root=None was given); pass the folder "
            "that holds the data, e.g. --set data.root=DIR"
        )
    return Path(root).expanduser()


def _select_classes(ds: Dataset, classes: list[str] | None) -> Dataset:
    """Keep only `classes`, relabelled 0..k-1 in the given order (normalisation unchanged)."""
    if classes is None:
        return ds
    missing = [c for c in classes if c not in ds.classes]
    if missing or len(set(classes)) != len(classes):
        raise DataFormatError(
            f"{ds.name}: classes must be distinct names among {ds.classes}; "
            f"unknown: {missing}, given: {classes}", "classes"
        )
    remap = np.full(len(ds.classes), -1, dtype=np.int64)
    remap[[ds.classes.index(c) for c in classes]] = np.arange(len(classes))

    def keep(split: Split) -> Split:
        new = remap[split.labels]
        idx = np.flatnonzero(new >= 0)
        return Split(split.images[idx], new[idx])

    return Dataset(ds.name, list(classes), ds.mean, ds.std, keep(ds.train), keep(ds.test))


# ---------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (torchvision's on-disk layout)

# folder, train files, test file, meta file, label key, class-name key, mean, std
_CIFAR = {
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        "test_batch",
        "batches.meta",
        "labels",
        "label_names",
        CIFAR10_MEAN,
        CIFAR10_STD,
    ),
    "cifar100": (
        "cifar-100-python",
        ["train"],
        "test",
        "meta",
        "fine_labels",
        "fine_label_names",
        CIFAR100_MEAN,
        CIFAR100_STD,
    ),
}


# Everything a CIFAR batch pickle refers to: numpy arrays (the numpy 1 and numpy 2 module names)
# and, from Python 3 writers, bytes. A pickle may name any callable and runs it on load, so a
# file in a shared data folder that names anything else is refused, not executed.
CIFAR_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _Refused(pickle.UnpicklingError):
    """The pickle names a callable outside CIFAR_PICKLE_GLOBALS."""


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in CIFAR_PICKLE_GLOBALS:
            raise _Refused(f"refers to {module}.{name}")
        return super().find_class(module, name)


def _unpickle(path: Path, name: str) -> dict[str, object]:
    """The CIFAR files are Python 2 pickles: latin1 is what torchvision uses so the numpy array
    unpickles; keys (and class names) come back as str or bytes depending on who wrote the file,
    so both are normalised to str."""
    try:
        with open(path, "rb") as f:
            entry = _CifarUnpickler(f, encoding="latin1").load()
    except _Refused as e:
        raise DataNotFoundError(f"{path} is not a CIFAR batch file: it {e}, which CIFAR's "
                                "pickles never do; refused unread (a pickle can run code)"
                                ) from None
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, MemoryError) as e:
        # a copy cut short ends in EOFError ("Ran out of input") or UnpicklingError ("pickle
        # data was truncated"); other damage in any of these
        size = path.stat().st_size if path.exists() else 0
        why = "it is empty (0 bytes)" if size == 0 else (
            f"it is truncated or damaged ({size} bytes: {type(e).__name__}: {e})")
        raise DataFormatError(
            f"{path} is not a readable {name} batch file: {why}. Copy it again from the "
            f"original archive (`study data download --dataset {name} --root DIR` on a machine "
            "with internet)") from None
    if not isinstance(entry, dict):
        raise DataFormatError(f"{path} is not a {name} batch file: it holds a "
                              f"{type(entry).__name__}, not the dict of CIFAR's batches")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}


def load_cifar(name: str, root: str | None) -> Dataset:
    """CIFAR-10 or CIFAR-100 from `root/cifar-10-batches-py` / `root/cifar-100-python` (or from
    that folder itself).

    The pickles are read directly rather than through torchvision.datasets.CIFAR10/100: those
    check the md5 of every file, which rejects the small fixtures the tests write in the exact
    same format (and costs ~0.5 s of hashing 170 MB per load). The decoding is torchvision's:
    each row is 1024 red, 1024 green, 1024 blue bytes, row-major.
    """
    folder, train_files, test_file, meta_file, label_key, names_key, mean, std = _CIFAR[name]
    base = _need_root(name, root)
    if not (base / meta_file).is_file():
        base = base / folder
    wanted = [*train_files, test_file, meta_file]
    missing = [f for f in wanted if not (base / f).is_file()]
    if missing:
        tv_class = {"cifar10": "CIFAR10", "cifar100": "CIFAR100"}[name]
        raise DataNotFoundError(
            f"{name}: missing {', '.join(missing)} in {base} (torchvision's layout "
            f"{root}/{folder}/; {root} itself was checked too). Nothing is downloaded "
            f"automatically. On a machine with internet run\n"
            f"  study data download --dataset {name} --root {root}\n"
            f"or\n"
            f'  python -c "import torchvision; torchvision.datasets.{tv_class}'
            f"('{root}', download=True)\"\n"
            f"then, if this machine has no internet, copy {root}/{folder} here."
        )

    def batch(f: str) -> tuple[np.ndarray, np.ndarray]:
        """One batch file as (N, 3, 32, 32) planes and (N,) labels, its shape checked."""
        path = base / f
        e = _unpickle(path, name)
        missing = [k for k in ("data", label_key) if k not in e]
        if missing:
            raise DataFormatError(f"{path} is not a {name} batch file: it has no "
                                  f"{', '.join(repr(k) for k in missing)} entry")
        try:
            raw = np.asarray(e["data"], dtype=np.uint8)
            labels = np.asarray(e[label_key], dtype=np.int64).reshape(-1)
        except (ValueError, TypeError, OverflowError) as exc:
            raise DataFormatError(f"{path}: 'data' or {label_key!r} is not an array of "
                                  f"numbers ({exc})") from None
        if raw.size % 3072 or raw.size // 3072 != len(labels):
            raise DataFormatError(
                f"{path}: 'data' holds {raw.size} bytes for {len(labels)} labels; a {name} "
                "batch has 3,072 bytes (32x32 RGB) per labelled image")
        return raw.reshape(-1, 3, 32, 32), labels

    def read(files: list[str]) -> Split:
        entries = [batch(f) for f in files]
        planar = [p for p, _ in entries]
        images = np.empty((sum(len(p) for p in planar), 32, 32, 3), dtype=np.uint8)
        start = 0
        for p in planar:  # one plane at a time: 0.1 s for 50k images, 10x faster than a transpose
            for c in range(3):
                images[start : start + len(p), :, :, c] = p[:, c]
            start += len(p)
        labels = np.concatenate([lab for _, lab in entries])
        return Split(images, labels)

    names = _unpickle(base / meta_file, name).get(names_key)
    if not isinstance(names, list):
        raise DataFormatError(f"{base / meta_file}: {names_key!r} is not a list of class names")
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return Dataset(name, classes, mean, std, read(train_files), read([test_file]))


# ---------------------------------------------------------------------------------------------
# Tiny ImageNet (the tiny-imagenet-200 zip as distributed)

_IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}


def load_tinyimagenet(root: str | None) -> Dataset:
    """Tiny ImageNet from `root/tiny-imagenet-200` or `root` itself: 200 classes in wnids.txt
    order, train/<wnid>/images/*.JPEG (500 per class), and val/ (50 per class, labels in
    val_annotations.txt) as the test set; its test/ folder has no labels and is not used."""
    base = _need_root("tinyimagenet", root)
    if not (base / "wnids.txt").is_file():
        base = base / "tiny-imagenet-200"
    needed = ["wnids.txt", "train", "val/images", "val/val_annotations.txt"]
    missing = [p for p in needed if not (base / p).exists()]
    if missing:
        raise DataNotFoundError(
            f"tinyimagenet: missing {', '.join(missing)} in {base} (looked in {root}/"
            f"tiny-imagenet-200 and in {root} itself). Nothing is downloaded automatically. "
            f"To get the data, on a machine with internet run\n"
            f"  wget {TINYIMAGENET_URL} && unzip tiny-imagenet-200.zip -d {root}\n"
            f"so that {root}/tiny-imagenet-200/wnids.txt exists."
        )
    wnids = [w.strip() for w in _read_text(base / "wnids.txt").split() if w.strip()]
    index = {w: i for i, w in enumerate(wnids)}

    train_paths: list[Path] = []
    train_labels: list[int] = []
    for i, wnid in enumerate(wnids):
        folder = base / "train" / wnid / "images"
        if not folder.is_dir():
            raise DataNotFoundError(
                f"tinyimagenet: class folder {folder} (from wnids.txt) is missing"
            )
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        train_paths += files
        train_labels += [i] * len(files)

    test_paths: list[Path] = []
    test_labels: list[int] = []
    annotations = base / "val" / "val_annotations.txt"
    for lineno, line in enumerate(_read_text(annotations).splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise DataFormatError(
                f"{annotations}:{lineno}: expected 'FILE<TAB>WNID...', got {line!r}"
            )
        test_paths.append(base / "val" / "images" / fields[0])
        test_labels.append(index[fields[1]])

    size = (64, 64)
    train = Split(_read_images(train_paths, size), np.asarray(train_labels, dtype=np.int64))
    test = Split(_read_images(test_paths, size), np.asarray(test_labels, dtype=np.int64))
    return Dataset("tinyimagenet", wnids, IMAGENET_MEAN, IMAGENET_STD, train, test)


# ---------------------------------------------------------------------------------------------
# Image folder: root/{train,test}/<class>/<image>


def load_imagefolder(root: str | None, classes: list[str] | None = None) -> Dataset:
    """Any images PIL reads under root/train/<class>/ and root/test/<class>/.

    Class order is the sorted train folder names, or exactly `classes` (other folders are then
    ignored). All images must be square and of one size. Mean/std come from the train images.
    """
    base = _need_root("imagefolder", root)
    splits = {s: base / s for s in ("train", "test")}
    missing_dirs = [str(p) for p in splits.values() if not p.is_dir()]
    if missing_dirs:
        raise DataNotFoundError(
            f"imagefolder: missing {', '.join(missing_dirs)}; expected the layout "
            f"{base}/train/<class>/<image> and {base}/test/<class>/<image> "
            "(one folder per class, any format PIL reads)"
        )

    def class_dirs(split_dir: Path) -> list[str]:
        return sorted(
            p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
        )

    if classes is None:
        classes = class_dirs(splits["train"])
        if not classes:
            raise DataNotFoundError(f"imagefolder: no class folders in {splits['train']}")
        extra = sorted(set(class_dirs(splits["test"])) - set(classes))
        if extra:
            raise DataFormatError(
                f"imagefolder: {splits['test']} has class folders {extra} that "
                f"{splits['train']} lacks"
            )
    for split_dir in splits.values():
        absent = [str(split_dir / c) for c in classes if not (split_dir / c).is_dir()]
        if absent:
            raise DataNotFoundError(f"imagefolder: class folder(s) missing: {', '.join(absent)}")

    def listing(split_dir: Path) -> tuple[list[Path], np.ndarray]:
        paths: list[Path] = []
        labels: list[int] = []
        for i, c in enumerate(classes):
            files = sorted(
                p for p in (split_dir / c).iterdir() if p.is_file() and not p.name.startswith(".")
            )
            paths += files
            labels += [i] * len(files)
        return paths, np.asarray(labels, dtype=np.int64)

    train_paths, train_labels = listing(splits["train"])
    test_paths, test_labels = listing(splits["test"])
    if not train_paths:
        raise DataNotFoundError(f"imagefolder: no images under {splits['train']}/<class>/")
    # One pass over train+test so that the size check covers both splits.
    images = _read_images(train_paths + test_paths)
    if images.shape[1] != images.shape[2]:
        raise DataFormatError(
            f"imagefolder: images are {images.shape[2]}x{images.shape[1]} (WxH); the pipeline's "
            "crops and image_size assume square images"
        )
    train = Split(images[: len(train_paths)], train_labels)
    test = Split(images[len(train_paths) :], test_labels)
    mean, std = _channel_stats(train.images)
    return Dataset("imagefolder", list(classes), mean, std, train, test)


# ---------------------------------------------------------------------------------------------
# Synthetic: oriented gratings whose class lives in mid/high spatial frequencies

# Grating frequencies in cycles per pixel (Nyquist is 0.5). A Gaussian blur of sigma s keeps
# exp(-2 pi^2 s^2 f^2) of a grating's amplitude: at s = 2 that is 2% at f = 0.22 and 0.02% at
# f = 0.33, so blur erases the class; the smooth background (<= 2 cycles per image, f <= 0.06)
# survives it, so a blurred image still looks like a plausible input.
_SYN_FREQS = (0.22, 0.33)
# Grating amplitude on the 0-255 scale: at 20-45 a small CNN still reaches ~99% clean accuracy
# in 4 epochs of 2,000 images while AWGN sigma 40 (the top level) costs it 45-75 points.
_SYN_AMPLITUDE = (20.0, 45.0)


def _synthetic_split(rng: np.random.Generator, n: int, image_size: int, num_classes: int) -> Split:
    labels = rng.permutation(np.arange(n) % num_classes).astype(np.int64)  # balanced to +-1
    n_freqs = len(_SYN_FREQS) if num_classes >= 2 * len(_SYN_FREQS) else 1
    n_angles = -(-num_classes // n_freqs)
    # Class c: angle index c % n_angles (spread over 180 degrees, a grating's period), frequency
    # index c // n_angles; per-image jitter of +-1/6 of the angle spacing and +-4% frequency keeps
    # the classes apart while making each one a family rather than one template.
    spacing = np.pi / n_angles
    theta = (labels % n_angles) * spacing + rng.uniform(-spacing / 6, spacing / 6, n)
    freq = np.asarray(_SYN_FREQS)[labels // n_angles] * rng.uniform(0.96, 1.04, n)
    phase = rng.uniform(0, 2 * np.pi, n)
    yy, xx = np.mgrid[0:image_size, 0:image_size].astype(np.float32)
    kx = (2 * np.pi * freq * np.cos(theta)).astype(np.float32)[:, None, None]
    ky = (2 * np.pi * freq * np.sin(theta)).astype(np.float32)[:, None, None]
    grating = np.cos(kx * xx + ky * yy + phase.astype(np.float32)[:, None, None])  # (n, H, W)
    # Colour tint: the grating modulates the three channels with random per-image weights, so
    # colour carries no class information.
    tint = (rng.uniform(0.3, 1.0, (n, 3)) * rng.uniform(*_SYN_AMPLITUDE, (n, 1))).astype(np.float32)
    # Smooth background: a random 3x3 grid per channel, bilinearly upsampled (a separable matrix
    # product, so still one vectorised op).
    grid = rng.uniform(40, 215, (n, 3, 3, 3)).astype(np.float32)  # (n, gy, gx, c)
    up = _bilinear_matrix(3, image_size).astype(np.float32)
    background = np.einsum("hi,nijc,wj->nhwc", up, grid, up, optimize=True)
    # Mild noise = difference of two independent uniform 3-bit integers taken from one random
    # byte (std 3.2 on 0-255): ~10x cheaper than rng.normal, and its exact shape does not matter.
    rand = rng.integers(0, 256, (n, image_size, image_size, 3), dtype=np.uint8)
    images = (rand & 7).astype(np.float32)
    images -= rand >> 5
    images += background
    images += grating[..., None] * tint[:, None, None, :]
    np.clip(np.rint(images, out=images), 0, 255, out=images)
    return Split(images.astype(np.uint8), labels)


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights that linearly interpolate n_in grid points across n_out pixels."""
    pos = np.linspace(0, n_in - 1, n_out)
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
    frac = pos - lo
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] = 1 - frac
    m[np.arange(n_out), lo + 1] = frac
    return m


def make_synthetic(
    n_train: int, n_test: int, seed: int, image_size: int = 32, num_classes: int = 10
) -> Dataset:
    """A learnable stand-in for CIFAR that runs in seconds on a CPU.

    Each class is an oriented grating (10 classes = 5 orientations x 2 frequencies) with random
    phase, colour tint and smooth background plus mild noise. The class lives in mid/high
    frequencies, so blur, AWGN, low-quality JPEG and salt-and-pepper all hurt a model trained on
    clean images. Train and test come from disjoint rng streams (`SeedSequence(seed).spawn(2)`),
    so the train split does not depend on n_test and vice versa.
    """
    if num_classes < 1 or image_size < 4:
        raise ValueError(
            f"need num_classes >= 1 and image_size >= 4, got {num_classes}, {image_size}"
        )
    train_seq, test_seq = np.random.SeedSequence(seed).spawn(2)
    train = _synthetic_split(np.random.default_rng(train_seq), n_train, image_size, num_classes)
    test = _synthetic_split(np.random.default_rng(test_seq), n_test, image_size, num_classes)
    mean, std = _channel_stats(train.images)
    classes = [f"class{c}" for c in range(num_classes)]
    return Dataset("synthetic", classes, mean, std, train, test)


# ---------------------------------------------------------------------------------------------
# Registry: name -> loader, the built-ins here and plugins of the `study.datasets` entry points
# (study/registry.py). Every loader is called with the keywords below (a plugin takes **_ for
# those it ignores) and returns a `Dataset` with `classes` applied, or what PLUGIN_RESULTS says.

Loader = Callable[..., Any]
# What a plugin's loader may return besides a Dataset (docs/plugins.md): its arrays under these
# names (a dict, or np.load of an .npz; "classes" optional: class0, class1, ... then), or the
# path of a folder in load_imagefolder's layout. `classes` is then applied here.
PLUGIN_ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")
PLUGIN_RESULTS = "a study.data.Dataset, a mapping of arrays (train_images, train_labels, " \
                 "test_images, test_labels, optional classes) or an image folder's path"


def load_cifar10(*, root: str | None, classes: list[str] | None, **_: Any) -> Dataset:
    return _select_classes(load_cifar("cifar10", root), classes)


def load_cifar100(*, root: str | None, classes: list[str] | None, **_: Any) -> Dataset:
    return _select_classes(load_cifar("cifar100", root), classes)


def load_tiny_imagenet(*, root: str | None, classes: list[str] | None, **_: Any) -> Dataset:
    return _select_classes(load_tinyimagenet(root), classes)


def load_image_folder(*, root: str | None, classes: list[str] | None, **_: Any) -> Dataset:
    return load_imagefolder(root, classes)  # reads only the chosen class folders


def load_synthetic(*, seed: int, synthetic_train: int, synthetic_test: int,
                   classes: list[str] | None, **_: Any) -> Dataset:
    return _select_classes(make_synthetic(synthetic_train, synthetic_test, seed), classes)


# The built-ins, as the registry's entry points name them.
DATASETS: dict[str, Loader] = {
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "tinyimagenet": load_tiny_imagenet,
    "imagefolder": load_image_folder,
    "synthetic": load_synthetic,
}


def get(name: str) -> Loader:
    """The loader `name`, built-in or plugin; ValueError listing the installed datasets."""
    if name in DATASETS:
        return DATASETS[name]
    loader = registry.load(registry.DATASETS, name)
    if not callable(loader):
        raise registry.PluginError(f"dataset plugin {name!r} "
                                   f"({registry.find(registry.DATASETS, name).label}): the entry "
                                   f"point must name a loader, got {type(loader).__name__}")
    return cast(Loader, loader)


def load_dataset(
    name: str,
    root: str | None,
    *,
    seed: int = 0,
    synthetic_train: int = 2000,
    synthetic_test: int = 500,
    classes: list[str] | None = None,
) -> Dataset:
    """Load dataset `name` from `root` (ignored by "synthetic").

    `classes` keeps only those classes, relabelled 0..k-1 in the given order (for imagefolder it
    also fixes the class order); `seed`, `synthetic_train`, `synthetic_test` only affect
    "synthetic". Never downloads: missing files raise DataNotFoundError.
    """
    out = get(name)(root=root, seed=seed, synthetic_train=synthetic_train,
                    synthetic_test=synthetic_test, classes=classes)
    if isinstance(out, Dataset):
        return out
    if isinstance(out, (str, os.PathLike)):
        return load_imagefolder(os.fspath(out), classes)
    if isinstance(out, Mapping) or hasattr(out, "files"):   # np.load of an .npz has .files
        return _select_classes(_from_arrays(name, out), classes)
    raise DataFormatError(f"dataset plugin {name!r} returned {type(out).__name__}; its loader "
                          f"must return {PLUGIN_RESULTS}")


def _from_arrays(name: str, arrays: Any) -> Dataset:
    """A plugin's arrays as a Dataset: uint8 (N, H, W, 3) images, int labels 0..k-1, the
    normalisation from its training images (as an image folder's)."""
    keys = set(arrays.files if hasattr(arrays, "files") else arrays)
    missing = [k for k in PLUGIN_ARRAYS if k not in keys]
    if missing:
        raise DataFormatError(f"dataset plugin {name!r}: its arrays lack {missing}; it must "
                              f"return {PLUGIN_RESULTS}")
    try:
        train = Split(np.asarray(arrays["train_images"]),
                      np.asarray(arrays["train_labels"]).astype(np.int64))
        test = Split(np.asarray(arrays["test_images"]),
                     np.asarray(arrays["test_labels"]).astype(np.int64))
    except ValueError as e:
        raise DataFormatError(f"dataset plugin {name!r}: {e}") from e
    if "classes" in keys:
        classes = [str(c) for c in np.asarray(arrays["classes"]).tolist()]
    else:
        top = max(int(train.labels.max(initial=-1)), int(test.labels.max(initial=-1)))
        classes = [f"class{c}" for c in range(top + 1)]
    mean, std = _channel_stats(train.images)
    return Dataset(name, classes, mean, std, train, test)
