"""What the Triton kernel tests share: where they run and their seeded generators.

On a CPU machine the kernels run through the Triton interpreter (TRITON_INTERPRET=1, set by the suite's
conftest before Triton is imported); with a GPU and no interpreter they run on the GPU.
"""

import os

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRET else "cuda"
FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# `from _triton_case import pytestmark` applies it to the importing test module.
pytestmark = pytest.mark.skipif(not INTERPRET and not torch.cuda.is_available(),
                                reason="needs TRITON_INTERPRET=1 or a CUDA device")


def gen(*sizes) -> torch.Generator:
    """A generator seeded by the sizes of a case, so each case draws its own data."""
    seed = 0
    for size in sizes:
        seed = seed * 1009 + size
    return torch.Generator().manual_seed(seed)
