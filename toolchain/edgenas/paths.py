"""Output paths shared by every stage that writes a folder (search, export, compile): which folders a write creates,
how a failed one removes them again, and OSErrors that name the path they concern."""
from __future__ import annotations

from pathlib import Path


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
