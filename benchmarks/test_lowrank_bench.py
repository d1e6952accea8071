"""pytest-benchmark microbenchmarks of the fused low-rank and codebook ops against float32 matmul
(`pytest benchmarks`)."""

import pytest
import torch

import pycompress
from pycompress.ops.codebook import pack_indices


@pytest.fixture(scope="module", params=[(64, 1536, 384, 96), (64, 4096, 4096, 1024)],
                ids=lambda s: "M{}_N{}_K{}_r{}".format(*s))
def factors(request):
    M, N, K, r = request.param
    x, v, u = torch.randn(M, K), torch.randn(r, K) / K**0.5, torch.randn(N, r) / r**0.5
    return dict(x=x, v=v, u=u, w=u @ v)


@pytest.mark.benchmark(group="lowrank")
def test_float32_matmul(benchmark, factors):
    benchmark(torch.nn.functional.linear, factors["x"], factors["w"])


@pytest.mark.benchmark(group="lowrank")
def test_two_matmuls(benchmark, factors):
    benchmark(lambda: torch.nn.functional.linear(torch.nn.functional.linear(factors["x"], factors["v"]), factors["u"]))


@pytest.mark.benchmark(group="lowrank")
def test_lowrank_mm(benchmark, factors):
    benchmark(pycompress.ops.lowrank_mm, factors["x"], factors["v"], factors["u"])


@pytest.fixture(scope="module", params=[1, 16], ids=lambda m: f"M{m}_N4096_K4096")
def clustered(request):
    indices = torch.randint(0, 16, (4096, 4096))
    codebook = torch.randn(4096, 16)
    return dict(x=torch.randn(request.param, 4096), idx=pack_indices(indices, 4), codebook=codebook,
                w=torch.gather(codebook, 1, indices))


@pytest.mark.benchmark(group="codebook")
def test_float32_matmul_dense_of_codebook(benchmark, clustered):
    benchmark(torch.nn.functional.linear, clustered["x"], clustered["w"])


@pytest.mark.benchmark(group="codebook")
def test_codebook_mm_4bit(benchmark, clustered):
    benchmark(pycompress.ops.codebook_mm, clustered["x"], clustered["idx"], clustered["codebook"])
