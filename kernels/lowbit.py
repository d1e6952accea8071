"""Triton kernels of the low-bit op family: weight-only int8, 1-bit and ternary GEMMs, sign packing.

Packed layouts (shared with pycompress.ops.lowbit):
    bits    int32 [rows, ceil(K / 32)]: bit j (LSB first) of word w is 1 when element 32 w + j is
            negative (sign -1), 0 otherwise; bits past K are 0 when produced by pack_bits.
    ternary int32 [rows, ceil(K / 16)]: element k is the 2-bit two's complement code at bits
            2 (k % 16) .. 2 (k % 16) + 1 of word k // 16 (0b00 = 0, 0b01 = +1, 0b11 = -1).

The launchers assume the Python op layer has already validated the inputs (devices, dtypes,
contiguity, non-empty shapes); they only assert cheap invariants, allocate the outputs and launch.
"""

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import libdevice

from ._common import (
    ELEMENTWISE_TILE, INTERPRET, aligned, dequantized_gemm_aot, gemm_config, gemm_grid,
    grouped_output_tile, launch_dequantized_gemm, store_dequantized, store_output_tile, to_float32,
)

# The interpreter has no libdevice popc and computes bfloat16 dot products wrongly: under it the
# popcount is done with shifts and masks, and dot operands are upcast to float32.
_SWAR_POPCOUNT = tl.constexpr(INTERPRET)
_DOT_IN_FP32 = tl.constexpr(INTERPRET)

# Where the weight scales of the weight-only GEMM are applied.
_SCALE_PER_CHANNEL = tl.constexpr(0)  # scale [N]: once, in the epilogue
_SCALE_PER_TILE = tl.constexpr(1)     # scale [N, G]: each K tile lies inside one group
_SCALE_PER_ELEMENT = tl.constexpr(2)  # scale [N, G], groups not tile-aligned: per weight

# Largest K tile of the weight-only GEMM; also the "no limit" value of its K_TILE_CAP.
_MAX_TILE_K = 1024
# float32 operands go through tl.dot's FMA lowering, which holds whole K slices of its operand
# rows and columns in each thread: beyond these tiles it spills registers.
_FMA_DOT_MAX_TILE_K = 32
_FMA_DOT_MAX_TILE_MN = 16 * 64


@triton.jit
def _popcount(x):
    """Number of set bits of each uint32 element, as int32."""
    if _SWAR_POPCOUNT:
        x = x - ((x >> 1) & 0x55555555)
        x = (x & 0x33333333) + ((x >> 2) & 0x33333333)
        x = (x + (x >> 4)) & 0x0F0F0F0F
        x = x + (x >> 8)
        x = x + (x >> 16)
        return (x & 0x3F).to(tl.int32)
    else:
        return libdevice.popc(x.to(tl.int32, bitcast=True))


@triton.jit
def _pack_bits_kernel(
    x_ptr, out_ptr,
    M, K, W,
    stride_xm, stride_om,
    BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """out[m, w] = OR_{j < 32, 32 w + j < K} (x[m, 32 w + j] < 0) << j, as int32 bit patterns.

    x is float32/float16/bfloat16 or int8; the comparison runs on the float32 upcast, so -0.0 and
    NaN give 0.  A program covers BLOCK_M rows by BLOCK_W words: it loads the [BLOCK_M, BLOCK_W, 32]
    elements, shifts each sign into its bit position and OR-reduces the last axis.
    """
    pid_m = tl.program_id(0)
    pid_w = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    words = pid_w * BLOCK_W + tl.arange(0, BLOCK_W)
    bit = tl.arange(0, 32)
    cols = words[:, None] * 32 + bit[None, :]
    row_ok = rows < M
    x_ptrs = x_ptr + rows.to(tl.int64)[:, None, None] * stride_xm + cols[None, :, :]
    x = tl.load(x_ptrs, mask=row_ok[:, None, None] & (cols < K)[None, :, :], other=0)
    negative = (to_float32(x) < 0.0).to(tl.uint32)
    # The shifted bits are distinct powers of two, so their sum is their OR (and the sum reduction
    # is vectorised by the interpreter, unlike a custom OR combine).
    packed = tl.sum(negative << bit.to(tl.uint32)[None, None, :], axis=2)
    out_ptrs = out_ptr + rows.to(tl.int64)[:, None] * stride_om + words[None, :]
    tl.store(out_ptrs, packed.to(tl.int32, bitcast=True), mask=row_ok[:, None] & (words < W)[None, :])


@triton.jit
def _binary_mm_kernel(
    a_ptr, b_ptr, a_scale_ptr, b_scale_ptr, bias_ptr, c_ptr,
    M, N, K, W,
    stride_am, stride_bn, stride_cm,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr, GROUP_M: tl.constexpr,
):
    """c[m, n] = cast((float(dot[m, n]) * a_scale[m]) * b_scale[n] + bias[n]),
    dot[m, n] = K - 2 * popcount(first K bits of a[m, :] XOR b[n, :])   (exact int32).

    a is int32 [M, W] and b int32 [N, W] (W = ceil(K / 32)), packed sign bits.  Both operand tiles
    are ANDed with the mask of the bits below K right after the load, so whatever the padding bits
    of the last word hold, they XOR to 0.  Each step XORs a [BLOCK_M, 1, BLOCK_W] tile of a with a
    [1, BLOCK_N, BLOCK_W] tile of b and adds the popcounts over the words.  The epilogue matches
    int8_mm's: float32, operation by operation (compiled with enable_fp_fusion=False), bias upcast,
    c rounded to nearest even; programs walk GROUP_M row-blocks per column-block for L2 reuse.
    """
    offs_m, offs_n, m_ok, n_ok = grouped_output_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_w = tl.arange(0, BLOCK_W)
    a_ptrs = a_ptr + offs_m.to(tl.int64)[:, None] * stride_am + offs_w[None, :]
    b_ptrs = b_ptr + offs_n.to(tl.int64)[:, None] * stride_bn + offs_w[None, :]

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for w0 in range(0, W, BLOCK_W):
        word = w0 + offs_w
        w_ok = word < W
        # Bits of each word below K: all 32 but in the last word.  Words past W are masked off by
        # the load; their clamped count only keeps the shift in range.
        valid_bits = tl.minimum(tl.maximum(K - word * 32, 1), 32)
        keep = (tl.full((BLOCK_W,), 0xFFFFFFFF, tl.uint32) >> (32 - valid_bits).to(tl.uint32))
        a = tl.load(a_ptrs, mask=m_ok[:, None] & w_ok[None, :], other=0).to(tl.uint32, bitcast=True)
        b = tl.load(b_ptrs, mask=n_ok[:, None] & w_ok[None, :], other=0).to(tl.uint32, bitcast=True)
        diff = (a & keep[None, :])[:, None, :] ^ (b & keep[None, :])[None, :, :]
        acc += tl.sum(_popcount(diff), axis=2)
        a_ptrs += BLOCK_W
        b_ptrs += BLOCK_W

    dot = K - 2 * acc
    store_dequantized(c_ptr, stride_cm, dot, a_scale_ptr, b_scale_ptr, bias_ptr,
                      offs_m, offs_n, m_ok, n_ok, HAS_BIAS)


@triton.jit
def _weight_tile(w_ptr, offs_n, n_ok, k0, K, stride_wn,
                 WEIGHT_BITS: tl.constexpr, TILE_K: tl.constexpr):
    """Integer weights w[n, k0 + k] as a [TILE_K, BLOCK_N] tile (the B operand layout of tl.dot).

    WEIGHT_BITS 8: int8 [N, K], zero past K.  1: sign bits, value 1 - 2 * bit.  2: ternary codes,
    value = the code sign-extended by a left shift to bits 30..31 and an arithmetic right shift.
    For the packed formats the words are loaded once ([TILE_K / per-word, BLOCK_N]) and expanded
    in registers; columns past K decode to finite values, which always meet zeros of x.
    """
    BLOCK_N: tl.constexpr = offs_n.shape[0]
    w_rows = w_ptr + offs_n.to(tl.int64)[None, :] * stride_wn
    if WEIGHT_BITS == 8:
        offs_k = k0 + tl.arange(0, TILE_K)
        return tl.load(w_rows + offs_k[:, None], mask=(offs_k < K)[:, None] & n_ok[None, :], other=0)
    else:
        PER_WORD: tl.constexpr = 32 // WEIGHT_BITS
        tl.static_assert(TILE_K % PER_WORD == 0)
        offs_w = k0 // PER_WORD + tl.arange(0, TILE_K // PER_WORD)
        words = tl.load(w_rows + offs_w[:, None],
                        mask=(offs_w < tl.cdiv(K, PER_WORD))[:, None] & n_ok[None, :], other=0)
        shift = (tl.arange(0, PER_WORD) * WEIGHT_BITS)[None, :, None]
        if WEIGHT_BITS == 1:
            values = 1 - 2 * ((words[:, None, :] >> shift) & 1)
        else:
            values = (words[:, None, :] << (30 - shift)) >> 30
        return tl.reshape(values, (TILE_K, BLOCK_N))


@triton.jit
def _weight_only_mm_kernel(
    x_ptr, w_ptr, scale_ptr, bias_ptr, y_ptr,
    M, N, K, GS,
    stride_xm, stride_wn, stride_sn, stride_ym,
    WEIGHT_BITS: tl.constexpr, SCALE_MODE: tl.constexpr, K_TILE_CAP: tl.constexpr,
    HAS_BIAS: tl.constexpr, USE_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """y[m, n] = cast(sum_g scale[n, g] * sum_{k in group g} x[m, k] * w[n, k] + bias[n])

    x is float32/float16/bfloat16 [M, K]; w is int8 [N, K] (WEIGHT_BITS 8), packed sign bits
    (1) or packed ternary codes (2), decoded tile by tile in registers (see _weight_tile), never
    written out as floats.  Groups are GS consecutive K indices, scale is float32 [N, K / GS]:
      SCALE_MODE per-channel: GS = K, acc[m, n] = sum_k x w, y = acc * scale[n] + bias[n];
      per-tile: the K step TILE_K = min(BLOCK_K, K_TILE_CAP) divides GS, each tile's partial sum
                is scaled by its group's scale before it is accumulated;
      per-element: the weights are multiplied by their scales before the products (any GS).
    USE_DOT multiplies [BLOCK_M, TILE_K] x [TILE_K, BLOCK_N] tiles with tl.dot, float32
    accumulation, the weights converted to x's dtype (exact: at most 8 significant bits), so
    float16/bfloat16 run on the tensor cores and float32 in IEEE FMA; otherwise, for a handful of
    rows, the products are broadcast to [BLOCK_M, TILE_K, BLOCK_N] and summed over K.
    y has x's dtype, rounded to nearest even; bias (any float dtype) is upcast.
    """
    tl.static_assert(not (USE_DOT and SCALE_MODE == _SCALE_PER_ELEMENT))
    TILE_K: tl.constexpr = BLOCK_K if BLOCK_K < K_TILE_CAP else K_TILE_CAP

    offs_m, offs_n, m_ok, n_ok = grouped_output_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_k = tl.arange(0, TILE_K)
    x_ptrs = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm + offs_k[None, :]
    scale_rows = scale_ptr + offs_n.to(tl.int64) * stride_sn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, TILE_K):
        k_ok = offs_k < K - k0
        x = tl.load(x_ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        w = _weight_tile(w_ptr, offs_n, n_ok, k0, K, stride_wn, WEIGHT_BITS, TILE_K)
        if SCALE_MODE == _SCALE_PER_ELEMENT:
            group = (k0 + offs_k) // GS
            scale = tl.load(scale_rows[None, :] + group[:, None], mask=k_ok[:, None] & n_ok[None, :], other=0.0)
            wf = w.to(tl.float32) * scale
            acc += tl.sum(to_float32(x)[:, :, None] * wf[None, :, :], axis=1)
        else:
            if USE_DOT:
                if _DOT_IN_FP32 or x.dtype == tl.float32:
                    part = tl.dot(to_float32(x), w.to(tl.float32), input_precision="ieee")
                else:
                    part = tl.dot(x, w.to(x.dtype))
            else:
                part = tl.sum(to_float32(x)[:, :, None] * w.to(tl.float32)[None, :, :], axis=1)
            if SCALE_MODE == _SCALE_PER_TILE:
                part = part * tl.load(scale_rows + k0 // GS, mask=n_ok, other=0.0)[None, :]
            acc += part
        x_ptrs += TILE_K

    if SCALE_MODE == _SCALE_PER_CHANNEL:
        acc = acc * tl.load(scale_ptr + offs_n, mask=n_ok, other=0.0)[None, :]
    store_output_tile(y_ptr, stride_ym, acc, bias_ptr, offs_m, offs_n, m_ok, n_ok, HAS_BIAS)


# Rows up to which the weight-only GEMM broadcasts and reduces instead of calling tl.dot, whose
# smallest tile has 16 rows.
_REDUCE_MAX_M = 4

# Decode-sized M is memory bound: the 16-row tiles split N finely enough to occupy every SM while
# streaming the weights once; the larger tiles serve prefill (64-row multiples let sm_90 use
# warpgroup MMA).
_WO_DOT_GPU_CONFIGS = [
    gemm_config(4, 4, BLOCK_M=16, BLOCK_N=32, BLOCK_K=128),
    gemm_config(4, 4, BLOCK_M=16, BLOCK_N=64, BLOCK_K=128),
    gemm_config(3, 4, BLOCK_M=16, BLOCK_N=64, BLOCK_K=256),
    gemm_config(4, 4, BLOCK_M=32, BLOCK_N=64, BLOCK_K=128),
    gemm_config(4, 4, BLOCK_M=64, BLOCK_N=64, BLOCK_K=64),
    gemm_config(3, 4, BLOCK_M=64, BLOCK_N=128, BLOCK_K=64),
    gemm_config(3, 8, BLOCK_M=128, BLOCK_N=128, BLOCK_K=64),
    gemm_config(3, 8, BLOCK_M=128, BLOCK_N=256, BLOCK_K=64),
]
# BLOCK_M comes from the launcher: the next power of two of M, at most _REDUCE_MAX_M.
_WO_REDUCE_GPU_CONFIGS = [
    gemm_config(4, 4, BLOCK_N=16, BLOCK_K=128),
    gemm_config(4, 4, BLOCK_N=32, BLOCK_K=64),
    gemm_config(4, 4, BLOCK_N=32, BLOCK_K=128),
    gemm_config(4, 4, BLOCK_N=64, BLOCK_K=128),
    gemm_config(4, 4, BLOCK_N=16, BLOCK_K=256),
    gemm_config(3, 8, BLOCK_N=64, BLOCK_K=128),
    gemm_config(3, 8, BLOCK_N=32, BLOCK_K=256),
]
_BINARY_MM_GPU_CONFIGS = [
    gemm_config(3, 4, BLOCK_M=16, BLOCK_N=64, BLOCK_W=8),
    gemm_config(3, 4, BLOCK_M=32, BLOCK_N=32, BLOCK_W=8),
    gemm_config(3, 4, BLOCK_M=32, BLOCK_N=64, BLOCK_W=4),
    gemm_config(3, 4, BLOCK_M=64, BLOCK_N=32, BLOCK_W=4),
    gemm_config(3, 8, BLOCK_M=64, BLOCK_N=64, BLOCK_W=4),
    gemm_config(3, 8, BLOCK_M=128, BLOCK_N=64, BLOCK_W=2),
]

if INTERPRET:
    # The interpreter runs each program in numpy: single configs of large tiles keep it fast while
    # test shapes still span several tiles and K steps.
    _WO_DOT_CONFIGS = [gemm_config(1, 4, BLOCK_M=32, BLOCK_N=64, BLOCK_K=128)]
    _WO_REDUCE_CONFIGS = [gemm_config(1, 4, BLOCK_N=64, BLOCK_K=128)]
    _BINARY_MM_CONFIGS = [gemm_config(1, 4, BLOCK_M=64, BLOCK_N=64, BLOCK_W=8)]
else:
    _WO_DOT_CONFIGS = _WO_DOT_GPU_CONFIGS
    _WO_REDUCE_CONFIGS = _WO_REDUCE_GPU_CONFIGS
    _BINARY_MM_CONFIGS = _BINARY_MM_GPU_CONFIGS

# Products held in registers per thread by the broadcast-and-reduce path before it spills.
_REDUCE_PRODUCTS_PER_THREAD = 64


def _fit_reduce_tiles(configs, named_args, **kwargs):
    """Drop the reduce configs whose [BLOCK_M, TILE_K, BLOCK_N] products would spill registers."""
    def products_per_thread(config):
        tile_k = min(config.kwargs["BLOCK_K"], kwargs["K_TILE_CAP"])
        return kwargs["BLOCK_M"] * tile_k * config.kwargs["BLOCK_N"] / (32 * config.num_warps)
    fitting = [c for c in configs if products_per_thread(c) <= _REDUCE_PRODUCTS_PER_THREAD]
    return fitting or [min(configs, key=products_per_thread)]


def _fit_fma_dot_tiles(configs, named_args, **kwargs):
    """For float32 x keep the dot configs whose FMA lowering fits in registers."""
    if named_args["x_ptr"].dtype != torch.float32:
        return configs
    fitting = [c for c in configs if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= _FMA_DOT_MAX_TILE_MN]
    return fitting or [min(configs, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"])]


_WO_KEY = ["M", "N", "K", "GS"]
_weight_only_mm_dot = triton.autotune(
    configs=_WO_DOT_CONFIGS, key=_WO_KEY, prune_configs_by={"early_config_prune": _fit_fma_dot_tiles},
)(_weight_only_mm_kernel)
_weight_only_mm_reduce = triton.autotune(
    configs=_WO_REDUCE_CONFIGS, key=_WO_KEY, prune_configs_by={"early_config_prune": _fit_reduce_tiles},
)(_weight_only_mm_kernel)
_binary_mm_tuned = triton.autotune(configs=_BINARY_MM_CONFIGS, key=["M", "N", "K"])(_binary_mm_kernel)


def _weight_only_mm(x, w, weight_bits, scale, bias):
    """Shared launcher: picks the scale mode, the K-tile cap and the dot or reduce path."""
    assert x.dim() == 2 and w.dim() == 2 and x.is_contiguous() and w.is_contiguous()
    assert x.dtype in (torch.float32, torch.float16, torch.bfloat16)
    M, K = x.shape
    N = w.shape[0]
    assert M > 0 and N > 0 and K > 0
    assert scale.dtype == torch.float32 and scale.shape[0] == N and scale.is_contiguous()
    assert bias is None or (bias.shape == (N,) and bias.is_contiguous())
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)

    k_tile_cap = _MAX_TILE_K
    if scale.dim() == 1:
        mode, group_size = _SCALE_PER_CHANNEL.value, K
    else:
        assert K % scale.shape[1] == 0
        group_size = K // scale.shape[1]
        # The largest power of two dividing the group size bounds a K tile that never straddles
        # two groups; below 16 (tl.dot's smallest K) the tiles stay large and each weight is scaled.
        aligned_tile = group_size & -group_size
        if aligned_tile >= 16:
            mode, k_tile_cap = _SCALE_PER_TILE.value, min(aligned_tile, _MAX_TILE_K)
        else:
            mode = _SCALE_PER_ELEMENT.value
    use_dot = M > _REDUCE_MAX_M and mode != _SCALE_PER_ELEMENT.value
    if use_dot and x.dtype == torch.float32:
        k_tile_cap = min(k_tile_cap, _FMA_DOT_MAX_TILE_K)

    grid = gemm_grid(M, N)
    args = (x, w, scale, scale if bias is None else bias, y, M, N, K, group_size,
            x.stride(0), w.stride(0), scale.stride(0), y.stride(0))
    meta = dict(WEIGHT_BITS=weight_bits, SCALE_MODE=mode, K_TILE_CAP=k_tile_cap,
                HAS_BIAS=bias is not None, USE_DOT=use_dot)
    # The bias pointer is never read without HAS_BIAS; the scales stand in as a valid address.
    if use_dot:
        _weight_only_mm_dot[grid](*args, **meta)
    else:
        block_m = min(triton.next_power_of_2(M), _REDUCE_MAX_M)
        _weight_only_mm_reduce[grid](*args, **meta, BLOCK_M=block_m)
    return y


def int8_weight_only_mm(
    x: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
) -> torch.Tensor:
    """Launch the W8A16 GEMM (per-channel w_scale [N] or per-group [N, G]) on validated inputs."""
    assert w.dtype == torch.int8 and w.shape[1] == x.shape[1]
    assert w_scale.dim() in (1, 2)
    return _weight_only_mm(x, w, 8, w_scale, bias)


def binary_weight_mm(
    x: torch.Tensor, w_bits: torch.Tensor, alpha: torch.Tensor, bias: torch.Tensor | None,
) -> torch.Tensor:
    """Launch the W1A16 GEMM with sign-bit weights [N, ceil(K / 32)] on validated inputs."""
    assert w_bits.dtype == torch.int32 and w_bits.shape[1] == triton.cdiv(x.shape[1], 32)
    assert alpha.dim() == 1
    return _weight_only_mm(x, w_bits, 1, alpha, bias)


def ternary_weight_mm(
    x: torch.Tensor, w_2bit: torch.Tensor, alpha: torch.Tensor, bias: torch.Tensor | None,
) -> torch.Tensor:
    """Launch the ternary-weight GEMM with 2-bit codes [N, ceil(K / 16)] on validated inputs."""
    assert w_2bit.dtype == torch.int32 and w_2bit.shape[1] == triton.cdiv(x.shape[1], 16)
    assert alpha.dim() == 1
    return _weight_only_mm(x, w_2bit, 2, alpha, bias)


def pack_bits(x: torch.Tensor) -> torch.Tensor:
    """Launch the sign packing of a validated 2-D contiguous float or int8 tensor."""
    assert x.dim() == 2 and x.is_contiguous()
    assert x.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.int8)
    M, K = x.shape
    assert M > 0 and K > 0
    W = triton.cdiv(K, 32)
    out = torch.empty((M, W), dtype=torch.int32, device=x.device)
    block_w = min(triton.next_power_of_2(W), ELEMENTWISE_TILE // 32)
    block_m = max(1, min(triton.next_power_of_2(M), ELEMENTWISE_TILE // (32 * block_w)))
    _pack_bits_kernel[(triton.cdiv(M, block_m), triton.cdiv(W, block_w))](
        x, out, M, K, W, x.stride(0), out.stride(0), BLOCK_M=block_m, BLOCK_W=block_w,
        num_warps=4,
    )
    return out


def binary_mm(
    a_bits: torch.Tensor,
    b_bits: torch.Tensor,
    K: int,
    a_scale: torch.Tensor,
    b_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """Launch the XOR-popcount 1-bit GEMM with fused scaling epilogue on validated inputs."""
    assert a_bits.dim() == 2 and b_bits.dim() == 2
    assert a_bits.dtype == torch.int32 and b_bits.dtype == torch.int32
    assert a_bits.is_contiguous() and b_bits.is_contiguous()
    M, W = a_bits.shape
    N = b_bits.shape[0]
    assert M > 0 and N > 0 and K > 0 and W == triton.cdiv(K, 32) and b_bits.shape[1] == W
    return launch_dequantized_gemm(_binary_mm_tuned, a_bits, b_bits, (K, W), a_scale, b_scale, bias,
                                   out_dtype)


def _pack_bits_aot(x_type):
    return {
        "name": f"pack_bits_{x_type[1:]}",
        "fn": _pack_bits_kernel,
        "signature": {
            "x_ptr": x_type, "out_ptr": "*i32", "M": "i32", "K": "i32", "W": "i32",
            "stride_xm": "i32", "stride_om": "i32", "BLOCK_M": "constexpr", "BLOCK_W": "constexpr",
        },
        "constexprs": {"BLOCK_M": 4, "BLOCK_W": 32},
        "attrs": aligned(_pack_bits_kernel, ["x_ptr", "out_ptr", "K", "stride_xm", "stride_om"]),
        "options": {"num_warps": 4},
        "sass": {},
    }


def _binary_mm_aot(config, out_type="*fp32", bias_type="*fp32"):
    return dequantized_gemm_aot(
        _binary_mm_kernel, "binary_mm_{BLOCK_M}x{BLOCK_N}x{BLOCK_W}w".format(**config.kwargs), config,
        "*i32", out_type, bias_type, aligned_sizes=(), sass={80: ("POPC",), 90: ("POPC",)},
    )


_WEIGHT_FORMATS = {8: ("int8", "*i8"), 1: ("binary", "*i32"), 2: ("ternary", "*i32")}
_SCALE_MODE_NAMES = {0: "channel", 1: "tile", 2: "element"}


def _weight_only_aot(weight_bits, x_type, config, use_dot, scale_mode=0, k_tile_cap=_MAX_TILE_K,
                     block_m=None):
    meta = {**config.kwargs, **({} if block_m is None else {"BLOCK_M": block_m})}
    fmt, w_type = _WEIGHT_FORMATS[weight_bits]
    tensor_cores = use_dot and x_type != "*fp32"
    return {
        "name": f"{fmt}_weight_only_mm_{'dot' if use_dot else 'reduce'}"
                + "_{BLOCK_M}x{BLOCK_N}x{BLOCK_K}".format(**meta)
                + f"_s{config.num_stages}_w{config.num_warps}_{x_type[1:]}"
                + f"_{_SCALE_MODE_NAMES[scale_mode]}{k_tile_cap}",
        "fn": _weight_only_mm_kernel,
        "signature": {
            "x_ptr": x_type, "w_ptr": w_type, "scale_ptr": "*fp32", "bias_ptr": x_type, "y_ptr": x_type,
            "M": "i32", "N": "i32", "K": "i32", "GS": "i32",
            "stride_xm": "i32", "stride_wn": "i32", "stride_sn": "i32", "stride_ym": "i32",
            "WEIGHT_BITS": "constexpr", "SCALE_MODE": "constexpr", "K_TILE_CAP": "constexpr",
            "HAS_BIAS": "constexpr", "USE_DOT": "constexpr",
            "BLOCK_M": "constexpr", "BLOCK_N": "constexpr", "BLOCK_K": "constexpr", "GROUP_M": "constexpr",
        },
        "constexprs": {"WEIGHT_BITS": weight_bits, "SCALE_MODE": scale_mode, "K_TILE_CAP": k_tile_cap,
                       "HAS_BIAS": True, "USE_DOT": use_dot, **meta},
        "attrs": aligned(_weight_only_mm_kernel,
                         ["x_ptr", "w_ptr", "scale_ptr", "bias_ptr", "y_ptr", "K",
                          "stride_xm", "stride_wn", "stride_ym"]),
        "options": {"num_warps": config.num_warps, "num_stages": config.num_stages},
        "sass": {80: ("HMMA",), 90: ("HGMMA", "HMMA")} if tensor_cores else {},
    }


# Concrete specializations compiled ahead of time for sm_80/sm_90 by the test suite.  "sass" maps a
# compute capability to the instruction mnemonics of which at least one must appear in the SASS:
# tensor-core MMAs for the float16/bfloat16 weight-only dot path, the hardware popcount for
# binary_mm; "ptx_absent" keeps FMA out of binary_mm's epilogue, whose results are bit-exact.
AOT_KERNELS = [
    *(_pack_bits_aot(x_type) for x_type in ("*fp32", "*fp16", "*bf16", "*i8")),
    *(_binary_mm_aot(config) for config in _BINARY_MM_GPU_CONFIGS),
    _binary_mm_aot(_BINARY_MM_GPU_CONFIGS[0], "*bf16", "*bf16"),
    _binary_mm_aot(_BINARY_MM_GPU_CONFIGS[0], "*fp16", None),
    *(_weight_only_aot(8, "*bf16", config, True) for config in _WO_DOT_GPU_CONFIGS),
    *(_weight_only_aot(bits, x_type, _WO_DOT_GPU_CONFIGS[1], True)
      for bits, x_type in ((8, "*fp16"), (1, "*fp16"), (1, "*bf16"), (2, "*fp16"), (2, "*bf16"))),
    *(_weight_only_aot(bits, "*fp32", _WO_DOT_GPU_CONFIGS[1], True, k_tile_cap=_FMA_DOT_MAX_TILE_K)
      for bits in (8, 1, 2)),
    _weight_only_aot(8, "*fp16", _WO_DOT_GPU_CONFIGS[1], True, _SCALE_PER_TILE.value, 32),
    _weight_only_aot(8, "*bf16", _WO_DOT_GPU_CONFIGS[4], True, _SCALE_PER_TILE.value, 128),
    *(_weight_only_aot(bits, x_type, config, False, block_m=block_m)
      for bits in (8, 1, 2) for x_type in ("*fp16", "*bf16")
      for config, block_m in ((_WO_REDUCE_GPU_CONFIGS[3], 1), (_WO_REDUCE_GPU_CONFIGS[0], 4))),
    _weight_only_aot(8, "*fp32", _WO_REDUCE_GPU_CONFIGS[2], False, _SCALE_PER_TILE.value, 64, block_m=2),
    _weight_only_aot(8, "*bf16", _WO_REDUCE_GPU_CONFIGS[1], False, _SCALE_PER_ELEMENT.value, block_m=4),
]
