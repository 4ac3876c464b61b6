"""Finding and reading target files: shipped names, user paths, `extends` chains merged key by key."""
from __future__ import annotations

import os
import tomllib
from dataclasses import replace
from pathlib import Path

from edgenas.errors import EdgenasError
from edgenas.targets.model import Target
from edgenas.targets.units import clip
from edgenas.targets.validation import build_target


def _shipped_dir():
    from importlib.resources import files
    return files("edgenas.target_files")


def list_targets() -> list[str]:
    """Names of the shipped targets."""
    return sorted(p.name[: -len(".toml")] for p in _shipped_dir().iterdir() if p.name.endswith(".toml"))


def _resolve(name_or_path: str, relative_to: Path | None = None) -> tuple[str, str]:
    """(TOML text, path shown in messages) for a shipped name or a file path."""
    text = str(name_or_path)
    looks_like_path = text.endswith(".toml") or "/" in text or "\\" in text
    if not looks_like_path:
        if text in list_targets():
            res = _shipped_dir() / f"{text}.toml"
            return res.read_text(encoding="utf-8"), str(res)
        raise EdgenasError(f"unknown target '{text}'",
                           f"use one of {', '.join(list_targets())}, or a path to a .toml file")
    path = Path(text).expanduser()
    if relative_to is not None and not path.is_absolute():
        path = relative_to / path
    try:
        found = path.is_file()
    except OSError:  # e.g. a name too long for the file system
        found = False
    if not found:
        raise EdgenasError(f"target file {clip(path, 200)} not found", "check the path, or use a shipped target name "
                           f"({', '.join(list_targets())})")
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgenasError(f"cannot read target file {path}: {exc}", "pass a readable UTF-8 TOML file") from None


def _parse_toml(text: str, where: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = " ".join(str(exc).split())
        raise EdgenasError(f"{where}: malformed TOML: {msg}", "fix the syntax at that line and column") from None


# Tables an override replaces whole instead of merging key by key: a latency model's boosted trees and the record of
# how calibrate chose it describe one fit, and a mix of two fits' parts would describe neither.
REPLACED_TABLES = ("trees", "selection")


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if key == "provenance" and isinstance(value, list) and isinstance(base.get(key), list):
            out[key] = [*base[key], *value]
        elif isinstance(value, dict) and isinstance(base.get(key), dict) and key not in REPLACED_TABLES:
            out[key] = _merge(base[key], value)
        else:
            out[key] = value
    return out


# Longest `extends` chain followed: real ones are a board over a shipped core (2 or 3 files); a longer one is a
# mistake, and the cap bounds the work whatever the files say.
MAX_EXTENDS_DEPTH = 16


def _load_raw(name_or_path: str, relative_to: Path | None = None, chain: tuple[str, ...] = ()) -> tuple[dict, str]:
    text, where = _resolve(name_or_path, relative_to)
    # cycles are found by resolved path: `../x/a.toml` names the same file as `a.toml` however many `..` it has
    identity = str(Path(where).resolve())
    resolved_chain = [str(Path(w).resolve()) for w in chain]
    if identity in resolved_chain:
        names = [Path(w).name for w in chain[resolved_chain.index(identity):]]
        raise EdgenasError(f"{clip(where, 200)}: 'extends' forms a cycle ({' -> '.join([*names, Path(where).name])})",
                           "make one of the files stand alone")
    if len(chain) >= MAX_EXTENDS_DEPTH:
        raise EdgenasError(f"{clip(where, 200)}: 'extends' chain is longer than {MAX_EXTENDS_DEPTH} files",
                           "extend a shipped target or a file that stands alone")
    raw = _parse_toml(text, where)
    if "extends" not in raw:
        return raw, where
    parent = raw.pop("extends")
    if not isinstance(parent, str) or not parent:
        raise EdgenasError(f"{where}: key 'extends' must be a target name or a path",
                           "e.g. extends = \"cortex-m7\"")
    parent_dir = Path(where).parent if Path(where).is_file() else None
    try:
        _resolve(parent, parent_dir)
    except EdgenasError as exc:
        raise EdgenasError(f"{where}: key 'extends': {exc.problem}", exc.fix) from None
    base, _ = _load_raw(parent, parent_dir, (*chain, where))
    merged = _merge(base, raw)
    if "name" not in raw:
        merged["name"] = Path(where).stem  # an override is a new target: it must not pose as its base
    return merged, where


def load_target(name_or_path: str) -> Target:
    """A shipped target by name (`cortex-m7`) or a user file (`./my-board.toml`), validated."""
    raw, where = _load_raw(str(name_or_path))
    target = build_target(raw, where)
    return replace(target, source_path=where)


def as_target(target) -> Target:
    """A Target from a name, a .toml path or a Target (returned as it is): what every library entry point accepts."""
    if isinstance(target, Target):
        return target
    if isinstance(target, (str, os.PathLike)):
        return load_target(os.fspath(target))
    raise TypeError(f"expected a target name, a .toml path or a Target, got {type(target).__name__}")
