"""Codebook op family: packing, every backend against the reference, autograd, opcheck, bad input."""

from importlib.util import find_spec

import pytest
import torch
from torch.nn import functional as F

import pycompress
from pycompress.ops import codebook as C

TRITON = pytest.param("triton", marks=pytest.mark.skipif(find_spec("triton") is None, reason="triton is not installed"))
CPU_BACKENDS = ["cpu", TRITON, "reference"]
CUDA_BACKENDS = ["cuda", TRITON, "reference"]
FLOATS = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = [(1, 1, 1), (1, 9, 33), (3, 5, 48), (5, 17, 113), (33, 20, 64), (2, 7, 144), (16, 64, 256), (70, 40, 384)]


def _call(backend, *args):
    with pycompress.use_backend(backend):
        return pycompress.ops.codebook_mm(*args)


def random_codebook_weight(N, K, bits, per_channel, dtype=torch.float32, device="cpu", seed=0):
    """(idx packed, codebook [G, 2^bits], indices int64 [N, K]) with random indices and values."""
    g = torch.Generator().manual_seed(seed)
    size = 2**bits
    indices = torch.randint(0, size, (N, K), generator=g)
    codebook = torch.randn(N if per_channel else 1, size, generator=g).to(dtype).to(device)
    return C.pack_indices(indices, bits).to(device), codebook, indices.to(device)


def test_packing_layout():
    indices = torch.tensor([[1, 2, 3, 15, 7]])
    packed = C.pack_indices(indices, 4)
    assert packed.dtype == torch.uint8 and packed.tolist() == [[0x21, 0xF3, 0x07]]
    assert torch.equal(C.unpack_indices(packed, 5, 4), indices)
    assert torch.equal(C.pack_indices(indices * 16, 8), (indices * 16).to(torch.uint8))
    codebook = torch.arange(16.0)[None, :] * 10
    assert C.codebook_decode(packed, codebook, 5).tolist() == [[10.0, 20.0, 30.0, 150.0, 70.0]]
    per_row = torch.stack([torch.arange(16.0), -torch.arange(16.0)])
    two = C.pack_indices(torch.tensor([[1, 2], [3, 4]]), 4)
    assert C.codebook_decode(two, per_row, 2).tolist() == [[1.0, 2.0], [-3.0, -4.0]]


def _check(backend, device, shapes=SHAPES):
    for M, N, K in shapes:
        for bits in (4, 8):
            for per_channel in (False, True):
                for dtype in FLOATS:
                    idx, codebook, indices = random_codebook_weight(N, K, bits, per_channel, dtype, device,
                                                                    seed=M + N + K + bits)
                    x = torch.randn(M, K, device=device).to(dtype)
                    bias = torch.randn(N, device=device).to(dtype)
                    for b in (None, bias):
                        out = _call(backend, x, idx, codebook, b)
                        case = (backend, M, N, K, bits, per_channel, dtype)
                        assert out.dtype == dtype and out.shape == (M, N), case
                        if dtype == torch.float32:
                            torch.testing.assert_close(out, C.codebook_mm_reference(x, idx, codebook, b),
                                                       rtol=1e-5, atol=1e-4)
                        else:
                            w = C.codebook_decode(idx, codebook, K)
                            exact = x.double() @ w.double().T + (0 if b is None else b.double())
                            ours = (out.double() - exact).abs().max().item()
                            theirs = (F.linear(x, w, b).double() - exact).abs().max().item()
                            assert ours <= 2 * theirs + 1e-2, case + (ours, theirs)
    idx, codebook, _ = random_codebook_weight(24, 64, 4, True, device=device, seed=1)
    xs = torch.randn(6, 128, device=device)[:, ::2]
    torch.testing.assert_close(_call(backend, xs, idx, codebook), C.codebook_mm_reference(xs.contiguous(), idx, codebook, None),
                               rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_codebook_mm_cpu(backend):
    _check(backend, "cpu")


@pytest.mark.parametrize("isa", ["scalar", "auto"])
def test_cpu_isa_paths(isa, monkeypatch):
    monkeypatch.setenv("PYCOMPRESS_CPU_ISA", isa)
    for M in (1, 2, 3, 4, 5, 8, 9, 17, 64):
        for K in (384, 129):
            for bits in (4, 8):
                idx, codebook, _ = random_codebook_weight(40, K, bits, M % 2 == 0, seed=M + K)
                x, bias = torch.randn(M, K), torch.randn(40)
                torch.testing.assert_close(_call("cpu", x, idx, codebook, bias),
                                           C.codebook_mm_reference(x, idx, codebook, bias), rtol=1e-5, atol=1e-4)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_codebook_mm_cuda(backend):
    _check(backend, "cuda", SHAPES + [(1, 4096, 4096), (16, 8192, 1024), (300, 512, 2048)])


@pytest.mark.parametrize("backend", ["cpu", "reference", TRITON])
def test_opcheck(backend):
    idx, codebook, _ = random_codebook_weight(12, 33, 4, True, seed=2)
    idx8, codebook8, _ = random_codebook_weight(12, 33, 8, False, seed=3)
    x, bias = torch.randn(3, 33), torch.randn(12)
    with pycompress.use_backend(backend):
        op = torch.ops.pycompress.codebook_mm.default
        torch.library.opcheck(op, (x, idx, codebook, bias))
        torch.library.opcheck(op, (x[:1], idx8, codebook8, None))
        torch.library.opcheck(op, (x.requires_grad_(), idx, codebook.requires_grad_(), bias.requires_grad_()))


@pytest.mark.parametrize("per_channel", [False, True])
def test_codebook_gradient_is_accumulated_per_cluster(per_channel):
    idx, codebook, indices = random_codebook_weight(6, 20, 4, per_channel, seed=4)
    x = torch.randn(5, 20, requires_grad=True)
    codebook.requires_grad_()
    bias = torch.randn(6, requires_grad=True)
    # The same as differentiating through the decoded dense weight.
    w = codebook[0][indices] if not per_channel else torch.gather(codebook, 1, indices)
    want = torch.autograd.grad(F.linear(x, w, bias).sin().sum(), (x, codebook, bias))
    got = torch.autograd.grad(pycompress.ops.codebook_mm(x, idx, codebook, bias).sin().sum(), (x, codebook, bias))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_bad_input():
    idx, codebook, _ = random_codebook_weight(6, 16, 4, True, seed=5)
    x = torch.randn(2, 16)
    op = pycompress.ops.codebook_mm
    with pytest.raises(ValueError, match=r"codebook_mm: codebook must have C = 16 \(4-bit indices\) or 256"):
        op(x, idx, codebook[:, :8])
    with pytest.raises(ValueError, match=r"codebook_mm: idx must be uint8 of shape \[N, ceil\(K / 2\)\] = \[N, 8\]"):
        op(x, idx[:, :4], codebook)
    with pytest.raises(ValueError, match=r"codebook_mm: idx must be uint8"):
        op(x, idx.to(torch.int32), codebook)
    with pytest.raises(ValueError, match=r"codebook_mm: codebook must have G = 1 \(per tensor\) or G = N = 6"):
        op(x, idx, codebook[:3])
    with pytest.raises(ValueError, match=r"codebook_mm: codebook must be float32 of shape"):
        op(x, idx, codebook.half())
    with pytest.raises(ValueError, match=r"codebook_mm: bias must be float32 or float16 or bfloat16 of shape \[N\]"):
        op(x, idx, codebook, torch.randn(5))
    with pytest.raises(ValueError, match=r"pack_indices: bits must be 4 or 8"):
        C.pack_indices(torch.zeros(2, 2, dtype=torch.int64), 3)
    with pytest.raises(ValueError, match=r"pack_indices: indices must lie in \[0, 16\) for bits=4"):
        C.pack_indices(torch.full((2, 2), 16), 4)


def test_empty_inputs():
    idx, codebook, _ = random_codebook_weight(6, 16, 8, False, seed=6)
    assert pycompress.ops.codebook_mm(torch.randn(0, 16), idx, codebook).shape == (0, 6)
