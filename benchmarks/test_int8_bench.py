"""pytest-benchmark microbenchmarks of the int8 ops and their baselines (`pytest benchmarks`).

Timings are compared side by side by pytest-benchmark's table; the runner (benchmarks/run.py)
writes the ratios to benchmarks/results/<device>/int8.json.
"""

import pytest
import torch

import pycompress
from pycompress.ops.int8 import quantize_per_token_reference

SHAPES = [(4096, 1536, 384), (64, 4096, 4096), (32, 384, 384)]


@pytest.fixture(params=SHAPES, ids=lambda s: "M{}_N{}_K{}".format(*s))
def operands(request):
    M, N, K = request.param
    x = torch.randn(M, K)
    w = torch.randn(N, K)
    qx, sx = quantize_per_token_reference(x)
    qw, sw = quantize_per_token_reference(w)
    return x, w, qx, sx, qw, sw


@pytest.mark.benchmark(group="int8_mm")
def test_int8_mm_cpu(benchmark, operands):
    x, w, qx, sx, qw, sw = operands
    with pycompress.use_backend("cpu"):
        benchmark(pycompress.ops.int8_mm, qx, qw, sx, sw, None, torch.float32)


@pytest.mark.benchmark(group="int8_mm")
def test_float32_matmul_baseline(benchmark, operands):
    x, w, *_ = operands
    benchmark(torch.nn.functional.linear, x, w)


@pytest.mark.benchmark(group="quantize_per_token")
def test_quantize_per_token_cpu(benchmark, operands):
    x = operands[0]
    with pycompress.use_backend("cpu"):
        benchmark(pycompress.ops.quantize_per_token, x)
