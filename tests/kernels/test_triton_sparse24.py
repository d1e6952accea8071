"""Triton 2:4 kernels against the plain-PyTorch contract.

On a CPU machine they run through the Triton interpreter (TRITON_INTERPRET=1, set by the suite's
conftest before Triton is imported); with a GPU and no interpreter they run on the GPU.
"""

import itertools
import pytest
import torch

pytest.importorskip("triton")

from pycompress.kernels import sparse24 as triton_sparse24
from pycompress.ops.sparse24 import sparse24_compress_reference, sparse24_decompress, sparse24_mm_reference
from _triton_case import DEVICE, FLOAT_DTYPES, pytestmark  # noqa: E402, F401
from _triton_case import gen as _gen  # noqa: E402


_SAME_WIDTH_INT = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}
# The kernels form only the kept products for M <= _REDUCE_MAX_M and call tl.dot above; the shapes
# span several tiles of N and K and end K in a partial tile of each path's configs.
MM_SHAPES = [(1, 1, 16), (1, 40, 144), (2, 9, 48), (4, 33, 80), (5, 17, 144), (16, 40, 64), (21, 40, 144)]


def _random_24(N, K, gen, values=None):
    """A 2:4 weight whose groups hold 0, 1 or 2 non-zeros at random positions (every pattern)."""
    keep = torch.rand(N, K // 4, 4, generator=gen).argsort(-1) < torch.randint(0, 3, (N, K // 4, 1), generator=gen)
    w = torch.randn(N, K, generator=gen) if values is None else values
    return w * keep.reshape(N, K)


def _bits(t):
    return t.view(_SAME_WIDTH_INT[t.dtype])


def _compress(w):
    values, meta = triton_sparse24.sparse24_compress(w.to(DEVICE))
    return values.cpu(), meta.cpu()


# --- sparse24_compress ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("N, K", [(1, 16), (3, 48), (17, 112), (64, 256), (2, 2064), (4099, 16)])
def test_compress_matches_reference_bit_for_bit(dtype, N, K):
    w = _random_24(N, K, _gen(N, K)).to(dtype)

    values, meta = _compress(w)
    ref_values, ref_meta = sparse24_compress_reference(w)

    assert values.dtype == dtype and values.shape == (N, K // 2)
    assert meta.dtype == torch.int16 and meta.shape == (N, K // 16)
    assert torch.equal(meta, ref_meta)
    assert torch.equal(_bits(values), _bits(ref_values))
    assert torch.equal(sparse24_decompress(values, meta), w)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_compress_every_group_pattern_and_special_values(dtype):
    # Every placement of 0, 1 or 2 non-zeros in a group of 4, with the stored entries drawn from
    # NaN, +-Inf, -0.0 (which counts as zero and keeps its sign bit when kept) and, in bfloat16
    # and float16, subnormals; zero positions hold +0.0 or -0.0.
    nan, inf = float("nan"), float("inf")
    tiny = torch.finfo(dtype).tiny / 4 if dtype != torch.float32 else 1e-40
    specials = [nan, inf, -inf, 1.5, -2.0, tiny, -tiny]
    patterns = [p for n in range(3) for p in itertools.combinations(range(4), n)]
    groups = []
    for i, (pattern, (a, b)) in enumerate(itertools.product(patterns, itertools.product(specials, repeat=2))):
        group = [-0.0 if i % 2 else 0.0] * 4
        for position, value in zip(pattern, (a, b)):
            group[position] = value
        groups.append(group)
    groups += [[0.0, 0.0, 0.0, 0.0]] * (-len(groups) % 4)
    w = torch.tensor(groups, dtype=torch.float32).reshape(-1, 16).to(dtype)

    values, meta = _compress(w)
    ref_values, ref_meta = sparse24_compress_reference(w)

    assert torch.equal(meta, ref_meta)
    assert torch.equal(_bits(values), _bits(ref_values))
    # -0.0 survives as a stored zero: the selection never computes with the values.
    assert (_bits(ref_values) == _bits(torch.tensor(-0.0, dtype=dtype))).any()


# --- sparse24_mm ---------------------------------------------------------------------------------

def _mm(x, values, meta, bias):
    args = [None if t is None else t.to(DEVICE) for t in (x, values, meta, bias)]
    return triton_sparse24.sparse24_mm(*args).cpu()


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("M, N, K", MM_SHAPES)
def test_mm_matches_reference(dtype, M, N, K):
    gen = _gen(M, N, K)
    w = _random_24(N, K, gen).to(dtype)
    values, meta = sparse24_compress_reference(w)
    x = torch.randn(M, K, generator=gen).to(dtype)
    # A bias in another float dtype than x is upcast, not x's precision.
    bias = torch.randn(N, generator=gen).to(torch.float32 if dtype != torch.float32 else torch.bfloat16)

    for b in (None, bias):
        out = _mm(x, values, meta, b)
        assert out.dtype == dtype and out.shape == (M, N)
        if dtype == torch.float32:
            torch.testing.assert_close(out, sparse24_mm_reference(x, values, meta, b), rtol=1e-5, atol=1e-4)
        else:
            # Error against float64 within twice torch's own in this precision (plus a floor).
            shift = 0 if b is None else b.double()
            exact = x.double() @ w.double().T + shift
            ours = (out.double() - exact).abs().max().item()
            theirs = (torch.nn.functional.linear(x, w).double() + shift - exact).abs().max().item()
            assert ours <= 2 * theirs + 1e-2, (ours, theirs)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("M", [1, 3, 6, 21])
def test_mm_exact_on_small_integers(dtype, M):
    # Small integers multiply and add exactly in float32, so the result equals the reference bit
    # for bit (both round the same float32 sum once): any decoding slip shows.
    N, K = 45, 208
    gen = _gen(M, N, K, 7)
    w = _random_24(N, K, gen, torch.randint(-8, 9, (N, K), generator=gen).float()).to(dtype)
    values, meta = sparse24_compress_reference(w)
    x = torch.randint(-8, 9, (M, K), generator=gen).to(dtype)
    bias = torch.randint(-50, 51, (N,), generator=gen).to(dtype)

    out = _mm(x, values, meta, bias)

    assert torch.equal(out, sparse24_mm_reference(x, values, meta, bias))
    assert torch.equal(out.double(), (x.double() @ w.double().T + bias.double()).to(dtype).double())


@pytest.mark.parametrize("M", [2, 9])
def test_mm_nan_in_x_reaches_the_rows_it_meets(M):
    N, K = 24, 64
    gen = _gen(M, N, K)
    w = _random_24(N, K, gen)
    w[: N // 2, 4:8] = torch.tensor([0.0, 1.0, 0.0, -2.0])  # column 5 is stored in the first half of the rows
    values, meta = sparse24_compress_reference(w)
    x = torch.randn(M, K, generator=gen)
    x[1, 5] = float("nan")

    out = _mm(x, values, meta, None)
    ref = sparse24_mm_reference(x, values, meta, None)

    assert torch.isnan(out[1, : N // 2]).all()
    rows = [m for m in range(M) if m != 1]
    torch.testing.assert_close(out[rows], ref[rows], rtol=1e-5, atol=1e-4)
