"""Triton kernel of the codebook op family: y = x w^T + bias with w decoded through a codebook in
registers.

Layout (shared with pycompress.ops.codebook): codebook [G, C] x.dtype (C = 16 for 4-bit indices,
256 for 8-bit; G = 1 or N), idx uint8 [N, ceil(K / 2)] (4-bit: element k in the low nibble of byte
k // 2 when k is even, the high nibble when odd) or [N, K] (8-bit), w[n, k] = codebook[g(n),
index(n, k)] with g(n) = n when G = N, else 0.

Launch plan.  Programs own [BLOCK_M, BLOCK_N] output tiles (grouped order for L2 reuse) and, when
those leave SMs idle (decode-sized M, small N), a share of K: the K splits add their float32 partial
sums atomically into a float32 workspace [M, N] that holds the bias, cast to x's dtype afterwards.
A split costs 4 M N bytes of atomics; splits stop at one program per SM and while those bytes stay
within the packed weight's (K bits / 8 per output channel).  Up to _REDUCE_MAX_M rows the products
are broadcast and summed (tl.dot's smallest tile has 16 rows); beyond, the decoded tile feeds tl.dot.

The launcher assumes the Python op layer has already validated the inputs (devices, dtypes,
contiguity, non-empty shapes, codebook and idx shapes); it only asserts cheap invariants, plans,
allocates and launches.
"""

import torch
import triton
import triton.language as tl

from ._common import (
    FP32_DOT_GPU_CONFIGS,
    INTERPRET,
    aligned,
    gemm_config,
    grouped_output_tile,
    store_output_tile,
    to_float32,
)

# The interpreter computes bfloat16 dot products wrongly: under it dot operands are upcast to float32.
_DOT_IN_FP32 = tl.constexpr(INTERPRET)


@triton.jit
def _codebook_mm_kernel(
    x_ptr, idx_ptr, codebook_ptr, bias_ptr, y_ptr,
    M, N, K,
    stride_xm, stride_in, stride_cg, stride_ym,
    INDEX_BITS: tl.constexpr, HAS_BIAS: tl.constexpr, ACCUMULATE: tl.constexpr, USE_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """y[m, n] = cast(sum_k x[m, k] codebook[g(n), index(n, k)] + bias[n]), products summed in float32.

    Program (t, s) owns output tile t (grouped_output_tile over the first grid axis) and the s-th of
    S (the second axis's extent) equal runs of BLOCK_K tiles along K; stride_cg is the
    codebook's row stride for G = N and 0 for G = 1, so that g(n) needs no branch.  Per K tile the
    [BLOCK_N, BLOCK_K] weight tile is decoded in registers: 4-bit element k reads byte k // 2 (each
    byte twice, from L1, which needs no interleaving of nibble tiles) and shifts it right by
    4 (k % 2); the table entries are gathered by tl.load at int32 offsets from the codebook base
    (half the registers of a pointer tile).  The idx bytes and the gather are masked to k < K: the
    padding nibble of an odd K is never read.  Then
      USE_DOT: acc^T += w x^T with tl.dot (w [BLOCK_N, BLOCK_K] as the left operand: sm_90's
        warpgroup MMA reads it from registers and its 64-row granularity falls on N; float16 /
        bfloat16 on the tensor cores, float32 in IEEE FMAs);
      otherwise: acc[m, n] += sum_k x[m, k] w[n, k], broadcast to [BLOCK_M, BLOCK_N, BLOCK_K] in float32.
    ACCUMULATE: acc is added atomically into y (a float32 workspace that already holds the bias);
    otherwise bias (any float dtype, upcast) is added and y stored rounded to nearest even.
    """
    offs_m, offs_n, m_ok, n_ok = grouped_output_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    k_per_split = tl.cdiv(tl.cdiv(K, BLOCK_K), tl.num_programs(1)) * BLOCK_K
    k_first = tl.program_id(1) * k_per_split
    k_end = tl.minimum(K, k_first + k_per_split)
    idx_rows = idx_ptr + offs_n.to(tl.int64)[:, None] * stride_in
    table_start = (offs_n * stride_cg)[:, None]
    offs_k = tl.arange(0, BLOCK_K)

    if USE_DOT:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        xt_ptrs = x_ptr + offs_m.to(tl.int64)[None, :] * stride_xm + (k_first + offs_k)[:, None]
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        x_ptrs = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm + (k_first + offs_k)[None, :]

    for k0 in range(k_first, k_end, BLOCK_K):
        cols = k0 + offs_k
        k_ok = cols < K
        w_ok = n_ok[:, None] & k_ok[None, :]
        if INDEX_BITS == 4:
            packed = tl.load(idx_rows + (cols // 2)[None, :], mask=w_ok, other=0).to(tl.int32)
            codes = (packed >> ((cols % 2) * 4)[None, :]) & 0xF
        else:
            codes = tl.load(idx_rows + cols[None, :], mask=w_ok, other=0).to(tl.int32)
        w = tl.load(codebook_ptr + (table_start + codes), mask=w_ok, other=0.0)
        # float32 operands skip to_float32 (the exact bfloat16 upcast): under the interpreter every
        # call of a jit helper costs milliseconds.
        if USE_DOT:
            xt = tl.load(xt_ptrs, mask=k_ok[:, None] & m_ok[None, :], other=0.0)
            if xt.dtype == tl.float32:
                acc = tl.dot(w, xt, acc, input_precision="ieee")
            elif _DOT_IN_FP32:
                acc = tl.dot(to_float32(w), to_float32(xt), acc, input_precision="ieee")
            else:
                acc = tl.dot(w, xt, acc)
            xt_ptrs += BLOCK_K
        else:
            x = tl.load(x_ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            if x.dtype != tl.float32:
                x = to_float32(x)
                w = to_float32(w)
            acc += tl.sum(x[:, None, :] * w[None, :, :], axis=2)
            x_ptrs += BLOCK_K

    if USE_DOT:
        out = tl.trans(acc)
    else:
        out = acc
    if ACCUMULATE:
        y_ptrs = y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :]
        tl.atomic_add(y_ptrs, out, mask=m_ok[:, None] & n_ok[None, :], sem="relaxed")
    else:
        store_output_tile(y_ptr, stride_ym, out, bias_ptr, offs_m, offs_n, m_ok, n_ok, HAS_BIAS)


# Rows up to which the products are broadcast and summed instead of calling tl.dot, whose smallest
# tile has 16 rows.
_REDUCE_MAX_M = 4
# Programs the K splits aim for under the interpreter (on a GPU: one per SM): few, so that tests run
# quickly, but more than one, so that small test shapes take the split path.
_INTERPRETER_PROGRAMS = 4

# BLOCK_M is the N extent of the MMA: 16 serves decode-sized M, small BLOCK_N tiles split N over
# enough programs; BLOCK_N a multiple of 64 with 4 or 8 warps lets sm_90 use warpgroup MMA.
# The gathered weight tile is built in registers (its loads are not pipelined through shared
# memory), which bounds BLOCK_N x BLOCK_K: larger tiles spill.
_DOT_GPU_CONFIGS = [
    gemm_config(4, 4, BLOCK_M=16, BLOCK_N=32, BLOCK_K=64),
    gemm_config(4, 4, BLOCK_M=16, BLOCK_N=64, BLOCK_K=64),
    gemm_config(4, 4, BLOCK_M=32, BLOCK_N=64, BLOCK_K=64),
    gemm_config(4, 4, BLOCK_M=64, BLOCK_N=64, BLOCK_K=64),
    gemm_config(3, 8, BLOCK_M=64, BLOCK_N=128, BLOCK_K=64),
    gemm_config(3, 8, BLOCK_M=128, BLOCK_N=128, BLOCK_K=32),
]
# BLOCK_M comes from the launcher: the next power of two of M, at most _REDUCE_MAX_M.
_REDUCE_GPU_CONFIGS = [
    gemm_config(4, 4, BLOCK_N=16, BLOCK_K=128),
    gemm_config(4, 4, BLOCK_N=32, BLOCK_K=64),
    gemm_config(4, 4, BLOCK_N=32, BLOCK_K=128),
    gemm_config(4, 4, BLOCK_N=64, BLOCK_K=64),
    gemm_config(3, 8, BLOCK_N=64, BLOCK_K=128),
]

if INTERPRET:
    # The interpreter runs each program in numpy: single configs of large tiles keep it fast while
    # test shapes still span several tiles and K steps.
    _DOT_CONFIGS = _DOT_FP32_CONFIGS = [gemm_config(1, 4, BLOCK_M=32, BLOCK_N=32, BLOCK_K=128)]
    _REDUCE_CONFIGS = [gemm_config(1, 4, BLOCK_N=32, BLOCK_K=128)]
else:
    _DOT_CONFIGS = _DOT_GPU_CONFIGS
    _DOT_FP32_CONFIGS = FP32_DOT_GPU_CONFIGS
    _REDUCE_CONFIGS = _REDUCE_GPU_CONFIGS

# The smallest tiles of the configs, against which the K splits are planned.
_PLAN_BLOCK_M = min(c.kwargs["BLOCK_M"] for c in _DOT_CONFIGS + _DOT_FP32_CONFIGS)
_PLAN_BLOCK_N = min(c.kwargs["BLOCK_N"] for c in _DOT_CONFIGS + _DOT_FP32_CONFIGS + _REDUCE_CONFIGS)
_PLAN_BLOCK_K = min(c.kwargs["BLOCK_K"] for c in _DOT_CONFIGS + _DOT_FP32_CONFIGS + _REDUCE_CONFIGS)

# Products held in registers per thread by the reduce path before it spills.
_REDUCE_PRODUCTS_PER_THREAD = 64


def _fit_reduce_tiles(configs, named_args, **kwargs):
    """Drop the reduce configs whose [BLOCK_M, BLOCK_N, BLOCK_K] products would spill registers."""
    def products_per_thread(config):
        return kwargs["BLOCK_M"] * config.kwargs["BLOCK_N"] * config.kwargs["BLOCK_K"] / (32 * config.num_warps)
    fitting = [c for c in configs if products_per_thread(c) <= _REDUCE_PRODUCTS_PER_THREAD]
    return fitting or [min(configs, key=products_per_thread)]


# With several K splits the kernel adds into y: the autotuner restores it between its trials.
_KEY = ["M", "N", "K", "INDEX_BITS"]
_codebook_mm_dot = triton.autotune(configs=_DOT_CONFIGS, key=_KEY, restore_value=["y_ptr"])(_codebook_mm_kernel)
_codebook_mm_dot_fp32 = triton.autotune(configs=_DOT_FP32_CONFIGS, key=_KEY, restore_value=["y_ptr"])(
    _codebook_mm_kernel)
_codebook_mm_reduce = triton.autotune(
    configs=_REDUCE_CONFIGS, key=_KEY, restore_value=["y_ptr"],
    prune_configs_by={"early_config_prune": _fit_reduce_tiles},
)(_codebook_mm_kernel)


def _index_bits(codebook: torch.Tensor) -> int:
    return 4 if codebook.shape[1] == 16 else 8


def _target_programs(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return _INTERPRETER_PROGRAMS


def plan(M: int, N: int, K: int, bits: int, target_programs: int) -> dict:
    """The path (dot or reduce), the reduce path's BLOCK_M and the number of K splits.

    The splits are planned against the smallest tiles of the configs, before the autotuner picks
    one (a config with larger K tiles may leave a split without work, which then adds zeros): up to
    a program per SM, while the 4 M N bytes of atomics per split stay within the packed weight's
    N K bits / 8 bytes.
    """
    use_dot = M > _REDUCE_MAX_M
    block_m = _PLAN_BLOCK_M if use_dot else triton.next_power_of_2(M)
    tiles = triton.cdiv(M, block_m) * triton.cdiv(N, _PLAN_BLOCK_N)
    wanted = triton.cdiv(target_programs, tiles)
    splits = max(1, min(wanted, triton.cdiv(K, _PLAN_BLOCK_K), K * bits // (32 * M)))
    return {"use_dot": use_dot, "block_m": None if use_dot else block_m, "splits": splits}


def launch(kernel, x, idx, codebook, bias, use_dot, block_m, splits, **meta):
    """Run ``kernel`` (the JIT kernel or an autotuned wrapper) with the given plan; ``meta`` adds
    the tile settings when the kernel is not autotuned."""
    M, K = x.shape
    N = idx.shape[0]
    accumulate = splits > 1
    if accumulate:
        # float32 output is accumulated in place; other dtypes are cast from the workspace below.
        y = (torch.zeros((M, N), dtype=torch.float32, device=x.device) if bias is None
             else bias.float().expand(M, N).contiguous())
    else:
        y = torch.empty((M, N), dtype=x.dtype, device=x.device)

    def grid(kernel_meta):
        return (triton.cdiv(M, kernel_meta["BLOCK_M"]) * triton.cdiv(N, kernel_meta["BLOCK_N"]), splits)

    # Row g(n) of the codebook is n for G = N and 0 for G = 1: a zero row stride selects the latter.
    stride_cg = codebook.stride(0) if codebook.shape[0] == N else 0
    if block_m is not None:
        meta["BLOCK_M"] = block_m
    # The bias pointer is never read without HAS_BIAS (always so when accumulating: the workspace
    # holds it); the codebook stands in as a valid address.
    kernel[grid](
        x, idx, codebook, codebook if bias is None or accumulate else bias, y,
        M, N, K, x.stride(0), idx.stride(0), stride_cg, y.stride(0),
        INDEX_BITS=_index_bits(codebook), HAS_BIAS=bias is not None and not accumulate,
        ACCUMULATE=accumulate, USE_DOT=use_dot, **meta,
    )
    return y.to(x.dtype)


def codebook_mm(x: torch.Tensor, idx: torch.Tensor, codebook: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Launch y = x w^T + bias, w decoded from idx through codebook, on validated contiguous inputs."""
    assert x.dim() == 2 and idx.dim() == 2 and codebook.dim() == 2
    assert x.is_contiguous() and idx.is_contiguous() and codebook.is_contiguous()
    assert x.dtype in (torch.float32, torch.float16, torch.bfloat16) and codebook.dtype == x.dtype
    M, K = x.shape
    N = idx.shape[0]
    assert M > 0 and N > 0 and K > 0
    assert codebook.shape[1] in (16, 256) and codebook.shape[0] in (1, N)
    bits = _index_bits(codebook)
    assert idx.dtype == torch.uint8 and idx.shape[1] == (triton.cdiv(K, 2) if bits == 4 else K)
    assert bias is None or (bias.shape == (N,) and bias.is_contiguous())
    launch_plan = plan(M, N, K, bits, _target_programs(x.device))
    if not launch_plan["use_dot"]:
        kernel = _codebook_mm_reduce
    elif x.dtype == torch.float32:
        kernel = _codebook_mm_dot_fp32
    else:
        kernel = _codebook_mm_dot
    return launch(kernel, x, idx, codebook, bias, **launch_plan)


def _aot(x_type, bits, config, use_dot, block_m=None, accumulate=False, bias_type=None):
    meta = {**config.kwargs, **({} if block_m is None else {"BLOCK_M": block_m})}
    tensor_cores = use_dot and x_type != "*fp32"
    return {
        "name": f"codebook{bits}_mm_{'dot' if use_dot else 'reduce'}"
                + "_{BLOCK_M}x{BLOCK_N}x{BLOCK_K}".format(**meta)
                + f"_s{config.num_stages}_w{config.num_warps}_{x_type[1:]}"
                + ("_accumulate" if accumulate else "")
                + ("" if bias_type is None else f"_bias_{bias_type[1:]}"),
        "fn": _codebook_mm_kernel,
        "signature": {
            "x_ptr": x_type, "idx_ptr": "*u8", "codebook_ptr": x_type, "bias_ptr": bias_type or x_type,
            "y_ptr": "*fp32" if accumulate else x_type, "M": "i32", "N": "i32", "K": "i32",
            "stride_xm": "i32", "stride_in": "i32", "stride_cg": "i32", "stride_ym": "i32",
            "INDEX_BITS": "constexpr", "HAS_BIAS": "constexpr", "ACCUMULATE": "constexpr", "USE_DOT": "constexpr",
            "BLOCK_M": "constexpr", "BLOCK_N": "constexpr", "BLOCK_K": "constexpr", "GROUP_M": "constexpr",
        },
        "constexprs": {"INDEX_BITS": bits, "HAS_BIAS": bias_type is not None, "ACCUMULATE": accumulate,
                       "USE_DOT": use_dot, **meta},
        "attrs": aligned(_codebook_mm_kernel, ["x_ptr", "idx_ptr", "codebook_ptr", "bias_ptr", "y_ptr",
                                               "stride_xm", "stride_ym"]),
        "options": {"num_warps": config.num_warps, "num_stages": config.num_stages},
        "sass": {80: ("HMMA",), 90: ("HGMMA", "HMMA")} if tensor_cores else {},
    }


# Concrete specializations compiled ahead of time for sm_80/sm_90 by the test suite.  "sass" maps a
# compute capability to the instruction mnemonics of which at least one must appear in the SASS:
# tensor-core MMAs for the float16/bfloat16 dot path.
AOT_KERNELS = [
    *(_aot("*fp16", 4, config, True) for config in _DOT_GPU_CONFIGS),
    _aot("*bf16", 8, _DOT_GPU_CONFIGS[1], True, bias_type="*bf16"),
    _aot("*bf16", 4, _DOT_GPU_CONFIGS[4], True, accumulate=True),
    *(_aot("*fp32", bits, FP32_DOT_GPU_CONFIGS[1], True, bias_type="*fp32") for bits in (4, 8)),
    *(_aot("*fp16", 4, config, False, block_m=1, bias_type="*fp16") for config in _REDUCE_GPU_CONFIGS),
    *(_aot("*fp16", 8, config, False, block_m=1, bias_type="*fp16") for config in _REDUCE_GPU_CONFIGS[::2]),
    _aot("*bf16", 4, _REDUCE_GPU_CONFIGS[0], False, block_m=4, accumulate=True),
    _aot("*bf16", 8, _REDUCE_GPU_CONFIGS[1], False, block_m=2, accumulate=True, bias_type="*fp32"),
    _aot("*fp32", 4, _REDUCE_GPU_CONFIGS[3], False, block_m=1, accumulate=True),
]
