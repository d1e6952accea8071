"""Triton CSR and BSR kernels against the plain-PyTorch contract.

On a CPU machine they run through the Triton interpreter (TRITON_INTERPRET=1, set by the suite's
conftest before Triton is imported); with a GPU and no interpreter they run on the GPU.
"""

import pytest
import torch

pytest.importorskip("triton")

from pycompress.formats.sparse import pack_bsr, pack_csr
from pycompress.kernels import sparse as triton_sparse
from pycompress.ops.sparse import BSR_BLOCKS, bsr_mm_reference, csr_mm_reference
from _triton_case import DEVICE, FLOAT_DTYPES, pytestmark  # noqa: E402, F401
from _triton_case import gen as _gen  # noqa: E402


def _run(fn, x, crow, col, values, bias):
    args = [None if t is None else t.to(DEVICE) for t in (x, crow, col, values, bias)]
    return fn(*args).cpu()


def _assert_close_to_exact(out, x, w, bias):
    """float32 within tight tolerances; float16/bfloat16 within twice torch's own error in that
    precision against float64 (plus a floor)."""
    shift = 0 if bias is None else bias.double()
    exact = x.double() @ w.double().T + shift
    if out.dtype == torch.float32:
        torch.testing.assert_close(out.double(), exact, rtol=1e-5, atol=1e-4)
        return
    ours = (out.double() - exact).abs().max().item()
    theirs = (torch.nn.functional.linear(x, w).double() + shift - exact).abs().max().item()
    assert ours <= 2 * theirs + 1e-2, (ours, theirs)


def _uneven_csr_weight(N, K, gen):
    """Rows of very different lengths: empty, a single entry, about half, and one full row."""
    density = torch.rand(N, 1, generator=gen) ** 3
    w = torch.randn(N, K, generator=gen) * (torch.rand(N, K, generator=gen) < density)
    w[0] = 0.0
    w[N // 2] = torch.randn(K, generator=gen)
    w[-1] = 0.0
    w[-1, K - 1] = 1.5
    return w


# --- csr_mm --------------------------------------------------------------------------------------

# M up to 16 is one tile of x rows, larger M several; K = 300 makes the full row span several chunks.
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("M, N, K", [(1, 1, 1), (1, 37, 300), (3, 5, 33), (16, 40, 64), (19, 33, 300)])
def test_csr_mm_matches_reference(dtype, M, N, K):
    gen = _gen(M, N, K)
    w = _uneven_csr_weight(N, K, gen).to(dtype)
    crow, col, values = pack_csr(w)
    x = torch.randn(M, K, generator=gen).to(dtype)
    bias = torch.randn(N, generator=gen).to(torch.bfloat16 if dtype == torch.float32 else torch.float32)

    for b in (None, bias):
        out = _run(triton_sparse.csr_mm, x, crow, col, values, b)
        assert out.dtype == dtype and out.shape == (M, N)
        _assert_close_to_exact(out, x, w, b)
        if dtype == torch.float32:
            torch.testing.assert_close(out, csr_mm_reference(x, crow, col, values, b), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("sparsity", [0.0, 0.9, 1.0])
def test_csr_mm_exact_on_small_integers(dtype, sparsity):
    # Small integers multiply and add exactly in float32: the result equals the reference bit for
    # bit, for a dense matrix, a sparse one and one with no entries at all (y = bias).
    M, N, K = 6, 21, 100
    gen = _gen(M, N, K, int(sparsity * 10))
    w = torch.randint(-8, 9, (N, K), generator=gen) * (torch.rand(N, K, generator=gen) >= sparsity)
    w = w.to(dtype)
    crow, col, values = pack_csr(w)
    x = torch.randint(-8, 9, (M, K), generator=gen).to(dtype)
    bias = torch.randint(-50, 51, (N,), generator=gen).to(dtype)

    out = _run(triton_sparse.csr_mm, x, crow, col, values, bias)

    assert torch.equal(out, csr_mm_reference(x, crow, col, values, bias))
    if sparsity == 1.0:
        assert col.numel() == 0 and torch.equal(out, bias.expand(M, N))


# --- bsr_mm --------------------------------------------------------------------------------------

def _block_sparse(N, K, block, keep, gen, values=None):
    """A weight with about ``keep`` of its block x block blocks stored and block row 1 empty."""
    present = torch.rand(N // block, K // block, generator=gen) < keep
    present[1] = False
    mask = present.repeat_interleave(block, 0).repeat_interleave(block, 1)
    return (torch.randn(N, K, generator=gen) if values is None else values) * mask


# M = 70 spans two of the interpreter's 64-row tiles.
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("block", BSR_BLOCKS)
@pytest.mark.parametrize("M", [1, 70])
def test_bsr_mm_matches_reference(dtype, block, M):
    N, K = 3 * block, 4 * block
    gen = _gen(M, block, dtype.itemsize)
    w = _block_sparse(N, K, block, 0.6, gen).to(dtype)
    crow, col, values = pack_bsr(w, block)
    x = torch.randn(M, K, generator=gen).to(dtype)
    bias = torch.randn(N, generator=gen).to(torch.bfloat16 if dtype == torch.float32 else torch.float32)

    for b in (None, bias):
        out = _run(triton_sparse.bsr_mm, x, crow, col, values, b)
        assert out.dtype == dtype and out.shape == (M, N)
        _assert_close_to_exact(out, x, w, b)
        if dtype == torch.float32:
            torch.testing.assert_close(out, bsr_mm_reference(x, crow, col, values, b), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("block", BSR_BLOCKS)
def test_bsr_mm_exact_on_small_integers(dtype, block):
    # Small integers multiply and add exactly in float32, so any misplaced block or transposed
    # block shows as a different result.
    M, N, K = 5, 2 * block, 3 * block
    gen = _gen(M, block, 3)
    w = _block_sparse(N, K, block, 0.7, gen, torch.randint(-8, 9, (N, K), generator=gen).float()).to(dtype)
    crow, col, values = pack_bsr(w, block)
    x = torch.randint(-8, 9, (M, K), generator=gen).to(dtype)
    bias = torch.randint(-50, 51, (N,), generator=gen).to(dtype)

    out = _run(triton_sparse.bsr_mm, x, crow, col, values, bias)

    assert torch.equal(out, bsr_mm_reference(x, crow, col, values, bias))
    # Block row 1 stores nothing: its outputs are the bias.
    assert torch.equal(out[:, block:2 * block], bias[block:2 * block].expand(M, block))


def test_bsr_mm_without_blocks():
    block = 32
    crow = torch.zeros(3, dtype=torch.int32)
    col = torch.zeros(0, dtype=torch.int32)
    values = torch.zeros(0, block, block, dtype=torch.float16)
    x = torch.randn(4, 64).half()

    out = _run(triton_sparse.bsr_mm, x, crow, col, values, None)

    assert out.dtype == torch.float16 and torch.equal(out, torch.zeros(4, 2 * block, dtype=torch.float16))
