"""Input validation at the op boundary: one helper, messages that name the argument."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def describe(t) -> str:
    if not isinstance(t, torch.Tensor):
        return type(t).__name__
    return f"{_dtype_name(t.dtype)} {list(t.shape)} on {t.device}"


def check_tensor(
    op: str,
    name: str,
    t,
    *,
    dtypes: Sequence[torch.dtype],
    shape: Sequence[Optional[int]],
    shape_doc: str,
    device: Optional[torch.device] = None,
) -> None:
    """Raise a ValueError naming ``op`` and ``name`` unless ``t`` matches.

    ``shape`` holds the expected sizes, None where any size is allowed; ``shape_doc`` is how the
    message shows it, e.g. ``"[N, K] with K == a.shape[1]"``.
    """
    # Runs on every call of every op: plain comparisons, no generator or intermediate objects.
    if isinstance(t, torch.Tensor) and t.dtype in dtypes:
        actual = t.shape
        if len(actual) == len(shape):
            for s, a in zip(shape, actual):
                if s is not None and s != a:
                    break
            else:
                if device is None or t.device == device:
                    return
    # The message is built only on failure: this runs on every call of every op.
    want = " or ".join(_dtype_name(d) for d in dtypes)
    expected = f"{op}: {name} must be {want} of shape {shape_doc}"
    if device is not None:
        expected += f" on {device}"
    error = ValueError if isinstance(t, torch.Tensor) else TypeError
    raise error(f"{expected} (got {describe(t)})")


def check_dtype_arg(op: str, name: str, value, allowed: Sequence[torch.dtype]) -> None:
    if value not in allowed:
        want = ", ".join(_dtype_name(d) for d in allowed)
        raise ValueError(f"{op}: {name} must be one of {want} (got {value})")
