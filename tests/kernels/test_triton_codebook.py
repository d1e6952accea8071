"""Triton codebook kernel: its launch paths and tiles against the plain-PyTorch contract.

The op tests run the autotuned launcher; these run the kernel itself with chosen tiles and plans:
the broadcast-and-reduce path for a handful of rows and the tl.dot path beyond, stored directly or
split over K with atomic adds into the workspace, 4-bit and 8-bit indices, per-tensor and
per-channel codebooks, tails of every tile and odd K.  On a CPU machine they run through the Triton
interpreter (TRITON_INTERPRET=1, set by the suite's conftest); with a GPU and no interpreter, on the GPU.
"""

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")
import triton  # noqa: E402

from pycompress.kernels import codebook as triton_codebook  # noqa: E402
from pycompress.ops.codebook import codebook_decode, codebook_mm_reference, pack_indices  # noqa: E402
from _triton_case import DEVICE, FLOAT_DTYPES, pytestmark  # noqa: E402, F401
from _triton_case import gen as _gen  # noqa: E402


def _weight(N, K, bits, per_channel, dtype, gen):
    indices = torch.randint(0, 2**bits, (N, K), generator=gen)
    codebook = torch.randn(N if per_channel else 1, 2**bits, generator=gen).to(dtype)
    return pack_indices(indices, bits), codebook


def _run(x, idx, codebook, bias, use_dot, splits, block_m, block_n, block_k):
    return triton_codebook.launch(
        triton_codebook._codebook_mm_kernel, x, idx, codebook, bias, use_dot=use_dot, block_m=None,
        splits=splits, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=8, num_warps=4,
    )


def _to_device(*tensors):
    return tuple(None if t is None else t.to(DEVICE) for t in tensors)


def _assert_matches_contract(out, x, idx, codebook, bias):
    """float32: the reference within rounding; float16 / bfloat16: error against float64 at most
    twice that of torch's matmul in the same dtype (plus a floor for near-exact results)."""
    M, N = x.shape[0], idx.shape[0]
    assert out.dtype == x.dtype and out.shape == (M, N)
    out = out.cpu()
    if x.dtype == torch.float32:
        torch.testing.assert_close(out, codebook_mm_reference(x, idx, codebook, bias), rtol=1e-5, atol=1e-5)
        return
    w = codebook_decode(idx, codebook, x.shape[1])
    exact = x.double() @ w.double().T + (0 if bias is None else bias.double())
    ours = (out.double() - exact).abs().max().item()
    theirs = (F.linear(x, w, None if bias is None else bias.to(x.dtype)).double() - exact).abs().max().item()
    assert ours <= 2 * theirs + 1e-3 * max(exact.abs().max().item(), 1.0), (ours, theirs)


# (M, N, K, use_dot, splits, BLOCK_M, BLOCK_N, BLOCK_K): reduce path with 1, 2 and 4 rows, dot
# path with row tails; K splits into runs of one and several K tiles, more splits than K tiles
# (idle programs add zeros); odd K ending inside a tile, K shorter than a tile, K = 1; N tails.
PATHS = [
    (1, 1, 1, False, 1, 1, 16, 16),
    (1, 37, 129, False, 3, 1, 16, 32),
    (2, 20, 33, False, 1, 2, 16, 16),
    (3, 9, 95, False, 2, 4, 32, 64),
    (4, 33, 48, False, 5, 4, 16, 16),
    (5, 17, 113, True, 1, 16, 16, 32),
    (17, 40, 75, True, 2, 16, 32, 16),
    (40, 24, 31, True, 1, 32, 16, 64),
    (20, 18, 160, True, 4, 16, 16, 32),
]


@pytest.mark.parametrize("bits, per_channel, dtype", [
    (4, False, torch.float32), (4, True, torch.bfloat16), (8, False, torch.float16), (8, True, torch.float32),
])
@pytest.mark.parametrize("M, N, K, use_dot, splits, block_m, block_n, block_k", PATHS)
def test_launch_paths(M, N, K, use_dot, splits, block_m, block_n, block_k, bits, per_channel, dtype):
    gen = _gen(M, N, K, bits)
    idx, codebook = _weight(N, K, bits, per_channel, dtype, gen)
    x = torch.randn(M, K, generator=gen).to(dtype)
    bias = torch.randn(N, generator=gen).to(dtype) if (M + K) % 2 else None

    out = _run(*_to_device(x, idx, codebook, bias), use_dot, splits, block_m, block_n, block_k)

    _assert_matches_contract(out, x, idx, codebook, bias)


@pytest.mark.parametrize("use_dot, M, block_m", [(False, 4, 4), (True, 18, 16)])
@pytest.mark.parametrize("bits", [4, 8])
def test_every_index_and_nibble_decodes_exactly(bits, use_dot, M, block_m):
    # x holds one-hot rows at columns 0, 1, K - 2, K - 1 (K odd: the high nibble of the byte before
    # the last, and the last byte's low nibble) and more: y[m, n] is exactly the weight at that
    # column, so a wrong nibble, byte, codebook row or entry shows.  The indices (7 (n K + k) mod
    # 2^bits) differ between neighbouring weights and rows.
    N, K, size = 40, 37, 2**bits
    indices = (torch.arange(N * K).reshape(N, K) * 7) % size
    codebook = torch.randn(N, size, generator=_gen(bits)).to(torch.bfloat16)
    idx = pack_indices(indices, bits)
    columns = torch.tensor([0, 1, K - 2, K - 1] + list(range(2, 2 + M - 4)))
    x = torch.zeros(M, K, dtype=torch.bfloat16)
    x[torch.arange(M), columns] = 1.0

    out = _run(*_to_device(x, idx, codebook, None), use_dot, 2, block_m, 16, 16).cpu()

    expected = torch.gather(codebook, 1, indices)[:, columns].T
    assert torch.equal(out, expected)


@pytest.mark.parametrize("use_dot, M, block_m", [(False, 1, 1), (True, 5, 16)])
@pytest.mark.parametrize("per_channel", [False, True])
def test_padding_nibble_is_never_read(per_channel, use_dot, M, block_m):
    # Odd K: the high nibble of each row's last byte is padding.  It is set to 15, whose codebook
    # entry is NaN and used by no weight; reading it would make y NaN (NaN * 0 from the masked x).
    N, K = 6, 33
    gen = _gen(N, K)
    indices = torch.randint(0, 15, (N, K), generator=gen)
    idx = pack_indices(indices, 4)
    idx[:, -1] |= 0xF0
    codebook = torch.randn(N if per_channel else 1, 16, generator=gen)
    codebook[:, 15] = float("nan")
    x = torch.randn(M, K, generator=gen)

    out = _run(*_to_device(x, idx, codebook, None), use_dot, 1, block_m, 16, 16).cpu()

    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, x @ torch.gather(codebook.expand(N, 16), 1, indices).T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bias_dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("splits", [1, 3])
def test_bias_of_any_dtype_on_both_stores(splits, bias_dtype):
    gen = _gen(splits)
    idx, codebook = _weight(20, 96, 4, True, torch.float16, gen)
    x = torch.randn(2, 96, generator=gen).to(torch.float16)
    bias = (torch.randn(20, generator=gen) * 10).to(bias_dtype)
    before = bias.clone()

    out = _run(*_to_device(x, idx, codebook, bias), False, splits, 2, 16, 32)

    assert torch.equal(bias, before)
    torch.testing.assert_close(out.cpu(), codebook_mm_reference(x, idx, codebook, bias), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("M", [1, 4, 5])
def test_autotuned_launcher(M):
    # The public entry point plans (reduce path up to 4 rows, dot path beyond; K split under the
    # interpreter's small program target) and launches the autotuned kernel.
    gen = _gen(M)
    idx, codebook = _weight(10, 129, 4, False, torch.float32, gen)
    x = torch.randn(M, 129, generator=gen)

    out = triton_codebook.codebook_mm(*_to_device(x, idx, codebook, None))

    _assert_matches_contract(out, x, idx, codebook, None)


# --- launch plan ---------------------------------------------------------------------------------

H100_SMS = 132


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("M, N, K", [(1, 4096, 4096), (1, 512, 4096), (1, 768, 3072), (3, 64, 64),
                                     (5, 768, 768), (16, 8192, 1024), (64, 256, 512), (300, 512, 2048)])
def test_plan_fills_the_gpu_within_its_bounds(M, N, K, bits):
    plan = triton_codebook.plan(M, N, K, bits, H100_SMS)
    splits = plan["splits"]

    assert plan["use_dot"] == (M > 4)
    assert plan["block_m"] == (None if M > 4 else triton.next_power_of_2(M))
    block_m = triton_codebook._PLAN_BLOCK_M if M > 4 else plan["block_m"]
    tiles = triton.cdiv(M, block_m) * triton.cdiv(N, triton_codebook._PLAN_BLOCK_N)
    assert splits >= 1
    # Atomics (4 M N bytes per split) within the packed weight's bytes, once there are splits.
    assert splits == 1 or 4 * M * N * splits <= N * K * bits // 8
    # Just enough splits for a program per SM, unless K or the atomics bound stops them.
    assert splits == 1 or tiles * (splits - 1) < H100_SMS
    assert (tiles * splits >= H100_SMS or splits == triton.cdiv(K, triton_codebook._PLAN_BLOCK_K)
            or 4 * M * N * (splits + 1) > N * K * bits // 8)


def test_plan_splits_k_for_decode_with_few_columns():
    assert triton_codebook.plan(1, 512, 4096, 4, H100_SMS)["splits"] > 1
    assert triton_codebook.plan(1, 8 * H100_SMS * triton_codebook._PLAN_BLOCK_N, 4096, 4, H100_SMS)["splits"] == 1
