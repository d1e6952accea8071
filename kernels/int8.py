"""Triton kernels of the int8 op family: per-token quantization and the int8 GEMM.

The launchers assume the Python op layer has already validated the inputs (devices, dtypes,
contiguity, non-empty shapes); they only assert cheap invariants, allocate the outputs and launch.
"""

import torch
import triton
import triton.language as tl

from ._common import (
    ELEMENTWISE_TILE, INTERPRET, aligned, dequantized_gemm_aot, gemm_config, grouped_output_tile,
    launch_dequantized_gemm, store_dequantized, to_float32,
)

# Adding then subtracting 1.5 * 2^23 leaves an integer rounded half-to-even in float32 arithmetic,
# exactly for |v| <= 2^22; the quantized values never exceed 127 in magnitude.
_RINT_MAGIC = tl.constexpr(12582912.0)


@triton.jit
def _quantize_per_token_kernel(
    x_ptr, q_ptr, scale_ptr,
    M, K,
    stride_xm, stride_qm,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, SINGLE_TILE: tl.constexpr,
):
    """Symmetric per-row int8 quantization of x [M, K] (float32/float16/bfloat16).

    All arithmetic is float32 (inputs are upcast right after the load):
        amax[m]  = max_k |x[m, k]|
        finite, amax > 0:  scale[m] = amax / 127 (div.rn),  inv = 127 / amax (div.rn),
                           q[m, k]  = clamp(rint(x[m, k] * inv), -127, 127)   (rint: half to even,
                                                                               multiply not fused)
        amax == 0:         scale[m] = 1,   q[m, :] = 0
        NaN or Inf in row: scale[m] = NaN, q[m, :] = 0
    A NaN product x * inv quantizes to 0: it arises in non-finite rows (inv is 0 there) and, for
    0 < amax < 127 / FLT_MAX where inv overflows to Inf, from zeros (nonzero x then give +-127).
    One program handles BLOCK_M rows.  With SINGLE_TILE the whole row (K <= BLOCK_K) stays in
    registers between the absmax and the quantization; otherwise the second sweep re-reads the
    rows, which the first sweep has just brought into cache.
    The multiply-then-round sequence is only exact when compiled with enable_fp_fusion=False.
    """
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    cols = tl.arange(0, BLOCK_K)
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_xm
    q_rows = q_ptr + rows.to(tl.int64)[:, None] * stride_qm

    # NaN is mapped to +Inf before the max: max reductions on the GPU drop NaN operands, and a
    # row holding NaN or Inf gets the same treatment anyway.
    if SINGLE_TILE:
        tile_mask = row_ok[:, None] & (cols[None, :] < K)
        x = to_float32(tl.load(x_rows + cols[None, :], mask=tile_mask, other=0.0))
        ax = tl.abs(x)
        amax = tl.max(tl.where(ax == ax, ax, float("inf")), axis=1)
    else:
        amax = tl.zeros([BLOCK_M], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            tile_mask = row_ok[:, None] & ((k0 + cols)[None, :] < K)
            xk = to_float32(tl.load(x_rows + (k0 + cols)[None, :], mask=tile_mask, other=0.0))
            ax = tl.abs(xk)
            amax = tl.maximum(amax, tl.max(tl.where(ax == ax, ax, float("inf")), axis=1))

    finite = amax < float("inf")
    usable = finite & (amax > 0.0)
    # Rows that cannot be scaled divide a harmless 127 so no Inf/NaN is computed needlessly.
    safe_amax = tl.where(usable, amax, 127.0)
    scale = tl.where(usable, tl.math.div_rn(safe_amax, 127.0), 1.0)
    scale = tl.where(finite, scale, float("nan"))
    inv = tl.where(usable, tl.math.div_rn(127.0, safe_amax), 0.0)
    tl.store(scale_ptr + rows, scale, mask=row_ok)

    if SINGLE_TILE:
        v = x * inv[:, None]
        v = tl.where(v == v, v, 0.0)
        r = (v + _RINT_MAGIC) - _RINT_MAGIC
        q = tl.minimum(tl.maximum(r, -127.0), 127.0).to(tl.int8)
        tl.store(q_rows + cols[None, :], q, mask=tile_mask)
    else:
        for k0 in range(0, K, BLOCK_K):
            tile_mask = row_ok[:, None] & ((k0 + cols)[None, :] < K)
            xk = to_float32(tl.load(x_rows + (k0 + cols)[None, :], mask=tile_mask, other=0.0))
            v = xk * inv[:, None]
            v = tl.where(v == v, v, 0.0)
            r = (v + _RINT_MAGIC) - _RINT_MAGIC
            q = tl.minimum(tl.maximum(r, -127.0), 127.0).to(tl.int8)
            tl.store(q_rows + (k0 + cols)[None, :], q, mask=tile_mask)


@triton.jit
def _int8_mm_kernel(
    a_ptr, b_ptr, a_scale_ptr, b_scale_ptr, bias_ptr, c_ptr,
    M, N, K,
    stride_am, stride_bn, stride_cm,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """c[m, n] = cast((float(acc[m, n]) * a_scale[m]) * b_scale[n] + bias[n]),
    acc[m, n] = sum_k int32(a[m, k]) * int32(b[n, k])  (exact int32, no saturation).

    a is int8 [M, K] and b int8 [N, K] (nn.Linear weight layout), both with unit stride along K;
    b is read as [BLOCK_K, BLOCK_N] tiles, K-contiguous as IMMA/IGMMA want their B operand.
    The epilogue runs in float32, operation by operation as written (compiled with
    enable_fp_fusion=False, so no FMA: bit-identical to the reference); bias (any float dtype) is
    upcast before the add and c, of the element type of c_ptr, is rounded to nearest even.
    Programs walk GROUP_M row-blocks per column-block so that neighbouring programs share A and B
    tiles in L2.
    """
    offs_m, offs_n, m_ok, n_ok = grouped_output_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + offs_m.to(tl.int64)[:, None] * stride_am + offs_k[None, :]
    b_ptrs = b_ptr + offs_n.to(tl.int64)[None, :] * stride_bn + offs_k[:, None]

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = offs_k < K - k0
        a = tl.load(a_ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0)
        b = tl.load(b_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0)
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K

    store_dequantized(c_ptr, stride_cm, acc, a_scale_ptr, b_scale_ptr, bias_ptr,
                      offs_m, offs_n, m_ok, n_ok, HAS_BIAS)


if INTERPRET:
    # The interpreter runs each program in numpy: a single config of large tiles keeps it fast
    # while test shapes still span several tiles, groups and K steps.
    _MM_CONFIGS = [gemm_config(1, 4, BLOCK_M=64, BLOCK_N=64, BLOCK_K=64)]
else:
    # Shared memory per config stays below the sm_80 limit (164 KB); tiles whose M is a multiple
    # of 64 let sm_90 use warpgroup MMA, the 32-row tile serves decode-sized M.
    _MM_CONFIGS = [
        gemm_config(3, 8, BLOCK_M=128, BLOCK_N=256, BLOCK_K=64),
        gemm_config(3, 8, BLOCK_M=256, BLOCK_N=128, BLOCK_K=64),
        gemm_config(3, 8, BLOCK_M=128, BLOCK_N=128, BLOCK_K=128),
        gemm_config(4, 4, BLOCK_M=128, BLOCK_N=128, BLOCK_K=64),
        gemm_config(4, 4, BLOCK_M=64, BLOCK_N=128, BLOCK_K=128),
        gemm_config(4, 4, BLOCK_M=128, BLOCK_N=64, BLOCK_K=128),
        gemm_config(4, 4, BLOCK_M=64, BLOCK_N=64, BLOCK_K=128),
        gemm_config(4, 4, BLOCK_M=32, BLOCK_N=64, BLOCK_K=128),
    ]

_int8_mm_tuned = triton.autotune(configs=_MM_CONFIGS, key=["M", "N", "K"])(_int8_mm_kernel)

_QUANT_MAX_BLOCK_K = 1 << 13


def _quantize_launch_params(M, K):
    block_k = min(triton.next_power_of_2(K), _QUANT_MAX_BLOCK_K)
    block_m = max(1, min(triton.next_power_of_2(M), ELEMENTWISE_TILE // block_k))
    num_warps = 4 if block_m * block_k <= 4096 else 8
    return block_m, block_k, block_k >= K, num_warps


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the per-token quantization of a validated 2-D contiguous float tensor."""
    assert x.dim() == 2 and x.is_contiguous()
    assert x.dtype in (torch.float32, torch.float16, torch.bfloat16)
    M, K = x.shape
    assert M > 0 and K > 0
    q = torch.empty((M, K), dtype=torch.int8, device=x.device)
    scale = torch.empty((M,), dtype=torch.float32, device=x.device)
    block_m, block_k, single_tile, num_warps = _quantize_launch_params(M, K)
    _quantize_per_token_kernel[(triton.cdiv(M, block_m),)](
        x, q, scale, M, K, x.stride(0), q.stride(0),
        BLOCK_M=block_m, BLOCK_K=block_k, SINGLE_TILE=single_tile,
        num_warps=num_warps, enable_fp_fusion=False,
    )
    return q, scale


def int8_mm(
    a: torch.Tensor,
    b: torch.Tensor,
    a_scale: torch.Tensor,
    b_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """Launch the int8 GEMM with fused dequantization epilogue on validated contiguous inputs."""
    assert a.dim() == 2 and b.dim() == 2 and a.shape[1] == b.shape[1]
    assert a.dtype == torch.int8 and b.dtype == torch.int8
    assert a.is_contiguous() and b.is_contiguous()
    M, K = a.shape
    N = b.shape[0]
    assert M > 0 and N > 0 and K > 0
    return launch_dequantized_gemm(_int8_mm_tuned, a, b, (K,), a_scale, b_scale, bias, out_dtype)


def _quantize_aot(x_type, single_tile):
    block_m, block_k = (4, 1024) if single_tile else (1, 8192)
    return {
        "name": f"quantize_per_token_{x_type[1:]}_{'tile' if single_tile else 'loop'}",
        "fn": _quantize_per_token_kernel,
        "signature": {
            "x_ptr": x_type, "q_ptr": "*i8", "scale_ptr": "*fp32",
            "M": "i32", "K": "i32", "stride_xm": "i32", "stride_qm": "i32",
            "BLOCK_M": "constexpr", "BLOCK_K": "constexpr", "SINGLE_TILE": "constexpr",
        },
        "constexprs": {"BLOCK_M": block_m, "BLOCK_K": block_k, "SINGLE_TILE": single_tile},
        "attrs": aligned(_quantize_per_token_kernel,
                         ["x_ptr", "q_ptr", "scale_ptr", "K", "stride_xm", "stride_qm"]),
        "options": {"num_warps": 4 if single_tile else 8, "enable_fp_fusion": False},
        "sass": {},
        "ptx_absent": ("fma.",),
    }


def _int8_mm_aot(config, out_type="*fp16", bias_type="*fp16"):
    return dequantized_gemm_aot(
        _int8_mm_kernel, "int8_mm_{BLOCK_M}x{BLOCK_N}x{BLOCK_K}".format(**config.kwargs), config,
        "*i8", out_type, bias_type, aligned_sizes=("K",), sass={80: ("IMMA",), 90: ("IGMMA", "IMMA")},
    )


# Concrete specializations compiled ahead of time for sm_80/sm_90 by the test suite.  "sass" maps a
# compute capability to the instruction mnemonics of which at least one must appear in the SASS;
# "ptx_absent" lists PTX opcode prefixes that must not appear: both kernels promise results
# bit-identical to the reference, which a multiply-add contracted into an FMA would break.
AOT_KERNELS = [
    *(_quantize_aot(x_type, single_tile)
      for x_type in ("*fp32", "*fp16", "*bf16") for single_tile in (True, False)),
    *(_int8_mm_aot(config) for config in _MM_CONFIGS),
    _int8_mm_aot(_MM_CONFIGS[0], "*bf16", "*bf16"),
    _int8_mm_aot(_MM_CONFIGS[0], "*fp32", None),
]
