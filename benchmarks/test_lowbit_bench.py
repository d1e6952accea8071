"""pytest-benchmark microbenchmarks of the low-bit ops against float32 matmul (`pytest benchmarks`)."""

import pytest
import torch

import pycompress
from pycompress.ops import lowbit as L


@pytest.fixture(scope="module", params=[(1, 4096, 4096), (64, 4096, 4096)], ids=lambda s: "M{}_N{}_K{}".format(*s))
def operands(request):
    M, N, K = request.param
    x, w = torch.randn(M, K), torch.randn(N, K)
    q = torch.randint(-127, 128, (N, K), dtype=torch.int8)
    return dict(x=x, w=w, q=q, scale=torch.rand(N), a_bits=L.pack_bits_reference(x), w_bits=L.pack_bits_reference(w),
                w_2bit=L.pack_ternary(torch.sign(w) * (w.abs() > 0.5)), K=K, M=M, N=N)


@pytest.mark.benchmark(group="lowbit")
def test_float32_matmul(benchmark, operands):
    benchmark(torch.nn.functional.linear, operands["x"], operands["w"])


@pytest.mark.benchmark(group="lowbit")
def test_int8_weight_only_mm(benchmark, operands):
    o = operands
    benchmark(pycompress.ops.int8_weight_only_mm, o["x"], o["q"], o["scale"], None)


@pytest.mark.benchmark(group="lowbit")
def test_binary_mm(benchmark, operands):
    o = operands
    benchmark(pycompress.ops.binary_mm, o["a_bits"], o["w_bits"], o["K"], torch.ones(o["M"]), o["scale"], None,
              torch.float32)


@pytest.mark.benchmark(group="lowbit")
def test_binary_weight_mm(benchmark, operands):
    o = operands
    benchmark(pycompress.ops.binary_weight_mm, o["x"], o["w_bits"], o["scale"], None)


@pytest.mark.benchmark(group="lowbit")
def test_ternary_weight_mm(benchmark, operands):
    o = operands
    benchmark(pycompress.ops.ternary_weight_mm, o["x"], o["w_2bit"], o["scale"], None)
