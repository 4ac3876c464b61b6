"""Search spaces, found by name: `create_space(name)` is the only way in (timm-style registry)."""
from __future__ import annotations

from typing import Callable

from edgenas.errors import EdgenasError

_SPACES: dict[str, Callable] = {}


def register_space(name: str):
    def deco(factory):
        _SPACES[name] = factory
        return factory
    return deco


def list_spaces() -> list[str]:
    _import_families()
    return sorted(_SPACES)


def create_space(name: str, **kwargs):
    _import_families()
    if name not in _SPACES:
        raise EdgenasError(f"unknown search space '{name}'", f"choose one of: {', '.join(sorted(_SPACES))}")
    return _SPACES[name](**kwargs)


def _import_families():
    # one file per family; importing registers it
    from edgenas.spaces import mbv3  # noqa: F401
    from edgenas.spaces import nb201  # noqa: F401
