"""Test-suite set-up.

Triton kernels run through the interpreter on CPU: TRITON_INTERPRET=1 must be set before triton
decorates any kernel, so it is set here, first, unless the suite runs on a GPU (PYCOMPRESS_TEST_GPU=1,
as `make gpu-test` does). Tests marked ``cuda`` are skipped where no GPU is visible.
"""

import os

if os.environ.get("PYCOMPRESS_TEST_GPU") != "1":
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run `make gpu-test` on a GPU machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    # Each compile test starts from an empty dynamo cache: the same forward methods compiled by many
    # tests in one process would otherwise hit the recompile limit, which fullgraph=True turns into
    # an error.
    torch._dynamo.reset()
