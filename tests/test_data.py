"""study.data on small fixtures written in the exact on-disk formats of each dataset."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter

from study import data
from study.data import (
    DATASETS,
    DataNotFoundError,
    Split,
    load_dataset,
    make_synthetic,
    split_validation,
)

# ---------------------------------------------------------------------------------------------
# CIFAR fixtures: torchvision's layout, the original pickles' dict keys and row encoding
# (1024 R, 1024 G, 1024 B bytes per image, row-major).


def _key(name: str, as_bytes: bool) -> str | bytes:
    return name.encode() if as_bytes else name


def _dump(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the originals are Python 2 pickles


def _rows(images: np.ndarray) -> np.ndarray:
    return images.transpose(0, 3, 1, 2).reshape(len(images), 3072)


CIFAR10_NAMES = "airplane automobile bird cat deer dog frog horse ship truck".split()


def write_cifar10(root: Path, as_bytes: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """5 train batches of 6 images and a test batch of 10. Returns (train_images, train_labels,
    test_images)."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    k = lambda name: _key(name, as_bytes)  # noqa: E731
    train_images = rng.integers(0, 256, (30, 32, 32, 3), dtype=np.uint8)
    train_labels = rng.integers(0, 10, 30)
    for b in range(5):
        sl = slice(6 * b, 6 * b + 6)
        _dump(
            folder / f"data_batch_{b + 1}",
            {
                k("batch_label"): k(f"training batch {b + 1} of 5"),
                k("labels"): train_labels[sl].tolist(),
                k("data"): _rows(train_images[sl]),
                k("filenames"): [k(f"img_{i}.png") for i in range(6)],
            },
        )
    test_images = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    _dump(
        folder / "test_batch",
        {
            k("batch_label"): k("testing batch 1 of 1"),
            k("labels"): list(range(10)),
            k("data"): _rows(test_images),
            k("filenames"): [k(f"t_{i}.png") for i in range(10)],
        },
    )
    meta = {
        k("label_names"): [k(n) for n in CIFAR10_NAMES],
        k("num_cases_per_batch"): 6,
        k("num_vis"): 3072,
    }
    _dump(folder / "batches.meta", meta)
    return train_images, train_labels, test_images


def write_cifar100(root: Path) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    folder = root / "cifar-100-python"
    out = {}
    for split, n in (("train", 40), ("test", 20)):
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        fine = rng.integers(0, 100, n)
        out[split] = (images, fine)
        _dump(
            folder / split,
            {
                b"filenames": [f"{split}_{i}.png".encode() for i in range(n)],
                b"batch_label": f"{split} batch".encode(),
                b"fine_labels": fine.tolist(),
                b"coarse_labels": (fine // 5).tolist(),  # must not be the ones returned
                b"data": _rows(images),
            },
        )
    _dump(
        folder / "meta",
        {
            b"fine_label_names": [f"fine{i:02d}".encode() for i in range(100)],
            b"coarse_label_names": [f"coarse{i:02d}".encode() for i in range(20)],
        },
    )
    return out["train"][1], out["test"][1]


@pytest.mark.parametrize("as_bytes", [True, False], ids=["bytes-keys", "str-keys"])
def test_cifar10_decodes_images_labels_and_class_names(tmp_path: Path, as_bytes: bool) -> None:
    train_images, train_labels, test_images = write_cifar10(tmp_path, as_bytes)
    ds = load_dataset("cifar10", str(tmp_path))
    assert ds.name == "cifar10" and ds.classes == CIFAR10_NAMES and ds.num_classes == 10
    assert ds.image_size == 32
    assert ds.train.images.shape == (30, 32, 32, 3) and ds.train.images.dtype == np.uint8
    assert ds.train.labels.dtype == np.int64
    np.testing.assert_array_equal(ds.train.images, train_images)  # batches 1..5 in order
    np.testing.assert_array_equal(ds.train.labels, train_labels)
    np.testing.assert_array_equal(ds.test.images, test_images)
    np.testing.assert_array_equal(ds.test.labels, np.arange(10))
    assert ds.mean == pytest.approx((125.3 / 255, 123.0 / 255, 113.9 / 255))
    assert ds.std == pytest.approx((63.0 / 255, 62.1 / 255, 66.7 / 255))


def test_cifar_row_layout_is_planar_rgb(tmp_path: Path) -> None:
    """Pin the layout against the raw bytes, independent of the fixture's own encoder."""
    write_cifar10(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        raw = pickle.load(f)[b"data"]
    im = load_dataset("cifar10", str(tmp_path)).train.images[0]
    assert im[0, 0, 0] == raw[0, 0]  # red of pixel (0, 0)
    assert im[0, 1, 0] == raw[0, 1]  # red of pixel (row 0, col 1)
    assert im[1, 0, 0] == raw[0, 32]  # red of pixel (row 1, col 0)
    assert im[0, 0, 1] == raw[0, 1024]  # green plane
    assert im[2, 3, 2] == raw[0, 2048 + 2 * 32 + 3]  # blue plane


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    fine_train, fine_test = write_cifar100(tmp_path)
    # root may also be the dataset folder itself
    for root in (tmp_path, tmp_path / "cifar-100-python"):
        ds = load_dataset("cifar100", str(root))
        assert ds.classes == [f"fine{i:02d}" for i in range(100)]
        np.testing.assert_array_equal(ds.train.labels, fine_train)
        np.testing.assert_array_equal(ds.test.labels, fine_test)
        assert ds.train.images.shape == (40, 32, 32, 3) and len(ds.test) == 20
        assert ds.mean == pytest.approx((129.3 / 255, 124.1 / 255, 112.4 / 255))
        assert ds.std == pytest.approx((68.2 / 255, 65.4 / 255, 70.4 / 255))


@pytest.mark.parametrize("name,tv_class", [("cifar10", "CIFAR10"), ("cifar100", "CIFAR100")])
def test_cifar_missing_files_say_where_and_how(tmp_path: Path, name: str, tv_class: str) -> None:
    with pytest.raises(DataNotFoundError) as err:
        load_dataset(name, str(tmp_path))
    msg = str(err.value)
    assert str(tmp_path) in msg
    assert f"study data download --dataset {name} --root {tmp_path}" in msg
    assert f"torchvision.datasets.{tv_class}('{tmp_path}', download=True)" in msg
    assert not any(tmp_path.iterdir())  # nothing was downloaded or created


def test_cifar_one_missing_batch_is_named(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataNotFoundError, match="missing data_batch_3 in"):
        load_dataset("cifar10", str(tmp_path))


class _RunsCode:
    """What a hostile pickle does: calls any function on load (here, one that writes a file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.write_text, (self.marker, "ran"))


def test_cifar_pickle_that_runs_code_is_refused_unread(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    marker = tmp_path / "owned"
    _dump(tmp_path / "cifar-10-batches-py" / "data_batch_2",
          {b"data": _RunsCode(marker), b"labels": [0]})
    # protocol 2 spells the call as builtins.getattr(Path, "write_text"): refused at the first
    with pytest.raises(DataNotFoundError, match=r"data_batch_2 is not a CIFAR batch file: it "
                       r"refers to \S*getattr, which"):
        load_dataset("cifar10", str(tmp_path))
    assert not marker.exists()


def test_cifar_pickles_written_by_numpy_1_load(tmp_path: Path) -> None:
    """The original files name numpy 1's module (numpy.core); numpy 2 writes numpy._core."""
    train_images, _, _ = write_cifar10(tmp_path)
    for f in (tmp_path / "cifar-10-batches-py").iterdir():
        raw = f.read_bytes()
        assert b"numpy._core.multiarray" in raw or f.name == "batches.meta"
        f.write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    np.testing.assert_array_equal(load_dataset("cifar10", str(tmp_path)).train.images,
                                  train_images)


def test_real_datasets_need_a_root() -> None:
    with pytest.raises(DataNotFoundError, match="needs a data root"):
        load_dataset("cifar10", None)


# ---------------------------------------------------------------------------------------------
# Tiny ImageNet: tiny-imagenet-200/{wnids.txt, train/<wnid>/images/*.JPEG, val/...}

WNIDS = ["n09193705", "n01443537", "n04067472"]  # deliberately not sorted
COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200)]


def write_tinyimagenet(base: Path) -> None:
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    lines = []
    for c, (wnid, colour) in enumerate(zip(WNIDS, COLOURS, strict=True)):
        folder = base / "train" / wnid / "images"
        folder.mkdir(parents=True)
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for i in range(3):
            Image.new("RGB", (64, 64), colour).save(folder / f"{wnid}_{i}.JPEG")
        for i in range(2):
            name = f"val_{2 * c + i}.JPEG"
            Image.new("RGB", (64, 64), colour).save(base / "val" / "images" / name)
            lines.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    # Tiny ImageNet has some grayscale JPEGs; they must come back as RGB.
    Image.new("L", (64, 64), 128).save(base / "train" / WNIDS[0] / "images" / f"{WNIDS[0]}_3.JPEG")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("nested", [True, False], ids=["root/tiny-imagenet-200", "root"])
def test_tinyimagenet_layout(tmp_path: Path, nested: bool) -> None:
    write_tinyimagenet(tmp_path / "tiny-imagenet-200" if nested else tmp_path)
    ds = load_dataset("tinyimagenet", str(tmp_path))
    assert ds.classes == WNIDS  # wnids.txt order, not sorted
    assert ds.image_size == 64 and ds.train.images.shape == (10, 64, 64, 3)
    np.testing.assert_array_equal(ds.train.labels, [0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    np.testing.assert_array_equal(ds.test.labels, [0, 0, 1, 1, 2, 2])
    gray = ds.train.images[3]  # the 4th image of class 0 (sorted file names)
    assert (gray == gray[..., :1]).all() and abs(int(gray[0, 0, 0]) - 128) <= 2
    colour_of = lambda im: im.reshape(-1, 3).mean(axis=0)  # noqa: E731
    for split in (ds.train, ds.test):
        for im, label in zip(split.images, split.labels, strict=True):
            if not (im == im[..., :1]).all():  # all but the grayscale one
                np.testing.assert_allclose(colour_of(im), COLOURS[label], atol=6)  # JPEG loss
    assert ds.mean == pytest.approx((0.485, 0.456, 0.406))
    assert ds.std == pytest.approx((0.229, 0.224, 0.225))


def test_tinyimagenet_missing_says_where_and_how(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("tinyimagenet", str(tmp_path))
    msg = str(err.value)
    assert str(tmp_path / "tiny-imagenet-200") in msg and "wnids.txt" in msg
    assert "tiny-imagenet-200.zip" in msg and "wget" in msg


# ---------------------------------------------------------------------------------------------
# Image folder: root/{train,test}/<class>/<image>, PNG and JPEG mixed


def write_imagefolder(root: Path, size: int = 16) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    pngs = {}
    for split, per_class in (("train", {"dog": 2, "cat": 3}), ("test", {"dog": 1, "cat": 1})):
        for cls, n in per_class.items():
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                if i == 0 and split == "train":  # JPEG: lossy, so only the shape is checked
                    Image.fromarray(arr).save(root / split / cls / f"{i}.jpg", quality=90)
                else:
                    Image.fromarray(arr).save(root / split / cls / f"{i}.png")
                    pngs[f"{split}/{cls}/{i}.png"] = arr
    return pngs


def test_imagefolder_sorted_classes_and_exact_pngs(tmp_path: Path) -> None:
    pngs = write_imagefolder(tmp_path)
    ds = load_dataset("imagefolder", str(tmp_path))
    assert ds.classes == ["cat", "dog"]  # sorted folder names
    assert ds.train.images.shape == (5, 16, 16, 3) and ds.image_size == 16
    np.testing.assert_array_equal(ds.train.labels, [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(ds.test.labels, [0, 1])
    # files are sorted within a class: cat/0.jpg, cat/1.png, cat/2.png, dog/0.jpg, dog/1.png
    np.testing.assert_array_equal(ds.train.images[1], pngs["train/cat/1.png"])
    np.testing.assert_array_equal(ds.train.images[4], pngs["train/dog/1.png"])
    np.testing.assert_array_equal(ds.test.images[1], pngs["test/dog/0.png"])
    pixels = ds.train.images.reshape(-1, 3) / 255
    assert ds.mean == pytest.approx(tuple(pixels.mean(axis=0)), abs=1e-9)
    assert ds.std == pytest.approx(tuple(pixels.std(axis=0)), abs=1e-9)


SHIPPED = Path(__file__).resolve().parent.parent / "data" / "cifar10-mini"


def test_shipped_cifar10_mini_loads_through_imagefolder() -> None:
    # data/cifar10-mini: the real images of search_spaces/smoke_real.yaml, 200 train and 50 test
    # JPEGs per class
    ds = load_dataset("imagefolder", str(SHIPPED))
    assert ds.classes == CIFAR10_NAMES and ds.num_classes == 10
    assert ds.train.images.shape == (2000, 32, 32, 3) and ds.test.images.shape == (500, 32, 32, 3)
    assert ds.train.images.dtype == ds.test.images.dtype == np.uint8 and ds.image_size == 32
    assert np.bincount(ds.train.labels).tolist() == [200] * 10
    assert np.bincount(ds.test.labels).tolist() == [50] * 10
    # real photographs, not a blank fixture: CIFAR-10's channel means are ~0.49, 0.48, 0.45
    assert all(0.4 < m < 0.55 for m in ds.mean) and all(0.2 < s < 0.3 for s in ds.std)


def test_imagefolder_given_classes_fix_order_and_must_exist(tmp_path: Path) -> None:
    write_imagefolder(tmp_path)
    (tmp_path / "train" / "zebra").mkdir()  # not asked for: ignored
    Image.new("RGB", (16, 16)).save(tmp_path / "train" / "zebra" / "z.png")
    ds = load_dataset("imagefolder", str(tmp_path), classes=["dog", "cat"])
    assert ds.classes == ["dog", "cat"]
    np.testing.assert_array_equal(ds.train.labels, [0, 0, 1, 1, 1])
    with pytest.raises(DataNotFoundError, match=str(tmp_path / "train" / "bird")):
        load_dataset("imagefolder", str(tmp_path), classes=["dog", "bird"])


def test_imagefolder_size_mismatch_names_the_file(tmp_path: Path) -> None:
    write_imagefolder(tmp_path)
    Image.new("L", (17, 16)).save(tmp_path / "test" / "dog" / "odd.png")
    with pytest.raises(ValueError, match=r"odd\.png is 17x16 .* all images must have one size"):
        load_dataset("imagefolder", str(tmp_path))


def test_imagefolder_missing_layout(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match=str(tmp_path / "train")):
        load_dataset("imagefolder", str(tmp_path))


# ---------------------------------------------------------------------------------------------
# Stratified validation split


def indexed_split(counts: list[int]) -> Split:
    """Images whose first two bytes encode their index, so membership can be traced."""
    n = sum(counts)
    images = np.zeros((n, 2, 2, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n) % 256
    images[:, 0, 0, 1] = np.arange(n) // 256
    labels = np.repeat(np.arange(len(counts)), counts).astype(np.int64)
    rng = np.random.default_rng(9)
    return Split(images, labels).subset(rng.permutation(n))  # classes interleaved


def ids(split: Split) -> np.ndarray:
    return split.images[:, 0, 0, 0].astype(int) + 256 * split.images[:, 0, 0, 1].astype(int)


@pytest.mark.parametrize("size,expected", [(20, [12, 6, 2]), (7, [4, 2, 1]), (1, [1, 0, 0])])
def test_split_validation_is_stratified_disjoint_and_sized(size: int, expected: list[int]) -> None:
    train = indexed_split([60, 30, 10])
    rest, val = split_validation(train, size, seed=3)
    assert len(val) == size and len(rest) == 100 - size
    # size*n_c/N rounded by largest remainder: 7 -> 4.2, 2.1, 0.7 -> 4, 2, 1
    np.testing.assert_array_equal(np.bincount(val.labels, minlength=3), expected)
    assert not set(ids(rest)) & set(ids(val))
    assert sorted(ids(rest).tolist() + ids(val).tolist()) == list(range(100))
    # labels travel with their images
    lookup = dict(zip(ids(train).tolist(), train.labels.tolist(), strict=True))
    assert [lookup[i] for i in ids(val).tolist()] == val.labels.tolist()


def test_split_validation_is_deterministic_from_seed() -> None:
    train = indexed_split([60, 30, 10])
    _, a = split_validation(train, 20, seed=3)
    _, b = split_validation(train, 20, seed=3)
    _, c = split_validation(train, 20, seed=4)
    np.testing.assert_array_equal(ids(a), ids(b))
    assert set(ids(a)) != set(ids(c))


def test_split_validation_edge_sizes() -> None:
    train = indexed_split([6, 4])
    rest, val = split_validation(train, 0, seed=0)
    assert rest is train and len(val) == 0 and val.images.shape == (0, 2, 2, 3)
    for size in (10, 11):
        with pytest.raises(ValueError, match=f"validation size {size} leaves no training images"):
            split_validation(train, size, seed=0)
    with pytest.raises(ValueError, match=">= 0"):
        split_validation(train, -1, seed=0)


# ---------------------------------------------------------------------------------------------
# Synthetic data and the registry


def test_synthetic_is_deterministic_balanced_and_streams_are_disjoint() -> None:
    a = make_synthetic(205, 50, seed=5)
    b = load_dataset("synthetic", None, seed=5, synthetic_train=205, synthetic_test=50)
    c = make_synthetic(205, 80, seed=5)
    d = make_synthetic(205, 50, seed=6)
    assert a.train.images.shape == (205, 32, 32, 3) and a.train.images.dtype == np.uint8
    assert a.train.labels.dtype == np.int64 and a.num_classes == 10 and a.image_size == 32
    np.testing.assert_array_equal(a.train.images, b.train.images)
    np.testing.assert_array_equal(a.test.labels, b.test.labels)
    np.testing.assert_array_equal(a.train.images, c.train.images)  # train ignores n_test
    assert not np.array_equal(a.train.images, d.train.images)
    counts = np.bincount(a.train.labels, minlength=10)
    assert counts.min() == 20 and counts.max() == 21
    assert (np.bincount(a.test.labels, minlength=10) == 5).all()
    # test is not a copy of any train image
    train_set = {im.tobytes() for im in a.train.images}
    assert not any(im.tobytes() in train_set for im in a.test.images)
    pixels = a.train.images.reshape(-1, 3) / 255
    assert a.mean == pytest.approx(tuple(pixels.mean(axis=0)), abs=1e-9)
    assert a.std == pytest.approx(tuple(pixels.std(axis=0)), abs=1e-9)
    small = make_synthetic(12, 4, seed=0, image_size=16, num_classes=4)
    assert small.train.images.shape == (12, 16, 16, 3) and small.num_classes == 4


def test_class_selection_relabels_in_given_order() -> None:
    full = make_synthetic(100, 20, seed=1)
    sub = load_dataset(
        "synthetic",
        None,
        seed=1,
        synthetic_train=100,
        synthetic_test=20,
        classes=["class3", "class1"],
    )
    assert sub.classes == ["class3", "class1"] and len(sub.train) == 20
    np.testing.assert_array_equal(
        sub.train.images[sub.train.labels == 0], full.train.images[full.train.labels == 3]
    )
    with pytest.raises(ValueError, match="unknown: \\['class10'\\]"):
        load_dataset("synthetic", None, synthetic_train=20, synthetic_test=10, classes=["class10"])


def test_registry_lists_valid_names() -> None:
    assert set(DATASETS) == {"cifar10", "cifar100", "tinyimagenet", "imagefolder", "synthetic"}
    with pytest.raises(ValueError, match="cifar10, cifar100, tinyimagenet, imagefolder, synthetic"):
        load_dataset("mnist", None)
    assert data.get("synthetic") is DATASETS["synthetic"]


def test_synthetic_is_learnable_and_degradations_hurt() -> None:
    """A 2-conv CNN trained on clean synthetic images: high clean accuracy, and blur (sigma 2)
    and AWGN (sigma 40) on the same test images cost it well over 15 points."""
    ds = make_synthetic(2000, 500, seed=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(16, 32, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(32, 10),
        )
        mean = torch.tensor(ds.mean).view(1, 3, 1, 1)
        std = torch.tensor(ds.std).view(1, 3, 1, 1)

        def to_input(images: np.ndarray) -> torch.Tensor:
            return (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std

        x, y = to_input(ds.train.images), torch.from_numpy(ds.train.labels)
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        for _ in range(4):
            for batch in torch.randperm(len(x)).split(64):
                loss = torch.nn.functional.cross_entropy(net(x[batch]), y[batch])
                opt.zero_grad()
                loss.backward()
                opt.step()

        def accuracy(images: np.ndarray) -> float:
            with torch.no_grad():
                pred = net(to_input(images)).argmax(1).numpy()
            return float((pred == ds.test.labels).mean())

        test = ds.test.images.astype(np.float64)
        blurred = gaussian_filter(test, sigma=(0, 2, 2, 0))  # per image and channel
        noisy = test + np.random.default_rng(1).normal(0.0, 40.0, test.shape)
        as_uint8 = lambda a: np.clip(np.rint(a), 0, 255).astype(np.uint8)  # noqa: E731
        clean_acc = accuracy(ds.test.images)
        blur_acc, noise_acc = accuracy(as_uint8(blurred)), accuracy(as_uint8(noisy))
    finally:
        torch.set_num_threads(threads)
    assert clean_acc > 0.6, clean_acc
    assert blur_acc < clean_acc - 0.15, (clean_acc, blur_acc)
    assert noise_acc < clean_acc - 0.15, (clean_acc, noise_acc)
