"""Registration of the four standard backends of an op (reference, cpu, cuda, triton).

The native backends call ``torch.ops.pycompress_C.<op>`` (csrc/cpu on CPU tensors, csrc/cuda on CUDA
tensors); the Triton backend calls the launcher of the same name in ``pycompress.kernels.<family>``.
"""

from __future__ import annotations

import functools
import importlib
from typing import Callable

import torch
from torch._C._functorch import peek_interpreter_stack

from pycompress import registry
from pycompress._native import cuda_unavailable_reason, native_unavailable_reason, triton_unavailable_reason

NEVER_ON_GPU = "never run on a GPU: compiled for sm_80/sm_90a and checked by SASS only, not yet tested on hardware"
TRITON_INTERPRETER = "Triton interpreter: for testing the kernels on CPU, very slow"


_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)


def direct_call_ok(*args) -> bool:
    """Whether an eager call of an op may run its implementation without the custom-op dispatch.

    True when nothing but the kernel is asked for: no autograd graph to record (grad mode off, or no
    tensor argument requires grad), no torch.compile tracing, no fake or other tensor subclasses, no
    dispatch or function mode (FakeTensorMode, make_fx, ``with torch.device(...)``) and no functorch
    transform (vmap, grad). The dispatch of a Python custom op costs tens of microseconds per call, as
    much as a small GEMM on the CPU; every other call goes through the custom op, which is what
    torch.compile, opcheck and autograd see.
    """
    if (torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack()
            or torch._C._is_torch_function_mode_enabled() or peek_interpreter_stack() is not None):
        return False
    grad = torch.is_grad_enabled()
    for arg in args:
        if isinstance(arg, torch.Tensor) and (type(arg) not in _PLAIN_TENSORS or (grad and arg.requires_grad)):
            return False
    return True


def with_direct_path(impl: Callable, custom_op) -> Callable:
    """The public function of an op: ``impl`` (validation and the selected backend, the custom op's own
    implementation) called directly when ``direct_call_ok``, else ``custom_op`` (autograd, torch.compile,
    fake tensors, modes and transforms see the op there)."""

    @functools.wraps(impl)
    def call(*args, **kwargs):
        if direct_call_ok(*args, *kwargs.values()):
            return impl(*args, **kwargs)
        return custom_op(*args, **kwargs)

    call.__name__ = call.__qualname__ = impl.__name__.lstrip("_")
    return call


def _native(op: str) -> Callable:
    overload = None

    def run(*args):
        nonlocal overload
        if overload is None:  # resolved on first use: the extension loads lazily
            overload = getattr(torch.ops.pycompress_C, op).default
        return overload(*args)

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
