"""Triton int8 kernels against the plain-PyTorch contract.

On a CPU machine they run through the Triton interpreter (TRITON_INTERPRET=1, set by the suite's
conftest before Triton is imported); with a GPU and no interpreter they run on the GPU.
"""

import pytest
import torch

pytest.importorskip("triton")

from pycompress.kernels import int8 as triton_int8
from pycompress.ops.int8 import int8_mm_reference as _ref_int8_mm
from pycompress.ops.int8 import quantize_per_token_reference as _ref_quantize_per_token
from _triton_case import DEVICE, FLOAT_DTYPES, pytestmark  # noqa: E402, F401


def _randint8(shape, gen):
    return torch.randint(-128, 128, shape, generator=gen, dtype=torch.int8)


def _assert_bits_equal(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize(
    "M, N, K",
    [(1, 1, 1), (1, 9, 70), (7, 1, 33), (17, 33, 65), (64, 64, 64), (65, 130, 127),
     (577, 70, 33), (3, 5, 1000)],
)
def test_int8_mm_accumulates_exactly(M, N, K):
    gen = torch.Generator().manual_seed(M * 1_000_003 + N * 1009 + K)
    a = _randint8((M, K), gen)
    b = _randint8((N, K), gen)
    # Extreme rows give the largest magnitudes the accumulator sees: (+-128)^2 * K, < 2^24 here.
    a[0] = -128
    b[0] = -128
    if M > 1:
        a[-1] = 127
    if N > 1:
        b[-1] = -128
    ones_m = torch.ones(M, dtype=torch.float32)
    ones_n = torch.ones(N, dtype=torch.float32)
    exact = (a.long() @ b.long().T).float()

    out = triton_int8.int8_mm(a.to(DEVICE), b.to(DEVICE), ones_m.to(DEVICE), ones_n.to(DEVICE),
                              None, torch.float32).cpu()

    assert out.dtype == torch.float32 and out.shape == (M, N)
    assert torch.equal(out, exact)
    assert torch.equal(_ref_int8_mm(a, b, ones_m, ones_n, None, torch.float32), exact)


@pytest.mark.parametrize("out_dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("bias_dtype", [None, *FLOAT_DTYPES])
def test_int8_mm_scales_and_bias(out_dtype, bias_dtype):
    M, N, K = 37, 75, 150
    gen = torch.Generator().manual_seed(7)
    a = _randint8((M, K), gen)
    b = _randint8((N, K), gen)
    a_scale = torch.rand(M, generator=gen) * 0.02 + 1e-3
    b_scale = torch.rand(N, generator=gen) * 0.02 + 1e-3
    bias = None if bias_dtype is None else (torch.randn(N, generator=gen) * 10).to(bias_dtype)

    out = triton_int8.int8_mm(
        a.to(DEVICE), b.to(DEVICE), a_scale.to(DEVICE), b_scale.to(DEVICE),
        None if bias is None else bias.to(DEVICE), out_dtype,
    ).cpu()
    expected = _ref_int8_mm(a, b, a_scale, b_scale, bias, out_dtype)

    assert out.dtype == out_dtype and out.shape == (M, N)
    # The contract tolerates an FMA for the bias add; this kernel is compiled without FP fusion and
    # so matches the reference bit for bit.
    assert torch.equal(out, expected)


@pytest.mark.parametrize("out_dtype", FLOAT_DTYPES)
def test_int8_mm_output_cast_rounds_half_to_even(out_dtype):
    # Sums that are exact in float32 and halfway between two bfloat16 (257, 259) or float16
    # (2049, 2051) neighbours, on both sides of an even significand.
    targets = [257, 259, -257, -259, 2049, 2051, -2051, 253, 1, 0]
    K = 17
    b = torch.zeros(len(targets), K, dtype=torch.int8)
    for row, target in enumerate(targets):
        step = 127 if target > 0 else -128
        full, rest = divmod(target, step)
        b[row, :full] = step
        b[row, full] = rest
    a = torch.ones(1, K, dtype=torch.int8)
    assert (b.long().sum(dim=1) == torch.tensor(targets)).all()
    ones_m = torch.ones(1)
    ones_n = torch.ones(len(targets))

    out = triton_int8.int8_mm(a.to(DEVICE), b.to(DEVICE), ones_m.to(DEVICE), ones_n.to(DEVICE),
                              None, out_dtype).cpu()

    assert torch.equal(out[0], torch.tensor(targets, dtype=torch.float32).to(out_dtype))


@pytest.mark.parametrize("out_dtype", FLOAT_DTYPES)
def test_int8_mm_nan_scale_poisons_its_row(out_dtype):
    M, N, K = 5, 6, 40
    gen = torch.Generator().manual_seed(11)
    a = _randint8((M, K), gen)
    b = _randint8((N, K), gen)
    # Scales small enough that the finite rows fit in float16.
    a_scale = torch.rand(M, generator=gen) * 0.01 + 1e-3
    a_scale[2] = float("nan")
    b_scale = torch.rand(N, generator=gen) * 0.01 + 1e-3

    out = triton_int8.int8_mm(a.to(DEVICE), b.to(DEVICE), a_scale.to(DEVICE), b_scale.to(DEVICE),
                              None, out_dtype).cpu()

    assert torch.isnan(out[2]).all()
    assert torch.isfinite(out[[0, 1, 3, 4]]).all()
    _assert_bits_equal(out, _ref_int8_mm(a, b, a_scale, b_scale, None, out_dtype))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("M, K", [(1, 1), (1, 7), (5, 33), (64, 1000), (3, 8229)])
def test_quantize_per_token_matches_reference(dtype, M, K):
    gen = torch.Generator().manual_seed(M * 100_003 + K)
    # Row magnitudes spread over six decades so the scales differ widely.
    row_scale = 10.0 ** (torch.rand(M, 1, generator=gen) * 6 - 3)
    x = (torch.randn(M, K, generator=gen) * row_scale).to(dtype)

    q, scale = triton_int8.quantize_per_token(x.to(DEVICE))
    ref_q, ref_scale = _ref_quantize_per_token(x)

    assert q.dtype == torch.int8 and q.shape == (M, K)
    assert scale.dtype == torch.float32 and scale.shape == (M,)
    assert torch.equal(q.cpu(), ref_q)
    _assert_bits_equal(scale.cpu(), ref_scale)


# The interpreter computes with numpy, which warns about the Inf and NaN arithmetic these rows need.
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("K", [8, 8229])
def test_quantize_per_token_special_rows(dtype, K):
    nan, inf = float("nan"), float("inf")
    # With amax = 127 the inverse scale is exactly 1, so the tie row checks round-half-to-even.
    ties = [127.0, 0.5, 1.5, 2.5, -0.5, -2.5, -126.5, 126.5]
    patterns = [
        [0.0] * 8,
        [1.0, nan, 2.0, 0.0, 0.0, 0.0, 0.0, -1.0],
        [1.0, 0.0, inf, 0.0, 0.0, 0.0, 0.0, 3.0],
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 5.0, -inf],
        ties,
        [-3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [1e-38, 0.0, -5e-39, 0.0, 3e-39, 0.0, 0.0, 0.0],
    ]
    # The patterns sit at the end of each row so that, for the long rows, they fall in the
    # partial last tile.
    x = torch.zeros(len(patterns), K, dtype=dtype)
    x[:, K - 8:] = torch.tensor(patterns, dtype=torch.float32).to(dtype)

    q, scale = triton_int8.quantize_per_token(x.to(DEVICE))
    q, scale = q.cpu(), scale.cpu()
    ref_q, ref_scale = _ref_quantize_per_token(x)

    assert torch.equal(q, ref_q)
    _assert_bits_equal(scale, ref_scale)
    assert scale[0] == 1.0 and not q[0].any()
    assert torch.isnan(scale[1:4]).all() and not q[1:4].any()
    assert scale[4] == 1.0
    assert q[4, K - 8:].tolist() == [127, 0, 2, 2, 0, -2, -126, 126]
    assert q[5, K - 8] == -127 and not q[5, :K - 8].any() and not q[5, K - 7:].any()
