import copy
import fcntl
import functools
import os
import pickle
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


def built_once(tmp_path_factory, name: str, build):
    """build(folder) run once per test run, its value returned to every caller. Under xdist each worker has a session
    of its own: the first worker to get here builds in a folder that all workers of the run see, under a file lock,
    and the others wait for it and read its value back (pickled)."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return build(tmp_path_factory.mktemp(name))
    shared = tmp_path_factory.getbasetemp().parent / name  # the run's temporary root, above the workers' own
    with open(f"{shared}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        done = shared / "value.pickle"
        if not done.is_file():
            shutil.rmtree(shared, ignore_errors=True)  # what a worker that failed while building left
            shared.mkdir()
            done.write_bytes(pickle.dumps(build(shared)))
        return pickle.loads(done.read_bytes())


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A finished tiny search (tests.tiny_settings.TINY), shared by every test module: (run folder, SearchResult).
    Tests must not modify it: copy it first (shutil.copytree)."""
    from edgenas import api
    from tests.tiny_settings import TINY
    return built_once(tmp_path_factory, "search", lambda folder: (
        folder / "run", api.search(config=TINY, out=folder / "run", seed=0)))


@pytest.fixture(scope="session")
def tiny_export(tiny_run, tmp_path_factory):
    """The tiny run's --best member exported (the folder holding model.onnx, exits.json, ...). Read-only."""
    from edgenas import api

    def export(folder):
        api.export(tiny_run[0], None, folder / "export")
        return folder / "export"
    return built_once(tmp_path_factory, "export", export)


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


@pytest.fixture(scope="session")
def exit_net_export(tmp_path_factory):
    """exit_net_export(n_test) -> (export folder, x_test): the tiny 3-exit digits net of tests/exit_net.py, trained
    once per session on the first 1200 shuffled digits, its thresholds set so that every exit is taken on the n_test
    digits after those, exported per stage with export_stages (one export per n_test). Read-only."""
    from edgenas.export.stages import export_stages
    from tests.exit_net import digits, thresholds_taking_every_exit, train_net
    x, y = digits()
    trained = train_net(x[:1200], y[:1200])

    @functools.cache
    def export(n_test: int):
        net = copy.deepcopy(trained)
        x_test = x[1200:1200 + n_test]
        net.thresholds = thresholds_taking_every_exit(net, x_test)
        out = tmp_path_factory.mktemp("exit-net-export")
        export_stages(net, out)
        return out, x_test
    return export

