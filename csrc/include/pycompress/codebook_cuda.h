// Host launcher of the codebook GEMM (csrc/cuda/codebook.cu). Torch-free, so that the kernels compile
// with nvcc alone; csrc/cuda/codebook_ops.cpp binds it to pycompress_C::codebook_mm.
//
// The math and the layout are the op contract (pycompress/ops/codebook.py holds the reference):
//   w[n, k] = codebook[g(n), index(n, k)], g(n) = n when groups == N, else 0;
//   index(n, k) = idx[n, k] (8-bit), or nibble k % 2 (low nibble first) of idx[n, k / 2] (4-bit);
//   out[m, n] = cast(sum_k x[m, k] * w[n, k] + bias[n]), products summed in float32 (in any order) and
//   rounded once. The dense weight is never written to memory.
// All tensors are dense row-major device buffers; no alignment is assumed (aligned inputs take the
// 16-byte load and cp.async paths). M <= 16 (and float32 x of any M) runs the decode kernel on the
// CUDA cores; float16 / bfloat16 with M > 16 runs the tensor-core tile kernel when K % 8 == 0 and x
// is 16-byte aligned, otherwise the decode kernel over tiles of 16 rows of x.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "pycompress/sparse_cuda.h"

namespace pycompress {

// The float dtypes of the shared tensor-core tile helpers (sparse_tiles.cuh), whose bias load and
// epilogue the codebook kernels use as well.
using CodebookDtype = SparseDtype;

// x: [M, K] of dtype; idx: [N, ceil(K / 2)] (bits 4) or [N, K] (bits 8); codebook: [groups, 2^bits]
// of dtype with groups 1 or N; bias: [N] of bias_dtype, or nullptr with kNone; out: [M, N] of dtype.
// M, N >= 0, 1 <= K < 2^31. Enqueues on `stream` and returns the launch error, if any
// (cudaErrorInvalidValue for arguments outside these ranges).
cudaError_t launch_codebook_mm(const void* x, const uint8_t* idx, const void* codebook,
                               int64_t groups, int bits, const void* bias,
                               CodebookDtype bias_dtype, void* out, CodebookDtype dtype, int64_t M,
                               int64_t N, int64_t K, cudaStream_t stream);

}  // namespace pycompress
