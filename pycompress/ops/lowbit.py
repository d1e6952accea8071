"""Low-bit op family: weight-only int8 (W8A16), 1-bit (W1A1, W1A16) and 2-bit ternary GEMMs.

Packed layouts
    bits (pack_bits): int32 [rows, ceil(K / 32)]; bit j (LSB first) of word w holds element 32 w + j:
        1 when the element is negative (sign -1), 0 otherwise (zero and NaN pack as +1); bits past K are 0.
    ternary (pack_ternary): int32 [rows, ceil(K / 16)]; element k has the 2-bit code at bits
        2 (k % 16) .. 2 (k % 16) + 1 of word k // 16: 0b00 = 0, 0b01 = +1, 0b11 = -1 (two's complement).

Ops (x: float32/float16/bfloat16 [M, K]; float math in float32; output in x.dtype unless stated)
    int8_weight_only_mm(x, w int8 [N, K], w_scale f32 [N] or [N, G], bias [N]?)
        y[m, n] = sum_g w_scale[n, g] * sum_{k in group g} x[m, k] w[n, k] + bias[n]   (groups of K / G)
    pack_bits(x [M, K] float or int8) -> int32 [M, ceil(K / 32)]
    binary_mm(a_bits [M, W], b_bits [N, W], K, a_scale f32 [M], b_scale f32 [N], bias [N]?, out_dtype)
        dot = K - 2 popcount((a xor b) over the first K bits), exact; bits past K are ignored;
        out = (dot * a_scale[m]) * b_scale[n] + bias[n] in float32, cast to out_dtype
    binary_weight_mm(x, w_bits [N, ceil(K / 32)], alpha f32 [N], bias [N]?)
        y[m, n] = alpha[n] * sum_k x[m, k] s[n, k] + bias[n],  s = +-1 from the bits
    ternary_weight_mm(x, w_2bit [N, ceil(K / 16)], alpha f32 [N], bias [N]?)
        y[m, n] = alpha[n] * sum_k x[m, k] t[n, k] + bias[n],  t in {-1, 0, 1} from the codes

Backends: cpu (csrc/cpu/lowbit.cpp), cuda (csrc/cuda/lowbit.cu), triton (kernels/lowbit.py) and the
references below.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from pycompress import registry
from pycompress.ops._backends import register_standard, with_direct_path
from pycompress.ops._checks import FLOAT_DTYPES, check_dtype_arg, check_tensor

_BIT_SHIFTS = torch.arange(32, dtype=torch.int64)
_CODE_SHIFTS = torch.arange(0, 32, 2, dtype=torch.int64)


def _words(count: int, per_word: int) -> int:
    return (count + per_word - 1) // per_word


def _to_int32_bits(words64: Tensor) -> Tensor:
    """int64 values in [0, 2^32) -> int32 with the same bit pattern."""
    return torch.where(words64 >= 2**31, words64 - 2**32, words64).to(torch.int32)


# ---------------------------------------------------------------------------------------------
# packing (plain PyTorch: offline weight packing, and the reference of pack_bits)


def pack_bits_reference(x: Tensor) -> Tensor:
    M, K = x.shape
    W = _words(K, 32)
    bits = torch.zeros(M, W * 32, dtype=torch.int64, device=x.device)
    bits[:, :K] = (x < 0).to(torch.int64)
    words = (bits.view(M, W, 32) << _BIT_SHIFTS.to(x.device)).sum(-1)
    return _to_int32_bits(words)


def unpack_bits_reference(words: Tensor, K: int) -> Tensor:
    """Signs (+1 / -1, float32) [rows, K] of packed bits; bits past K are dropped."""
    bits = ((words.to(torch.int64) & 0xFFFFFFFF)[..., None] >> _BIT_SHIFTS.to(words.device)) & 1
    bits = bits.reshape(words.shape[0], -1)[:, :K]
    return 1.0 - 2.0 * bits.to(torch.float32)


def pack_ternary(t: Tensor) -> Tensor:
    """Pack a ternary tensor [N, K] (values -1, 0, 1; any dtype) into int32 [N, ceil(K / 16)]."""
    if not isinstance(t, Tensor) or t.dim() != 2:
        raise ValueError(f"pack_ternary: t must be a 2-D tensor [N, K] (got {t!r:.60})")
    if not torch.isin(t, torch.tensor([-1, 0, 1], dtype=t.dtype, device=t.device)).all():
        raise ValueError("pack_ternary: t must hold only -1, 0 and 1")
    N, K = t.shape
    T = _words(K, 16)
    codes = torch.zeros(N, T * 16, dtype=torch.int64, device=t.device)
    codes[:, :K] = t.to(torch.int64) & 3
    return _to_int32_bits((codes.view(N, T, 16) << _CODE_SHIFTS.to(t.device)).sum(-1))


def unpack_ternary_reference(words: Tensor, K: int) -> Tensor:
    """Values (-1, 0, 1 as float32) [rows, K] of packed ternary codes."""
    codes = ((words.to(torch.int64) & 0xFFFFFFFF)[..., None] >> _CODE_SHIFTS.to(words.device)) & 3
    values = codes - 4 * (codes >= 2).to(torch.int64)
    return values.reshape(words.shape[0], -1)[:, :K].to(torch.float32)


# ---------------------------------------------------------------------------------------------
# references


def _finish(y: Tensor, bias: Optional[Tensor], dtype: torch.dtype) -> Tensor:
    if bias is not None:
        y = y + bias.float()
    return y.to(dtype)


def dequantize_int8_weight(w: Tensor, w_scale: Tensor) -> Tensor:
    """float32 [N, K] weights of int8 ``w`` with scales [N] or [N, G] (groups of K / G along K)."""
    N, K = w.shape
    if w_scale.dim() == 1:
        return w.float() * w_scale[:, None]
    G = w_scale.shape[1]
    return (w.float().view(N, G, K // G) * w_scale[:, :, None]).view(N, K)


def int8_weight_only_mm_reference(x: Tensor, w: Tensor, w_scale: Tensor, bias: Optional[Tensor]) -> Tensor:
    return _finish(x.float() @ dequantize_int8_weight(w, w_scale).T, bias, x.dtype)


def binary_mm_reference(a_bits, b_bits, K: int, a_scale, b_scale, bias, out_dtype) -> Tensor:
    # +-1 products summed in float64 are exact.
    dot = unpack_bits_reference(a_bits, K).double() @ unpack_bits_reference(b_bits, K).double().T
    return _finish((dot.float() * a_scale[:, None]) * b_scale[None, :], bias, out_dtype)


def binary_weight_mm_reference(x, w_bits, alpha, bias) -> Tensor:
    signs = unpack_bits_reference(w_bits, x.shape[1])
    return _finish((x.float() @ signs.T) * alpha[None, :], bias, x.dtype)


def ternary_weight_mm_reference(x, w_2bit, alpha, bias) -> Tensor:
    values = unpack_ternary_reference(w_2bit, x.shape[1])
    return _finish((x.float() @ values.T) * alpha[None, :], bias, x.dtype)


# ---------------------------------------------------------------------------------------------
# validation


def _check_x(op: str, x) -> None:
    check_tensor(op, "x", x, dtypes=FLOAT_DTYPES, shape=(None, None), shape_doc="[M, K]")
    if x.shape[1] == 0:
        raise ValueError(f"{op}: x must have K >= 1 columns (got shape {list(x.shape)})")


def _check_vector(op: str, name: str, t, length: int, doc: str, device, dtypes=(torch.float32,)) -> None:
    check_tensor(op, name, t, dtypes=dtypes, shape=(length,), shape_doc=doc, device=device)


def _check_bias(op: str, bias, N: int, device) -> None:
    if bias is not None:
        _check_vector(op, "bias", bias, N, "[N] with N == the number of output rows", device, FLOAT_DTYPES)


def _check_int8_weight_only_mm(x, w, w_scale, bias) -> None:
    op = "int8_weight_only_mm"
    _check_x(op, x)
    K = x.shape[1]
    check_tensor(op, "w", w, dtypes=(torch.int8,), shape=(None, K), shape_doc="[N, K] with K == x.shape[1]",
                 device=x.device)
    N = w.shape[0]
    if isinstance(w_scale, Tensor) and w_scale.dim() == 2:
        check_tensor(op, "w_scale", w_scale, dtypes=(torch.float32,), shape=(N, None),
                     shape_doc="[N] or [N, G] with G dividing K", device=x.device)
        G = w_scale.shape[1]
        if G == 0 or K % G:
            raise ValueError(f"{op}: w_scale must be [N] or [N, G] with G dividing K = {K} (got G = {G})")
    else:
        check_tensor(op, "w_scale", w_scale, dtypes=(torch.float32,), shape=(N,),
                     shape_doc="[N] or [N, G] with G dividing K", device=x.device)
    _check_bias(op, bias, N, x.device)


def _check_pack_bits(x) -> None:
    op = "pack_bits"
    check_tensor(op, "x", x, dtypes=FLOAT_DTYPES + (torch.int8,), shape=(None, None), shape_doc="[M, K]")
    if x.shape[1] == 0:
        raise ValueError(f"{op}: x must have K >= 1 columns (got shape {list(x.shape)})")


def _check_binary_mm(a_bits, b_bits, K, a_scale, b_scale, bias, out_dtype) -> None:
    op = "binary_mm"
    if not isinstance(K, int) or K < 1:
        raise ValueError(f"{op}: K must be an int >= 1 (got {K!r})")
    W = _words(K, 32)
    doc = f"[M, ceil(K / 32)] = [M, {W}]"
    check_tensor(op, "a_bits", a_bits, dtypes=(torch.int32,), shape=(None, W), shape_doc=doc)
    M = a_bits.shape[0]
    check_tensor(op, "b_bits", b_bits, dtypes=(torch.int32,), shape=(None, W),
                 shape_doc=f"[N, ceil(K / 32)] = [N, {W}]", device=a_bits.device)
    N = b_bits.shape[0]
    _check_vector(op, "a_scale", a_scale, M, "[M] with M == a_bits.shape[0]", a_bits.device)
    _check_vector(op, "b_scale", b_scale, N, "[N] with N == b_bits.shape[0]", a_bits.device)
    _check_bias(op, bias, N, a_bits.device)
    check_dtype_arg(op, "out_dtype", out_dtype, FLOAT_DTYPES)


def _check_packed_weight_mm(op: str, name: str, per_word: int, x, w, alpha, bias) -> None:
    _check_x(op, x)
    K = x.shape[1]
    T = _words(K, per_word)
    check_tensor(op, name, w, dtypes=(torch.int32,), shape=(None, T),
                 shape_doc=f"[N, ceil(K / {per_word})] = [N, {T}] with K == x.shape[1]", device=x.device)
    N = w.shape[0]
    _check_vector(op, "alpha", alpha, N, f"[N] with N == {name}.shape[0]", x.device)
    _check_bias(op, bias, N, x.device)


# ---------------------------------------------------------------------------------------------
# the public ops


def _run(op: str, device: torch.device, *args):
    return registry.select(op, device.type).fn(*args)


def _contiguous(*tensors):
    return tuple(None if t is None else t.contiguous() for t in tensors)


def _int8_weight_only_mm(x: Tensor, w: Tensor, w_scale: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """W8A16 GEMM: float activations, int8 weights with per-channel or per-group scales."""
    _check_int8_weight_only_mm(x, w, w_scale, bias)
    if x.shape[0] == 0 or w.shape[0] == 0:
        return x.new_empty((x.shape[0], w.shape[0]))
    return _run("int8_weight_only_mm", x.device, *_contiguous(x, w, w_scale, bias))


_int8_weight_only_mm_op = torch.library.custom_op("pycompress::int8_weight_only_mm",
                                                  mutates_args=())(_int8_weight_only_mm)
int8_weight_only_mm = with_direct_path(_int8_weight_only_mm, _int8_weight_only_mm_op)


@_int8_weight_only_mm_op.register_fake
def _(x, w, w_scale, bias=None):
    _check_int8_weight_only_mm(x, w, w_scale, bias)
    return x.new_empty((x.shape[0], w.shape[0]))


def _pack_bits(x: Tensor) -> Tensor:
    """Sign bits of x [M, K] packed along K into int32 words [M, ceil(K / 32)] (see the module docstring)."""
    _check_pack_bits(x)
    if x.shape[0] == 0:
        return x.new_empty((0, _words(x.shape[1], 32)), dtype=torch.int32)
    return _run("pack_bits", x.device, x.contiguous())


_pack_bits_op = torch.library.custom_op("pycompress::pack_bits", mutates_args=())(_pack_bits)
pack_bits = with_direct_path(_pack_bits, _pack_bits_op)


@_pack_bits_op.register_fake
def _(x):
    _check_pack_bits(x)
    return x.new_empty((x.shape[0], _words(x.shape[1], 32)), dtype=torch.int32)


def _binary_mm(
    a_bits: Tensor,
    b_bits: Tensor,
    K: int,
    a_scale: Tensor,
    b_scale: Tensor,
    bias: Optional[Tensor] = None,
    out_dtype: torch.dtype = torch.float32,
) -> Tensor:
    """W1A1 GEMM through XOR and popcount, exact in int32 before the scales and bias."""
    _check_binary_mm(a_bits, b_bits, K, a_scale, b_scale, bias, out_dtype)
    M, N = a_bits.shape[0], b_bits.shape[0]
    if M == 0 or N == 0:
        return torch.empty((M, N), dtype=out_dtype, device=a_bits.device)
    a_bits, b_bits, a_scale, b_scale, bias = _contiguous(a_bits, b_bits, a_scale, b_scale, bias)
    return _run("binary_mm", a_bits.device, a_bits, b_bits, K, a_scale, b_scale, bias, out_dtype)


_binary_mm_op = torch.library.custom_op("pycompress::binary_mm", mutates_args=())(_binary_mm)
binary_mm = with_direct_path(_binary_mm, _binary_mm_op)


@_binary_mm_op.register_fake
def _(a_bits, b_bits, K, a_scale, b_scale, bias=None, out_dtype=torch.float32):
    _check_binary_mm(a_bits, b_bits, K, a_scale, b_scale, bias, out_dtype)
    return a_bits.new_empty((a_bits.shape[0], b_bits.shape[0]), dtype=out_dtype)


def _packed_weight_mm(op: str, name: str, per_word: int, x, w, alpha, bias, *, fake: bool) -> Tensor:
    """Shared body of the packed-weight ops (real and fake): validate, then run or allocate."""
    _check_packed_weight_mm(op, name, per_word, x, w, alpha, bias)
    if fake or x.shape[0] == 0 or w.shape[0] == 0:
        return x.new_empty((x.shape[0], w.shape[0]))
    return _run(op, x.device, *_contiguous(x, w, alpha, bias))


def _binary_weight_mm(x: Tensor, w_bits: Tensor, alpha: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """W1A16 GEMM: float activations, 1-bit sign weights with a scale per output channel."""
    return _packed_weight_mm("binary_weight_mm", "w_bits", 32, x, w_bits, alpha, bias, fake=False)


_binary_weight_mm_op = torch.library.custom_op("pycompress::binary_weight_mm", mutates_args=())(_binary_weight_mm)
binary_weight_mm = with_direct_path(_binary_weight_mm, _binary_weight_mm_op)


@_binary_weight_mm_op.register_fake
def _(x, w_bits, alpha, bias=None):
    return _packed_weight_mm("binary_weight_mm", "w_bits", 32, x, w_bits, alpha, bias, fake=True)


def _ternary_weight_mm(x: Tensor, w_2bit: Tensor, alpha: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """Ternary-weight GEMM: float activations, 2-bit packed {-1, 0, 1} weights, a scale per channel."""
    return _packed_weight_mm("ternary_weight_mm", "w_2bit", 16, x, w_2bit, alpha, bias, fake=False)


_ternary_weight_mm_op = torch.library.custom_op("pycompress::ternary_weight_mm", mutates_args=())(_ternary_weight_mm)
ternary_weight_mm = with_direct_path(_ternary_weight_mm, _ternary_weight_mm_op)


@_ternary_weight_mm_op.register_fake
def _(x, w_2bit, alpha, bias=None):
    return _packed_weight_mm("ternary_weight_mm", "w_2bit", 16, x, w_2bit, alpha, bias, fake=True)


# ---------------------------------------------------------------------------------------------
# backends

for _op, _reference in (
    ("int8_weight_only_mm", int8_weight_only_mm_reference),
    ("pack_bits", pack_bits_reference),
    ("binary_mm", binary_mm_reference),
    ("binary_weight_mm", binary_weight_mm_reference),
    ("ternary_weight_mm", ternary_weight_mm_reference),
):
    register_standard(_op, "lowbit", _reference)
