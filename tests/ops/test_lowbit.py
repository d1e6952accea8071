"""Low-bit op family: every backend against the reference, opcheck, and bad input."""

from importlib.util import find_spec

import pytest
import torch
import torch.nn.functional as F

import pycompress
from pycompress.ops import lowbit as L

TRITON = pytest.param("triton", marks=pytest.mark.skipif(find_spec("triton") is None, reason="triton is not installed"))
CPU_BACKENDS = ["cpu", TRITON, "reference"]
CUDA_BACKENDS = ["cuda", TRITON, "reference"]
FLOATS = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = [(1, 1, 1), (1, 9, 31), (3, 5, 33), (5, 17, 100), (33, 20, 64), (2, 7, 129)]


def _call(backend, name, *args):
    with pycompress.use_backend(backend):
        return getattr(pycompress.ops, name)(*args)


def _assert_within_torch_error(out, ref64, torch_lowp, what):
    """Our error against float64 is at most twice torch's own in the same precision (plus a floor)."""
    ours = (out.double() - ref64).abs().max().item()
    theirs = (torch_lowp.double() - ref64).abs().max().item()
    floor = 1e-5 * max(ref64.abs().max().item(), 1.0)
    assert ours <= 2 * theirs + floor, f"{what}: error {ours:.3g} vs torch {theirs:.3g}"


def _garbage_padding(bits, K):
    """Sets the bits past K of every last word: kernels must ignore them."""
    used = K % 32
    if not used:
        return bits
    pad = L._to_int32_bits(torch.tensor((0xFFFFFFFF << used) & 0xFFFFFFFF)).to(bits.device)
    bits = bits.clone()
    bits[:, -1] |= pad
    return bits


def _check_pack_bits(backend, device):
    for M, _, K in SHAPES:
        for dtype in FLOATS + [torch.int8]:
            if dtype == torch.int8:
                x = torch.randint(-128, 128, (M, K), dtype=torch.int8, device=device)
            else:
                x = torch.randn(M, K, device=device).to(dtype)
                x[0, 0] = 0.0
                if K > 2:
                    x[0, 1] = float("nan")
                    x[0, 2] = -0.0
            out = _call(backend, "pack_bits", x)
            assert out.dtype == torch.int32 and torch.equal(out, L.pack_bits_reference(x)), (backend, M, K, dtype)


def _check_binary_mm(backend, device):
    for M, N, K in SHAPES + [(4, 6, 257)]:
        a = _garbage_padding(L.pack_bits_reference(torch.randn(M, K, device=device)), K)
        b = _garbage_padding(L.pack_bits_reference(torch.randn(N, K, device=device)), K)
        ones_m, ones_n = torch.ones(M, device=device), torch.ones(N, device=device)
        out = _call(backend, "binary_mm", a, b, K, ones_m, ones_n, None, torch.float32)
        exact = L.unpack_bits_reference(a, K) @ L.unpack_bits_reference(b, K).T
        assert torch.equal(out, exact), (backend, M, N, K)
        for out_dtype in FLOATS:
            sa, sb = torch.rand(M, device=device), torch.rand(N, device=device)
            bias = torch.randn(N, device=device)
            out = _call(backend, "binary_mm", a, b, K, sa, sb, bias, out_dtype)
            ref = L.binary_mm_reference(a, b, K, sa, sb, bias, out_dtype)
            if out_dtype == torch.float32:
                torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-5)
            else:
                torch.testing.assert_close(out.float(), ref.float(), rtol=torch.finfo(out_dtype).eps, atol=1e-3)


def _check_int8_weight_only(backend, device):
    for M, N, K in SHAPES + [(16, 24, 192), (1, 40, 256)]:
        for dtype in FLOATS:
            groups = [None] + [g for g in (32, 64, 128) if K % g == 0 and K > g]
            for gs in groups:
                x = torch.randn(M, K, device=device).to(dtype)
                w = torch.randint(-128, 128, (N, K), dtype=torch.int8, device=device)
                scale = torch.rand(N, device=device) * 0.02 if gs is None else torch.rand(N, K // gs, device=device) * 0.02
                bias = torch.randn(N, device=device)
                out = _call(backend, "int8_weight_only_mm", x, w, scale, bias)
                assert out.dtype == dtype and out.shape == (M, N)
                w_deq = L.dequantize_int8_weight(w, scale)
                ref64 = x.double() @ w_deq.double().T + bias.double()
                lowp = F.linear(x, w_deq.to(dtype), bias.to(dtype))
                _assert_within_torch_error(out, ref64, lowp, f"{backend} {M},{N},{K} {dtype} gs={gs}")


def _check_packed_weight(backend, device, name):
    for M, N, K in SHAPES:
        for dtype in FLOATS:
            x = torch.randn(M, K, device=device).to(dtype)
            if name == "binary_weight_mm":
                signs = torch.where(torch.rand(N, K, device=device) < 0.5, -1.0, 1.0)
                w = _garbage_padding(L.pack_bits_reference(signs), K)
            else:
                signs = torch.randint(-1, 2, (N, K), device=device).float()
                w = L.pack_ternary(signs)
            alpha = torch.rand(N, device=device) + 0.1
            bias = torch.randn(N, device=device)
            out = _call(backend, name, x, w, alpha, bias)
            assert out.dtype == dtype and out.shape == (M, N)
            w_deq = signs * alpha[:, None]
            ref64 = x.double() @ w_deq.double().T + bias.double()
            lowp = F.linear(x, w_deq.to(dtype), bias.to(dtype))
            _assert_within_torch_error(out, ref64, lowp, f"{name} {backend} {M},{N},{K} {dtype}")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_pack_bits_cpu(backend):
    _check_pack_bits(backend, "cpu")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_binary_mm_cpu(backend):
    _check_binary_mm(backend, "cpu")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_int8_weight_only_mm_cpu(backend):
    _check_int8_weight_only(backend, "cpu")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("name", ["binary_weight_mm", "ternary_weight_mm"])
def test_packed_weight_mm_cpu(backend, name):
    _check_packed_weight(backend, "cpu", name)


@pytest.mark.parametrize("isa", ["scalar", "auto"])
def test_cpu_isa_paths(isa, monkeypatch):
    monkeypatch.setenv("PYCOMPRESS_CPU_ISA", isa)
    _check_pack_bits("cpu", "cpu")
    _check_binary_mm("cpu", "cpu")
    _check_int8_weight_only("cpu", "cpu")
    _check_packed_weight("cpu", "cpu", "binary_weight_mm")
    _check_packed_weight("cpu", "cpu", "ternary_weight_mm")


@pytest.mark.parametrize("isa", ["scalar", "auto"])
def test_cpu_large_shapes(isa, monkeypatch):
    # Shapes past every block of the CPU kernels: exact for binary_mm, within torch's error otherwise.
    monkeypatch.setenv("PYCOMPRESS_CPU_ISA", isa)
    M, N, K = 70, 300, 4100
    a = L.pack_bits_reference(torch.randn(M, K))
    b = L.pack_bits_reference(torch.randn(N, K))
    out = _call("cpu", "binary_mm", a, b, K, torch.ones(M), torch.ones(N), None, torch.float32)
    assert torch.equal(out, L.unpack_bits_reference(a, K) @ L.unpack_bits_reference(b, K).T)
    x = torch.randn(M, K)
    w = torch.randint(-128, 128, (N, K), dtype=torch.int8)
    scale = torch.rand(N) * 0.01
    out = _call("cpu", "int8_weight_only_mm", x, w, scale, None)
    w_deq = L.dequantize_int8_weight(w, scale)
    _assert_within_torch_error(out, x.double() @ w_deq.double().T, x @ w_deq.T, "int8_weight_only_mm large")


@pytest.mark.cuda
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_lowbit_cuda(backend):
    _check_pack_bits(backend, "cuda")
    _check_binary_mm(backend, "cuda")
    _check_int8_weight_only(backend, "cuda")
    _check_packed_weight(backend, "cuda", "binary_weight_mm")
    _check_packed_weight(backend, "cuda", "ternary_weight_mm")


@pytest.mark.parametrize("backend", ["cpu", "reference", TRITON])
def test_opcheck(backend):
    x = torch.randn(3, 64)
    w = torch.randint(-128, 128, (5, 64), dtype=torch.int8)
    bits_a, bits_b = L.pack_bits_reference(torch.randn(3, 64)), L.pack_bits_reference(torch.randn(5, 64))
    with pycompress.use_backend(backend):
        op = torch.ops.pycompress
        torch.library.opcheck(op.int8_weight_only_mm.default, (x, w, torch.rand(5), torch.randn(5)))
        torch.library.opcheck(op.int8_weight_only_mm.default, (x, w, torch.rand(5, 2)))
        torch.library.opcheck(op.pack_bits.default, (x,))
        torch.library.opcheck(op.binary_mm.default, (bits_a, bits_b, 64, torch.rand(3), torch.rand(5)),
                              {"out_dtype": torch.bfloat16})
        torch.library.opcheck(op.binary_weight_mm.default, (x, bits_b, torch.rand(5), None))
        torch.library.opcheck(op.ternary_weight_mm.default, (x, L.pack_ternary(torch.randint(-1, 2, (5, 64))),
                                                             torch.rand(5)))


def test_bad_input():
    x = torch.randn(2, 64)
    w = torch.randint(-128, 128, (3, 64), dtype=torch.int8)
    with pytest.raises(ValueError, match=r"int8_weight_only_mm: w_scale must be \[N\] or \[N, G\] with G dividing K = 64 \(got G = 3\)"):
        pycompress.ops.int8_weight_only_mm(x, w, torch.rand(3, 3))
    with pytest.raises(ValueError, match=r"int8_weight_only_mm: w must be int8 of shape \[N, K\] with K == x.shape\[1\]"):
        pycompress.ops.int8_weight_only_mm(x, w[:, :60], torch.rand(3))
    with pytest.raises(ValueError, match=r"int8_weight_only_mm: x must be float32 or float16 or bfloat16"):
        pycompress.ops.int8_weight_only_mm(x.double(), w, torch.rand(3))
    bits = L.pack_bits_reference(torch.randn(3, 64))
    with pytest.raises(ValueError, match=r"binary_mm: K must be an int >= 1 \(got 0\)"):
        pycompress.ops.binary_mm(bits, bits, 0, torch.rand(3), torch.rand(3))
    with pytest.raises(ValueError, match=r"binary_mm: a_bits must be int32 of shape \[M, ceil\(K / 32\)\] = \[M, 3\]"):
        pycompress.ops.binary_mm(bits, bits, 65, torch.rand(3), torch.rand(3))
    with pytest.raises(ValueError, match=r"binary_weight_mm: w_bits must be int32 of shape \[N, ceil\(K / 32\)\] = \[N, 2\]"):
        pycompress.ops.binary_weight_mm(x, bits[:, :1], torch.rand(3))
    with pytest.raises(ValueError, match=r"ternary_weight_mm: alpha must be float32 of shape \[N\]"):
        pycompress.ops.ternary_weight_mm(x, torch.zeros(3, 4, dtype=torch.int32), torch.rand(2))
    with pytest.raises(ValueError, match=r"pack_ternary: t must hold only -1, 0 and 1"):
        L.pack_ternary(torch.full((2, 3), 2))
    with pytest.raises(ValueError, match=r"pack_bits: x must be float32 or float16 or bfloat16 or int8"):
        pycompress.ops.pack_bits(torch.ones(2, 3, dtype=torch.int32))


def test_empty_inputs():
    out = pycompress.ops.int8_weight_only_mm(torch.randn(0, 8), torch.zeros(3, 8, dtype=torch.int8), torch.rand(3))
    assert out.shape == (0, 3)
    assert pycompress.ops.pack_bits(torch.randn(0, 40)).shape == (0, 2)
