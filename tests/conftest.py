import os
import shutil

import pytest
import torch

# the test machine has 2 cores shared with the test runner itself; one intra-op thread keeps runs comparable
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def require_tools(in_ci):
    """require_tools(tools, packages): skip when an external tool is missing, but fail in CI, where `make` installs
    the Debian packages and toolchain tests must run."""
    def check(tools, packages: str) -> None:
        missing = [t for t in tools if shutil.which(t) is None]
        if missing and in_ci:
            pytest.fail(f"CI but {', '.join(missing)} missing: `make setup` as root installs {packages}")
        if missing:
            pytest.skip(f"{', '.join(missing)} not installed (Debian: {packages})")
    return check


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A finished tiny search (tests.test_search.TINY), shared by every test module: (run folder, SearchResult).
    Tests must not modify it: copy it first (shutil.copytree)."""
    from edgenas import api
    from tests.test_search import TINY
    out = tmp_path_factory.mktemp("search") / "run"
    return out, api.search(config=TINY, out=out, seed=0)


@pytest.fixture(scope="session")
def tiny_export(tiny_run, tmp_path_factory):
    """The tiny run's --best member exported (the folder holding model.onnx, exits.json, ...). Read-only."""
    from edgenas import api
    out = tmp_path_factory.mktemp("export") / "export"
    api.export(tiny_run[0], None, out)
    return out


@pytest.fixture(scope="session")
def toy_data():
    """Four noisy 8x8 prototypes, 160/64/64 images: learnable in a few steps (ZO-DARTS+ tests). Read-only."""
    from edgenas.data.core import Dataset, Split
    gen = torch.Generator().manual_seed(0)
    protos = torch.rand(4, 1, 8, 8, generator=gen)

    def split(n):
        y = torch.randint(0, 4, (n,), generator=gen)
        return Split((protos[y] + 0.2 * torch.rand(n, 1, 8, 8, generator=gen)).clamp(0, 1), y)
    return Dataset("toy", split(160), split(64), split(64), n_classes=4, in_channels=1, native_size=(8, 8),
                   class_names=tuple("abcd"), source="tests/conftest.py")
