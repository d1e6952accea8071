"""2:4 op family: every backend against the reference, the layout, opcheck, and bad input."""

from importlib.util import find_spec

import pytest
import torch

import pycompress
from pycompress.ops import sparse24 as S
from pycompress.prune.masks import nm_mask

TRITON = pytest.param("triton", marks=pytest.mark.skipif(find_spec("triton") is None, reason="triton is not installed"))
CPU_BACKENDS = ["cpu", TRITON, "reference"]
CUDA_BACKENDS = ["cuda", TRITON, "reference"]
FLOATS = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = [(1, 1, 16), (1, 9, 32), (3, 5, 48), (5, 17, 112), (33, 20, 64), (2, 7, 144), (16, 64, 256)]


def _call(backend, name, *args):
    with pycompress.use_backend(backend):
        return getattr(pycompress.ops, name)(*args)


def random_24(N, K, dtype=torch.float32, device="cpu", seed=0):
    """A random 2:4 weight whose groups hold 2, 1 or 0 non-zeros (all cases of the layout)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(N, K, generator=g)
    w = w * nm_mask(w.abs() + torch.rand(N, K, generator=g))
    drop = torch.rand(N, K, generator=g) < 0.15
    w[drop] = 0.0
    return w.to(dtype).to(device)


def _check_compress(backend, device):
    for _, N, K in SHAPES:
        for dtype in FLOATS:
            w = random_24(N, K, dtype, device, seed=N * K)
            values, meta = _call(backend, "sparse24_compress", w)
            ref_values, ref_meta = S.sparse24_compress_reference(w)
            assert values.dtype == dtype and meta.dtype == torch.int16
            assert torch.equal(meta, ref_meta) and torch.equal(values, ref_values), (backend, N, K, dtype)
            assert torch.equal(S.sparse24_decompress(values, meta), w)


def _check_mm(backend, device, shapes=SHAPES):
    for M, N, K in shapes:
        for dtype in FLOATS:
            w = random_24(N, K, dtype, device, seed=M + N + K)
            values, meta = S.sparse24_compress_reference(w)
            x = torch.randn(M, K, device=device).to(dtype)
            bias = torch.randn(N, device=device).to(dtype)
            for b in (None, bias):
                out = _call(backend, "sparse24_mm", x, values, meta, b)
                ref = S.sparse24_mm_reference(x, values, meta, b)
                assert out.dtype == dtype and out.shape == (M, N)
                if dtype == torch.float32:
                    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)
                else:
                    # Error against float64 within twice torch's own in this precision (plus a floor).
                    exact = x.double() @ w.double().T + (0 if b is None else b.double())
                    ours = (out.double() - exact).abs().max().item()
                    theirs = (torch.nn.functional.linear(x, w, b).double() - exact).abs().max().item()
                    assert ours <= 2 * theirs + 1e-2, (backend, M, N, K, dtype, ours, theirs)
    # A non-contiguous x (a column slice) gives the same result as its contiguous copy.
    w = random_24(24, 64, device=device)
    values, meta = S.sparse24_compress_reference(w)
    x = torch.randn(6, 128, device=device)[:, ::2]
    torch.testing.assert_close(_call(backend, "sparse24_mm", x, values, meta),
                               S.sparse24_mm_reference(x.contiguous(), values, meta, None), rtol=1e-5, atol=1e-4)


def test_layout():
    w = torch.zeros(1, 16)
    w[0, [1, 3, 4, 9, 14]] = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    values, meta = S.sparse24_compress_reference(w)
    # groups: {1, 3} -> 0b1101, {0 (nz), +1 lowest zero} -> 0b0100, {1 (9 - 8), +0} -> 0b0100, {2 (14 - 12), +0} -> 0b1000
    assert (meta[0, 0].item() & 0xFFFF) == 0b1000_0100_0100_1101
    assert values.tolist() == [[1.0, 2.0, 3.0, 0.0, 0.0, 4.0, 0.0, 5.0]]
    assert S.is_sparse24(w) and not S.is_sparse24(torch.ones(2, 16))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_sparse24_compress_cpu(backend):
    _check_compress(backend, "cpu")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_sparse24_mm_cpu(backend):
    _check_mm(backend, "cpu")


@pytest.mark.parametrize("isa", ["scalar", "auto"])
def test_cpu_isa_paths(isa, monkeypatch):
    monkeypatch.setenv("PYCOMPRESS_CPU_ISA", isa)
    # Every small-M tile (1 .. 8 rows), then the gather path with 2 to 4 vectors per slab and several slab chunks.
    for M in (1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 17, 64, 300):
        w = random_24(96, 512, seed=M)
        values, meta = S.sparse24_compress_reference(w)
        x = torch.randn(M, 512)
        bias = torch.randn(96)
        torch.testing.assert_close(_call("cpu", "sparse24_mm", x, values, meta, bias),
                                   S.sparse24_mm_reference(x, values, meta, bias), rtol=1e-5, atol=1e-4)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_sparse24_cuda(backend):
    _check_compress(backend, "cuda")
    # The last shapes fill a GPU with the large tiles: K = 256 takes the cp.async path, K = 272 the other.
    _check_mm(backend, "cuda", SHAPES + [(2048, 4096, 256), (2048, 4096, 272)])


@pytest.mark.parametrize("backend", ["cpu", "reference", TRITON])
def test_opcheck(backend):
    w = random_24(8, 64)
    values, meta = S.sparse24_compress_reference(w)
    with pycompress.use_backend(backend):
        op = torch.ops.pycompress
        torch.library.opcheck(op.sparse24_compress.default, (w,))
        torch.library.opcheck(op.sparse24_mm.default, (torch.randn(3, 64), values, meta, torch.randn(8)))
        torch.library.opcheck(op.sparse24_mm.default, (torch.randn(1, 64), values, meta, None))


def test_bad_input():
    with pytest.raises(ValueError, match=r"sparse24_compress: w is not 2:4 sparse: row 1, columns 4..7 hold 3 non-zeros"):
        w = random_24(4, 32)
        w[1, 4:8] = torch.tensor([1.0, 1.0, 1.0, 0.0])
        pycompress.ops.sparse24_compress(w)
    with pytest.raises(ValueError, match=r"sparse24_compress: w must have K a positive multiple of 16 columns"):
        pycompress.ops.sparse24_compress(torch.zeros(4, 24))
    with pytest.raises(ValueError, match=r"sparse24_compress: w must be float32 or float16 or bfloat16"):
        pycompress.ops.sparse24_compress(torch.zeros(4, 32, dtype=torch.int32))
    values, meta = S.sparse24_compress_reference(random_24(4, 32))
    with pytest.raises(ValueError, match=r"sparse24_mm: x must have K a positive multiple of 16 columns"):
        pycompress.ops.sparse24_mm(torch.randn(2, 31), values, meta)
    with pytest.raises(ValueError, match=r"sparse24_mm: values must be float16 of shape \[N, K / 2\]"):
        pycompress.ops.sparse24_mm(torch.randn(2, 32).half(), values, meta)
    with pytest.raises(ValueError, match=r"sparse24_mm: meta must be int16 of shape \[N, K / 16\]"):
        pycompress.ops.sparse24_mm(torch.randn(2, 32), values, meta[:3])
    with pytest.raises(ValueError, match=r"sparse24_mm: bias must be float32 or float16 or bfloat16 of shape \[N\]"):
        pycompress.ops.sparse24_mm(torch.randn(2, 32), values, meta, torch.randn(5))


def test_empty_inputs():
    values, meta = S.sparse24_compress_reference(random_24(4, 32))
    assert pycompress.ops.sparse24_mm(torch.randn(0, 32), values, meta).shape == (0, 4)
    v, m = pycompress.ops.sparse24_compress(torch.zeros(0, 32))
    assert v.shape == (0, 16) and m.shape == (0, 2)
