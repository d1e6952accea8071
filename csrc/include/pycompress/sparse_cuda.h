// Host launchers of the sparse CUDA kernels: the 2:4 family (csrc/cuda/sparse24.cu) and the CSR / BSR
// family (csrc/cuda/sparse.cu). Torch-free, so that the kernels compile with nvcc alone;
// csrc/cuda/sparse24_ops.cpp and csrc/cuda/sparse_ops.cpp bind them to the pycompress_C ops.
//
// The math and the layouts are the op contracts (references in pycompress/ops/sparse24.py and
// pycompress/ops/sparse.py):
//   sparse24_compress: w [N, K] (K % 16 == 0, at most 2 non-zeros per group of 4) ->
//     values [N, K / 2] (the two kept entries of each group, bit for bit), meta int16 [N, K / 16]
//     (group 4j + t of row n at bits 4t .. 4t + 3 of meta[n, j]: low 2 bits the first kept position).
//   sparse24_mm: out[m, n] = cast(sum_k x[m, k] * w[n, k] + bias[n]), w the decompressed weight.
//   csr_mm / bsr_mm: out[m, n] = cast(sum_k x[m, k] * w[n, k] + bias[n]), w in CSR / BSR.
// Products are summed in float32 (in any order) and rounded once to the output dtype, which is x's.
// All tensors are dense row-major device buffers; no alignment is assumed (aligned inputs take the
// cp.async / vector paths). The index arrays of CSR / BSR are trusted (checked by the op layer's
// producers). Launchers enqueue on `stream` and return the launch error, if any
// (cudaErrorInvalidValue for arguments outside the documented ranges).
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace pycompress {

enum class SparseDtype : int {
  kNone = -1,  // only for an absent bias
  kFloat32 = 0,
  kFloat16 = 1,
  kBFloat16 = 2,
};

// w: [N, K] of dtype; values: [N, K / 2] of dtype; meta: [N, K / 16]. N >= 0, K > 0, K % 16 == 0.
cudaError_t launch_sparse24_compress(const void* w, SparseDtype dtype, void* values, int16_t* meta,
                                     int64_t N, int64_t K, cudaStream_t stream);

// x: [M, K] of dtype; values: [N, K / 2] of dtype; meta: [N, K / 16]; bias: [N] of bias_dtype, or
// nullptr with kNone; out: [M, N] of dtype. M, N >= 0, K > 0, K % 16 == 0. float16 and bfloat16 run
// on the sparse tensor cores (mma.sp); float32 runs on the CUDA cores.
cudaError_t launch_sparse24_mm(const void* x, const void* values, const int16_t* meta,
                               const void* bias, SparseDtype bias_dtype, void* out,
                               SparseDtype dtype, int64_t M, int64_t N, int64_t K,
                               cudaStream_t stream);

// x: [M, K] of dtype; crow: [N + 1]; col: [nnz] (ascending within each row); values: [nnz] of dtype;
// bias: [N] of bias_dtype, or nullptr with kNone; out: [M, N] of dtype. M, N, K >= 0.
cudaError_t launch_csr_mm(const void* x, const int32_t* crow, const int32_t* col,
                          const void* values, const void* bias, SparseDtype bias_dtype, void* out,
                          SparseDtype dtype, int64_t M, int64_t N, int64_t K, cudaStream_t stream);

// x: [M, K] of dtype; crow: [N / block + 1]; col: [nnzb] (block columns); values: [nnzb, block,
// block] of dtype; bias: [N] of bias_dtype, or nullptr with kNone; out: [M, N] of dtype.
// block in {16, 32, 64}; N and K multiples of block. float16 and bfloat16 run on the tensor cores
// (mma.sync m16n8k16); float32 runs on the CUDA cores.
cudaError_t launch_bsr_mm(const void* x, const int32_t* crow, const int32_t* col,
                          const void* values, int64_t block, const void* bias,
                          SparseDtype bias_dtype, void* out, SparseDtype dtype, int64_t M,
                          int64_t N, int64_t K, cudaStream_t stream);

}  // namespace pycompress
