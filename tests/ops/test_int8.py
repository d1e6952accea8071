"""int8 op family: every backend against the reference, opcheck, and bad input."""

from importlib.util import find_spec

import pytest
import torch

import pycompress
from pycompress.ops.int8 import int8_mm_reference, quantize_per_token_reference

TRITON = pytest.param("triton", marks=pytest.mark.skipif(find_spec("triton") is None, reason="triton is not installed"))
CPU_BACKENDS = ["cpu", TRITON, "reference"]
CUDA_BACKENDS = ["cuda", TRITON, "reference"]
MM_SHAPES = [(1, 1, 1), (1, 17, 33), (5, 7, 3), (33, 65, 127), (64, 96, 200), (3, 130, 64)]
QUANT_SHAPES = [(1, 1), (3, 17), (33, 127), (8, 1000)]


def _int8(*shape, device="cpu"):
    return torch.randint(-128, 128, shape, dtype=torch.int8, device=device)


def _mm(backend, *args, **kwargs):
    with pycompress.use_backend(backend):
        return pycompress.ops.int8_mm(*args, **kwargs)


def _quant(backend, x):
    with pycompress.use_backend(backend):
        return pycompress.ops.quantize_per_token(x)


def _check_mm_exact(backend, device):
    for M, N, K in MM_SHAPES:
        a, b = _int8(M, K, device=device), _int8(N, K, device=device)
        ones_m = torch.ones(M, device=device)
        ones_n = torch.ones(N, device=device)
        out = _mm(backend, a, b, ones_m, ones_n, None, torch.float32)
        expected = (a.cpu().int() @ b.cpu().int().T).float()
        assert torch.equal(out.cpu(), expected), (backend, M, N, K)


def _check_mm_epilogue(backend, device):
    for M, N, K in MM_SHAPES:
        for out_dtype in (torch.float32, torch.float16, torch.bfloat16):
            for bias_dtype in (None, torch.float32, torch.bfloat16):
                a, b = _int8(M, K, device=device), _int8(N, K, device=device)
                a_scale = torch.rand(M, device=device) * 0.02 + 1e-3
                b_scale = torch.rand(N, device=device) * 0.02 + 1e-3
                bias = None if bias_dtype is None else torch.randn(N, device=device).to(bias_dtype)
                out = _mm(backend, a, b, a_scale, b_scale, bias, out_dtype)
                ref = int8_mm_reference(a, b, a_scale, b_scale, bias, out_dtype)
                assert out.dtype == out_dtype and out.shape == (M, N)
                if out_dtype == torch.float32:
                    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
                else:
                    torch.testing.assert_close(out.float(), ref.float(), rtol=torch.finfo(out_dtype).eps, atol=1e-3)


def _check_quant_exact(backend, device):
    for M, K in QUANT_SHAPES:
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            x = (torch.randn(M, K, device=device) * torch.rand(M, 1, device=device) * 10).to(dtype)
            q, s = _quant(backend, x)
            q_ref, s_ref = quantize_per_token_reference(x)
            assert q.dtype == torch.int8 and s.dtype == torch.float32
            assert torch.equal(q, q_ref), (backend, M, K, dtype)
            assert torch.equal(s, s_ref), (backend, M, K, dtype)


def _check_quant_special_rows(backend, device):
    x = torch.randn(5, 37, device=device)
    x[1] = 0.0
    x[2, 3] = float("nan")
    x[3, 0] = float("inf")
    x[4, 5] = -float("inf")
    tiny = torch.zeros(2, 37, device=device)
    tiny[0, :3] = torch.tensor([1e-38, -5e-39, 0.0])  # 127 / amax overflows to Inf
    tiny[1, 7] = 1e-45  # a subnormal
    q_tiny, s_tiny = _quant(backend, tiny)
    assert q_tiny[0, :3].tolist() == [127, -127, 0] and not q_tiny[0, 3:].any()
    assert q_tiny[1, 7].item() == 127 and q_tiny[1].abs().sum().item() == 127
    q_ref, s_ref = quantize_per_token_reference(tiny)
    assert torch.equal(q_tiny, q_ref) and torch.equal(s_tiny, s_ref)
    q, s = _quant(backend, x)
    assert s[1].item() == 1.0 and not q[1].any()
    for row in (2, 3, 4):
        assert torch.isnan(s[row]) and not q[row].any()
    assert torch.isfinite(s[0]) and q[0].abs().max().item() == 127
    q_ref, s_ref = quantize_per_token_reference(x)
    assert torch.equal(q, q_ref)
    torch.testing.assert_close(s, s_ref, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_int8_mm_exact_cpu(backend):
    _check_mm_exact(backend, "cpu")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_int8_mm_epilogue_cpu(backend):
    _check_mm_epilogue(backend, "cpu")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_quantize_per_token_exact_cpu(backend):
    _check_quant_exact(backend, "cpu")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_quantize_per_token_special_rows_cpu(backend):
    _check_quant_special_rows(backend, "cpu")


@pytest.mark.cuda
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_int8_mm_cuda(backend):
    _check_mm_exact(backend, "cuda")
    _check_mm_epilogue(backend, "cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_quantize_per_token_cuda(backend):
    _check_quant_exact(backend, "cuda")
    _check_quant_special_rows(backend, "cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", TRITON])
def test_int8_mm_cuda_large(backend):
    for M, N, K in [(1024, 1536, 384), (300, 4096, 4096), (17, 4096, 11008)]:
        a, b = _int8(M, K, device="cuda"), _int8(N, K, device="cuda")
        out = _mm(backend, a, b, torch.ones(M, device="cuda"), torch.ones(N, device="cuda"), None, torch.float32)
        expected = torch._int_mm(a, b.T.contiguous().T) if M > 16 else (a.double() @ b.double().T)
        assert torch.equal(out.double(), expected.double()), (backend, M, N, K)


def test_cpu_int8_mm_large_k_exact():
    # |acc| up to 4096 * 128 * 128 = 2^26 exceeds float32's exact integers: compare through float64
    # with scales that make the result exactly representable (power-of-two rescaling).
    a, b = _int8(7, 4096), _int8(9, 4096)
    a[0] = -128
    b[0] = -128
    scale_a = torch.full((7,), 2.0**-10)
    scale_b = torch.full((9,), 2.0**-10)
    out = _mm("cpu", a, b, scale_a, scale_b, None, torch.float32)
    acc = a.int() @ b.int().T
    expected = (acc.double() * 2.0**-20).float()
    assert out[0, 0].item() == 4096 * 128 * 128 * 2.0**-20
    assert torch.equal(out, expected)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_non_contiguous_inputs(backend):
    a_big, b_big = _int8(12, 40), _int8(20, 40)
    a, b = a_big[::2, 1:38], b_big[::3, 1:38]
    assert not a.is_contiguous() and not b.is_contiguous()
    a_scale = torch.rand(24)[::4]
    b_scale = torch.rand(7)
    out = _mm(backend, a, b, a_scale, b_scale, None, torch.float32)
    ref = int8_mm_reference(a.contiguous(), b.contiguous(), a_scale.contiguous(), b_scale, None, torch.float32)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    x = torch.randn(10, 64)[:, ::2]
    q, s = _quant(backend, x)
    q_ref, s_ref = quantize_per_token_reference(x.contiguous())
    assert torch.equal(q, q_ref) and torch.equal(s, s_ref)


@pytest.mark.parametrize("backend", ["cpu", "reference", TRITON])
def test_opcheck(backend):
    a, b = _int8(5, 33), _int8(7, 33)
    a_scale, b_scale = torch.rand(5), torch.rand(7)
    with pycompress.use_backend(backend):
        torch.library.opcheck(torch.ops.pycompress.int8_mm.default, (a, b, a_scale, b_scale, torch.randn(7)),
                              {"out_dtype": torch.bfloat16})
        torch.library.opcheck(torch.ops.pycompress.int8_mm.default, (a, b, a_scale, b_scale), {})
        torch.library.opcheck(torch.ops.pycompress.quantize_per_token.default, (torch.randn(4, 33),))


def test_nan_activation_gives_nan_output_row():
    x = torch.randn(3, 16)
    x[1, 2] = float("nan")
    q, s = pycompress.ops.quantize_per_token(x)
    out = pycompress.ops.int8_mm(q, _int8(4, 16), s, torch.rand(4), None, torch.float32)
    assert torch.isnan(out[1]).all()
    assert torch.isfinite(out[0]).all() and torch.isfinite(out[2]).all()


# ------------------------------------------------------------------ bad input


def _args(M=4, N=5, K=8):
    return _int8(M, K), _int8(N, K), torch.rand(M), torch.rand(N)


@pytest.mark.parametrize(
    "mutate, pattern",
    [
        (lambda a, b, sa, sb: (a.half(), b, sa, sb), r"int8_mm: a must be int8 of shape \[M, K\] \(got float16 \[4, 8\]"),
        (lambda a, b, sa, sb: (a, b[:, :6], sa, sb), r"int8_mm: b must be int8 of shape \[N, K\] with K == a.shape\[1\] .*got int8 \[5, 6\]"),
        (lambda a, b, sa, sb: (a, b, sa[:3], sb), r"int8_mm: a_scale must be float32 of shape \[M\]"),
        (lambda a, b, sa, sb: (a, b, sa, sb.double()), r"int8_mm: b_scale must be float32 .*got float64"),
        (lambda a, b, sa, sb: (a, b.to("meta"), sa, sb), r"int8_mm: b must be int8 .* on cpu \(got int8 \[5, 8\] on meta\)"),
        (lambda a, b, sa, sb: (a[0], b, sa, sb), r"int8_mm: a must be int8 of shape \[M, K\] \(got int8 \[8\]"),
    ],
)
def test_int8_mm_bad_input(mutate, pattern):
    with pytest.raises(ValueError, match=pattern):
        pycompress.ops.int8_mm(*mutate(*_args()))


def test_int8_mm_bad_bias_and_dtype():
    a, b, sa, sb = _args()
    with pytest.raises(ValueError, match=r"int8_mm: bias must be float32 or float16 or bfloat16 of shape \[N\]"):
        pycompress.ops.int8_mm(a, b, sa, sb, torch.randn(4))
    with pytest.raises(ValueError, match=r"int8_mm: out_dtype must be one of float32, float16, bfloat16 \(got torch.float64\)"):
        pycompress.ops.int8_mm(a, b, sa, sb, None, torch.float64)
    with pytest.raises(ValueError, match=r"int8_mm: a and b must have K >= 1"):
        pycompress.ops.int8_mm(_int8(3, 0), _int8(2, 0), torch.rand(3), torch.rand(2))


def test_empty_inputs_defined():
    a, b = _int8(0, 8), _int8(5, 8)
    out = pycompress.ops.int8_mm(a, b, torch.rand(0), torch.rand(5), None, torch.float16)
    assert out.shape == (0, 5) and out.dtype == torch.float16
    q, s = pycompress.ops.quantize_per_token(torch.randn(0, 8))
    assert q.shape == (0, 8) and s.shape == (0,)


def test_quantize_per_token_bad_input():
    with pytest.raises(ValueError, match=r"quantize_per_token: x must be float32 or float16 or bfloat16 of shape \[M, K\] \(got int32"):
        pycompress.ops.quantize_per_token(torch.ones(2, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"quantize_per_token: x must be .*got float32 \[2, 3, 4\]"):
        pycompress.ops.quantize_per_token(torch.ones(2, 3, 4))
    with pytest.raises(ValueError, match=r"quantize_per_token: x must have K >= 1"):
        pycompress.ops.quantize_per_token(torch.ones(2, 0))
    with pytest.raises(TypeError, match=r"quantize_per_token: x must be .*\(got list\)"):
        pycompress.ops.quantize_per_token([[1.0]])
    # Through the dispatcher the schema rejects it first.
    with pytest.raises(RuntimeError, match=r"quantize_per_token\(\) Expected a value of type 'Tensor' for argument 'x'"):
        torch.ops.pycompress.quantize_per_token([[1.0]])


@pytest.mark.parametrize("isa", ["scalar", "auto"])
def test_cpu_isa_paths(isa, monkeypatch):
    # PYCOMPRESS_CPU_ISA is read on every call: both the SIMD path and the portable path are checked.
    monkeypatch.setenv("PYCOMPRESS_CPU_ISA", isa)
    _check_mm_exact("cpu", "cpu")
    _check_mm_epilogue("cpu", "cpu")
    _check_quant_exact("cpu", "cpu")
    _check_quant_special_rows("cpu", "cpu")


@pytest.mark.parametrize("isa", ["scalar", "auto"])
def test_cpu_blocked_path_exact(isa, monkeypatch):
    # M > 96, N > 128 and K > 1024 cross every cache block of the packed path, with -128 everywhere
    # it matters; power-of-two scales keep the float32 output exact despite |acc| > 2^24.
    monkeypatch.setenv("PYCOMPRESS_CPU_ISA", isa)
    M, N, K = 203, 301, 2100
    a, b = _int8(M, K), _int8(N, K)
    a[:, :64] = -128
    b[:, :64] = -128
    out = _mm("cpu", a, b, torch.full((M,), 2.0**-12), torch.full((N,), 2.0**-12), None, torch.float32)
    expected = ((a.int() @ b.int().T).double() * 2.0**-24).float()
    assert torch.equal(out, expected)


def test_cpu_isa_bad_value(monkeypatch):
    monkeypatch.setenv("PYCOMPRESS_CPU_ISA", "avx9000")
    with pytest.raises(RuntimeError, match="PYCOMPRESS_CPU_ISA"):
        _mm("cpu", *_args(), None, torch.float32)
