"""Low-rank op family: every backend against the reference, autograd, opcheck, and bad input."""

from importlib.util import find_spec

import pytest
import torch
from torch.nn import functional as F

import pycompress
from pycompress.ops import lowrank as L

TRITON = pytest.param("triton", marks=pytest.mark.skipif(find_spec("triton") is None, reason="triton is not installed"))
CPU_BACKENDS = ["cpu", TRITON, "reference"]
CUDA_BACKENDS = ["cuda", TRITON, "reference"]
FLOATS = [torch.float32, torch.float16, torch.bfloat16]
# (M, N, K, r): tails in every dimension, r above K, r not a multiple of any tile.
SHAPES = [(1, 1, 1, 1), (1, 9, 32, 4), (3, 5, 48, 7), (5, 17, 112, 33), (33, 20, 64, 16), (2, 7, 144, 100),
          (4, 8, 16, 24), (16, 64, 256, 64), (70, 96, 384, 96)]


def _call(backend, *args):
    with pycompress.use_backend(backend):
        return pycompress.ops.lowrank_mm(*args)


def _factors(M, N, K, r, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g)
    v = torch.randn(r, K, generator=g) / K**0.5
    u = torch.randn(N, r, generator=g) / r**0.5
    bias = torch.randn(N, generator=g)
    return [t.to(dtype).to(device) for t in (x, v, u, bias)]


def _check(backend, device, shapes=SHAPES):
    for M, N, K, r in shapes:
        for dtype in FLOATS:
            x, v, u, bias = _factors(M, N, K, r, dtype, device, seed=M * N + K + r)
            for b in (None, bias):
                out = _call(backend, x, v, u, b)
                assert out.dtype == dtype and out.shape == (M, N), (backend, M, N, K, r, dtype)
                if dtype == torch.float32:
                    torch.testing.assert_close(out, L.lowrank_mm_reference(x, v, u, b), rtol=1e-5, atol=1e-4)
                else:
                    # Error against float64 within twice that of two torch matmuls in this dtype (plus a floor).
                    exact = (x.double() @ v.double().T) @ u.double().T + (0 if b is None else b.double())
                    ours = (out.double() - exact).abs().max().item()
                    theirs = (F.linear(F.linear(x, v), u, b).double() - exact).abs().max().item()
                    assert ours <= 2 * theirs + 1e-2, (backend, M, N, K, r, dtype, ours, theirs)
    # Non-contiguous inputs give the result of their contiguous copies.
    x, v, u, bias = _factors(6, 24, 64, 8, torch.float32, device, seed=1)
    xs = torch.randn(6, 128, device=device)[:, ::2]
    torch.testing.assert_close(_call(backend, xs, v, u.T.contiguous().T, bias),
                               L.lowrank_mm_reference(xs.contiguous(), v, u, bias), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_lowrank_mm_cpu(backend):
    _check(backend, "cpu")


@pytest.mark.parametrize("isa", ["scalar", "auto"])
def test_cpu_isa_paths(isa, monkeypatch):
    monkeypatch.setenv("PYCOMPRESS_CPU_ISA", isa)
    for M in (1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 17, 64, 300):
        for K, N, r in ((384, 96, 96), (100, 33, 17), (520, 300, 130), (320, 90, 272)):
            x, v, u, bias = _factors(M, N, K, r, torch.float32, "cpu", seed=M + K)
            torch.testing.assert_close(_call("cpu", x, v, u, bias), L.lowrank_mm_reference(x, v, u, bias),
                                       rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype", FLOATS)
def test_cpu_tile_edges(dtype):
    """The CPU kernel writes y from register tiles of 12 or 6 rows of u by 8 or 16 rows of x, transposed in
    registers: every count of rows left over in either direction lands in the right place, with the bias,
    in every output dtype (a store past a row's last column would overwrite the next row's first ones)."""
    for M in (5, 8, 9, 13, 24, 40, 64, 70):
        for N in list(range(1, 26)) + [47, 49]:
            x, v, u, bias = _factors(M, N, 40, 20, dtype, "cpu", seed=M * 100 + N)
            for b in (None, bias):
                out = _call("cpu", x, v, u, b)
                want = L.lowrank_mm_reference(x, v, u, b)
                tol = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-2, atol=2e-2)
                torch.testing.assert_close(out, want, **tol)


def test_cpu_depth_blocks():
    """The CPU register tiles run their depth (K in the first product, r in the second) in unrolled blocks of
    16 steps and then one step at a time, and the first product in depth blocks of 256: depths just below,
    at and above those sizes, in both layouts (M = 9 and 64 unpacked, 300 packed above two blocks per
    thread), give the reference's result."""
    for M in (9, 64, 300):
        for K, r in ((15, 16), (16, 15), (17, 31), (33, 32), (47, 33), (255, 17), (256, 48), (257, 1), (273, 47)):
            x, v, u, bias = _factors(M, 50, K, r, torch.float32, "cpu", seed=M + 7 * K + r)
            torch.testing.assert_close(_call("cpu", x, v, u, bias), L.lowrank_mm_reference(x, v, u, bias),
                                       rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_cpu_thread_counts(threads):
    """The CPU kernel splits its work by the thread count (rows of v and u, or runs of row panels) and
    picks its layout by the row blocks per thread (packed factors above two blocks of 64 rows each):
    every split gives the reference's result, bias and reduced-precision rounding of t included."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for M in (1, 3, 4, 5, 16, 48, 64, 65, 128, 129, 300):
            for dtype in (torch.float32, torch.bfloat16):
                x, v, u, bias = _factors(M, 200, 136, 40, dtype, "cpu", seed=M + threads)
                want = L.lowrank_mm_reference(x, v, u, bias)
                tol = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
                torch.testing.assert_close(_call("cpu", x, v, u, bias), want, **tol)
        # Many units of work, which the threads take from the backs of each other's runs once their own
        # is done: every unit written once, whichever thread takes it. Steps of rows of u (21, the last
        # one short: one block, unpacked), row tiles (100 + 1 short: packed factors) and row panels
        # (blocks of 64 rows at r = 512: unpacked).
        for rep in range(4):
            for M, N, K, r in ((64, 1000, 136, 40), (601, 200, 136, 40), (600, 100, 520, 512)):
                x, v, u, bias = _factors(M, N, K, r, torch.float32, "cpu", seed=rep + 10 * threads)
                torch.testing.assert_close(_call("cpu", x, v, u, bias), L.lowrank_mm_reference(x, v, u, bias),
                                           rtol=1e-5, atol=1e-4)
    finally:
        torch.set_num_threads(before)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_lowrank_mm_cuda(backend):
    _check(backend, "cuda", SHAPES + [(64, 4096, 4096, 1024), (2048, 1536, 384, 96), (1, 8192, 8192, 512)])


@pytest.mark.parametrize("backend", ["cpu", "reference", TRITON])
def test_opcheck(backend):
    x, v, u, bias = _factors(3, 12, 32, 5, torch.float32, "cpu", seed=2)
    with pycompress.use_backend(backend):
        op = torch.ops.pycompress.lowrank_mm.default
        torch.library.opcheck(op, (x, v, u, bias))
        torch.library.opcheck(op, (x[:1], v, u, None))
        torch.library.opcheck(op, (x.requires_grad_(), v.requires_grad_(), u.requires_grad_(), bias.requires_grad_()))


def test_autograd_matches_two_linears():
    x, v, u, bias = (t.requires_grad_() for t in _factors(5, 12, 32, 6, torch.float32, "cpu", seed=3))
    y = pycompress.ops.lowrank_mm(x, v, u, bias)
    grads = torch.autograd.grad(y.square().sum(), (x, v, u, bias))
    expected = torch.autograd.grad(F.linear(F.linear(x, v), u, bias).square().sum(), (x, v, u, bias))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # Only the inputs that require grad get one.
    v2 = v.detach()
    dx, = torch.autograd.grad(pycompress.ops.lowrank_mm(x, v2, u.detach()).sum(), (x,))
    torch.testing.assert_close(dx, torch.ones(5, 12) @ u.detach() @ v2)


def test_bad_input():
    x, v, u, bias = _factors(2, 6, 16, 4, torch.float32, "cpu", seed=4)
    op = pycompress.ops.lowrank_mm
    with pytest.raises(ValueError, match=r"lowrank_mm: v must be float32 of shape \[r, K\] with K == x.shape\[1\]"):
        op(x, v[:, :8], u)
    with pytest.raises(ValueError, match=r"lowrank_mm: v must have rank r >= 1 rows"):
        op(x, v[:0], u[:, :0])
    with pytest.raises(ValueError, match=r"lowrank_mm: u must be float32 of shape \[N, r\] with r == v.shape\[0\]"):
        op(x, v, u[:, :3])
    with pytest.raises(ValueError, match=r"lowrank_mm: u must be float32 .* \(got float16"):
        op(x, v, u.half())
    with pytest.raises(ValueError, match=r"lowrank_mm: bias must be float32 or float16 or bfloat16 of shape \[N\]"):
        op(x, v, u, bias[:5])
    with pytest.raises(ValueError, match=r"lowrank_mm: x must be float32 or float16 or bfloat16"):
        op(x.int(), v, u)


def test_empty_inputs():
    x, v, u, bias = _factors(2, 6, 16, 4, torch.float32, "cpu", seed=5)
    assert pycompress.ops.lowrank_mm(x[:0], v, u, bias).shape == (0, 6)
    assert pycompress.ops.lowrank_mm(x, v, u[:0]).shape == (2, 0)


def test_cpu_fast_path_takes_only_plain_valid_calls(monkeypatch):
    """The public lowrank_mm sends a plain eager CPU call straight to the native op, which takes only valid,
    contiguous arguments of its dtypes, and every other call through the checked path (validation, backend
    choice, custom op): the same results either way, each condition of the fast path is needed, and every
    invalid argument still gets the checked path's error naming it."""
    checked_calls = []

    def checked(*args):
        checked_calls.append(args)
        return L._lowrank_mm_checked(*args)

    op = L._with_cpu_fast_path(checked)
    x, v, u, bias = _factors(9, 30, 40, 8, torch.float32, "cpu", seed=11)
    pycompress.ops.lowrank_mm(x, v, u, bias)  # the native cpu backend is selected (and cached) once

    def taken(*args):
        checked_calls.clear()
        out = op(*args)
        torch.testing.assert_close(out, L._lowrank_mm_checked(*args), rtol=0, atol=0)
        return not checked_calls

    for dtype in FLOATS:
        xd, vd, ud, bd = _factors(9, 30, 40, 8, dtype, "cpu", seed=12)
        assert taken(xd, vd, ud, None) and taken(xd, vd, ud, bd) and taken(xd, vd, ud, bd.float())
    with torch.no_grad():
        assert taken(x, torch.nn.Parameter(v), torch.nn.Parameter(u), torch.nn.Parameter(bias))
    with torch.inference_mode():
        assert taken(x, v, u, bias)
    assert taken(x, torch.nn.Parameter(v, requires_grad=False), u, bias)
    # Autograd to record, another backend asked for, a tensor subclass, a layout the kernel does not
    # take as is: the checked path.
    assert not taken(x, torch.nn.Parameter(v), u, bias)
    with pycompress.use_backend("reference"):
        assert not taken(x, v, u, bias)
    monkeypatch.setenv("PYCOMPRESS_BACKEND", "lowrank_mm=reference")
    assert not taken(x, v, u, bias)
    monkeypatch.delenv("PYCOMPRESS_BACKEND")
    assert taken(x, v, u, bias)

    class Sub(torch.Tensor):
        pass

    assert not taken(x.as_subclass(Sub), v, u, bias)
    assert not taken(x.t().contiguous().t(), v, u, bias)
    assert not taken(x, v, u, torch.stack([bias, bias], 1)[:, 0])
    assert taken(x[:0], v, u, bias) and op(x[:0], v, u, bias).shape == (0, 30)
    # Invalid arguments reach the checked path, which names them.
    with pytest.raises(ValueError, match=r"lowrank_mm: u must be float32 .* \(got float16"):
        op(x, v, u.half())
    for bad_bias in (bias.view(1, -1), bias.int(), bias.double(), bias[:-1]):
        with pytest.raises(ValueError, match=r"lowrank_mm: bias must be float32 or float16 or bfloat16 of shape \[N\]"):
            op(x, v, u, bad_bias)
    with pytest.raises(ValueError, match=r"lowrank_mm: x must be float32 or float16 or bfloat16"):
        op(x.int(), v.int(), u.int())
    with pytest.raises(ValueError, match=r"lowrank_mm: v must have rank r >= 1 rows"):
        op(x, v[:0], u[:, :0])
    assert checked_calls
