"""Triton kernel of the low-rank op family: y = (x v^T) u^T + bias in one kernel, t = x v^T on chip.

Layout (shared with pycompress.ops.lowrank): x [M, K], v [r, K], u [N, r], all of one float dtype;
bias [N] any float dtype; y [M, N] x.dtype.

Launch plan.  The grid is (row blocks, rank chunks, N splits).  A program computes its chunk of t,
t[rows, chunk] = x[rows, :] v[chunk, :]^T, with tl.dot over K into float32 registers, rounds it to
x's dtype (the contract), and then sweeps its share of the N tiles: y tile = t u[tile, chunk]^T.

- Rank chunks.  The chunk of t (BLOCK_M x BLOCK_R, float32, then its rounded copy) lives in
  registers, which bounds BLOCK_R (128 ranks for float16/bfloat16; 32 for float32, whose tl.dot is
  lowered to FMAs holding whole K slices per thread).  When r needs several chunks, the loop order
  keeps the t chunk resident and lets the y tiles go: every chunk adds its float32 partial products
  atomically into a float32 workspace [M, N] that holds the bias, cast to x's dtype afterwards.
  The other order (a y tile resident, rank chunks looped inside) would recompute all of t and
  re-read all of v for every N tile.  The atomics cost 4 M N bytes per chunk instead: small next to
  the 2 N BLOCK_R bytes of u each chunk streams while M is small; for large M more than u, but less
  than multiplying the first product's work by the number of N tiles.  For small M the chunks are
  made narrower than the registers allow (at least 4 M ranks, which keeps that ratio at or below
  1/2): rank chunks are the one way to spread the first product over programs without re-reading v
  (K cannot be split: t is rounded after its full sum).
- N splits.  When rows and chunks leave SMs idle (decode-sized M), the N tiles are dealt round-robin
  to several programs, each of which recomputes its t chunk: every split re-reads the v chunk (from
  L2) and redoes BLOCK_M BLOCK_R K multiply-adds.  Splits are added until there is a program per SM,
  but at most while the extra work stays within twice the second product's own
  ((splits - 1) K <= 2 N).
With one chunk the kernel adds the bias, rounds and stores y directly: no workspace, deterministic.

The launcher assumes the Python op layer has already validated the inputs (devices, dtypes,
contiguity, non-empty shapes); it only asserts cheap invariants, plans, allocates and launches.
"""

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, aligned, store_output_tile, to_bfloat16_rne, to_float32

# The interpreter computes bfloat16 dot products wrongly: under it dot operands are upcast to float32.
_DOT_IN_FP32 = tl.constexpr(INTERPRET)


@triton.jit
def _dot(a, b, acc):
    """acc + a @ b in float32: tensor cores for float16/bfloat16, IEEE FMAs for float32."""
    if _DOT_IN_FP32 or a.dtype == tl.float32:
        return tl.dot(to_float32(a), to_float32(b), acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def _lowrank_mm_kernel(
    x_ptr, v_ptr, u_ptr, bias_ptr, y_ptr,
    M, N, K, R,
    stride_xm, stride_vr, stride_un, stride_ym,
    HAS_BIAS: tl.constexpr, ACCUMULATE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """y[m, n] = cast(sum_j t[m, j] u[n, j] + bias[n]),  t[m, j] = round(sum_k x[m, k] v[j, k]),
    sums in float32, round() to x's dtype (nearest even), cast to x's dtype.

    Program (i, c, s) owns rows i BLOCK_M .. + BLOCK_M and ranks j in c BLOCK_R .. + BLOCK_R; it
    computes that block of t with tl.dot over K tiles (x tile [BLOCK_M, BLOCK_K] times the v tile
    read as [BLOCK_K, BLOCK_R]), rounds it once, and then handles N tiles s, s + S, s + 2S, ...
    (S = the grid's third extent): tl.dot(t, u tile read as [BLOCK_R, BLOCK_N]).  Ranks past r
    load zero on both sides.  ACCUMULATE: the float32 partial sums over the chunk's ranks are added
    atomically into y (a float32 workspace that already holds the bias); otherwise the bias (any
    float dtype, upcast) is added and the tile stored rounded to nearest even.  t never leaves
    registers.
    """
    pid_m = tl.program_id(0)
    pid_r = tl.program_id(1)
    pid_n = tl.program_id(2)
    n_splits = tl.num_programs(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok = offs_m < M
    r_ok = offs_r < R

    x_ptrs = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm + offs_k[None, :]
    vt_ptrs = v_ptr + offs_r.to(tl.int64)[None, :] * stride_vr + offs_k[:, None]
    t = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = offs_k < K - k0
        x = tl.load(x_ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        vt = tl.load(vt_ptrs, mask=k_ok[:, None] & r_ok[None, :], other=0.0)
        t = _dot(x, vt, t)
        x_ptrs += BLOCK_K
        vt_ptrs += BLOCK_K
    if x_ptr.dtype.element_ty == tl.bfloat16:
        t_rounded = to_bfloat16_rne(t)
    else:
        t_rounded = t.to(x_ptr.dtype.element_ty)

    offs_tile = tl.arange(0, BLOCK_N)
    for n0 in range(pid_n * BLOCK_N, N, n_splits * BLOCK_N):
        offs_n = n0 + offs_tile
        n_ok = offs_n < N
        ut = tl.load(u_ptr + offs_n.to(tl.int64)[None, :] * stride_un + offs_r[:, None],
                     mask=r_ok[:, None] & n_ok[None, :], other=0.0)
        y = _dot(t_rounded, ut, tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32))
        if ACCUMULATE:
            y_ptrs = y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :]
            tl.atomic_add(y_ptrs, y, mask=m_ok[:, None] & n_ok[None, :], sem="relaxed")
        else:
            store_output_tile(y_ptr, stride_ym, y, bias_ptr, offs_m, offs_n, m_ok, n_ok, HAS_BIAS)


# Largest rank chunk held in registers: float16/bfloat16 go through the tensor cores; float32 through
# tl.dot's FMA lowering, which holds whole K slices of its operands per thread and spills beyond 32.
_MAX_BLOCK_R = {torch.float16: 128, torch.bfloat16: 128, torch.float32: 32}
# Rows per program: decode-sized M takes 16-row tiles (tl.dot's smallest); at most 64 rows so that
# the t chunk and a y tile fit the registers together.
_MAX_BLOCK_M = {torch.float16: 64, torch.bfloat16: 64, torch.float32: 32}
# Extra work allowed to the N splits, relative to the second product's ((splits - 1) K <= 2 N).
_SPLIT_WORK_RATIO = 2
# Programs the N splits aim for under the interpreter (on a GPU: one per SM): few, so that tests run
# quickly, but more than one, so that small test shapes take the split paths.
_INTERPRETER_PROGRAMS = 4

_GPU_CONFIGS = [
    triton.Config({"BLOCK_N": 32, "BLOCK_K": 64}, num_stages=3, num_warps=4),
    triton.Config({"BLOCK_N": 64, "BLOCK_K": 64}, num_stages=3, num_warps=4),
    triton.Config({"BLOCK_N": 64, "BLOCK_K": 128}, num_stages=3, num_warps=4),
    triton.Config({"BLOCK_N": 128, "BLOCK_K": 64}, num_stages=3, num_warps=8),
    triton.Config({"BLOCK_N": 128, "BLOCK_K": 32}, num_stages=4, num_warps=8),
]
_FP32_GPU_CONFIGS = [
    triton.Config({"BLOCK_N": 32, "BLOCK_K": 32}, num_stages=3, num_warps=4),
    triton.Config({"BLOCK_N": 64, "BLOCK_K": 16}, num_stages=3, num_warps=4),
]

if INTERPRET:
    # The interpreter runs each program in numpy: one config of large tiles keeps it fast while test
    # shapes still span several tiles and K steps.
    _CONFIGS = _FP32_CONFIGS = [triton.Config({"BLOCK_N": 32, "BLOCK_K": 64}, num_stages=1, num_warps=4)]
else:
    _CONFIGS = _GPU_CONFIGS
    _FP32_CONFIGS = _FP32_GPU_CONFIGS

# With several rank chunks the kernel adds into y: the autotuner restores it between its trials.
_KEY = ["M", "N", "K", "R"]
_lowrank_mm_tuned = triton.autotune(configs=_CONFIGS, key=_KEY, restore_value=["y_ptr"])(_lowrank_mm_kernel)
_lowrank_mm_fp32_tuned = triton.autotune(configs=_FP32_CONFIGS, key=_KEY, restore_value=["y_ptr"])(
    _lowrank_mm_kernel)


def _target_programs(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return _INTERPRETER_PROGRAMS


def plan(M: int, N: int, K: int, r: int, dtype: torch.dtype, target_programs: int) -> dict:
    """Row block, rank chunk and the N-split rule (a function of BLOCK_N) of the launch."""
    block_m = min(max(16, triton.next_power_of_2(M)), _MAX_BLOCK_M[dtype])
    block_r = min(max(16, triton.next_power_of_2(min(r, 4 * M))), _MAX_BLOCK_R[dtype])
    blocks = triton.cdiv(M, block_m) * triton.cdiv(r, block_r)
    max_splits = 1 + _SPLIT_WORK_RATIO * N // K
    wanted = triton.cdiv(target_programs, blocks)

    def n_splits(block_n):
        return max(1, min(wanted, max_splits, triton.cdiv(N, block_n)))

    return {"BLOCK_M": block_m, "BLOCK_R": block_r, "n_splits": n_splits}


def launch(kernel, x, v, u, bias, BLOCK_M, BLOCK_R, n_splits, **meta):
    """Run ``kernel`` (the JIT kernel or an autotuned wrapper) with the given plan; ``meta`` adds
    the tile settings when the kernel is not autotuned."""
    M, K = x.shape
    r, N = v.shape[0], u.shape[0]
    r_chunks = triton.cdiv(r, BLOCK_R)
    accumulate = r_chunks > 1
    if accumulate:
        # float32 output is accumulated in place; other dtypes are cast from the workspace below.
        y = (torch.zeros((M, N), dtype=torch.float32, device=x.device) if bias is None
             else bias.float().expand(M, N).contiguous())
    else:
        y = torch.empty((M, N), dtype=x.dtype, device=x.device)

    def grid(kernel_meta):
        return (triton.cdiv(M, BLOCK_M), r_chunks, n_splits(kernel_meta["BLOCK_N"]))

    # The bias pointer is never read without HAS_BIAS (always so when accumulating: the workspace
    # holds it); u stands in as a valid address.
    kernel[grid](
        x, v, u, u if bias is None or accumulate else bias, y,
        M, N, K, r, x.stride(0), v.stride(0), u.stride(0), y.stride(0),
        HAS_BIAS=bias is not None and not accumulate, ACCUMULATE=accumulate,
        BLOCK_M=BLOCK_M, BLOCK_R=BLOCK_R, **meta,
    )
    return y.to(x.dtype)


def lowrank_mm(x: torch.Tensor, v: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Launch y = (x v^T) u^T + bias on validated contiguous inputs."""
    assert x.dim() == 2 and v.dim() == 2 and u.dim() == 2
    assert x.is_contiguous() and v.is_contiguous() and u.is_contiguous()
    assert x.dtype in _MAX_BLOCK_R and v.dtype == x.dtype and u.dtype == x.dtype
    M, K = x.shape
    r, N = v.shape[0], u.shape[0]
    assert M > 0 and N > 0 and K > 0 and r > 0 and v.shape[1] == K and u.shape[1] == r
    assert bias is None or (bias.shape == (N,) and bias.is_contiguous())
    kernel = _lowrank_mm_fp32_tuned if x.dtype == torch.float32 else _lowrank_mm_tuned
    return launch(kernel, x, v, u, bias, **plan(M, N, K, r, x.dtype, _target_programs(x.device)))


def _aot(x_type, config, block_m, block_r, accumulate=False, bias_type=None):
    meta = {**config.kwargs, "BLOCK_M": block_m, "BLOCK_R": block_r}
    return {
        "name": "lowrank_mm_{BLOCK_M}x{BLOCK_N}x{BLOCK_K}_r{BLOCK_R}".format(**meta)
                + f"_s{config.num_stages}_w{config.num_warps}_{x_type[1:]}"
                + ("_accumulate" if accumulate else "")
                + ("" if bias_type is None else f"_bias_{bias_type[1:]}"),
        "fn": _lowrank_mm_kernel,
        "signature": {
            "x_ptr": x_type, "v_ptr": x_type, "u_ptr": x_type, "bias_ptr": bias_type or x_type,
            "y_ptr": "*fp32" if accumulate else x_type,
            "M": "i32", "N": "i32", "K": "i32", "R": "i32",
            "stride_xm": "i32", "stride_vr": "i32", "stride_un": "i32", "stride_ym": "i32",
            "HAS_BIAS": "constexpr", "ACCUMULATE": "constexpr",
            "BLOCK_M": "constexpr", "BLOCK_N": "constexpr", "BLOCK_K": "constexpr", "BLOCK_R": "constexpr",
        },
        "constexprs": {"HAS_BIAS": bias_type is not None, "ACCUMULATE": accumulate, **meta},
        "attrs": aligned(_lowrank_mm_kernel, ["x_ptr", "v_ptr", "u_ptr", "bias_ptr", "y_ptr", "K",
                                              "stride_xm", "stride_vr", "stride_ym"]),
        "options": {"num_warps": config.num_warps, "num_stages": config.num_stages},
        "sass": {80: ("HMMA",), 90: ("HGMMA", "HMMA")} if x_type != "*fp32" else {},
    }


# Concrete specializations compiled ahead of time for sm_80/sm_90 by the test suite.  "sass" maps a
# compute capability to the instruction mnemonics of which at least one must appear in the SASS:
# tensor-core MMAs for both products in float16/bfloat16.  The plans span decode (16 rows, narrow
# accumulating rank chunks) to prefill (64 rows, one 128-rank chunk stored directly).
AOT_KERNELS = [
    *(_aot("*fp16", config, 64, 128, bias_type="*fp16") for config in _GPU_CONFIGS),
    *(_aot("*bf16", config, 16, 16, accumulate=True) for config in _GPU_CONFIGS),
    _aot("*bf16", _GPU_CONFIGS[1], 32, 64, bias_type="*fp32"),
    _aot("*fp16", _GPU_CONFIGS[3], 16, 128, accumulate=True),
    *(_aot("*fp32", config, 32, 32, bias_type="*fp32") for config in _FP32_GPU_CONFIGS),
    _aot("*fp32", _FP32_GPU_CONFIGS[0], 16, 16, accumulate=True),
]
