"""Triton kernels of the 2:4 op family: compression into values + metadata, and the 2:4 GEMM.

Layout (shared with pycompress.ops.sparse24): w [N, K] with at most 2 non-zeros in every group of
4 columns 4g .. 4g + 3 is held as
    values [N, K / 2]   values[n, 2g + s] = w[n, 4g + i_s], i_0 < i_1
    meta int16 [N, K / 16]  word j of row n covers groups 4j + t (t = 0..3); bits 4t .. 4t + 1 hold
                            i_0, bits 4t + 2 .. 4t + 3 hold i_1.
The kernels view a tile of 16 w columns (one meta word) as [4 groups t, 4 positions p] and a tile of
8 values as [4 groups t, 2 slots s], so that decoding is broadcasting along trailing axes.

The launchers assume the Python op layer has already validated the inputs (devices, dtypes,
contiguity, non-empty shapes, K a multiple of 16); they only assert cheap invariants, allocate the
outputs and launch.
"""

import torch
import triton
import triton.language as tl

from ._common import (
    ELEMENTWISE_TILE, FP32_DOT_GPU_CONFIGS, INTERPRET, aligned, gemm_config, gemm_grid, grouped_output_tile,
    store_output_tile, to_float32,
)

# The interpreter computes bfloat16 dot products wrongly: under it dot operands are upcast to float32.
_DOT_IN_FP32 = tl.constexpr(INTERPRET)


@triton.jit
def _split4(t):
    """The four [..] slices t[.., 0, 0], t[.., 0, 1], t[.., 1, 0], t[.., 1, 1] of a [.., 2, 2] tensor:
    positions 0, 1, 2, 3 of a group of 4 loaded as [.., 2, 2]."""
    pos_even, pos_odd = tl.split(t)
    p0, p2 = tl.split(pos_even)
    p1, p3 = tl.split(pos_odd)
    return p0, p1, p2, p3


@triton.jit
def _sparse24_compress_kernel(
    w_ptr, values_ptr, meta_ptr,
    N, W,
    stride_wn, stride_vn, stride_mn,
    BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """values, meta of w [N, K] (K = 16 W, float32/float16/bfloat16), bit-identical to
    sparse24_compress_reference; w must be 2:4 sparse (the op checks it).

    A program covers BLOCK_N rows by BLOCK_W meta words, loaded as [BLOCK_N, BLOCK_W, 4, 2, 2]
    (row, word, group t, position p = 2a + b) and split into the four positions e_p.  With
    nz_p = (e_p != 0) (NaN is non-zero, -0.0 zero), c = sum_p nz_p and zeros_before_p the zeros at
    positions below p, position p is kept when nz_p or zeros_before_p < 2 - c: the non-zeros, then
    the lowest zeros up to two.  i_0 is the first kept position, i_1 the last; values are selected,
    never computed, so their bits (-0.0, NaN payloads) are preserved.
        meta word = sum_t (i_0 | i_1 << 2) << 4t  (stored as the int16 of the same bits)
    """
    pid_n = tl.program_id(0)
    pid_w = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    words = pid_w * BLOCK_W + tl.arange(0, BLOCK_W)
    t = tl.arange(0, 4)
    half = tl.arange(0, 2)
    row_ok = rows < N
    ok = row_ok[:, None] & (words < W)[None, :]

    cols = (words[:, None, None, None] * 16 + t[None, :, None, None] * 4
            + half[None, None, :, None] * 2 + half[None, None, None, :])
    w = tl.load(w_ptr + rows.to(tl.int64)[:, None, None, None, None] * stride_wn + cols[None],
                mask=ok[:, :, None, None, None], other=0.0)
    e0, e1, e2, e3 = _split4(w)
    n0 = (to_float32(e0) != 0.0).to(tl.int32)
    n1 = (to_float32(e1) != 0.0).to(tl.int32)
    n2 = (to_float32(e2) != 0.0).to(tl.int32)
    n3 = (to_float32(e3) != 0.0).to(tl.int32)
    spare = 2 - (n0 + n1 + n2 + n3)  # zeros still to keep
    keep0 = (n0 == 1) | (spare > 0)
    keep1 = (n1 == 1) | ((1 - n0) < spare)
    keep2 = (n2 == 1) | ((2 - n0 - n1) < spare)
    keep3 = (n3 == 1) | ((3 - n0 - n1 - n2) < spare)
    i0 = tl.where(keep0, 0, tl.where(keep1, 1, 2))
    i1 = tl.where(keep3, 3, tl.where(keep2, 2, 1))
    v0 = tl.where(keep0, e0, tl.where(keep1, e1, e2))
    v1 = tl.where(keep3, e3, tl.where(keep2, e2, e1))

    # The shifted nibbles occupy distinct bits, so their sum is their OR.
    meta = tl.sum((i0 | (i1 << 2)) << (4 * t)[None, None, :], axis=2)
    tl.store(meta_ptr + rows.to(tl.int64)[:, None] * stride_mn + words[None, :], meta.to(tl.int16), mask=ok)
    slots = words[:, None, None] * 8 + t[None, :, None] * 2 + half[None, None, :]
    tl.store(values_ptr + rows.to(tl.int64)[:, None, None, None] * stride_vn + slots[None],
             tl.join(v0, v1), mask=ok[:, :, None, None])


@triton.jit
def _sparse24_mm_kernel(
    x_ptr, values_ptr, meta_ptr, bias_ptr, y_ptr,
    M, N, K,
    stride_xm, stride_vn, stride_mn, stride_ym,
    HAS_BIAS: tl.constexpr, USE_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """y[m, n] = cast(sum_k x[m, k] w[n, k] + bias[n]), products summed in float32, w the 2:4 weight
    held as values [N, K / 2] and meta int16 [N, K / 16] (K a multiple of 16; BLOCK_K of 16).

    Per K tile each program loads the values as [BLOCK_N, BLOCK_K / 16, 4, 2] (row, word, group t,
    slot s), split into v_0, v_1, and the meta words as [BLOCK_N, BLOCK_K / 16], expanded to the
    positions i_s = (word >> (4t + 2s)) & 3 of each group: half the bytes of a dense weight tile
    plus 2 bytes per 16 columns.
      USE_DOT: the dense tile is rebuilt in registers, w[n, 4g + p] = v_0 if p == i_0, v_1 if
        p == i_1, else 0 ([.., 4 groups, 4 positions] reshaped to [BLOCK_N, BLOCK_K]), and
        multiplied by the x tile read as [BLOCK_K, BLOCK_M]: acc^T += w x^T with tl.dot, float32
        accumulation (float16/bfloat16 on the tensor cores, float32 in IEEE FMA).  The weight is
        the left operand, so on sm_90 the warpgroup MMA takes it straight from registers, its
        64-row granularity falls on N and decode-sized M only fills the 16-wide right operand.
      otherwise, for a handful of rows of x: only the kept products are formed,
        acc[m, n] += sum_g v_0 x[m, 4g + i_0] + v_1 x[m, 4g + i_1], x's four positions per group
        selected by i_s in float32; entries of x facing a pruned (not stored) weight position are
        never multiplied, so an Inf or NaN there does not reach y.
    bias (any float dtype) is upcast; y has x's dtype, rounded to nearest even.  Programs walk
    GROUP_M row-blocks per column-block for L2 reuse.
    """
    WORDS: tl.constexpr = BLOCK_K // 16
    tl.static_assert(BLOCK_K % 16 == 0)
    offs_m, offs_n, m_ok, n_ok = grouped_output_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    word = tl.arange(0, WORDS)
    t = tl.arange(0, 4)
    half = tl.arange(0, 2)
    meta_rows = meta_ptr + offs_n.to(tl.int64)[:, None] * stride_mn
    value_rows = values_ptr + offs_n.to(tl.int64)[:, None, None, None] * stride_vn
    slots = word[:, None, None] * 8 + t[None, :, None] * 2 + half[None, None, :]

    if USE_DOT:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        offs_k = tl.arange(0, BLOCK_K)
        xt_ptrs = x_ptr + offs_m.to(tl.int64)[None, :] * stride_xm + offs_k[:, None]
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        cols = word[:, None, None, None] * 16 + t[None, :, None, None] * 4 + half[None, None, :, None] * 2 \
            + half[None, None, None, :]
        x_ptrs = x_ptr + offs_m.to(tl.int64)[:, None, None, None, None] * stride_xm + cols[None]

    for k0 in range(0, K, BLOCK_K):
        word_ok = word < (K - k0) // 16
        tile_ok = n_ok[:, None] & word_ok[None, :]
        meta = tl.load(meta_rows + (k0 // 16 + word)[None, :], mask=tile_ok, other=0).to(tl.int32)
        nibble = (meta[:, :, None] >> (4 * t)[None, None, :]) & 0xF  # [BLOCK_N, WORDS, 4]
        i0 = nibble & 3
        i1 = nibble >> 2
        pair = tl.load(value_rows + (k0 // 2 + slots)[None], mask=tile_ok[:, :, None, None], other=0.0)
        v0, v1 = tl.split(pair)
        if USE_DOT:
            if _DOT_IN_FP32:
                v0 = to_float32(v0)
                v1 = to_float32(v1)
            p = t[None, None, None, :]
            w = tl.where(p == i0[:, :, :, None], v0[:, :, :, None],
                         tl.where(p == i1[:, :, :, None], v1[:, :, :, None], 0.0))
            w = tl.reshape(w, (BLOCK_N, BLOCK_K))
            xt = tl.load(xt_ptrs, mask=(offs_k < K - k0)[:, None] & m_ok[None, :], other=0.0)
            if _DOT_IN_FP32 or xt.dtype == tl.float32:
                acc = tl.dot(w, to_float32(xt), acc, input_precision="ieee")
            else:
                acc = tl.dot(w, xt, acc)
            xt_ptrs += BLOCK_K
        else:
            x = tl.load(x_ptrs, mask=m_ok[:, None, None, None, None] & word_ok[None, :, None, None, None],
                        other=0.0)
            x0, x1, x2, x3 = _split4(to_float32(x))  # [BLOCK_M, WORDS, 4]
            j0 = i0[None]
            j1 = i1[None]
            # i_0 is at most 2 and i_1 at least 1.
            x_at_i0 = tl.where(j0 == 0, x0[:, None], tl.where(j0 == 1, x1[:, None], x2[:, None]))
            x_at_i1 = tl.where(j1 == 3, x3[:, None], tl.where(j1 == 2, x2[:, None], x1[:, None]))
            prod = x_at_i0 * to_float32(v0)[None] + x_at_i1 * to_float32(v1)[None]
            acc += tl.sum(tl.sum(prod, axis=3), axis=2)
            x_ptrs += BLOCK_K

    if USE_DOT:
        out = tl.trans(acc)
    else:
        out = acc
    store_output_tile(y_ptr, stride_ym, out, bias_ptr, offs_m, offs_n, m_ok, n_ok, HAS_BIAS)


# Rows up to which the GEMM forms only the kept products instead of calling tl.dot, whose smallest
# tile has 16 rows.
_REDUCE_MAX_M = 4

# BLOCK_M is the N extent of the MMA: 16 serves decode-sized M, where the GEMM streams the weights
# once and small BLOCK_N tiles split N over enough programs to occupy every SM; the larger tiles
# serve prefill.  BLOCK_N a multiple of 64 with 4 or 8 warps lets sm_90 use warpgroup MMA.
_DOT_GPU_CONFIGS = [
    gemm_config(4, 4, BLOCK_M=16, BLOCK_N=32, BLOCK_K=128),
    gemm_config(4, 4, BLOCK_M=16, BLOCK_N=64, BLOCK_K=128),
    gemm_config(4, 4, BLOCK_M=32, BLOCK_N=64, BLOCK_K=128),
    gemm_config(4, 4, BLOCK_M=64, BLOCK_N=64, BLOCK_K=64),
    gemm_config(3, 8, BLOCK_M=64, BLOCK_N=128, BLOCK_K=64),
    gemm_config(3, 8, BLOCK_M=128, BLOCK_N=128, BLOCK_K=64),
    gemm_config(3, 8, BLOCK_M=128, BLOCK_N=256, BLOCK_K=32),
]
# BLOCK_M comes from the launcher: the next power of two of M, at most _REDUCE_MAX_M.
_REDUCE_GPU_CONFIGS = [
    gemm_config(4, 4, BLOCK_N=16, BLOCK_K=128),
    gemm_config(4, 4, BLOCK_N=32, BLOCK_K=64),
    gemm_config(4, 4, BLOCK_N=32, BLOCK_K=128),
    gemm_config(4, 4, BLOCK_N=64, BLOCK_K=64),
    gemm_config(4, 4, BLOCK_N=16, BLOCK_K=256),
    gemm_config(3, 8, BLOCK_N=64, BLOCK_K=128),
]

if INTERPRET:
    # The interpreter runs each program in numpy: single configs of large tiles keep it fast while
    # test shapes still span several tiles and K steps.
    _DOT_CONFIGS = _DOT_FP32_CONFIGS = [gemm_config(1, 4, BLOCK_M=16, BLOCK_N=32, BLOCK_K=64)]
    _REDUCE_CONFIGS = [gemm_config(1, 4, BLOCK_N=32, BLOCK_K=64)]
else:
    _DOT_CONFIGS = _DOT_GPU_CONFIGS
    _DOT_FP32_CONFIGS = FP32_DOT_GPU_CONFIGS
    _REDUCE_CONFIGS = _REDUCE_GPU_CONFIGS

# Kept products held in registers per thread by the reduce path before it spills.
_REDUCE_PRODUCTS_PER_THREAD = 32


def _fit_reduce_tiles(configs, named_args, **kwargs):
    """Drop the reduce configs whose [BLOCK_M, BLOCK_N, BLOCK_K / 4] products would spill registers."""
    def products_per_thread(config):
        return kwargs["BLOCK_M"] * config.kwargs["BLOCK_N"] * config.kwargs["BLOCK_K"] / (4 * 32 * config.num_warps)
    fitting = [c for c in configs if products_per_thread(c) <= _REDUCE_PRODUCTS_PER_THREAD]
    return fitting or [min(configs, key=products_per_thread)]


_MM_KEY = ["M", "N", "K"]
_sparse24_mm_dot = triton.autotune(configs=_DOT_CONFIGS, key=_MM_KEY)(_sparse24_mm_kernel)
_sparse24_mm_dot_fp32 = triton.autotune(configs=_DOT_FP32_CONFIGS, key=_MM_KEY)(_sparse24_mm_kernel)
_sparse24_mm_reduce = triton.autotune(
    configs=_REDUCE_CONFIGS, key=_MM_KEY, prune_configs_by={"early_config_prune": _fit_reduce_tiles},
)(_sparse24_mm_kernel)


def sparse24_compress(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the 2:4 compression of a validated contiguous 2:4 sparse weight [N, K], K % 16 == 0."""
    assert w.dim() == 2 and w.is_contiguous()
    assert w.dtype in (torch.float32, torch.float16, torch.bfloat16)
    N, K = w.shape
    assert N > 0 and K > 0 and K % 16 == 0
    W = K // 16
    values = torch.empty((N, K // 2), dtype=w.dtype, device=w.device)
    meta = torch.empty((N, W), dtype=torch.int16, device=w.device)
    block_w = min(triton.next_power_of_2(W), ELEMENTWISE_TILE // 16)
    block_n = max(1, min(triton.next_power_of_2(N), ELEMENTWISE_TILE // (16 * block_w)))
    _sparse24_compress_kernel[(triton.cdiv(N, block_n), triton.cdiv(W, block_w))](
        w, values, meta, N, W, w.stride(0), values.stride(0), meta.stride(0),
        BLOCK_N=block_n, BLOCK_W=block_w, num_warps=4,
    )
    return values, meta


def sparse24_mm(
    x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, bias: torch.Tensor | None,
) -> torch.Tensor:
    """Launch y = x @ w^T + bias for the 2:4 weight (values, meta) on validated contiguous inputs."""
    assert x.dim() == 2 and values.dim() == 2 and meta.dim() == 2
    assert x.is_contiguous() and values.is_contiguous() and meta.is_contiguous()
    M, K = x.shape
    N = values.shape[0]
    assert M > 0 and N > 0 and K > 0 and K % 16 == 0
    assert values.dtype == x.dtype and values.shape == (N, K // 2)
    assert meta.dtype == torch.int16 and meta.shape == (N, K // 16)
    assert bias is None or (bias.shape == (N,) and bias.is_contiguous())
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    grid = gemm_grid(M, N)
    # The bias pointer is never read without HAS_BIAS; the values stand in as a valid address.
    args = (x, values, meta, values if bias is None else bias, y, M, N, K,
            x.stride(0), values.stride(0), meta.stride(0), y.stride(0))
    if M <= _REDUCE_MAX_M:
        _sparse24_mm_reduce[grid](*args, HAS_BIAS=bias is not None, USE_DOT=False,
                                  BLOCK_M=triton.next_power_of_2(M))
    else:
        kernel = _sparse24_mm_dot_fp32 if x.dtype == torch.float32 else _sparse24_mm_dot
        kernel[grid](*args, HAS_BIAS=bias is not None, USE_DOT=True)
    return y


def _compress_aot(w_type):
    return {
        "name": f"sparse24_compress_{w_type[1:]}",
        "fn": _sparse24_compress_kernel,
        "signature": {
            "w_ptr": w_type, "values_ptr": w_type, "meta_ptr": "*i16", "N": "i32", "W": "i32",
            "stride_wn": "i32", "stride_vn": "i32", "stride_mn": "i32",
            "BLOCK_N": "constexpr", "BLOCK_W": "constexpr",
        },
        "constexprs": {"BLOCK_N": 4, "BLOCK_W": 64},
        "attrs": aligned(_sparse24_compress_kernel, ["w_ptr", "values_ptr", "meta_ptr", "stride_wn", "stride_vn"]),
        "options": {"num_warps": 4},
        "sass": {},
    }


def _mm_aot(x_type, config, use_dot, block_m=None, bias_type=None):
    meta = {**config.kwargs, **({} if block_m is None else {"BLOCK_M": block_m})}
    tensor_cores = use_dot and x_type != "*fp32"
    return {
        "name": f"sparse24_mm_{'dot' if use_dot else 'reduce'}"
                + "_{BLOCK_M}x{BLOCK_N}x{BLOCK_K}".format(**meta)
                + f"_s{config.num_stages}_w{config.num_warps}_{x_type[1:]}"
                + ("" if bias_type is None else f"_bias_{bias_type[1:]}"),
        "fn": _sparse24_mm_kernel,
        "signature": {
            "x_ptr": x_type, "values_ptr": x_type, "meta_ptr": "*i16", "bias_ptr": bias_type or x_type,
            "y_ptr": x_type, "M": "i32", "N": "i32", "K": "i32",
            "stride_xm": "i32", "stride_vn": "i32", "stride_mn": "i32", "stride_ym": "i32",
            "HAS_BIAS": "constexpr", "USE_DOT": "constexpr",
            "BLOCK_M": "constexpr", "BLOCK_N": "constexpr", "BLOCK_K": "constexpr", "GROUP_M": "constexpr",
        },
        "constexprs": {"HAS_BIAS": bias_type is not None, "USE_DOT": use_dot, **meta},
        "attrs": aligned(_sparse24_mm_kernel,
                         ["x_ptr", "values_ptr", "meta_ptr", "bias_ptr", "y_ptr", "K",
                          "stride_xm", "stride_vn", "stride_ym"]),
        "options": {"num_warps": config.num_warps, "num_stages": config.num_stages},
        "sass": {80: ("HMMA",), 90: ("HGMMA", "HMMA")} if tensor_cores else {},
    }


# Concrete specializations compiled ahead of time for sm_80/sm_90 by the test suite.  "sass" maps a
# compute capability to the instruction mnemonics of which at least one must appear in the SASS:
# tensor-core MMAs for the float16/bfloat16 dot path.  With Triton 3.9 that is HMMA on sm_80; on
# sm_90 the tiles with BLOCK_N >= 64 compile to HGMMA with the decoded weight read from registers
# (HGMMA.64x16x16 for BLOCK_M = 16) and the 32-row tile to HMMA.
AOT_KERNELS = [
    *(_compress_aot(w_type) for w_type in ("*fp32", "*bf16")),
    *(_mm_aot("*fp16", config, True) for config in _DOT_GPU_CONFIGS),
    _mm_aot("*bf16", _DOT_GPU_CONFIGS[1], True, bias_type="*bf16"),
    _mm_aot("*fp32", FP32_DOT_GPU_CONFIGS[1], True, bias_type="*fp32"),
    _mm_aot("*fp16", _REDUCE_GPU_CONFIGS[2], False, block_m=1, bias_type="*fp16"),
    _mm_aot("*bf16", _REDUCE_GPU_CONFIGS[0], False, block_m=4, bias_type="*bf16"),
    _mm_aot("*fp32", _REDUCE_GPU_CONFIGS[3], False, block_m=2),
]
