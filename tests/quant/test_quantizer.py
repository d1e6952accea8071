"""The shared Quantizer: ranges, granularities, round trips and errors."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pycompress.quant import Quantizer


@settings(max_examples=60, deadline=None)
@given(
    bits=st.integers(2, 8),
    symmetric=st.booleans(),
    granularity=st.sampled_from(["tensor", "channel", "group"]),
    rows=st.integers(1, 6),
    groups=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_round_trip_error_is_at_most_half_a_step(bits, symmetric, granularity, rows, groups, seed):
    g = torch.Generator().manual_seed(seed)
    group_size = 8
    x = torch.randn(rows, groups * group_size, generator=g) * (torch.rand(rows, 1, generator=g) * 5 + 0.1)
    quantizer = Quantizer(bits, symmetric, granularity, group_size if granularity == "group" else None)
    scale, zero_point = quantizer.params(x)
    q = quantizer.quantize(x, scale, zero_point)
    assert q.min() >= quantizer.qmin and q.max() <= quantizer.qmax
    err = (quantizer.dequantize(q, scale, zero_point) - x).abs()
    step = quantizer._grouped(torch.ones_like(x)) * scale[..., None]
    assert (err <= step.reshape(x.shape) * 0.5 + 1e-5).all()


def test_finer_granularity_is_more_accurate_at_low_bits():
    torch.manual_seed(0)
    w = torch.randn(64, 128) * torch.logspace(-2, 1, 64)[:, None]
    errors = {}
    for granularity, gs in (("tensor", None), ("channel", None), ("group", 32)):
        quantizer = Quantizer(3, True, granularity, gs)
        errors[granularity] = (quantizer.fake_quantize(w) - w).pow(2).mean().item()
    assert errors["group"] <= errors["channel"] < errors["tensor"]


def test_symmetric_ranges_and_zero_rows():
    q8 = Quantizer(8)
    assert (q8.qmin, q8.qmax) == (-127, 127)
    assert (Quantizer(4, symmetric=False).qmin, Quantizer(4, symmetric=False).qmax) == (0, 15)
    x = torch.zeros(2, 4)
    x[1] = torch.tensor([1.0, -2.0, 0.5, 0.0])
    scale, zp = q8.params(x)
    assert scale[0].item() == 1.0 and torch.equal(q8.quantize(x, scale, zp)[0], torch.zeros(4, dtype=torch.int32))
    assert q8.quantize(x, scale, zp)[1].tolist() == [64, -127, 32, 0]


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(bits=1), r"Quantizer: bits must be an int in 2..8 \(got 1\)"),
        (dict(bits=9), r"Quantizer: bits must be an int in 2..8 \(got 9\)"),
        (dict(granularity="row"), r"Quantizer: granularity must be one of tensor, channel, group \(got 'row'\)"),
        (dict(granularity="group"), r"Quantizer: group_size must be a positive int"),
        (dict(group_size=32), r"Quantizer: group_size is only used with granularity='group'"),
    ],
)
def test_bad_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        Quantizer(**kwargs)


def test_bad_inputs():
    with pytest.raises(ValueError, match="Quantizer: group_size 32 must divide K = 48"):
        Quantizer(4, granularity="group", group_size=32).params(torch.randn(2, 48))
    with pytest.raises(ValueError, match="Quantizer: x holds NaN or Inf"):
        Quantizer(8).params(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match=r"Quantizer: x must be 2-D"):
        Quantizer(8).params(torch.randn(3))
