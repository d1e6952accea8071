// CUDA implementations of pycompress_C::quantize_per_token and pycompress_C::int8_mm (schemas in
// csrc/ops.cpp). The public ops in pycompress/ops/int8.py validate inputs first; this file only
// re-checks cheap invariants, allocates the outputs and launches csrc/cuda/int8.cu on the current
// stream.
#include <optional>
#include <tuple>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "pycompress/cuda_op_checks.h"
#include "pycompress/int8_cuda.h"

namespace {

using pycompress::Int8Dtype;
using pycompress::check_cuda;
using pycompress::float_dtype;

std::tuple<at::Tensor, at::Tensor> quantize_per_token_cuda(const at::Tensor& x) {
  constexpr const char* op = "pycompress_C::quantize_per_token";
  TORCH_CHECK(x.dim() == 2, op, ": x must be 2-D [M, K] (got ", x.dim(), "-D)");
  check_cuda(x, x, op, "x");
  const Int8Dtype x_dtype = float_dtype<Int8Dtype>(x.scalar_type(), op, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t M = x.size(0);
  const int64_t K = x.size(1);
  at::Tensor q = at::empty({M, K}, x.options().dtype(at::kChar));
  at::Tensor scale = at::empty({M}, x.options().dtype(at::kFloat));
  C10_CUDA_CHECK(pycompress::launch_quantize_per_token(x.const_data_ptr(), x_dtype,
                                                       q.mutable_data_ptr<int8_t>(),
                                                       scale.mutable_data_ptr<float>(), M, K,
                                                       c10::cuda::getCurrentCUDAStream()));
  return {q, scale};
}

at::Tensor int8_mm_cuda(const at::Tensor& a, const at::Tensor& b, const at::Tensor& a_scale,
                        const at::Tensor& b_scale, const std::optional<at::Tensor>& bias,
                        at::ScalarType out_dtype) {
  constexpr const char* op = "pycompress_C::int8_mm";
  TORCH_CHECK(a.dim() == 2 && a.scalar_type() == at::kChar, op, ": a must be int8 [M, K]");
  TORCH_CHECK(b.dim() == 2 && b.scalar_type() == at::kChar && b.size(1) == a.size(1), op,
              ": b must be int8 [N, K] with K == a.shape[1]");
  const int64_t M = a.size(0);
  const int64_t N = b.size(0);
  const int64_t K = a.size(1);
  TORCH_CHECK(a_scale.scalar_type() == at::kFloat && a_scale.numel() == M, op,
              ": a_scale must be float32 [M]");
  TORCH_CHECK(b_scale.scalar_type() == at::kFloat && b_scale.numel() == N, op,
              ": b_scale must be float32 [N]");
  check_cuda(a, a, op, "a");
  check_cuda(b, a, op, "b");
  check_cuda(a_scale, a, op, "a_scale");
  check_cuda(b_scale, a, op, "b_scale");
  const void* bias_ptr = nullptr;
  Int8Dtype bias_dtype = Int8Dtype::kNone;
  if (bias.has_value()) {
    TORCH_CHECK(bias->numel() == N, op, ": bias must have N elements");
    check_cuda(*bias, a, op, "bias");
    bias_dtype = float_dtype<Int8Dtype>(bias->scalar_type(), op, "bias");
    bias_ptr = bias->const_data_ptr();
  }
  const Int8Dtype out = float_dtype<Int8Dtype>(out_dtype, op, "out_dtype");

  const c10::cuda::CUDAGuard guard(a.device());
  at::Tensor result = at::empty({M, N}, a.options().dtype(out_dtype));
  if (M == 0 || N == 0) return result;
  C10_CUDA_CHECK(pycompress::launch_int8_mm(
      a.const_data_ptr<int8_t>(), b.const_data_ptr<int8_t>(), a_scale.const_data_ptr<float>(),
      b_scale.const_data_ptr<float>(), bias_ptr, bias_dtype, result.mutable_data_ptr(), out, M, N,
      K, c10::cuda::getCurrentCUDAStream()));
  return result;
}

}  // namespace

TORCH_LIBRARY_IMPL(pycompress_C, CUDA, m) {
  m.impl("quantize_per_token", &quantize_per_token_cuda);
  m.impl("int8_mm", &int8_mm_cuda);
}
