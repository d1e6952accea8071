// Host launchers of the low-bit CUDA kernels (csrc/cuda/lowbit.cu). Torch-free, so that the kernels
// compile with nvcc alone; csrc/cuda/lowbit_ops.cpp binds them to the pycompress_C ops.
//
// The math is the low-bit op contract (pycompress/ops/lowbit.py holds the reference):
//   int8_weight_only_mm: out[m, n] = sum_g w_scale[n, g] * sum_{k in group g} x[m, k] * w[n, k] + bias[n]
//     (one group spanning K for a per-channel w_scale [N]).
//   pack_bits: bit j of words[m, w] is set when x[m, 32 w + j] < 0; bits past K are 0.
//   binary_mm: dot = K - 2 * popcount of the first K bits of a_bits[m] ^ b_bits[n];
//     out = cast_out((float(dot) * a_scale[m]) * b_scale[n] + bias[n]).
//   binary_weight_mm: out[m, n] = alpha[n] * sum_k x[m, k] * (bit k of w_bits[n] ? -1 : +1) + bias[n].
//   ternary_weight_mm: out[m, n] = alpha[n] * sum_k x[m, k] * t[n, k] + bias[n], t the 2-bit code of k
//     (0b00: 0, 0b01: +1, 0b11: -1).
// All tensors are dense row-major device buffers; no alignment is assumed (aligned inputs take the
// vectorised paths). Any M, N >= 0 and 1 <= K <= 2^31 - 32 are accepted. Launchers enqueue on `stream`
// and return the launch error, if any (cudaErrorInvalidValue for arguments outside these ranges).
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace pycompress {

enum class LowbitDtype : int {
  kNone = -1,  // only for an absent bias
  kFloat32 = 0,
  kFloat16 = 1,
  kBFloat16 = 2,
  kInt8 = 3,  // only for the input of pack_bits
};

// x: [M, K] of x_dtype (float32/float16/bfloat16); w: [N, K]; w_scale: [N, groups] (groups divides K;
// 1 for a per-channel [N] scale); bias: [N] of bias_dtype, or nullptr with kNone; out: [M, N] of x_dtype.
cudaError_t launch_int8_weight_only_mm(const void* x, LowbitDtype x_dtype, const int8_t* w,
                                       const float* w_scale, int64_t groups, const void* bias,
                                       LowbitDtype bias_dtype, void* out, int64_t M, int64_t N,
                                       int64_t K, cudaStream_t stream);

// x: [M, K] of x_dtype (float32/float16/bfloat16/int8); words: [M, ceil(K / 32)].
cudaError_t launch_pack_bits(const void* x, LowbitDtype x_dtype, int32_t* words, int64_t M,
                             int64_t K, cudaStream_t stream);

// a_bits: [M, W]; b_bits: [N, W], W = ceil(K / 32); a_scale: [M]; b_scale: [N]; bias: [N] of
// bias_dtype, or nullptr with kNone; out: [M, N] of out_dtype (float32/float16/bfloat16).
cudaError_t launch_binary_mm(const int32_t* a_bits, const int32_t* b_bits, const float* a_scale,
                             const float* b_scale, const void* bias, LowbitDtype bias_dtype,
                             void* out, LowbitDtype out_dtype, int64_t M, int64_t N, int64_t K,
                             cudaStream_t stream);

// x: [M, K] of x_dtype (float32/float16/bfloat16); w_bits: [N, ceil(K / 32)]; alpha: [N]; bias: [N] of
// bias_dtype, or nullptr with kNone; out: [M, N] of x_dtype.
cudaError_t launch_binary_weight_mm(const void* x, LowbitDtype x_dtype, const int32_t* w_bits,
                                    const float* alpha, const void* bias, LowbitDtype bias_dtype,
                                    void* out, int64_t M, int64_t N, int64_t K,
                                    cudaStream_t stream);

// As launch_binary_weight_mm, with w_2bit: [N, ceil(K / 16)] (16 codes per word, LSB first).
cudaError_t launch_ternary_weight_mm(const void* x, LowbitDtype x_dtype, const int32_t* w_2bit,
                                     const float* alpha, const void* bias, LowbitDtype bias_dtype,
                                     void* out, int64_t M, int64_t N, int64_t K,
                                     cudaStream_t stream);

}  // namespace pycompress
