"""Datasets in memory: the Split/Dataset values every stage consumes, resizing, batching and the fixed splits.

Loaders produce numpy arrays; `make_dataset` turns them into torch tensors in one place, so the loader modules stay
torch-free and `edgenas.data` imports fast.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from edgenas.errors import EdgenasError

if TYPE_CHECKING:
    import torch

SPLIT_SEED = 0  # every fixed split uses this seed, independent of any run seed


@dataclass(frozen=True, eq=False)
class Split:
    """Images `x` (N, C, H, W) float32 in [0, 1] and labels `y` (N,) int64."""

    x: "torch.Tensor"
    y: "torch.Tensor"

    def __post_init__(self):
        if self.x.ndim != 4 or self.y.ndim != 1 or self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"Split needs x (N,C,H,W) and y (N,), got {tuple(self.x.shape)} and {tuple(self.y.shape)}")

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True, eq=False)
class Dataset:
    name: str
    train: Split
    val: Split
    test: Split
    n_classes: int
    in_channels: int
    native_size: tuple[int, int]   # (H, W) of the stored images; models resize to their own resolution
    class_names: tuple[str, ...]
    source: str                    # what it was read from (file, folder or package resource)


def make_split(x: np.ndarray, y: np.ndarray) -> Split:
    """(N,C,H,W) uint8 (0..255) or float in [0,1] numpy images + integer labels -> a torch Split."""
    import torch
    xf = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    return Split(x=torch.from_numpy(np.ascontiguousarray(xf)), y=torch.from_numpy(np.asarray(y, dtype=np.int64).copy()))


# Fewest validation / test images before a warning. The search ranks candidates, sets exit thresholds and picks the
# exported member on validation accuracy, and reports test accuracy; below 100 images the 95% interval of an
# accuracy near 50% is wider than +-10 points, larger than the differences those decisions turn on.
MIN_EVAL_IMAGES = 100
_EVAL_USES = {"val": "rank candidates, set exit thresholds and pick the exported member",
              "test": "report a test accuracy worth comparing"}
_warned: set[tuple[str, str, int]] = set()  # one warning per split and process, however often a dataset is loaded


def warn_small_splits(source: str, sizes: dict[str, int]) -> None:
    """One line on stderr (not an error: a small set may be all there is) per split too small for its use."""
    import sys

    from edgenas.stats import accuracy_interval
    for part, why in _EVAL_USES.items():
        n = sizes.get(part, MIN_EVAL_IMAGES)
        if n >= MIN_EVAL_IMAGES or (source, part, n) in _warned:
            continue
        _warned.add((source, part, n))
        lo, hi = accuracy_interval(0.5, n)
        print(f"warning: {source}: the {part} split has only {n} images; an accuracy measured on it is uncertain by "
              f"+-{50 * (hi - lo):.0f} points (95%), too coarse to {why}; give it at least {MIN_EVAL_IMAGES} images",
              file=sys.stderr)


def make_dataset(name: str, source: str, class_names: Sequence[str], parts: dict[str, tuple[np.ndarray, np.ndarray]]) -> Dataset:
    """Build a Dataset from numpy (x, y) pairs keyed train/val/test, checking what every stage relies on."""
    if len(class_names) < 2:
        raise EdgenasError(f"{source}: has {len(class_names)} class{'es' if len(class_names) != 1 else ''} "
                           f"({', '.join(map(str, class_names)) or 'none'}); a classifier needs at least 2 "
                           "(with one, every prediction is right and accuracy reads 1.000)",
                           "add images of a second class (imagefolder: a second class subfolder)")
    for part, (x, y) in parts.items():
        if len(x) == 0:
            raise EdgenasError(f"{source}: the {part} split is empty", "add images to it or let edgenas carve it from train")
        if len(x) != len(y):
            raise EdgenasError(f"{source}: {part} has {len(x)} images but {len(y)} labels",
                               "the image and label arrays must have the same length")
        if y.min() < 0 or y.max() >= len(class_names):
            raise EdgenasError(f"{source}: {part} labels span {int(y.min())}..{int(y.max())} but there are "
                               f"{len(class_names)} classes", "labels must be integers 0..n_classes-1")
    present = np.unique(parts["train"][1])
    if len(present) < 2:
        raise EdgenasError(f"{source}: the train split holds only class '{class_names[int(present[0])]}'",
                           "a classifier needs training images of at least 2 classes")
    warn_small_splits(source, {part: len(x) for part, (x, _) in parts.items()})
    x_train = parts["train"][0]
    return Dataset(name=name, train=make_split(*parts["train"]), val=make_split(*parts["val"]),
                   test=make_split(*parts["test"]), n_classes=len(class_names), in_channels=int(x_train.shape[1]),
                   native_size=(int(x_train.shape[2]), int(x_train.shape[3])), class_names=tuple(class_names),
                   source=source)


def stratified_split(y: np.ndarray, fractions: Sequence[float], seed: int = SPLIT_SEED,
                     class_names: Sequence[str] | None = None, what: str = "dataset") -> list[np.ndarray]:
    """Indices of len(fractions) disjoint parts, each holding ~fraction of every class (part 0 takes the remainder).

    Every part gets at least one sample of every class, so a class needs at least len(fractions) samples. Each part
    is shuffled (a fixed permutation), so a prefix of a part is not one class.
    """
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        if len(idx) < len(fractions):
            name = class_names[c] if class_names is not None else str(c)
            raise EdgenasError(f"{what}: class '{name}' has {len(idx)} samples, fewer than the {len(fractions)} splits",
                               f"give every class at least {len(fractions)} images")
        sizes = [max(1, int(round(f * len(idx)))) for f in fractions[1:]]
        start = len(idx) - sum(sizes)
        parts[0].append(idx[:start])
        for k, size in enumerate(sizes, start=1):
            parts[k].append(idx[start:start + size])
            start += size
    return [rng.permutation(np.concatenate(p)) for p in parts]


def split_60_20_20(x: np.ndarray, y: np.ndarray, class_names: Sequence[str], what: str) -> dict:
    tr, va, te = stratified_split(y, (0.6, 0.2, 0.2), class_names=class_names, what=what)
    return {"train": (x[tr], y[tr]), "val": (x[va], y[va]), "test": (x[te], y[te])}


def resize(x: "torch.Tensor", size: int) -> "torch.Tensor":
    """Bilinear resize of (N,C,H,W) to size x size (align_corners=False, antialiased when shrinking); identity if equal."""
    import torch.nn.functional as F
    h, w = x.shape[-2:]
    if h == size and w == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=size < h or size < w)


def batches(split: Split, batch_size: int, shuffle: bool = False,
            generator: "torch.Generator | None" = None) -> Iterator[tuple["torch.Tensor", "torch.Tensor"]]:
    """(x, y) batches of an in-memory split; the last batch may be smaller. With shuffle, the order comes from
    `generator` (deterministic) or, without one, from torch's global RNG."""
    import torch
    if batch_size < 1:
        raise EdgenasError(f"batch size {batch_size} is not positive", "use a batch size of at least 1")
    n = len(split.y)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        yield split.x[idx], split.y[idx]
