"""Triton low-rank kernel: its launch paths and tiles against the plain-PyTorch contract.

The op tests run the autotuned launcher; these run the kernel itself with chosen tiles and plans:
one rank chunk stored directly, several chunks added atomically into the workspace, N split over
programs, row / rank / K tails of every tile.  On a CPU machine they run through the Triton
interpreter (TRITON_INTERPRET=1, set by the suite's conftest); with a GPU and no interpreter, on the GPU.
"""

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")
import triton  # noqa: E402

from pycompress.kernels import lowrank as triton_lowrank  # noqa: E402
from pycompress.ops.lowrank import lowrank_mm_reference  # noqa: E402
from _triton_case import DEVICE, FLOAT_DTYPES, pytestmark  # noqa: E402, F401
from _triton_case import gen as _gen  # noqa: E402


def _factors(M, N, K, r, dtype, with_bias):
    gen = _gen(M, N, K, r)
    x = torch.randn(M, K, generator=gen)
    v = torch.randn(r, K, generator=gen) / K**0.5
    u = torch.randn(N, r, generator=gen) / r**0.5
    bias = torch.randn(N, generator=gen) if with_bias else None
    return tuple(None if t is None else t.to(dtype).to(DEVICE) for t in (x, v, u, bias))


def _splits(n):
    return lambda block_n: n


def _run(x, v, u, bias, block_m, block_r, n_splits, block_n, block_k):
    return triton_lowrank.launch(
        triton_lowrank._lowrank_mm_kernel, x, v, u, bias, BLOCK_M=block_m, BLOCK_R=block_r,
        n_splits=_splits(n_splits), BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4,
    )


def _assert_matches_contract(out, x, v, u, bias):
    """float32: the reference within rounding; float16 / bfloat16: error against float64 at most
    twice that of two torch matmuls in the same dtype (plus a floor for near-exact results)."""
    M, N = x.shape[0], u.shape[0]
    assert out.dtype == x.dtype and out.shape == (M, N)
    out, x, v, u = (t.cpu() for t in (out, x, v, u))
    bias = None if bias is None else bias.cpu()
    if x.dtype == torch.float32:
        torch.testing.assert_close(out, lowrank_mm_reference(x, v, u, bias), rtol=1e-5, atol=1e-5)
        return
    exact = (x.double() @ v.double().T) @ u.double().T + (0 if bias is None else bias.double())
    ours = (out.double() - exact).abs().max().item()
    theirs = (F.linear(F.linear(x, v), u, bias).double() - exact).abs().max().item()
    assert ours <= 2 * theirs + 1e-3 * max(exact.abs().max().item(), 1.0), (ours, theirs)


# (M, N, K, r, BLOCK_M, BLOCK_R, n_splits, BLOCK_N, BLOCK_K): one chunk stored directly, with and
# without N splits; several chunks accumulated, with a one-rank last chunk; splits that do not
# divide the N tiles; tails of M, N, K and r in each tile; K shorter than one K tile.
PATHS = [
    (1, 1, 1, 1, 16, 16, 1, 16, 16),
    (3, 40, 50, 12, 16, 16, 1, 16, 32),
    (17, 100, 70, 30, 16, 32, 3, 16, 32),
    (33, 24, 40, 17, 32, 16, 1, 32, 16),
    (5, 70, 33, 40, 16, 16, 2, 16, 16),
    (70, 20, 20, 64, 64, 32, 1, 32, 64),
    (2, 50, 96, 33, 16, 16, 7, 16, 32),
]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("M, N, K, r, block_m, block_r, n_splits, block_n, block_k", PATHS)
def test_launch_paths(M, N, K, r, block_m, block_r, n_splits, block_n, block_k, dtype):
    x, v, u, bias = _factors(M, N, K, r, dtype, with_bias=M % 2 == 1)

    out = _run(x, v, u, bias, block_m, block_r, n_splits, block_n, block_k)

    _assert_matches_contract(out, x, v, u, bias)


@pytest.mark.parametrize("bias_dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("block_r", [32, 16])
def test_bias_of_any_dtype_on_both_stores(block_r, bias_dtype):
    # r = 24 fits one 32-rank chunk (bias added in the kernel) or takes two 16-rank chunks (bias in
    # the workspace).
    x, v, u, _ = _factors(6, 20, 48, 24, torch.float16, with_bias=False)
    bias = (torch.randn(20, generator=_gen(20)) * 10).to(bias_dtype).to(DEVICE)

    out = _run(x, v, u, bias, 16, block_r, 2, 16, 32)

    _assert_matches_contract(out, x, v, u, bias.to(torch.float16))
    expected = lowrank_mm_reference(*(t.cpu() for t in (x, v, u, bias)))
    torch.testing.assert_close(out.cpu(), expected, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("dtype, tiny", [(torch.float32, 2.0**-9), (torch.float16, 2.0**-12),
                                         (torch.bfloat16, 2.0**-9)])
@pytest.mark.parametrize("block_r", [64, 16])
def test_intermediate_is_rounded_to_the_input_dtype(block_r, dtype, tiny):
    # t[0, 0] = 1 + tiny rounds to 1 in float16 / bfloat16 (tiny is a quarter of their unit in the
    # last place at 1) and t[0, 35] = 1, so y = t[0, 0] - t[0, 35] is 0 there and tiny in float32.
    # Ranks 0 and 35 share a chunk of 64 and lie in different chunks of 16.
    M, N, K, r = 1, 3, 2, 40
    x = torch.tensor([[1.0, tiny]])
    v = torch.zeros(r, K)
    v[0] = torch.tensor([1.0, 1.0])
    v[35, 0] = 1.0
    u = torch.zeros(N, r)
    u[:, 0] = 1.0
    u[:, 35] = -1.0
    args = [t.to(dtype).to(DEVICE) for t in (x, v, u)]

    out = _run(*args, None, 16, block_r, 1, 16, 16).cpu()

    expected = tiny if dtype == torch.float32 else 0.0
    assert torch.equal(out, torch.full((M, N), expected, dtype=dtype))
    assert torch.equal(out, lowrank_mm_reference(*(t.cpu() for t in args), None))


def test_accumulating_chunks_leave_the_bias_untouched():
    x, v, u, bias = _factors(3, 10, 16, 40, torch.float32, with_bias=True)
    before = bias.clone()

    out = _run(x, v, u, bias, 16, 16, 1, 16, 16)

    assert torch.equal(bias, before)
    _assert_matches_contract(out, x, v, u, bias)


def test_autotuned_launcher_matches_the_kernel_with_its_plan():
    # The public entry point plans, picks the autotuned kernel and launches; rows 5 of r = 40 take
    # two accumulated 32-rank chunks in float32.
    x, v, u, bias = _factors(5, 30, 64, 40, torch.float32, with_bias=True)

    out = triton_lowrank.lowrank_mm(x, v, u, bias)

    _assert_matches_contract(out, x, v, u, bias)


# --- launch plan ---------------------------------------------------------------------------------

H100_SMS = 132


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("M, N, K, r", [(1, 4096, 4096, 64), (1, 4096, 4096, 1024), (16, 1536, 384, 96),
                                        (64, 4096, 4096, 512), (2048, 1536, 384, 96), (2048, 4096, 4096, 512),
                                        (7, 3, 5, 2)])
def test_plan_fills_the_gpu_within_its_bounds(M, N, K, r, dtype):
    plan = triton_lowrank.plan(M, N, K, r, dtype, H100_SMS)
    block_m, block_r = plan["BLOCK_M"], plan["BLOCK_R"]
    max_block_r = 32 if dtype == torch.float32 else 128
    chunks = triton.cdiv(r, block_r)

    # Row blocks: the smallest power of two covering M, from tl.dot's 16 up to the register cap.
    assert block_m == triton.next_power_of_2(block_m) and 16 <= block_m <= 64
    assert block_m == 16 or block_m // 2 < M
    assert block_m >= M or block_m == (32 if dtype == torch.float32 else 64)
    # Rank chunks: all of r when it fits; otherwise wide enough that the 4 M N bytes of atomics
    # per chunk stay within half the 2 N BLOCK_R bytes of u it streams (or the register cap).
    assert 16 <= block_r <= max_block_r
    assert chunks == 1 or block_r >= min(4 * M, max_block_r)
    for block_n in (16, 32, 64, 128):
        splits = plan["n_splits"](block_n)
        programs = triton.cdiv(M, block_m) * chunks
        assert 1 <= splits <= triton.cdiv(N, block_n)
        assert (splits - 1) * K <= 2 * N
        # Just enough splits for a program per SM, unless the N tiles or the work bound stop them.
        assert splits == 1 or programs * (splits - 1) < H100_SMS
        assert programs * splits >= H100_SMS or splits in (triton.cdiv(N, block_n), 1 + 2 * N // K)


def test_plan_examples():
    # Decode, M = 1, r = 64: four 16-rank chunks; N = K bounds the N splits at 3 ((3 - 1) K <= 2 N).
    plan = triton_lowrank.plan(1, 4096, 4096, 64, torch.bfloat16, H100_SMS)
    assert (plan["BLOCK_M"], plan["BLOCK_R"]) == (16, 16)
    assert plan["n_splits"](64) == 3
    # Prefill, r <= 128: one chunk, no atomics; 32 row blocks want 5 splits for 132 SMs (N = 4 K
    # would allow 9), and 512-column tiles allow only 3.
    plan = triton_lowrank.plan(2048, 1536, 384, 96, torch.float16, H100_SMS)
    assert (plan["BLOCK_M"], plan["BLOCK_R"]) == (64, 128)
    assert plan["n_splits"](128) == 5
    assert plan["n_splits"](512) == 3
    # float32 holds at most 32 ranks per chunk.
    assert triton_lowrank.plan(2048, 1536, 384, 96, torch.float32, H100_SMS)["BLOCK_R"] == 32
