"""edgenas.data: shipped datasets, loaders for user files (built here in tmp_path), resizing, batching, errors."""
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from edgenas.data import batches, dataset_usage, list_datasets, load_dataset, resize, stratified_split
from edgenas.data.core import Split
from edgenas.errors import EdgenasError


def _one_line_error(spec: str, *needles: str) -> str:
    with pytest.raises(EdgenasError) as info:
        load_dataset(spec)
    msg = str(info.value)
    assert "\n" not in msg and info.value.fix, msg
    for needle in needles:
        assert needle in msg, msg
    return msg


def _class_counts(split, n_classes):
    return torch.bincount(split.y, minlength=n_classes).tolist()


# ------------------------------------------------------------------------------------------------ shipped datasets

@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_registry_lists_every_loader():
    assert list_datasets() == ["cifar10", "digits", "imagefolder", "medmnist", "mnist5k"]
    assert "cifar10:DIR" in dataset_usage() and "medmnist:FILE.npz" in dataset_usage()


def test_digits_shapes_split_sizes_and_stratification(digits):
    assert (digits.name, digits.n_classes, digits.in_channels, digits.native_size) == ("digits", 10, 1, (8, 8))
    assert digits.class_names == tuple("0123456789")
    sizes = [len(s.y) for s in (digits.train, digits.val, digits.test)]
    assert sum(sizes) == 1797 and sizes == [1079, 359, 359]
    for split in (digits.train, digits.val, digits.test):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert split.x.shape[1:] == (1, 8, 8)
        assert 0.0 <= float(split.x.min()) and float(split.x.max()) <= 1.0
        assert min(_class_counts(split, 10)) > 0
    # 60/20/20 within every class, not just overall
    train, test = _class_counts(digits.train, 10), _class_counts(digits.test, 10)
    assert all(2.5 <= tr / te <= 3.5 for tr, te in zip(train, test))
    # a prefix of the test split (FlatNAS's OOD benchmark takes one) holds many classes, not one
    assert len(set(digits.test.y[:40].tolist())) >= 8


def test_digits_split_is_fixed(digits):
    again = load_dataset("digits")
    for a, b in ((digits.train, again.train), (digits.val, again.val), (digits.test, again.test)):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)


def test_digits_values_are_the_sklearn_images_over_16(digits):
    from sklearn.datasets import load_digits
    raw = load_digits()
    pool = {tuple((img / 16.0).astype(np.float32).ravel()) for img in raw.images}
    assert all(tuple(img.ravel().tolist()) in pool for img in digits.test.x[:20].numpy())


def test_mnist5k_shapes_split_sizes_and_stratification():
    data = load_dataset("mnist5k")
    assert (data.n_classes, data.in_channels, data.native_size) == (10, 1, (28, 28))
    assert data.source.endswith("mnist_5k.csv.gz")
    assert [_class_counts(s, 10) for s in (data.train, data.val, data.test)] == [[300] * 10, [100] * 10, [100] * 10]
    assert float(data.train.x.max()) == 1.0 and float(data.train.x.min()) == 0.0
    # pixels and labels stay paired: the mean image of each class differs from every other class's mean
    means = torch.stack([data.train.x[data.train.y == c].mean(0).flatten() for c in range(10)])
    assert float(torch.cdist(means, means).add(torch.eye(10) * 100).min()) > 1.0
    again = load_dataset("mnist5k")
    assert torch.equal(data.test.x, again.test.x) and torch.equal(data.test.y, again.test.y)


# ----------------------------------------------------------------------------------------- splits, resize, batches

def test_stratified_split_is_a_fixed_disjoint_cover():
    y = np.repeat(np.arange(4), [10, 7, 5, 3])
    parts = stratified_split(y, (0.6, 0.2, 0.2))
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(len(y)))
    assert all(set(y[p]) == {0, 1, 2, 3} for p in parts)
    assert all(np.array_equal(a, b) for a, b in zip(parts, stratified_split(y, (0.6, 0.2, 0.2))))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, stratified_split(y, (0.6, 0.2, 0.2), seed=1)))
    with pytest.raises(EdgenasError, match="class '3' has 2 samples"):
        stratified_split(np.array([0, 0, 0, 3, 3]), (0.6, 0.2, 0.2))


def test_resize_identity_upsampling_and_antialiased_shrinking():
    x = torch.rand(2, 3, 8, 8)
    assert resize(x, 8) is x
    up = resize(x, 32)
    assert up.shape == (2, 3, 32, 32) and float(up.min()) >= 0 and float(up.max()) <= 1
    # one bright column in every 4: plain bilinear at 1/4 scale samples between columns 1 and 2 and sees nothing;
    # the antialiased resize averages over each 4-column window and sees the lines
    lines = torch.zeros(1, 1, 16, 16)
    lines[..., ::4] = 1.0
    small = resize(lines, 4)
    assert small.shape == (1, 1, 4, 4) and float(small.min()) > 0.1


def test_batches_cover_the_split_once_and_shuffle_deterministically():
    split = Split(x=torch.arange(10, dtype=torch.float32).view(10, 1, 1, 1), y=torch.arange(10))
    plain = list(batches(split, 4, shuffle=False, generator=None))
    assert [len(y) for _, y in plain] == [4, 4, 2] and torch.cat([y for _, y in plain]).tolist() == list(range(10))

    def order(seed):
        got = list(batches(split, 3, shuffle=True, generator=torch.Generator().manual_seed(seed)))
        assert all(torch.equal(x.view(-1).long(), y) for x, y in got)   # images stay with their labels
        return torch.cat([y for _, y in got]).tolist()

    assert sorted(order(0)) == list(range(10)) and order(0) == order(0) and order(0) != order(1)
    with pytest.raises(EdgenasError, match="batch size"):
        next(batches(split, 0, shuffle=False, generator=None))


def test_bad_specs_are_one_line_errors():
    _one_line_error("imagenet", "unknown dataset 'imagenet'", "digits", "cifar10:DIR")
    _one_line_error("digits:extra", "takes no argument")
    _one_line_error("cifar10", "needs a path", "cifar10:DIR")
    _one_line_error("medmnist:", "needs a path")


# ------------------------------------------------------------------------------------------------------ CIFAR-10

def _cifar_batch(labels, batch_label="training batch"):
    """A batch in the official layout (the Python 2 pickles' keys load as bytes): data (N, 3072) uint8 with the
    R, G and B planes one after another, each row-major; R[h, w] = 20 * label + h, G = 5, B = 250 - w."""
    n = len(labels)
    r = (20 * np.asarray(labels)[:, None, None] + np.arange(32)[None, :, None]) * np.ones((1, 1, 32))
    g = np.full((n, 32, 32), 5)
    b = 250 - np.arange(32)[None, None, :] * np.ones((n, 32, 1))
    data = np.stack([r, g, b], axis=1).reshape(n, 3072).astype(np.uint8)
    return {b"batch_label": batch_label.encode(), b"labels": list(labels), b"data": data,
            b"filenames": [f"img{i}.png".encode() for i in range(n)]}


def _write_cifar(root, per_class=3, test_per_class=2):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(_cifar_batch(np.repeat(np.arange(10), per_class)), f, protocol=2)
    # the official files were written by Python 2 with numpy 1: str keys, arrays rebuilt via numpy.core.multiarray
    batch = {k.decode(): v for k, v in _cifar_batch(np.repeat(np.arange(10), per_class)).items()}
    raw = pickle.dumps(batch, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in raw
    (folder / "data_batch_4").write_bytes(raw)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(_cifar_batch(np.tile(np.arange(10), test_per_class), "testing batch"), f, protocol=2)
    names = [n.encode() for n in ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names, b"num_cases_per_batch": 30, b"num_vis": 3072}, f, protocol=2)
    return folder


def test_cifar10_reads_the_python_batches(tmp_path):
    folder = _write_cifar(tmp_path)
    data = load_dataset(f"cifar10:{tmp_path}")           # the parent folder works
    same = load_dataset(f"cifar10:{folder}")             # and the batches folder itself
    assert torch.equal(data.train.x, same.train.x)
    assert (data.n_classes, data.in_channels, data.native_size) == (10, 3, (32, 32))
    assert data.class_names[:2] == ("plane", "car") and data.source == str(folder)
    assert len(data.train.y) + len(data.val.y) == 150 and len(data.test.y) == 20
    assert _class_counts(data.val, 10) == [2] * 10 and _class_counts(data.test, 10) == [2] * 10
    for split in (data.train, data.val, data.test):
        pixels = (split.x * 255).round()
        rows = torch.arange(32, dtype=torch.float32).view(1, 32, 1)
        assert torch.equal(pixels[:, 0], 20 * split.y.view(-1, 1, 1).float() + rows.expand(-1, -1, 32))
        assert torch.all(pixels[:, 1] == 5)
        assert torch.equal(pixels[:, 2], (250 - torch.arange(32.0)).view(1, 1, 32).expand(len(split.y), 32, -1))


def test_cifar10_missing_and_corrupt_files(tmp_path):
    _one_line_error(f"cifar10:{tmp_path / 'nowhere'}", "does not exist")
    (tmp_path / "empty").mkdir()
    _one_line_error(f"cifar10:{tmp_path / 'empty'}", "no test_batch")
    folder = _write_cifar(tmp_path / "c")
    (folder / "data_batch_3").unlink()
    _one_line_error(f"cifar10:{folder}", "lacks data_batch_3")
    folder = _write_cifar(tmp_path / "t")
    raw = (folder / "data_batch_2").read_bytes()
    (folder / "data_batch_2").write_bytes(raw[: len(raw) // 2])
    _one_line_error(f"cifar10:{folder}", "data_batch_2 is not a readable CIFAR-10 batch")
    folder = _write_cifar(tmp_path / "m")
    batch = _cifar_batch(np.arange(10))
    batch[b"labels"] = batch[b"labels"][:7]
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    _one_line_error(f"cifar10:{folder}", "10 images but 7 labels")


class _Exploit:
    """A pickle that would create a file when loaded by plain pickle.load."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_cifar10_pickles_cannot_run_code(tmp_path):
    folder = _write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": _Exploit(str(marker)), b"labels": []}))
    _one_line_error(f"cifar10:{folder}", "refusing to load")
    assert not marker.exists()


# --------------------------------------------------------------------------------------------------- imagefolder

def _png(path, value, size=(10, 12), mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode == "L" else (value, 255 - value, 7)
    Image.new(mode, size, color).save(path)


def test_imagefolder_flat_layout_is_split_60_20_20(tmp_path):
    for c, value in (("cat", 40), ("dog", 200)):
        for i in range(5):
            _png(tmp_path / c / f"{i}.png", value)
    data = load_dataset(f"imagefolder:{tmp_path}")
    assert data.class_names == ("cat", "dog") and (data.in_channels, data.native_size) == (1, (12, 10))
    assert [_class_counts(s, 2) for s in (data.train, data.val, data.test)] == [[3, 3], [1, 1], [1, 1]]
    for split in (data.train, data.val, data.test):
        assert torch.allclose(split.x.mean((1, 2, 3)), torch.where(split.y == 0, 40 / 255, 200 / 255))


def test_imagefolder_split_folders_rgb_and_resizing(tmp_path):
    for c, value in (("a", 10), ("b", 90)):
        for i in range(5):
            _png(tmp_path / "train" / c / f"{i}.png", value, size=(16, 16) if i else (8, 8))
        _png(tmp_path / "test" / c / "t.jpg", value, mode="RGB")
    data = load_dataset(f"imagefolder:{tmp_path}")
    assert data.in_channels == 3 and data.native_size == (8, 8)       # one RGB image makes all RGB; first image's size
    assert len(data.test.y) == 2 and len(data.val.y) == 2 and len(data.train.y) == 8   # val carved from train
    sized = load_dataset(f"imagefolder:{tmp_path}?size=12")
    assert sized.native_size == (12, 12) and sized.train.x.shape[1:] == (3, 12, 12)


def test_imagefolder_errors(tmp_path):
    _one_line_error(f"imagefolder:{tmp_path / 'nowhere'}", "does not exist")
    (tmp_path / "empty").mkdir()
    _one_line_error(f"imagefolder:{tmp_path / 'empty'}", "has no class subfolders")
    (tmp_path / "noimg" / "cls").mkdir(parents=True)
    _one_line_error(f"imagefolder:{tmp_path / 'noimg'}", "has no images")
    for i in range(3):
        _png(tmp_path / "bad" / "x" / f"{i}.png", 5)
    (tmp_path / "bad" / "x" / "3.png").write_bytes(b"not a png at all")
    _one_line_error(f"imagefolder:{tmp_path / 'bad'}", "cannot read image", "3.png")
    for i in range(3):
        _png(tmp_path / "few" / "ok" / f"{i}.png", 5)
    _png(tmp_path / "few" / "rare" / "0.png", 5)
    _one_line_error(f"imagefolder:{tmp_path / 'few'}", "class 'rare' has 1 samples")
    for i in range(5):
        _png(tmp_path / "mism" / "train" / "a" / f"{i}.png", 5)
    _png(tmp_path / "mism" / "test" / "zebra" / "0.png", 5)
    _one_line_error(f"imagefolder:{tmp_path / 'mism'}", "classes ['zebra'] that train/ lacks")


# ------------------------------------------------------------------------------------------------------ MedMNIST

def _medmnist(n=(12, 4, 6), rgb=False, size=28):
    rng = np.random.default_rng(0)
    arrays = {}
    for part, count in zip(("train", "val", "test"), n):
        shape = (count, size, size, 3) if rgb else (count, size, size)
        arrays[f"{part}_images"] = rng.integers(0, 256, size=shape, dtype=np.uint8)
        arrays[f"{part}_labels"] = (np.arange(count) % 3).reshape(-1, 1).astype(np.uint8)
    return arrays


def test_medmnist_npz(tmp_path):
    arrays = _medmnist()
    np.savez(tmp_path / "grey.npz", **arrays)
    data = load_dataset(f"medmnist:{tmp_path / 'grey.npz'}")
    assert (data.n_classes, data.in_channels, data.native_size) == (3, 1, (28, 28))
    assert [len(s.y) for s in (data.train, data.val, data.test)] == [12, 4, 6]
    assert torch.equal((data.val.x[:, 0] * 255).round().to(torch.uint8), torch.from_numpy(arrays["val_images"]))
    assert data.test.y.tolist() == [0, 1, 2, 0, 1, 2]
    rgb = _medmnist(rgb=True)
    rgb["train_labels"] = rgb["train_labels"].ravel()        # (N,) labels are accepted too
    np.savez_compressed(tmp_path / "rgb.npz", **rgb)
    data = load_dataset(f"medmnist:{tmp_path / 'rgb.npz'}")
    assert data.in_channels == 3 and data.train.x.shape == (12, 3, 28, 28)
    assert torch.equal((data.train.x[3] * 255).round().to(torch.uint8), torch.from_numpy(rgb["train_images"][3]).permute(2, 0, 1))


def test_medmnist_errors(tmp_path):
    _one_line_error(f"medmnist:{tmp_path / 'missing.npz'}", "does not exist")
    arrays = _medmnist()
    np.savez(tmp_path / "ok.npz", **arrays)
    raw = (tmp_path / "ok.npz").read_bytes()
    (tmp_path / "truncated.npz").write_bytes(raw[: len(raw) // 3])
    _one_line_error(f"medmnist:{tmp_path / 'truncated.npz'}", "cannot read", "truncated.npz")
    (tmp_path / "text.npz").write_text("hello")
    _one_line_error(f"medmnist:{tmp_path / 'text.npz'}", "cannot read")

    def bad(name, **change):
        a = dict(arrays)
        for k, v in change.items():
            if v is None:
                del a[k]
            else:
                a[k] = v
        np.savez(tmp_path / name, **a)
        return f"medmnist:{tmp_path / name}"

    _one_line_error(bad("nokey.npz", val_labels=None), "lacks keys ['val_labels']")
    _one_line_error(bad("flat.npz", train_images=np.zeros((12, 784), np.uint8)), "'train_images' is uint8 (12, 784)", "(N, 28, 28)")
    _one_line_error(bad("float.npz", test_images=np.zeros((6, 28, 28), np.float64)), "'test_images' is float64")
    _one_line_error(bad("count.npz", val_labels=np.zeros((3, 1), np.uint8)), "3 labels for 4 images")
    _one_line_error(bad("multi.npz", test_labels=np.zeros((6, 14), np.uint8)), "'test_labels' is uint8 (6, 14)", "multi-label")
    _one_line_error(bad("empty.npz", val_images=np.zeros((0, 28, 28), np.uint8), val_labels=np.zeros((0, 1), np.uint8)),
                    "val split is empty")


# ------------------------------------------------------------------------------------------- issue 15: too little data

def test_one_class_datasets_are_refused(tmp_path):
    for i in range(5):
        _png(tmp_path / "one" / "cat" / f"{i}.png", 40 + i)
    _one_line_error(f"imagefolder:{tmp_path / 'one'}", "has 1 class (cat)", "at least 2")
    arrays = _medmnist()
    for part in ("train", "val", "test"):
        arrays[f"{part}_labels"] = np.zeros_like(arrays[f"{part}_labels"])
    np.savez(tmp_path / "one.npz", **arrays)
    _one_line_error(f"medmnist:{tmp_path / 'one.npz'}", "has 1 class (0)")
    arrays = _medmnist()
    arrays["train_labels"] = np.full_like(arrays["train_labels"], 2)  # 3 classes named, train holds one of them
    np.savez(tmp_path / "train-one.npz", **arrays)
    _one_line_error(f"medmnist:{tmp_path / 'train-one.npz'}", "train split holds only class '2'")


def test_small_evaluation_splits_warn_once_with_the_reason(tmp_path, capsys):
    from edgenas.data.core import MIN_EVAL_IMAGES
    np.savez(tmp_path / "small.npz", **_medmnist(n=(12, 4, MIN_EVAL_IMAGES)))
    data = load_dataset(f"medmnist:{tmp_path / 'small.npz'}")  # a warning, not an error: it loads
    assert len(data.val.y) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: ") and "val split has only 4 images" in err[0], err
    assert "rank candidates" in err[0] and f"at least {MIN_EVAL_IMAGES}" in err[0]
    load_dataset(f"medmnist:{tmp_path / 'small.npz'}")
    assert capsys.readouterr().err == ""  # once per process
    load_dataset("digits")  # 359 validation and test images: no warning
    assert capsys.readouterr().err == ""


def _png_header(width, height):
    """A PNG that declares width x height pixels (PIL checks the size when it opens the file, before decoding)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("pixels", ["over twice the limit (DecompressionBombError)", "over the limit (warning)"])
def test_decompression_bombs_are_one_line_naming_the_file(tmp_path, monkeypatch, pixels):
    for c in "ab":
        for i in range(3):
            _png(tmp_path / c / f"{i}.png", 9 * i)
    if pixels.startswith("over twice"):
        (tmp_path / "b" / "bomb.png").write_bytes(_png_header(100_000, 100_000))
    else:  # PIL only warns between MAX_IMAGE_PIXELS and twice that; edgenas refuses that range too
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 130)  # the others have 120, the bomb 144
        _png(tmp_path / "b" / "bomb.png", 3, size=(12, 12))
    _one_line_error(f"imagefolder:{tmp_path}", "bomb.png", "decompression bomb")
