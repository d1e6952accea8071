"""Triton low-bit kernels against the plain-PyTorch contract.

On a CPU machine they run through the Triton interpreter (TRITON_INTERPRET=1, set by the suite's
conftest before Triton is imported); with a GPU and no interpreter they run on the GPU.
"""

import pytest
import torch

pytest.importorskip("triton")
import torch.nn.functional as F

from pycompress.kernels import lowbit as triton_lowbit
from pycompress.ops.lowbit import (
    binary_mm_reference,
    binary_weight_mm_reference,
    dequantize_int8_weight,
    int8_weight_only_mm_reference,
    pack_bits_reference,
    pack_ternary,
    ternary_weight_mm_reference,
    unpack_bits_reference,
    unpack_ternary_reference,
)
from _triton_case import DEVICE, FLOAT_DTYPES, pytestmark  # noqa: E402, F401
from _triton_case import gen as _gen  # noqa: E402


# M up to 4 takes the broadcast-and-reduce path of the weight-only GEMMs, larger M the tl.dot one.
MM_SHAPES = [(1, 1, 1), (1, 9, 31), (3, 5, 33), (4, 70, 129), (5, 17, 100), (17, 3, 16), (33, 65, 257)]


def _signs(shape, gen):
    return torch.where(torch.rand(shape, generator=gen) < 0.5, -1.0, 1.0)


def _with_garbage_padding(bits, K, gen):
    """Fill the bits past K in the last word of each row at random: the kernels must ignore them."""
    used = K % 32
    if not used:
        return bits
    noise = torch.randint(-(1 << 31), 1 << 31, (bits.shape[0],), generator=gen, dtype=torch.int64)
    bits = bits.clone()
    bits[:, -1] |= (noise & ~((1 << used) - 1)).to(torch.int32)
    return bits


def _to_device(*tensors):
    return tuple(None if t is None else t.to(DEVICE) for t in tensors)


def _assert_within_torch_error(out, ref64, torch_lowp):
    """Error against float64 at most twice that of torch computing in the same precision, plus a
    floor for results that torch happens to get (nearly) exact."""
    ours = (out.double() - ref64).abs().max().item()
    theirs = (torch_lowp.double() - ref64).abs().max().item()
    floor = 1e-5 * max(ref64.abs().max().item(), 1.0)
    assert ours <= 2 * theirs + floor, f"error {ours:.3g}, torch's {theirs:.3g}"


# --- pack_bits -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [*FLOAT_DTYPES, torch.int8])
@pytest.mark.parametrize("M, K", [(1, 1), (1, 32), (3, 31), (5, 33), (2, 100), (65, 257), (3, 2050)])
def test_pack_bits_matches_reference(dtype, M, K):
    gen = _gen(M, K)
    if dtype == torch.int8:
        x = torch.randint(-128, 128, (M, K), generator=gen, dtype=torch.int8)
    else:
        x = torch.randn(M, K, generator=gen).to(dtype)

    out = triton_lowbit.pack_bits(x.to(DEVICE)).cpu()

    assert out.dtype == torch.int32 and out.shape == (M, (K + 31) // 32)
    assert torch.equal(out, pack_bits_reference(x))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_pack_bits_special_values(dtype):
    nan, inf = float("nan"), float("inf")
    tiny = torch.finfo(dtype).tiny / 4  # subnormal
    values = [0.0, -0.0, nan, -nan, inf, -inf, tiny, -tiny, -1.0, 1.0]
    x = torch.tensor(values, dtype=torch.float32).to(dtype).repeat(2, 7)[:, :67].contiguous()

    out = triton_lowbit.pack_bits(x.to(DEVICE)).cpu()

    assert torch.equal(out, pack_bits_reference(x))
    # "1 means -1": only -inf, the negative subnormal and -1 set their bits; NaN and -0.0 do not.
    negative = [False, False, False, False, False, True, False, True, True, False]
    expected_bits = torch.tensor(negative * 7)[:67]
    assert torch.equal(unpack_bits_reference(out, 67)[0] < 0, expected_bits)


def test_pack_bits_sets_the_sign_bit_of_the_word():
    x = torch.ones(2, 64)
    x[0, 31] = -1.0
    x[1, 32:] = -1.0

    out = triton_lowbit.pack_bits(x.to(DEVICE)).cpu()

    assert out.tolist() == [[-(1 << 31), 0], [0, -1]]


# --- binary_mm -------------------------------------------------------------------------------

@pytest.mark.parametrize("M, N, K", [(1, 1, 1), (1, 9, 31), (3, 5, 32), (7, 3, 33), (2, 6, 257),
                                     (65, 70, 100), (3, 4, 1000)])
def test_binary_mm_is_exact_and_ignores_padding_bits(M, N, K):
    gen = _gen(M, N, K)
    sa = _signs((M, K), gen)
    sb = _signs((N, K), gen)
    # Extreme rows: all -1 against all +1 gives -K, equal rows K.
    sa[0] = -1.0
    sb[0] = 1.0
    if N > 1:
        sb[-1] = sa[-1]
    a = _with_garbage_padding(pack_bits_reference(sa), K, gen)
    b = _with_garbage_padding(pack_bits_reference(sb), K, gen)
    ones_m = torch.ones(M)
    ones_n = torch.ones(N)
    exact = (sa.double() @ sb.double().T).float()

    out = triton_lowbit.binary_mm(*_to_device(a, b), K, *_to_device(ones_m, ones_n), None, torch.float32).cpu()

    assert out.dtype == torch.float32 and out.shape == (M, N)
    assert torch.equal(out, exact)
    assert out[0, 0] == -K
    assert torch.equal(binary_mm_reference(a, b, K, ones_m, ones_n, None, torch.float32), exact)


@pytest.mark.parametrize("out_dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("bias_dtype", [None, *FLOAT_DTYPES])
def test_binary_mm_scales_and_bias(out_dtype, bias_dtype):
    M, N, K = 37, 75, 150
    gen = _gen(M, N, K)
    a = _with_garbage_padding(pack_bits_reference(_signs((M, K), gen)), K, gen)
    b = _with_garbage_padding(pack_bits_reference(_signs((N, K), gen)), K, gen)
    a_scale = torch.rand(M, generator=gen) * 0.1 + 1e-3
    b_scale = torch.rand(N, generator=gen) * 0.1 + 1e-3
    bias = None if bias_dtype is None else (torch.randn(N, generator=gen) * 10).to(bias_dtype)

    out = triton_lowbit.binary_mm(*_to_device(a, b), K, *_to_device(a_scale, b_scale, bias), out_dtype).cpu()

    assert out.dtype == out_dtype and out.shape == (M, N)
    # The epilogue runs operation by operation without FP fusion, as the reference does.
    assert torch.equal(out, binary_mm_reference(a, b, K, a_scale, b_scale, bias, out_dtype))


# --- int8_weight_only_mm ---------------------------------------------------------------------

def _int8_weight_only_case(M, N, K, dtype, scale_shape, with_bias):
    gen = _gen(M, N, K, len(scale_shape))
    x = torch.randn(M, K, generator=gen).to(dtype)
    w = torch.randint(-128, 128, (N, K), generator=gen, dtype=torch.int8)
    w[0] = -128
    scale = torch.rand(scale_shape, generator=gen) * 0.02 + 1e-3
    bias = torch.randn(N, generator=gen) if with_bias else None

    out = triton_lowbit.int8_weight_only_mm(*_to_device(x, w, scale, bias)).cpu()

    assert out.dtype == dtype and out.shape == (M, N)
    w_deq = dequantize_int8_weight(w, scale)
    ref64 = x.double() @ w_deq.double().T
    lowp = F.linear(x, w_deq.to(dtype))
    if bias is not None:
        ref64 = ref64 + bias.double()
        lowp = lowp + bias.to(dtype)
    _assert_within_torch_error(out, ref64, lowp)
    _assert_within_torch_error(int8_weight_only_mm_reference(x, w, scale, bias), ref64, lowp)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("M, N, K", MM_SHAPES)
def test_int8_weight_only_mm_per_channel(M, N, K, dtype):
    _int8_weight_only_case(M, N, K, dtype, (N,), with_bias=M % 2 == 1)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("M", [1, 3, 20])
@pytest.mark.parametrize("K, group_size", [(64, 32), (128, 64), (256, 128), (192, 64), (384, 128),
                                           (96, 48), (264, 24), (40, 8), (7, 1)])
def test_int8_weight_only_mm_grouped(M, K, group_size, dtype):
    # 48-element groups take K tiles of 16, groups of 24, 8 and 1 scale each weight.
    N = 37
    _int8_weight_only_case(M, N, K, dtype, (N, K // group_size), with_bias=True)


@pytest.mark.parametrize("bias_dtype", FLOAT_DTYPES)
def test_int8_weight_only_mm_bias_dtypes(bias_dtype):
    M, N, K = 6, 10, 50
    gen = _gen(M, N, K)
    x = torch.randn(M, K, generator=gen, dtype=torch.float16)
    w = torch.randint(-128, 128, (N, K), generator=gen, dtype=torch.int8)
    scale = torch.rand(N, generator=gen) * 0.02
    bias = (torch.randn(N, generator=gen) * 10).to(bias_dtype)

    out = triton_lowbit.int8_weight_only_mm(*_to_device(x, w, scale, bias)).cpu()

    expected = int8_weight_only_mm_reference(x, w, scale, bias)
    torch.testing.assert_close(out, expected, rtol=2e-3, atol=2e-3)


# --- binary_weight_mm / ternary_weight_mm ----------------------------------------------------

def _packed_weight_expectation(x, values, alpha, bias):
    w_deq = values * alpha[:, None]
    ref64 = x.double() @ w_deq.double().T
    lowp = F.linear(x, w_deq.to(x.dtype))
    if bias is not None:
        ref64 = ref64 + bias.double()
        lowp = lowp + bias.to(x.dtype)
    return ref64, lowp


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("M, N, K", MM_SHAPES)
def test_binary_weight_mm(M, N, K, dtype):
    gen = _gen(M, N, K)
    x = torch.randn(M, K, generator=gen).to(dtype)
    signs = _signs((N, K), gen)
    # The packed weights' padding bits multiply the zero-padded activations, whatever they hold.
    w_bits = _with_garbage_padding(pack_bits_reference(signs), K, gen)
    alpha = torch.rand(N, generator=gen) + 0.1
    bias = torch.randn(N, generator=gen) if N % 2 else None

    out = triton_lowbit.binary_weight_mm(*_to_device(x, w_bits, alpha, bias)).cpu()

    assert out.dtype == dtype and out.shape == (M, N)
    assert torch.equal(unpack_bits_reference(w_bits, K), signs)
    ref64, lowp = _packed_weight_expectation(x, signs, alpha, bias)
    _assert_within_torch_error(out, ref64, lowp)
    _assert_within_torch_error(binary_weight_mm_reference(x, w_bits, alpha, bias), ref64, lowp)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("M, N, K", MM_SHAPES)
def test_ternary_weight_mm(M, N, K, dtype):
    gen = _gen(M, N, K)
    x = torch.randn(M, K, generator=gen).to(dtype)
    values = torch.randint(-1, 2, (N, K), generator=gen).float()
    w_2bit = pack_ternary(values)
    alpha = torch.rand(N, generator=gen) + 0.1
    bias = torch.randn(N, generator=gen) if N % 2 else None

    out = triton_lowbit.ternary_weight_mm(*_to_device(x, w_2bit, alpha, bias)).cpu()

    assert out.dtype == dtype and out.shape == (M, N)
    assert torch.equal(unpack_ternary_reference(w_2bit, K), values)
    ref64, lowp = _packed_weight_expectation(x, values, alpha, bias)
    _assert_within_torch_error(out, ref64, lowp)
    _assert_within_torch_error(ternary_weight_mm_reference(x, w_2bit, alpha, bias), ref64, lowp)


def test_ternary_weight_mm_decodes_every_code_position():
    # One nonzero weight per row, at each of the 16 positions of a word and of both signs: the
    # output picks out x at that position, so a wrong shift or sign extension shows directly.
    K = 48
    x = torch.arange(1, K + 1, dtype=torch.float32)[None, :].repeat(5, 1)
    values = torch.zeros(2 * K, K)
    values[torch.arange(K), torch.arange(K)] = 1.0
    values[K + torch.arange(K), torch.arange(K)] = -1.0
    alpha = torch.ones(2 * K)

    out = triton_lowbit.ternary_weight_mm(*_to_device(x, pack_ternary(values), alpha, None)).cpu()

    expected = torch.cat([x[0], -x[0]])
    assert torch.equal(out, expected[None, :].repeat(5, 1))
