"""Datasets read from the user's files: a CIFAR-10 python folder, a folder of images, a MedMNIST .npz.

Nothing is downloaded; every problem with the files (missing, corrupt, empty, inconsistent) is an EdgenasError.
"""
from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

import numpy as np

from edgenas.data import register_dataset
from edgenas.data.core import Dataset, make_dataset, split_60_20_20, stratified_split
from edgenas.errors import EdgenasError

# ----------------------------------------------------------------------------------------------------------- CIFAR-10

CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists and numpy arrays only: a batch file cannot run code (the pickle analogue of
    torch.load(weights_only=True))."""

    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
                ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="latin1").load()   # the official files are Python 2 pickles
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError) as exc:
        raise EdgenasError(f"{path} is not a readable CIFAR-10 batch ({type(exc).__name__}: {exc})",
                           "re-extract cifar-10-python.tar.gz") from None
    if not isinstance(obj, dict):
        raise EdgenasError(f"{path} holds a {type(obj).__name__}, expected a dict", "re-extract cifar-10-python.tar.gz")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    entry = _read_pickle(path)
    if "data" not in entry or "labels" not in entry:
        raise EdgenasError(f"{path} has keys {sorted(entry)}, expected 'data' and 'labels'", "re-extract cifar-10-python.tar.gz")
    data = np.asarray(entry["data"])
    labels = np.asarray(entry["labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.dtype != np.uint8:
        raise EdgenasError(f"{path}: 'data' is {data.dtype} {data.shape}, expected uint8 (N, 3072)",
                           "re-extract cifar-10-python.tar.gz")
    if len(labels) != len(data):
        raise EdgenasError(f"{path} has {len(data)} images but {len(labels)} labels", "re-extract cifar-10-python.tar.gz")
    return data.reshape(-1, 3, 32, 32), labels   # rows are R plane, G plane, B plane, each 32x32 row-major


def _cifar_folder(root: Path) -> Path:
    for candidate in (root, root / "cifar-10-batches-py"):
        if (candidate / CIFAR10_TEST_FILE).is_file():
            return candidate
    if not root.exists():
        raise EdgenasError(f"CIFAR-10 folder {root} does not exist", "pass the folder that holds cifar-10-batches-py")
    raise EdgenasError(f"no {CIFAR10_TEST_FILE} in {root} or {root / 'cifar-10-batches-py'}",
                       "pass the extracted cifar-10-batches-py folder (or its parent); edgenas does not download")


@register_dataset("cifar10", argument="DIR")
def cifar10(directory: str) -> Dataset:
    """The CIFAR-10 python batches: data_batch_1..5 are train (val = a stratified 10% of them, seed 0), test_batch is
    the official test split. Class names come from batches.meta when present."""
    folder = _cifar_folder(Path(directory).expanduser())
    missing = [f for f in CIFAR10_TRAIN_FILES if not (folder / f).is_file()]
    if missing:
        raise EdgenasError(f"{folder} lacks {', '.join(missing)}", "re-extract cifar-10-python.tar.gz")
    xs, ys = zip(*(_cifar_batch(folder / f) for f in CIFAR10_TRAIN_FILES))
    x, y = np.concatenate(xs), np.concatenate(ys)
    x_test, y_test = _cifar_batch(folder / CIFAR10_TEST_FILE)
    names = CIFAR10_NAMES
    if (folder / "batches.meta").is_file():
        meta = _read_pickle(folder / "batches.meta")
        names = tuple(n.decode("latin1") if isinstance(n, bytes) else str(n) for n in meta.get("label_names", names))
    tr, va = stratified_split(y, (0.9, 0.1), class_names=names, what=str(folder))
    return make_dataset("cifar10", str(folder), names,
                        {"train": (x[tr], y[tr]), "val": (x[va], y[va]), "test": (x_test, y_test)})


# -------------------------------------------------------------------------------------------------------- imagefolder

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
GREY_MODES = {"1", "L"}


def _class_folders(root: Path) -> dict[str, list[Path]]:
    classes = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise EdgenasError(f"class folder {d} has no images", f"add images ({', '.join(sorted(IMAGE_SUFFIXES))}) or remove it")
        classes[d.name] = images
    if not classes:
        raise EdgenasError(f"{root} has no class subfolders", "put each class's images in a subfolder named after the class")
    return classes


def _open_image(path: Path):
    import warnings

    from PIL import Image, UnidentifiedImageError
    try:
        with warnings.catch_warnings():
            # PIL only warns between MAX_IMAGE_PIXELS and twice that; no dataset image is that large, so both are
            # refused before any pixel is decoded (a small file can declare gigapixels and exhaust memory)
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                return img.copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise EdgenasError(f"image {path} declares more than {Image.MAX_IMAGE_PIXELS:,} pixels (a decompression "
                           "bomb, or not a dataset image)", "replace it with an image at a sane size, or delete it") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise EdgenasError(f"cannot read image {path} ({type(exc).__name__})", "replace or delete the file") from None


def _parse_imagefolder_spec(arg: str) -> tuple[Path, int | None]:
    m = re.fullmatch(r"(.*)\?size=(\d+)", arg)
    if m is None:
        return Path(arg).expanduser(), None
    size = int(m.group(2))
    if size < 1:
        raise EdgenasError(f"image size {size} in '{arg}' is not positive", "write e.g. imagefolder:DIR?size=32")
    return Path(m.group(1)).expanduser(), size


@register_dataset("imagefolder", argument="DIR")
def imagefolder(arg: str) -> Dataset:
    """One subfolder per class (sorted names are the labels 0..K-1). With DIR/train/ (and optionally val/, test/)
    those are the splits and a missing val/ or test/ is carved out of train (20% each, stratified, seed 0);
    without, all images are split 60/20/20 stratified, seed 0. Every image is resized (bilinear) to the size of the
    first one, or to N x N with `DIR?size=N`; images are grey if all of them are, otherwise RGB."""
    root, size = _parse_imagefolder_spec(arg)
    if not root.is_dir():
        raise EdgenasError(f"image folder {root} does not exist", "pass a folder with one subfolder of images per class")
    has_parts = (root / "train").is_dir()
    folders = {p: _class_folders(root / p) for p in ("train", "val", "test") if (root / p).is_dir()} if has_parts \
        else {"all": _class_folders(root)}
    names = tuple(sorted(folders["train" if has_parts else "all"]))
    for part, classes in folders.items():
        unknown = sorted(set(classes) - set(names))
        if unknown:
            raise EdgenasError(f"{root / part} has classes {unknown} that train/ lacks", "use the same class folders in every split")
    images = {part: [(_open_image(p), names.index(c)) for c in sorted(classes) for p in classes[c]]
              for part, classes in folders.items()}
    first = next(iter(images.values()))[0][0]
    hw = (size, size) if size else (first.height, first.width)
    grey = all(img.mode in GREY_MODES for part in images.values() for img, _ in part)
    arrays = {part: _to_array(items, hw, grey) for part, items in images.items()}
    if not has_parts:
        return make_dataset("imagefolder", str(root), names, split_60_20_20(*arrays["all"], names, str(root)))
    return make_dataset("imagefolder", str(root), names, _carve_missing(arrays, names, root))


def _to_array(items, hw: tuple[int, int], grey: bool) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image
    h, w = hw
    mode = "L" if grey else "RGB"
    x = np.stack([np.asarray(img.convert(mode).resize((w, h), Image.BILINEAR)
                             if img.size != (w, h) else img.convert(mode), dtype=np.uint8) for img, _ in items])
    x = x[:, None] if grey else x.transpose(0, 3, 1, 2)
    return x, np.array([label for _, label in items], dtype=np.int64)


def _carve_missing(arrays: dict, names: tuple[str, ...], root: Path) -> dict:
    x, y = arrays["train"]
    missing = [p for p in ("val", "test") if p not in arrays]
    if not missing:
        return arrays
    parts = stratified_split(y, (1.0 - 0.2 * len(missing),) + (0.2,) * len(missing), class_names=names, what=str(root / "train"))
    out = {"train": (x[parts[0]], y[parts[0]])}
    out.update({p: (x[idx], y[idx]) for p, idx in zip(missing, parts[1:])})
    out.update({p: arrays[p] for p in ("val", "test") if p in arrays})
    return out


# ----------------------------------------------------------------------------------------------------------- MedMNIST

MEDMNIST_KEYS = tuple(f"{p}_{k}" for p in ("train", "val", "test") for k in ("images", "labels"))


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise EdgenasError(f"MedMNIST file {path} does not exist", "pass the .npz downloaded from medmnist.com (e.g. pathmnist.npz)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in MEDMNIST_KEYS if k not in npz.files]
            if missing:
                raise EdgenasError(f"{path} lacks keys {missing} (has {sorted(npz.files)})",
                                   f"a MedMNIST .npz holds {', '.join(MEDMNIST_KEYS)}")
            return {k: npz[k] for k in MEDMNIST_KEYS}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as exc:
        raise EdgenasError(f"cannot read {path} ({type(exc).__name__}: {exc})", "the file is truncated or not an .npz; download it again") from None


def _medmnist_images(path: Path, key: str, images: np.ndarray) -> np.ndarray:
    ok = images.dtype == np.uint8 and (images.ndim == 3 or (images.ndim == 4 and images.shape[3] in (1, 3)))
    if not ok or images.shape[1] < 8 or images.shape[1] != images.shape[2]:
        raise EdgenasError(f"{path}: '{key}' is {images.dtype} {images.shape}",
                           "expected uint8 (N, H, H) grey or (N, H, H, 3) RGB images, e.g. (N, 28, 28)")
    return images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)


def _medmnist_labels(path: Path, key: str, labels: np.ndarray, n_images: int) -> np.ndarray:
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise EdgenasError(f"{path}: '{key}' is {labels.dtype} {labels.shape}",
                           "expected integer (N,) or (N, 1) single-label classes; multi-label sets (e.g. ChestMNIST) are not supported")
    if len(labels) != n_images:
        raise EdgenasError(f"{path}: '{key}' has {len(labels)} labels for {n_images} images", "the file is inconsistent; download it again")
    return labels.astype(np.int64)


@register_dataset("medmnist", argument="FILE.npz")
def medmnist(file: str) -> Dataset:
    """A MedMNIST .npz with its own train/val/test split; class names are the label numbers (the .npz has no names)."""
    path = Path(file).expanduser()
    arrays = _read_npz(path)
    parts = {}
    for p in ("train", "val", "test"):
        x = _medmnist_images(path, f"{p}_images", arrays[f"{p}_images"])
        parts[p] = (x, _medmnist_labels(path, f"{p}_labels", arrays[f"{p}_labels"], len(x)))
    shapes = {x.shape[1:] for x, _ in parts.values()}
    if len(shapes) > 1:
        raise EdgenasError(f"{path}: splits have different image shapes {sorted(shapes)}", "use one MedMNIST file per resolution")
    n_classes = 1 + max((int(y.max()) for _, y in parts.values() if len(y)), default=-1)   # empty splits fail below
    return make_dataset("medmnist", str(path), tuple(str(i) for i in range(n_classes)), parts)
