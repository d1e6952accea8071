"""int8 op family: per-token activation quantization and the int8 GEMM with fused dequantization.

quantize_per_token(x [M, K] f32/f16/bf16) -> (q int8 [M, K], scale f32 [M])
    Symmetric dynamic quantization of each row, in float32:
        amax = max_k |x[m, k]|,  scale = amax / 127,  q = clamp(round_half_even(x * (127 / amax)), -127, 127)
    A row of zeros gives scale 1 and q 0. A row holding NaN or +-Inf gives scale NaN and q 0, so that
    int8_mm turns that token's output row into NaN (as a float matmul would), never into silent numbers.

int8_mm(a int8 [M, K], b int8 [N, K], a_scale f32 [M], b_scale f32 [N], bias [N]?, out_dtype) -> [M, N]
    acc = a @ b.T accumulated exactly in int32;
    out = ((float(acc) * a_scale[:, None]) * b_scale[None, :] + bias) in float32, cast to out_dtype
    (float32, float16 or bfloat16). Inputs need not be contiguous.

Backends: cpu (csrc/cpu/int8.cpp), cuda (csrc/cuda/int8.cu), triton (kernels/int8.py) and the
reference below, which is the test oracle.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from pycompress import registry
from pycompress.ops._backends import register_standard, with_direct_path
from pycompress.ops._checks import FLOAT_DTYPES, check_dtype_arg, check_tensor


# ---------------------------------------------------------------------------------------------
# reference (plain PyTorch): the test oracle and the last-resort backend


def quantize_per_token_reference(x: Tensor) -> tuple[Tensor, Tensor]:
    xf = x.float()
    amax = xf.abs().amax(dim=1)
    finite = torch.isfinite(amax)
    usable = finite & (amax > 0)
    safe = torch.where(usable, amax, torch.ones_like(amax))
    # tensor / tensor: a true IEEE division (scalar / tensor would be computed as 127 * reciprocal).
    inv = torch.full_like(safe, 127.0) / safe
    # For amax < 127 / FLT_MAX, inv overflows to Inf and 0 * Inf is NaN: those products mean 0.
    q = torch.round(torch.nan_to_num(xf * inv[:, None], nan=0.0)).clamp_(-127, 127)
    q = torch.where(usable[:, None], q, torch.zeros_like(q)).to(torch.int8)
    scale = torch.where(
        usable,
        safe / torch.full_like(safe, 127.0),
        torch.where(finite, torch.ones_like(amax), torch.full_like(amax, float("nan"))),
    )
    return q, scale


def int8_mm_reference(
    a: Tensor, b: Tensor, a_scale: Tensor, b_scale: Tensor, bias: Optional[Tensor], out_dtype: torch.dtype
) -> Tensor:
    # float64 holds every int32 sum of K int8 products exactly (|acc| < 2^31 < 2^53).
    acc = a.double() @ b.double().T
    out = (acc.float() * a_scale[:, None]) * b_scale[None, :]
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype)


# ---------------------------------------------------------------------------------------------
# validation (shared by the real and the fake kernels)

_OP_QUANT = "quantize_per_token"
_OP_MM = "int8_mm"
OUT_DTYPES = FLOAT_DTYPES


def _check_quantize_per_token(x: Tensor) -> None:
    check_tensor(_OP_QUANT, "x", x, dtypes=FLOAT_DTYPES, shape=(None, None), shape_doc="[M, K]")
    if x.shape[1] == 0:
        raise ValueError(f"{_OP_QUANT}: x must have K >= 1 columns (got shape {list(x.shape)})")


def _check_int8_mm(a, b, a_scale, b_scale, bias, out_dtype) -> None:
    check_tensor(_OP_MM, "a", a, dtypes=(torch.int8,), shape=(None, None), shape_doc="[M, K]")
    M, K = a.shape
    dev = a.device
    check_tensor(_OP_MM, "b", b, dtypes=(torch.int8,), shape=(None, K), shape_doc="[N, K] with K == a.shape[1]",
                 device=dev)
    N = b.shape[0]
    if K == 0:
        raise ValueError(f"{_OP_MM}: a and b must have K >= 1 columns (got a {list(a.shape)}, b {list(b.shape)})")
    check_tensor(_OP_MM, "a_scale", a_scale, dtypes=(torch.float32,), shape=(M,), shape_doc="[M] with M == a.shape[0]",
                 device=dev)
    check_tensor(_OP_MM, "b_scale", b_scale, dtypes=(torch.float32,), shape=(N,), shape_doc="[N] with N == b.shape[0]",
                 device=dev)
    if bias is not None:
        check_tensor(_OP_MM, "bias", bias, dtypes=FLOAT_DTYPES, shape=(N,), shape_doc="[N] with N == b.shape[0]",
                     device=dev)
    check_dtype_arg(_OP_MM, "out_dtype", out_dtype, OUT_DTYPES)


# ---------------------------------------------------------------------------------------------
# the public ops


def _quantize_per_token(x: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-row int8 quantization; see the module docstring for the exact math."""
    _check_quantize_per_token(x)
    if x.shape[0] == 0:
        return torch.empty_like(x, dtype=torch.int8), torch.empty(0, dtype=torch.float32, device=x.device)
    impl = registry.select(_OP_QUANT, registry.device_type(x))
    return impl.fn(x.contiguous())


_quantize_per_token_op = torch.library.custom_op("pycompress::quantize_per_token", mutates_args=())(_quantize_per_token)
quantize_per_token = with_direct_path(_quantize_per_token, _quantize_per_token_op)


@_quantize_per_token_op.register_fake
def _(x):
    _check_quantize_per_token(x)
    return x.new_empty(x.shape, dtype=torch.int8), x.new_empty((x.shape[0],), dtype=torch.float32)


def _int8_mm(
    a: Tensor,
    b: Tensor,
    a_scale: Tensor,
    b_scale: Tensor,
    bias: Optional[Tensor] = None,
    out_dtype: torch.dtype = torch.float32,
) -> Tensor:
    """int8 x int8 -> int32 GEMM with the dequantization (and bias) fused; see the module docstring."""
    _check_int8_mm(a, b, a_scale, b_scale, bias, out_dtype)
    M, N = a.shape[0], b.shape[0]
    if M == 0 or N == 0:
        return torch.empty((M, N), dtype=out_dtype, device=a.device)
    impl = registry.select(_OP_MM, registry.device_type(a))
    return impl.fn(
        a.contiguous(),
        b.contiguous(),
        a_scale.contiguous(),
        b_scale.contiguous(),
        None if bias is None else bias.contiguous(),
        out_dtype,
    )


_int8_mm_op = torch.library.custom_op("pycompress::int8_mm", mutates_args=())(_int8_mm)
int8_mm = with_direct_path(_int8_mm, _int8_mm_op)


@_int8_mm_op.register_fake
def _(a, b, a_scale, b_scale, bias=None, out_dtype=torch.float32):
    _check_int8_mm(a, b, a_scale, b_scale, bias, out_dtype)
    return a.new_empty((a.shape[0], b.shape[0]), dtype=out_dtype)


# ---------------------------------------------------------------------------------------------
# backends

register_standard(_OP_QUANT, "int8", quantize_per_token_reference)
register_standard(_OP_MM, "int8", int8_mm_reference)
