"""Triton kernels of the unstructured sparse op family: CSR and block-sparse (BSR) GEMMs.

Layouts (shared with pycompress.ops.sparse), weight w [N, K]:
    CSR  crow int32 [N + 1], col int32 [nnz], values [nnz]: w[n, col[i]] = values[i] for
         crow[n] <= i < crow[n + 1]
    BSR  crow int32 [N / B + 1], col int32 [nnzb] (block columns), values [nnzb, B, B]:
         values[b, i, j] = w[r B + i, col[b] B + j] for block b of block row r

The launchers assume the Python op layer has already validated the inputs (devices, dtypes,
contiguity, non-empty shapes) and trust the index arrays (the reference and CPU backends check
them); they only assert cheap invariants, allocate the outputs and launch.
"""

import torch
import triton
import triton.language as tl

from ._common import (
    INTERPRET, aligned, gemm_config, gemm_grid, grouped_output_tile, store_output_tile, to_float32,
)

# The interpreter computes bfloat16 dot products wrongly: under it dot operands are upcast to float32.
_DOT_IN_FP32 = tl.constexpr(INTERPRET)


@triton.jit
def _csr_mm_kernel(
    x_ptr, crow_ptr, col_ptr, values_ptr, bias_ptr, y_ptr,
    M, N,
    stride_xm, stride_ym,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_NNZ: tl.constexpr, GROUP_M: tl.constexpr,
):
    """y[m, n] = cast(sum_{crow[n] <= i < crow[n + 1]} x[m, col[i]] values[i] + bias[n]), in float32.

    A program owns BLOCK_M rows of x and BLOCK_N rows of w.  It walks the stored entries of its
    rows in chunks of BLOCK_NNZ, as many chunks as its longest row needs: each step loads a
    [BLOCK_N, BLOCK_NNZ] tile of col and values (entries past a row's end masked to 0), gathers
    the matching x entries as [BLOCK_M, BLOCK_N, BLOCK_NNZ] and adds the products, reduced over
    the chunk, to acc [BLOCK_M, BLOCK_N].  Empty rows give bias[n] (or 0); x entries facing
    positions that w does not store are never read.  bias (any float dtype) is upcast; y has x's
    dtype, rounded to nearest even.  Programs walk GROUP_M row-blocks of x per block of w rows
    for L2 reuse.
    """
    offs_m, offs_n, m_ok, n_ok = grouped_output_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    start = tl.load(crow_ptr + offs_n, mask=n_ok, other=0)
    count = tl.load(crow_ptr + offs_n + 1, mask=n_ok, other=0) - start
    longest = tl.max(count, axis=0)
    offs_c = tl.arange(0, BLOCK_NNZ)
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None, None] * stride_xm

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for c0 in range(0, longest, BLOCK_NNZ):
        entry_ok = (c0 + offs_c)[None, :] < count[:, None]
        entry = start[:, None] + c0 + offs_c[None, :]
        k = tl.load(col_ptr + entry, mask=entry_ok, other=0)
        v = to_float32(tl.load(values_ptr + entry, mask=entry_ok, other=0.0))
        x = tl.load(x_rows + k[None, :, :], mask=m_ok[:, None, None] & entry_ok[None, :, :], other=0.0)
        acc += tl.sum(to_float32(x) * v[None, :, :], axis=2)

    store_output_tile(y_ptr, stride_ym, acc, bias_ptr, offs_m, offs_n, m_ok, n_ok, HAS_BIAS)


@triton.jit
def _bsr_mm_kernel(
    x_ptr, crow_ptr, col_ptr, values_ptr, bias_ptr, y_ptr,
    M, N,
    stride_xm, stride_ym,
    HAS_BIAS: tl.constexpr, B: tl.constexpr, DOT_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """y[m, r B + i] = cast(sum_{crow[r] <= b < crow[r + 1]} sum_j x[m, col[b] B + j] values[b, i, j]
    + bias[r B + i]), products summed in float32.

    Program (i, r) owns rows i BLOCK_M .. (i + 1) BLOCK_M - 1 of x and block row r of w; M tiles
    vary fastest, so the programs sharing a block row's blocks run together and read them once from
    DRAM.  For each stored block b of the row it multiplies the x tile [BLOCK_M, B] at block column
    col[b] by values[b]^T with tl.dot (float32 accumulation; float16/bfloat16 on the tensor cores,
    float32 in IEEE FMA, in K slices of DOT_K columns so that its operands fit in registers).  An
    empty block row gives bias (or 0).  bias (any float dtype) is upcast; y has x's dtype, rounded
    to nearest even.
    """
    tl.static_assert(B % DOT_K == 0)
    pid_m = tl.program_id(0)
    r = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = r * B + tl.arange(0, B)
    m_ok = offs_m < M
    n_ok = offs_n < N
    offs_k = tl.arange(0, DOT_K)
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm + offs_k[None, :]
    # values[b]^T as a [DOT_K, B] slice: element (j, i) is values[b, i, j].
    w_offs = tl.arange(0, B)[None, :] * B + offs_k[:, None]

    first = tl.load(crow_ptr + r)
    end = tl.load(crow_ptr + r + 1)
    col_at = col_ptr + first
    w_block = values_ptr + first.to(tl.int64) * (B * B) + w_offs

    acc = tl.zeros((BLOCK_M, B), dtype=tl.float32)
    for _ in range(first, end):
        x_block = x_rows + tl.load(col_at).to(tl.int64) * B
        for k0 in tl.static_range(0, B, DOT_K):
            x = tl.load(x_block + k0, mask=m_ok[:, None], other=0.0)
            w = tl.load(w_block + k0)
            if _DOT_IN_FP32 or x.dtype == tl.float32:
                acc = tl.dot(to_float32(x), to_float32(w), acc, input_precision="ieee")
            else:
                acc = tl.dot(x, w, acc)
        col_at += 1
        w_block += B * B

    store_output_tile(y_ptr, stride_ym, acc, bias_ptr, offs_m, offs_n, m_ok, n_ok, HAS_BIAS)


# Most rows of x per CSR program: they share each load of col and values, while their [BLOCK_M,
# BLOCK_N, BLOCK_NNZ] products bound how many fit in registers.
_CSR_MAX_BLOCK_M = 16
# Gathered products held in registers per thread by the CSR kernel before it spills.
_CSR_PRODUCTS_PER_THREAD = 32

# BLOCK_M comes from the launcher.  Few long chunks suit rows with many entries, many short ones
# rows with few; the autotuner picks among those that fit in registers for that BLOCK_M.
_CSR_GPU_CONFIGS = [
    gemm_config(3, 4, BLOCK_N=2, BLOCK_NNZ=128),
    gemm_config(3, 4, BLOCK_N=4, BLOCK_NNZ=64),
    gemm_config(3, 4, BLOCK_N=8, BLOCK_NNZ=32),
    gemm_config(3, 4, BLOCK_N=16, BLOCK_NNZ=64),
    gemm_config(3, 4, BLOCK_N=32, BLOCK_NNZ=32),
    gemm_config(3, 4, BLOCK_N=8, BLOCK_NNZ=128),
    gemm_config(3, 8, BLOCK_N=16, BLOCK_NNZ=128),
    gemm_config(3, 8, BLOCK_N=64, BLOCK_NNZ=32),
]
# Decode-sized M takes the 16-row tiles, which split N over many programs; 64-row multiples with 4
# or 8 warps let sm_90 use warpgroup MMA.
_BSR_GPU_CONFIGS = [
    triton.Config({"BLOCK_M": 16}, num_stages=4, num_warps=4),
    triton.Config({"BLOCK_M": 32}, num_stages=4, num_warps=4),
    triton.Config({"BLOCK_M": 64}, num_stages=3, num_warps=4),
    triton.Config({"BLOCK_M": 128}, num_stages=3, num_warps=8),
]

if INTERPRET:
    # The interpreter runs each program in numpy: single configs of large tiles keep it fast while
    # test shapes still span several tiles and chunks.
    _CSR_CONFIGS = [gemm_config(1, 4, BLOCK_N=32, BLOCK_NNZ=64)]
    _BSR_CONFIGS = [triton.Config({"BLOCK_M": 64}, num_stages=1, num_warps=4)]
else:
    _CSR_CONFIGS = _CSR_GPU_CONFIGS
    _BSR_CONFIGS = _BSR_GPU_CONFIGS

# float32 operands go through tl.dot's FMA lowering, which holds whole K slices of its operand
# rows and columns in each thread: beyond these it spills registers.
_FMA_DOT_MAX_K = 16
_FMA_DOT_MAX_TILE_MN = 32 * 64


def _fit_csr_tiles(configs, named_args, **kwargs):
    """Drop the CSR configs whose [BLOCK_M, BLOCK_N, BLOCK_NNZ] products would spill registers."""
    def products_per_thread(config):
        return kwargs["BLOCK_M"] * config.kwargs["BLOCK_N"] * config.kwargs["BLOCK_NNZ"] / (32 * config.num_warps)
    fitting = [c for c in configs if products_per_thread(c) <= _CSR_PRODUCTS_PER_THREAD]
    return fitting or [min(configs, key=products_per_thread)]


def _fit_fma_dot_tiles(configs, named_args, **kwargs):
    """For float32 x keep the BSR configs whose FMA lowering fits in registers."""
    if named_args["x_ptr"].dtype != torch.float32:
        return configs
    fitting = [c for c in configs if c.kwargs["BLOCK_M"] * kwargs["B"] <= _FMA_DOT_MAX_TILE_MN]
    return fitting or [min(configs, key=lambda c: c.kwargs["BLOCK_M"])]


_csr_mm_tuned = triton.autotune(
    configs=_CSR_CONFIGS, key=["M", "N"], prune_configs_by={"early_config_prune": _fit_csr_tiles},
)(_csr_mm_kernel)
# B is part of the key: the best tile differs between block sizes.
_bsr_mm_tuned = triton.autotune(
    configs=_BSR_CONFIGS, key=["M", "N", "B"], prune_configs_by={"early_config_prune": _fit_fma_dot_tiles},
)(_bsr_mm_kernel)


def _check_launch(x, crow, col, values, bias, N):
    assert x.dim() == 2 and x.is_contiguous() and x.dtype in (torch.float32, torch.float16, torch.bfloat16)
    assert crow.dtype == torch.int32 and col.dtype == torch.int32 and crow.is_contiguous() and col.is_contiguous()
    assert values.dtype == x.dtype and values.is_contiguous() and values.shape[0] == col.numel()
    assert bias is None or (bias.shape == (N,) and bias.is_contiguous())
    assert x.shape[0] > 0 and N > 0


def csr_mm(
    x: torch.Tensor, crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None,
) -> torch.Tensor:
    """Launch y = x @ w^T + bias for the CSR weight (crow, col, values) on validated contiguous inputs."""
    M = x.shape[0]
    N = crow.numel() - 1
    _check_launch(x, crow, col, values, bias, N)
    assert values.dim() == 1
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    # The bias pointer is never read without HAS_BIAS; x stands in as a valid address.
    _csr_mm_tuned[gemm_grid(M, N)](
        x, crow, col, values, x if bias is None else bias, y, M, N, x.stride(0), y.stride(0),
        HAS_BIAS=bias is not None, BLOCK_M=min(triton.next_power_of_2(M), _CSR_MAX_BLOCK_M),
    )
    return y


def bsr_mm(
    x: torch.Tensor, crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None,
) -> torch.Tensor:
    """Launch y = x @ w^T + bias for the BSR weight (crow, col, values [nnzb, B, B]) on validated
    contiguous inputs."""
    M, K = x.shape
    B = values.shape[1]
    N = (crow.numel() - 1) * B
    _check_launch(x, crow, col, values, bias, N)
    assert values.dim() == 3 and values.shape[2] == B and B in (16, 32, 64) and K % B == 0
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    dot_k = min(B, _FMA_DOT_MAX_K) if x.dtype == torch.float32 else B

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]), N // B)

    _bsr_mm_tuned[grid](
        x, crow, col, values, x if bias is None else bias, y, M, N, x.stride(0), y.stride(0),
        HAS_BIAS=bias is not None, B=B, DOT_K=dot_k,
    )
    return y


def _csr_aot(x_type, config, block_m, bias_type=None):
    meta = {**config.kwargs, "BLOCK_M": block_m}
    return {
        "name": "csr_mm_{BLOCK_M}x{BLOCK_N}x{BLOCK_NNZ}".format(**meta)
                + f"_s{config.num_stages}_w{config.num_warps}_{x_type[1:]}"
                + ("" if bias_type is None else f"_bias_{bias_type[1:]}"),
        "fn": _csr_mm_kernel,
        "signature": {
            "x_ptr": x_type, "crow_ptr": "*i32", "col_ptr": "*i32", "values_ptr": x_type,
            "bias_ptr": bias_type or x_type, "y_ptr": x_type, "M": "i32", "N": "i32",
            "stride_xm": "i32", "stride_ym": "i32", "HAS_BIAS": "constexpr",
            "BLOCK_M": "constexpr", "BLOCK_N": "constexpr", "BLOCK_NNZ": "constexpr", "GROUP_M": "constexpr",
        },
        "constexprs": {"HAS_BIAS": bias_type is not None, **meta},
        "attrs": aligned(_csr_mm_kernel, ["x_ptr", "crow_ptr", "col_ptr", "values_ptr", "bias_ptr", "y_ptr",
                                          "stride_xm", "stride_ym"]),
        "options": {"num_warps": config.num_warps, "num_stages": config.num_stages},
        "sass": {},
    }


def _bsr_aot(x_type, block, config, bias_type=None):
    dot_k = min(block, _FMA_DOT_MAX_K) if x_type == "*fp32" else block
    return {
        "name": f"bsr_mm_b{block}_k{dot_k}_m{config.kwargs['BLOCK_M']}"
                + f"_s{config.num_stages}_w{config.num_warps}_{x_type[1:]}"
                + ("" if bias_type is None else f"_bias_{bias_type[1:]}"),
        "fn": _bsr_mm_kernel,
        "signature": {
            "x_ptr": x_type, "crow_ptr": "*i32", "col_ptr": "*i32", "values_ptr": x_type,
            "bias_ptr": bias_type or x_type, "y_ptr": x_type, "M": "i32", "N": "i32",
            "stride_xm": "i32", "stride_ym": "i32",
            "HAS_BIAS": "constexpr", "B": "constexpr", "DOT_K": "constexpr", "BLOCK_M": "constexpr",
        },
        "constexprs": {"HAS_BIAS": bias_type is not None, "B": block, "DOT_K": dot_k, **config.kwargs},
        "attrs": aligned(_bsr_mm_kernel, ["x_ptr", "crow_ptr", "col_ptr", "values_ptr", "bias_ptr", "y_ptr",
                                          "N", "stride_xm", "stride_ym"]),
        "options": {"num_warps": config.num_warps, "num_stages": config.num_stages},
        "sass": {80: ("HMMA",), 90: ("HGMMA", "HMMA")} if x_type != "*fp32" else {},
    }


# Concrete specializations compiled ahead of time for sm_80/sm_90 by the test suite.  "sass" maps a
# compute capability to the instruction mnemonics of which at least one must appear in the SASS:
# tensor-core MMAs for the float16/bfloat16 BSR GEMM (with Triton 3.9: HMMA on sm_80; on sm_90
# HGMMA for BLOCK_M >= 64 and HMMA for the 16- and 32-row tiles); the CSR GEMM runs on the CUDA
# cores.
AOT_KERNELS = [
    _csr_aot("*fp32", _CSR_GPU_CONFIGS[3], 1, bias_type="*fp32"),
    _csr_aot("*fp16", _CSR_GPU_CONFIGS[1], 16),
    _csr_aot("*bf16", _CSR_GPU_CONFIGS[6], 4, bias_type="*fp32"),
    *(_bsr_aot("*fp16", 32, config) for config in _BSR_GPU_CONFIGS),
    _bsr_aot("*fp16", 16, _BSR_GPU_CONFIGS[2]),
    _bsr_aot("*fp16", 64, _BSR_GPU_CONFIGS[0]),
    _bsr_aot("*bf16", 16, _BSR_GPU_CONFIGS[2], bias_type="*bf16"),
    _bsr_aot("*bf16", 64, _BSR_GPU_CONFIGS[1], bias_type="*fp32"),
    *(_bsr_aot("*fp32", block, _BSR_GPU_CONFIGS[0], bias_type="*fp32") for block in (16, 64)),
]
