"""A dataset from one NumPy .npz file: `data.root` names it (or a folder holding data.npz).

The file holds train_images and test_images ((N, H, W, 3) uint8), train_labels and test_labels
(integers 0..k-1) and, optionally, classes (k names). `study` checks the arrays, computes the
normalisation from the training images and applies `data.classes`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from study.errors import DataError

__all__ = ["load_npz"]


def load_npz(*, root: str | None, **_: Any) -> dict[str, np.ndarray]:
    if not root:
        raise DataError("dataset npz: data.root must name a .npz file (or a folder holding "
                        "data.npz)")
    path = Path(root).expanduser()
    if path.is_dir():
        path = path / "data.npz"
    if not path.is_file():
        raise DataError(f"dataset npz: no file at {path} (data.root)")
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}
