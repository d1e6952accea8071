// Host launchers of the int8 CUDA kernels (csrc/cuda/int8.cu). Torch-free, so that the kernels compile
// with nvcc alone; csrc/cuda/int8_ops.cpp binds them to the pycompress_C ops.
//
// The math is the int8 op contract (pycompress/ops/int8.py holds the reference):
//   quantize_per_token: x [M, K] -> q int8 [M, K], scale float32 [M], one symmetric scale per row.
//   int8_mm: out[m, n] = cast_out((float(sum_k a[m, k] * b[n, k]) * a_scale[m]) * b_scale[n] + bias[n]).
// All tensors are dense row-major device buffers; no alignment is assumed (aligned inputs take the
// vectorised paths). Launchers enqueue on `stream` and return the launch error, if any.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace pycompress {

enum class Int8Dtype : int {
  kNone = -1,  // only for an absent bias
  kFloat32 = 0,
  kFloat16 = 1,
  kBFloat16 = 2,
};

// x: [M, K] of x_dtype (float32/float16/bfloat16); q: [M, K]; scale: [M]. M >= 1, K >= 0.
cudaError_t launch_quantize_per_token(const void* x, Int8Dtype x_dtype, int8_t* q, float* scale,
                                      int64_t M, int64_t K, cudaStream_t stream);

// a: [M, K]; b: [N, K]; a_scale: [M]; b_scale: [N]; bias: [N] of bias_dtype, or nullptr with kNone;
// out: [M, N] of out_dtype (float32/float16/bfloat16). M, N >= 1, K >= 0.
cudaError_t launch_int8_mm(const int8_t* a, const int8_t* b, const float* a_scale,
                           const float* b_scale, const void* bias, Int8Dtype bias_dtype, void* out,
                           Int8Dtype out_dtype, int64_t M, int64_t N, int64_t K,
                           cudaStream_t stream);

}  // namespace pycompress
