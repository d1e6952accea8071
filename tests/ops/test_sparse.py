"""CSR and BSR sparse GEMMs: every backend against the reference, packing, opcheck, and bad input."""

from importlib.util import find_spec

import pytest
import torch

import pycompress
from pycompress.formats.sparse import pack_bsr, pack_csr
from pycompress.ops import sparse as P

TRITON = pytest.param("triton", marks=pytest.mark.skipif(find_spec("triton") is None, reason="triton is not installed"))
CPU_BACKENDS = ["cpu", TRITON, "reference"]
CUDA_BACKENDS = ["cuda", TRITON, "reference"]
FLOATS = [torch.float32, torch.float16, torch.bfloat16]
CSR_SHAPES = [(1, 1, 1), (1, 9, 31), (3, 5, 33), (5, 17, 100), (33, 20, 64), (2, 7, 129), (16, 64, 256),
              (33, 24, 600)]
BSR_SHAPES = [(1, 64, 64), (3, 128, 64), (17, 64, 192), (33, 192, 128)]


def _call(backend, name, *args):
    with pycompress.use_backend(backend):
        return getattr(pycompress.ops, name)(*args)


def random_sparse(N, K, sparsity, dtype=torch.float32, device="cpu", seed=0, block=None):
    """A weight with about ``sparsity`` of its entries (or of its B x B blocks) zero, and one empty row."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(N, K, generator=g)
    if block is None:
        w = w * (torch.rand(N, K, generator=g) >= sparsity)
    else:
        keep = torch.rand(N // block, K // block, generator=g) >= sparsity
        w = w * keep.repeat_interleave(block, 0).repeat_interleave(block, 1)
    w[N // 2] = 0.0
    return w.to(dtype).to(device)


def _close(out, x, w, b, dtype, what):
    exact = x.double() @ w.double().T + (0 if b is None else b.double())
    if dtype == torch.float32:
        torch.testing.assert_close(out.double(), exact, rtol=1e-5, atol=1e-4, msg=what)
        return
    ours = (out.double() - exact).abs().max().item()
    theirs = (torch.nn.functional.linear(x, w, b).double() - exact).abs().max().item()
    assert ours <= 2 * theirs + 1e-2, (what, ours, theirs)


def _check_csr(backend, device):
    for M, N, K in CSR_SHAPES:
        for sparsity in (0.5, 0.9, 0.99):
            for dtype in FLOATS:
                w = random_sparse(N, K, sparsity, dtype, device, seed=M * N + K)
                crow, col, values = pack_csr(w)
                x = torch.randn(M, K, device=device).to(dtype)
                b = torch.randn(N, device=device).to(dtype)
                for bias in (None, b):
                    out = _call(backend, "csr_mm", x, crow, col, values, bias)
                    assert out.dtype == dtype and out.shape == (M, N)
                    _close(out, x, w, bias, dtype, (backend, M, N, K, sparsity, dtype))
    w = random_sparse(24, 64, 0.8, device=device)
    x = torch.randn(6, 128, device=device)[:, ::2]
    _close(_call(backend, "csr_mm", x, *pack_csr(w), None), x, w, None, torch.float32, "non-contiguous x")


def _check_bsr(backend, device):
    for block in P.BSR_BLOCKS:
        for M, N, K in BSR_SHAPES:
            for sparsity in (0.5, 0.9):
                for dtype in FLOATS:
                    w = random_sparse(N, K, sparsity, dtype, device, seed=M + N + K + block, block=block)
                    crow, col, values = pack_bsr(w, block)
                    x = torch.randn(M, K, device=device).to(dtype)
                    b = torch.randn(N, device=device).to(dtype)
                    for bias in (None, b):
                        out = _call(backend, "bsr_mm", x, crow, col, values, bias)
                        assert out.dtype == dtype and out.shape == (M, N)
                        _close(out, x, w, bias, dtype, (backend, block, M, N, K, sparsity, dtype))


def test_packing_round_trip():
    w = random_sparse(64, 128, 0.9)
    assert torch.equal(P.csr_to_dense(*pack_csr(w), 128), w)
    for block in P.BSR_BLOCKS:
        wb = random_sparse(128, 128, 0.5, block=block, seed=block)
        crow, col, values = pack_bsr(wb, block)
        assert torch.equal(P.bsr_to_dense(crow, col, values, 128), wb)
        assert values.shape[1:] == (block, block) and crow[-1].item() == col.numel()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_csr_mm_cpu(backend):
    _check_csr(backend, "cpu")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_bsr_mm_cpu(backend):
    _check_bsr(backend, "cpu")


@pytest.mark.parametrize("isa", ["scalar", "auto"])
def test_cpu_isa_paths(isa, monkeypatch):
    monkeypatch.setenv("PYCOMPRESS_CPU_ISA", isa)
    for M in (1, 7, 16, 20, 64, 65):
        w = random_sparse(96, 512, 0.9, seed=M)
        x = torch.randn(M, 512)
        bias = torch.randn(96)
        _close(_call("cpu", "csr_mm", x, *pack_csr(w), bias), x, w, bias, torch.float32, ("csr", isa, M))
        wb = random_sparse(128, 512, 0.8, seed=M, block=32)
        _close(_call("cpu", "bsr_mm", x, *pack_bsr(wb, 32), None), x, wb, None, torch.float32, ("bsr", isa, M))


@pytest.mark.cuda
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_sparse_cuda(backend):
    _check_csr(backend, "cuda")
    _check_bsr(backend, "cuda")


@pytest.mark.parametrize("backend", ["cpu", "reference", TRITON])
def test_opcheck(backend):
    w = random_sparse(32, 64, 0.7)
    with pycompress.use_backend(backend):
        op = torch.ops.pycompress
        torch.library.opcheck(op.csr_mm.default, (torch.randn(3, 64), *pack_csr(w), torch.randn(32)))
        torch.library.opcheck(op.bsr_mm.default, (torch.randn(3, 64), *pack_bsr(w, 16), None))


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_bad_indices(backend):
    crow, col, values = pack_csr(random_sparse(8, 32, 0.5))
    bad = col.clone()
    bad[0] = 40
    with pytest.raises((ValueError, RuntimeError), match=r"csr_mm: col must hold"):
        _call(backend, "csr_mm", torch.randn(2, 32), crow, bad, values)
    bad_crow = crow.clone()
    bad_crow[-1] += 1
    with pytest.raises((ValueError, RuntimeError), match=r"csr_mm: crow must start at 0, never decrease"):
        _call(backend, "csr_mm", torch.randn(2, 32), bad_crow, col, values)


def test_bad_input():
    w = random_sparse(64, 64, 0.5)
    crow, col, values = pack_csr(w)
    with pytest.raises(ValueError, match=r"csr_mm: values must be float16 of shape \[nnz\], same dtype as x"):
        pycompress.ops.csr_mm(torch.randn(2, 64).half(), crow, col, values)
    with pytest.raises(ValueError, match=r"csr_mm: crow must be int32"):
        pycompress.ops.csr_mm(torch.randn(2, 64), crow.long(), col, values)
    with pytest.raises(ValueError, match=r"csr_mm: values must have one entry per col index"):
        pycompress.ops.csr_mm(torch.randn(2, 64), crow, col, values[:-1])
    bcrow, bcol, bvalues = pack_bsr(w, 32)
    with pytest.raises(ValueError, match=r"bsr_mm: K = x.shape\[1\] = 48 must be a multiple of the block size B = 32"):
        pycompress.ops.bsr_mm(torch.randn(2, 48), bcrow, bcol, bvalues)
    with pytest.raises(ValueError, match=r"bsr_mm: values must be \[nnzb, B, B\] with B in \(16, 32, 64\)"):
        pycompress.ops.bsr_mm(torch.randn(2, 64), bcrow, bcol, bvalues[:, :8, :8])
    with pytest.raises(ValueError, match=r"pack_bsr: w's shape \[64, 40\] must be multiples of the block size 32"):
        pack_bsr(torch.randn(64, 40), 32)
    with pytest.raises(ValueError, match=r"pack_bsr: block must be one of \(16, 32, 64\)"):
        pack_bsr(w, 8)


def test_empty_inputs():
    crow, col, values = pack_csr(torch.zeros(5, 16))
    assert col.numel() == 0
    with pycompress.use_backend("reference"):
        assert torch.equal(pycompress.ops.csr_mm(torch.randn(3, 16), crow, col, values), torch.zeros(3, 5))
    assert pycompress.ops.csr_mm(torch.randn(0, 16), crow, col, values).shape == (0, 5)
