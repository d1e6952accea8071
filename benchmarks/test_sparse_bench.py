"""pytest-benchmark microbenchmarks of the sparse ops against float32 matmul and torch.sparse CSR
(`pytest benchmarks`)."""

import pytest
import torch

import pycompress
from pycompress.formats.sparse import pack_bsr, pack_csr
from pycompress.ops.sparse24 import sparse24_compress_reference
from pycompress.prune.masks import nm_mask


@pytest.fixture(scope="module", params=[(1, 4096, 4096), (64, 4096, 4096)], ids=lambda s: "M{}_N{}_K{}".format(*s))
def operands(request):
    M, N, K = request.param
    x, w = torch.randn(M, K), torch.randn(N, K)
    w24 = w * nm_mask(w.abs())
    w90 = w * (torch.rand(N, K) >= 0.9)
    w_blocks = w * (torch.rand(N // 32, K // 32) >= 0.9).repeat_interleave(32, 0).repeat_interleave(32, 1)
    return dict(x=x, w=w, s24=sparse24_compress_reference(w24), csr=pack_csr(w90), torch_csr=w90.to_sparse_csr(),
                bsr=pack_bsr(w_blocks, 32))


@pytest.mark.benchmark(group="sparse")
def test_float32_matmul(benchmark, operands):
    benchmark(torch.nn.functional.linear, operands["x"], operands["w"])


@pytest.mark.benchmark(group="sparse")
def test_sparse24_mm(benchmark, operands):
    benchmark(pycompress.ops.sparse24_mm, operands["x"], *operands["s24"])


@pytest.mark.benchmark(group="sparse")
def test_csr_mm_90(benchmark, operands):
    benchmark(pycompress.ops.csr_mm, operands["x"], *operands["csr"])


@pytest.mark.benchmark(group="sparse")
def test_torch_sparse_csr_90(benchmark, operands):
    benchmark(lambda: torch.sparse.mm(operands["torch_csr"], operands["x"].T).T)


@pytest.mark.benchmark(group="sparse")
def test_bsr32_mm_90(benchmark, operands):
    benchmark(pycompress.ops.bsr_mm, operands["x"], *operands["bsr"])
