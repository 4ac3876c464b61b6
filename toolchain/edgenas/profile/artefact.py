"""Reading a compiled folder for `profile`: the folder and its JSON files are untrusted data, checked before use.

    folder = artefact_folder("fw/", "firmware.json")
    report = read_json_object(folder / "firmware.json", {"target": str, "elf": str, "n_test_inputs": int})
    reference = load_reference(folder, n_inputs=16, n_classes=10, input_size=64)

Every problem (a file given instead of a folder, a file that is not JSON, a missing key, a value of the wrong type
or shape) is an EdgenasError naming the file, raised before anything runs. `check_sha256` compares a file the profile
loads as code (a host build's model.so) with the digest `compile` recorded for it (compile.outputs.sha256_of).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from edgenas.compile.outputs import REFERENCE_FILE, sha256_of
from edgenas.errors import EdgenasError
from edgenas.fileio import nearest_existing


def artefact_folder(folder, report_file: str) -> Path:
    """`folder` as a Path, when it is an existing folder (not a file) holding `report_file`."""
    folder = Path(folder)
    if not folder.exists():
        raise EdgenasError(f"{folder} does not exist", "pass the folder written by `edgenas compile`")
    if not folder.is_dir():
        raise EdgenasError(f"{folder} is a file, not a compiled folder", "pass the folder written by `edgenas compile`")
    if not (folder / report_file).is_file():
        raise EdgenasError(f"{folder / report_file} not found", "build the folder with `edgenas compile` first")
    return folder


def read_json_object(path: Path, keys: Mapping[str, type | tuple[type, ...]]) -> dict[str, Any]:
    """The JSON object in `path`, with each of `keys` present and of its type (bool is not an int here)."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgenasError(f"cannot read {path}: {exc.__class__.__name__}", "rebuild the folder with `edgenas compile`"
                           ) from None
    except json.JSONDecodeError as exc:
        raise EdgenasError(f"{path} is not valid JSON ({exc.msg}, line {exc.lineno})",
                           "rebuild the folder with `edgenas compile`") from None
    if not isinstance(doc, dict):
        raise EdgenasError(f"{path} holds a JSON {type(doc).__name__}, not an object",
                           "rebuild the folder with `edgenas compile`")
    for key, kind in keys.items():
        value = doc.get(key)
        if value is None or isinstance(value, bool) or not isinstance(value, kind):
            raise EdgenasError(f"{path}: '{key}' is missing or not a {_kind_name(kind)}",
                               "rebuild the folder with `edgenas compile`")
    return doc


def _kind_name(kind) -> str:
    names = {str: "string", int: "integer", float: "number", list: "list", dict: "object"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _numbers(value, shape: tuple[int, ...], path: Path, key: str, dtype) -> np.ndarray:
    """`value` as an array of `shape` (-1: any length >= 1) of finite numbers, or one EdgenasError."""
    try:
        array = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError, OverflowError):
        array = None
    ok = (array is not None and array.ndim == len(shape) and array.size > 0
          and all(s == -1 or s == n for s, n in zip(shape, array.shape)) and bool(np.isfinite(array).all()))
    if not ok:
        want = " x ".join("N" if s == -1 else str(s) for s in shape)
        raise EdgenasError(f"{path}: '{key}' is not a {want} array of numbers",
                           "rebuild the folder with `edgenas compile` (reference.json is written with the build)")
    return array


def load_reference(folder: Path, n_inputs: int, n_classes: int | None, input_size: int | None = None) -> dict:
    """reference.json of a compiled folder, checked: `exits` (n_inputs), `logits` (n_inputs x n_classes) and, when
    `input_size` is given, `inputs` (n_inputs x input_size); a None size is taken from the file."""
    path = Path(folder) / REFERENCE_FILE
    if not path.is_file():
        raise EdgenasError(f"{path} not found", "build the folder with `edgenas compile` first")
    doc = read_json_object(path, {"logits": list, "exits": list})
    _numbers(doc["exits"], (n_inputs,), path, "exits", np.int64)
    _numbers(doc["logits"], (n_inputs, n_classes or -1), path, "logits", np.float64)
    if input_size is not None:
        _numbers(doc.get("inputs"), (n_inputs, input_size), path, "inputs", np.float64)
    return doc


def check_sha256(path: Path, expected, report: Path) -> None:
    """Refuse `path` unless its SHA-256 is the one `compile` recorded in `report` (a file that changed since, or a
    folder compile did not write, is not loaded)."""
    if not isinstance(expected, str) or len(expected) != 64:
        raise EdgenasError(f"{report} records no SHA-256 for {path.name}, so {path} is not loaded",
                           "rebuild the folder with `edgenas compile` on this machine")
    if sha256_of(path) != expected:
        raise EdgenasError(f"{path} does not match the SHA-256 recorded in {report}, so it is not loaded",
                           "only profile folders you built: rebuild it with `edgenas compile`")


FIRMWARE_KEYS = {"target": str, "elf": str, "n_test_inputs": int, "n_classes": int, "codegen": str, "dtype": str}


def load_firmware_folder(firmware_dir, target) -> tuple[Path, dict, dict]:
    """(folder, firmware.json, reference.json) of a firmware folder built for `target`, checked."""
    from edgenas.compile.mcu import REPORT_FILE

    folder = artefact_folder(firmware_dir, REPORT_FILE)
    fw = read_json_object(folder / REPORT_FILE, FIRMWARE_KEYS)
    if fw["target"] != target.name:
        raise EdgenasError(f"{folder} was built for target {fw['target']}, not {target.name}",
                           f"profile it with --target {fw['target']}, or recompile it for {target.name}")
    for key in ("elf", "board_elf"):  # a file of this folder, never a path elsewhere on the host
        name = fw.get(key)
        if name is not None and (not isinstance(name, str) or Path(name).name != name or name in ("", ".", "..")):
            raise EdgenasError(f"{folder / REPORT_FILE}: '{key}' is not a file name in the folder",
                               "rebuild the firmware with `edgenas compile`")
    if fw["n_test_inputs"] < 1 or fw["n_classes"] < 1:
        raise EdgenasError(f"{folder / REPORT_FILE} records {fw['n_test_inputs']} test inputs and "
                           f"{fw['n_classes']} classes", "rebuild the firmware with `edgenas compile`")
    return folder, fw, load_reference(folder, fw["n_test_inputs"], fw["n_classes"])


def check_output_file(out: Path) -> None:
    """Fail before a profile runs (minutes under QEMU) when its --out file could not be written afterwards."""
    out = Path(out)
    if out.is_dir():
        raise EdgenasError(f"--out {out} is a folder", "pass a file name, e.g. --out profile.json")
    existing = nearest_existing(out)
    problem = None
    if not existing.is_dir():
        problem = f"{existing} is not a folder"
    else:
        try:  # a real write: permission bits say nothing for root, nor for read-only mounts
            fd, probe = tempfile.mkstemp(dir=existing, prefix=f".{out.name}.")
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            problem = f"{existing}: {exc.strerror or exc}"
    if problem:
        raise EdgenasError(f"cannot write --out {out} ({problem})", "pass an --out in a writable folder")
