"""The test inputs a compile embeds (firmware) or runs (host library), checked against onnxruntime's outputs for them.

    x = checked_test_inputs(x, src.input_shape)          # (N, *sample) float32, or 4 random inputs for None
    x = default_test_inputs(src.input_shape)              # random inputs at several scales (host builds)
    x = dataset_test_inputs(export_dir, 16)               # test-split inputs spread over the exits, or None
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from edgenas.errors import EdgenasError

DEFAULT_TEST_INPUTS = 4
DEFAULT_SCALES = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)  # random inputs at several scales reach more exits


def checked_test_inputs(x: np.ndarray | None, input_shape: Sequence[int]) -> np.ndarray:
    """`x` as a contiguous float32 (N, *sample) array fitting the model input (a (N, 1, *sample) batch is
    squeezed); None: DEFAULT_TEST_INPUTS standard-normal inputs (seed 0)."""
    sample = tuple(input_shape[1:])
    if x is None:
        return np.random.default_rng(0).standard_normal((DEFAULT_TEST_INPUTS, *sample)).astype(np.float32)
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == len(input_shape) + 1 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != len(input_shape) or tuple(x.shape[1:]) != sample or x.shape[0] < 1:
        raise EdgenasError(f"test inputs of shape {list(x.shape)} do not fit the model input {list(input_shape)}",
                           f"pass an array of shape (N, {', '.join(map(str, sample))}) with N >= 1")
    return np.ascontiguousarray(x)


def default_test_inputs(input_shape: Sequence[int], n_per_scale: int = 1) -> np.ndarray:
    rng = np.random.default_rng(0)
    sample = tuple(input_shape[1:])
    return np.concatenate([rng.standard_normal((n_per_scale, *sample)).astype(np.float32) * np.float32(s)
                           for s in DEFAULT_SCALES])


def dataset_test_inputs(model_path: Path, n: int):
    """Up to n test-split inputs of the model's dataset, spread over the exits they take (None: dataset unknown)."""
    from edgenas.compile.mcu import load_model_source, reference_outputs
    from edgenas.data import load_dataset, resize
    from edgenas.export.exits_json import EXITS_FILE, read_exits_json

    model_path = Path(model_path)
    folder = model_path if model_path.is_dir() else model_path.parent
    if not (folder / EXITS_FILE).is_file():
        return None
    dataset = read_exits_json(folder).get("meta", {}).get("dataset")
    if not dataset:
        return None
    src = load_model_source(model_path, "float32")
    x = resize(load_dataset(dataset).test.x, src.input_shape[-1]).numpy().astype(np.float32)
    _, exits = reference_outputs(src, x)
    order = [np.flatnonzero(exits == e).tolist() for e in range(int(exits.max()) + 1)]
    picked = []
    while len(picked) < min(n, len(x)):  # round robin over exits: every exit taken by some input is exercised
        for idx in order:
            if idx and len(picked) < n:
                picked.append(idx.pop(0))
    return x[sorted(picked)]
