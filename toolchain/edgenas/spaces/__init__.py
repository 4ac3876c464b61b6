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


def create_space(spec: str, **kwargs):
    """A space by name, or by `name:key=value,...` with integer settings (e.g. `nb201:C=8,N=2,resolution=16`)."""
    _import_families()
    name, _, settings = spec.partition(":")
    if name not in _SPACES:
        raise EdgenasError(f"unknown search space '{name}'", f"choose one of: {', '.join(sorted(_SPACES))}")
    for item in filter(None, settings.split(",")):
        key, eq, value = (part.strip() for part in item.partition("="))
        if not (key and eq and value.lstrip("-").isdigit()):
            raise EdgenasError(f"space setting '{item}' in '{spec}' is not key=integer",
                               "write e.g. nb201:C=8,N=2,resolution=16")
        kwargs[key] = int(value)
    try:
        return _SPACES[name](**kwargs)
    except TypeError:
        raise EdgenasError(f"space '{spec}' has a setting {name} does not take",
                           f"see the settings of {name} (e.g. nb201:C=8,N=2,resolution=16)") from None


def space_family(spec: str) -> str:
    """The space name of a spec (`nb201:C=8` -> `nb201`)."""
    return spec.partition(":")[0]


def _import_families():
    # one file per family; importing registers it
    from edgenas.spaces import mbv3  # noqa: F401
    from edgenas.spaces import nb201  # noqa: F401
