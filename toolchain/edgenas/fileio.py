"""Writing files and folders so that a crash, a full disk or a failed check never leaves a half-written one, for every
stage (search, export, compile, profile, calibrate).

- `atomic_write` and its text/JSON/torch forms: a temp file in the same folder, flushed and fsync'ed, optionally
  checked, then renamed over the target. Files get the usual permissions (0666 less the umask), like a plain open.
- `temp_folder` / `publish_folder`: a folder is built in a hidden sibling, which then takes the final name; an
  earlier folder there is replaced as a whole.
- `missing_folders` / `remove_created`: the folders a write creates, so that a failed one removes them again.
- `naming_path`: OSErrors that name the path they concern, so the CLI prints one line with it.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Callable


def missing_folders(path) -> list[Path]:
    """`path` and its ancestors that do not exist yet, outermost first (absolute): what a mkdir(parents=True) of
    `path` creates."""
    path = Path(path).absolute()
    return [p for p in (path, *path.parents) if not p.exists()][::-1]


def nearest_existing(path) -> Path:
    """The nearest ancestor of `path` that exists (it may be a file, which makes `path` unwritable)."""
    return next(p for p in Path(path).absolute().parents if p.exists())


def remove_created(created: list[Path]) -> None:
    """Remove folders a failed write created (as missing_folders listed them), deepest first, stopping at one that
    is not empty: something else was put there meanwhile."""
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            return


def naming_path(exc: OSError, path) -> OSError:
    """The OSError of a write (disk full...), naming `path` when the system did not: the CLI prints one line with it."""
    if exc.filename is not None:
        return exc
    return type(exc)(exc.errno, exc.strerror or str(exc), str(path))


def temp_name(path: Path) -> Path:
    """A hidden sibling of `path` that no other process picks (same folder, so the final rename is atomic)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def atomic_write(path, data: bytes, check: Callable[[Path], object] | None = None) -> Path:
    """Write `data` to `path` through a temp file that is fsync'ed and renamed into place. `check(temp_path)` runs
    before the rename: when it raises, `path` is left as it was. OSErrors name `path`."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # os.open with 0o666 (not mkstemp's 0o600): the file gets the umask's permissions, like any other output
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if check is not None:
            check(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise naming_path(exc, path) from None
        raise
    return path


def atomic_write_text(path, text: str, check: Callable[[Path], object] | None = None) -> Path:
    return atomic_write(path, text.encode("utf-8"), check)


def atomic_write_json(path, obj, **dumps_options) -> Path:
    """JSON with a final newline; by default indented and with sorted keys (run-folder files diff well)."""
    options = {"indent": 2, "sort_keys": True, **dumps_options}
    return atomic_write_text(path, json.dumps(obj, **options) + "\n")


def json_finite(value):
    """`value` with every non-finite float (NaN, e.g. Kendall tau of a constant ranking; inf) replaced by None,
    tuples by lists and keys by strings: JSON has no NaN, and json.dumps would write an invalid token."""
    import math

    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_finite(v) for v in value]
    return value


def atomic_torch_save(path, obj) -> Path:
    import torch
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write(path, buf.getvalue())


def temp_folder(out_dir) -> Path:
    """A new hidden sibling of `out_dir` to build it in (same parent, so publish_folder's rename is atomic), with
    the umask's permissions like any other folder (mkdtemp alone makes it 0700)."""
    out_dir = Path(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    umask = os.umask(0o022)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    return tmp


def publish_folder(tmp, out_dir) -> Path:
    """Give the finished folder `tmp` the name `out_dir` (same parent folder). An earlier `out_dir` is first moved
    aside and removed after the rename, so a reader sees the old folder or the new one, never a mixture."""
    tmp, out_dir = Path(tmp), Path(out_dir)
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.replace(out_dir, old / out_dir.name)
        os.replace(tmp, out_dir)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out_dir)
    return out_dir
