import os

import pytest
import torch

# the test machine has 2 cores shared with the test runner itself; one intra-op thread keeps runs comparable
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")
