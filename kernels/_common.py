"""Pieces shared by the Triton kernel modules: exact float conversions, the grouped GEMM program
order and dequantizing epilogue, and their launch and ahead-of-time compilation helpers.

The leading underscore keeps this module out of the AOT test's kernel families: it has no
kernel of its own.
"""

import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# Elements per tile of the elementwise kernels: register-resident on a GPU, large under the
# interpreter so that few programs run.
ELEMENTWISE_TILE = 1 << 16 if INTERPRET else 1 << 12


@triton.jit
def to_float32(x):
    """Exact upcast to float32.

    bfloat16 is widened by a 16-bit shift, which is what the hardware does; the Triton interpreter's
    own conversion mishandles bfloat16 subnormals.
    """
    if x.dtype == tl.bfloat16:
        return (x.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    else:
        return x.to(tl.float32)


@triton.jit
def to_bfloat16_rne(x):
    """float32 -> bfloat16 rounded to nearest even (NaN -> quiet NaN), in integer arithmetic.

    Matches the hardware conversion and torch's; the Triton interpreter truncates instead.
    """
    bits = x.to(tl.uint32, bitcast=True)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    rounded = tl.where(x == x, rounded, 0x7FC0)
    return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def store_rounded(ptrs, value, mask):
    """Store float32 values rounded to nearest even into the element type of ptrs."""
    if ptrs.dtype.element_ty == tl.bfloat16:
        tl.store(ptrs, to_bfloat16_rne(value), mask=mask)
    else:
        tl.store(ptrs, value.to(ptrs.dtype.element_ty), mask=mask)


@triton.jit
def grouped_output_tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Row and column offsets of this program's [BLOCK_M, BLOCK_N] tile of a 1-D GEMM grid, with
    their in-bounds masks.

    Programs walk GROUP_M row-blocks per column-block so that neighbouring programs share operand
    tiles in L2.
    """
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    programs_per_group = GROUP_M * num_pid_n
    group_first_m = (pid // programs_per_group) * GROUP_M
    group_rows = min(num_pid_m - group_first_m, GROUP_M)
    pid_in_group = pid % programs_per_group
    pid_m = group_first_m + pid_in_group % group_rows
    pid_n = pid_in_group // group_rows
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    return offs_m, offs_n, offs_m < M, offs_n < N


@triton.jit
def store_output_tile(c_ptr, stride_cm, c, bias_ptr, offs_m, offs_n, m_ok, n_ok, HAS_BIAS: tl.constexpr):
    """c[m, n] (+ bias[n], any float dtype, upcast first) stored rounded to nearest even."""
    if HAS_BIAS:
        c = c + to_float32(tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0))[None, :]
    c_ptrs = c_ptr + offs_m.to(tl.int64)[:, None] * stride_cm + offs_n[None, :]
    store_rounded(c_ptrs, c, m_ok[:, None] & n_ok[None, :])


@triton.jit
def store_dequantized(c_ptr, stride_cm, acc, a_scale_ptr, b_scale_ptr, bias_ptr,
                      offs_m, offs_n, m_ok, n_ok, HAS_BIAS: tl.constexpr):
    """c[m, n] = cast((float(acc[m, n]) * a_scale[m]) * b_scale[n] + bias[n]) in float32.

    Bit-identical to the reference only when compiled with enable_fp_fusion=False: an FMA would
    fuse the bias add into the scaling.
    """
    a_scale = tl.load(a_scale_ptr + offs_m, mask=m_ok, other=0.0)
    b_scale = tl.load(b_scale_ptr + offs_n, mask=n_ok, other=0.0)
    c = (acc.to(tl.float32) * a_scale[:, None]) * b_scale[None, :]
    store_output_tile(c_ptr, stride_cm, c, bias_ptr, offs_m, offs_n, m_ok, n_ok, HAS_BIAS)


def gemm_config(num_stages, num_warps, **blocks):
    return triton.Config({**blocks, "GROUP_M": 8}, num_stages=num_stages, num_warps=num_warps)


# tl.dot on float32 operands goes through the FMA lowering, which holds whole K slices of its operand
# rows and columns in each thread: larger tiles than these spill registers.
FP32_DOT_GPU_CONFIGS = [
    gemm_config(4, 4, BLOCK_M=16, BLOCK_N=32, BLOCK_K=32),
    gemm_config(4, 4, BLOCK_M=16, BLOCK_N=64, BLOCK_K=32),
    gemm_config(4, 4, BLOCK_M=32, BLOCK_N=32, BLOCK_K=32),
]


def gemm_grid(M, N):
    """The 1-D grid of grouped_output_tile for the tiles of a config."""
    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)
    return grid


def launch_dequantized_gemm(kernel, a, b, sizes, a_scale, b_scale, bias, out_dtype):
    """Check the epilogue operands, allocate c [M, N] and launch an autotuned kernel taking
    (a, b, a_scale, b_scale, bias, c, M, N, *sizes, stride_am, stride_bn, stride_cm, HAS_BIAS),
    without FP fusion as store_dequantized requires.
    """
    M, N = a.shape[0], b.shape[0]
    assert a_scale.dtype == torch.float32 and a_scale.shape == (M,) and a_scale.is_contiguous()
    assert b_scale.dtype == torch.float32 and b_scale.shape == (N,) and b_scale.is_contiguous()
    assert bias is None or (bias.shape == (N,) and bias.is_contiguous())
    assert out_dtype in (torch.float32, torch.float16, torch.bfloat16)
    out = torch.empty((M, N), dtype=out_dtype, device=a.device)
    # The bias pointer is never read without HAS_BIAS; b_scale stands in as a valid address.
    kernel[gemm_grid(M, N)](
        a, b, a_scale, b_scale, b_scale if bias is None else bias, out,
        M, N, *sizes, a.stride(0), b.stride(0), out.stride(0),
        HAS_BIAS=bias is not None,
        enable_fp_fusion=False,
    )
    return out


def aligned(fn, names):
    """Compile attributes promising 16-divisibility, as the JIT infers for aligned arguments."""
    return {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in names}


def dequantized_gemm_aot(fn, tile_name, config, operand_type, out_type, bias_type, aligned_sizes, sass):
    """AOT spec of a kernel with launch_dequantized_gemm's argument layout; without bias_type it
    is compiled without HAS_BIAS.  ptx_absent keeps FMA out of the bit-exact epilogue.
    """
    names = fn.arg_names
    scalars = names[names.index("c_ptr") + 1:names.index("HAS_BIAS")]
    return {
        "name": tile_name + f"_s{config.num_stages}_w{config.num_warps}_{out_type[1:]}"
                + ("" if bias_type is None else f"_bias_{bias_type[1:]}"),
        "fn": fn,
        "signature": {
            "a_ptr": operand_type, "b_ptr": operand_type, "a_scale_ptr": "*fp32", "b_scale_ptr": "*fp32",
            "bias_ptr": bias_type or "*fp32", "c_ptr": out_type,
            **{name: "i32" for name in scalars},
            **{name: "constexpr" for name in names[names.index("HAS_BIAS"):]},
        },
        "constexprs": {"HAS_BIAS": bias_type is not None, **config.kwargs},
        "attrs": aligned(fn, ["a_ptr", "b_ptr", "a_scale_ptr", "b_scale_ptr", "bias_ptr", "c_ptr",
                              *aligned_sizes, "stride_am", "stride_bn", "stride_cm"]),
        "options": {"num_warps": config.num_warps, "num_stages": config.num_stages,
                    "enable_fp_fusion": False},
        "sass": sass,
        "ptx_absent": ("fma.",),
    }
