"""Registration of the four standard backends of an op (reference, cpu, cuda, triton).

The native backends call ``torch.ops.pycompress_C.<op>`` (csrc/cpu on CPU tensors, csrc/cuda on CUDA
tensors); the Triton backend calls the launcher of the same name in ``pycompress.kernels.<family>``.
"""

from __future__ import annotations

import importlib
from typing import Callable

import torch

from pycompress import registry
from pycompress._native import cuda_unavailable_reason, native_unavailable_reason, triton_unavailable_reason

NEVER_ON_GPU = "never run on a GPU: compiled for sm_80/sm_90a and checked by SASS only, not yet tested on hardware"
TRITON_INTERPRETER = "Triton interpreter: for testing the kernels on CPU, very slow"


def _native(op: str) -> Callable:
    def run(*args):
        return getattr(torch.ops.pycompress_C, op)(*args)

    run.__name__ = f"native_{op}"
    return run


def _triton(family: str, op: str) -> Callable:
    def run(*args):
        module = importlib.import_module(f"pycompress.kernels.{family}")
        return getattr(module, op)(*args)

    run.__name__ = f"triton_{op}"
    return run


def register_standard(op: str, family: str, reference: Callable) -> None:
    """Register reference, cpu, cuda (experimental) and triton (experimental on GPU) for ``op``."""
    registry.register(op, "reference", reference, devices=("cpu", "cuda"))
    registry.register(op, "cpu", _native(op), devices=("cpu",),
                      availability=lambda device_type: native_unavailable_reason())
    registry.register(op, "cuda", _native(op), devices=("cuda",),
                      availability=lambda device_type: cuda_unavailable_reason(),
                      experimental={"cuda": NEVER_ON_GPU})
    registry.register(op, "triton", _triton(family, op), devices=("cpu", "cuda"),
                      availability=triton_unavailable_reason,
                      experimental={"cuda": NEVER_ON_GPU, "cpu": TRITON_INTERPRETER})
