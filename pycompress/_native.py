"""Loading of the native extension pycompress._C, keeping the reason when it cannot load."""

from __future__ import annotations

import functools
import os
from typing import Optional

import torch

_C = None
_IMPORT_ERROR: Optional[str] = None
try:
    from pycompress import _C  # noqa: F811  (registers torch.ops.pycompress_C.*)
except ImportError as exc:  # the extension is not built, or was built against another torch
    _IMPORT_ERROR = f"pycompress._C failed to import ({exc}); build it with `pip install -e . --no-build-isolation`"


def native_unavailable_reason() -> Optional[str]:
    return _IMPORT_ERROR


@functools.lru_cache(maxsize=None)
def cuda_unavailable_reason() -> Optional[str]:
    """Why the CUDA kernels of pycompress._C cannot run here, or None."""
    if _C is None:
        return _IMPORT_ERROR
    if not _C.built_with_cuda():
        if torch.version.cuda is None:
            return "pycompress._C was built without CUDA (the installed torch has no CUDA)"
        return "pycompress._C was built without CUDA (no CUDA toolkit was found at build time)"
    if not torch.cuda.is_available():
        return "no CUDA device"
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        return f"needs compute capability >= 8.0 (this GPU is {major}.{minor})"
    return None


@functools.lru_cache(maxsize=None)
def triton_unavailable_reason(device_type: str) -> Optional[str]:
    """Why the Triton kernels cannot run on ``device_type`` here, or None."""
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return f"triton is not installed ({exc})"
    if device_type == "cpu":
        if os.environ.get("TRITON_INTERPRET") != "1":
            return "triton runs on CUDA; on CPU only through the interpreter (TRITON_INTERPRET=1, for tests)"
        return None
    if not torch.cuda.is_available():
        return "no CUDA device"
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        return f"needs compute capability >= 8.0 (this GPU is {major}.{minor})"
    return None
