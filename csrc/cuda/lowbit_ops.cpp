// CUDA implementations of the low-bit pycompress_C ops (int8_weight_only_mm, pack_bits, binary_mm,
// binary_weight_mm, ternary_weight_mm; schemas in csrc/ops.cpp). The public ops in
// pycompress/ops/lowbit.py validate inputs first; this file only re-checks cheap invariants,
// allocates the outputs and launches csrc/cuda/lowbit.cu on the current stream.
#include <optional>
#include <utility>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "pycompress/cuda_op_checks.h"
#include "pycompress/lowbit_cuda.h"

namespace {

using pycompress::LowbitDtype;
using pycompress::check_cuda;
using pycompress::float_dtype;

// An optional bias [N] of any float dtype: (pointer, dtype), or (nullptr, kNone).
std::pair<const void*, LowbitDtype> bias_arg(const std::optional<at::Tensor>& bias, int64_t N,
                                             const at::Tensor& like, const char* op) {
  if (!bias.has_value()) return {nullptr, LowbitDtype::kNone};
  TORCH_CHECK(bias->numel() == N, op, ": bias must have N elements");
  check_cuda(*bias, like, op, "bias");
  return {bias->const_data_ptr(), float_dtype<LowbitDtype>(bias->scalar_type(), op, "bias")};
}

at::Tensor int8_weight_only_mm_cuda(const at::Tensor& x, const at::Tensor& w,
                                    const at::Tensor& w_scale,
                                    const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "pycompress_C::int8_weight_only_mm";
  TORCH_CHECK(x.dim() == 2, op, ": x must be 2-D [M, K]");
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kChar && w.size(1) == x.size(1), op,
              ": w must be int8 [N, K] with K == x.shape[1]");
  const int64_t M = x.size(0);
  const int64_t N = w.size(0);
  const int64_t K = x.size(1);
  TORCH_CHECK(w_scale.scalar_type() == at::kFloat && w_scale.dim() >= 1 && w_scale.dim() <= 2 &&
                  w_scale.size(0) == N,
              op, ": w_scale must be float32 [N] or [N, G]");
  const int64_t groups = w_scale.dim() == 2 ? w_scale.size(1) : 1;
  TORCH_CHECK(groups >= 1 && K % groups == 0, op, ": the number of groups G must divide K");
  check_cuda(x, x, op, "x");
  check_cuda(w, x, op, "w");
  check_cuda(w_scale, x, op, "w_scale");
  const LowbitDtype x_dtype = float_dtype<LowbitDtype>(x.scalar_type(), op, "x");
  const auto [bias_ptr, bias_dtype] = bias_arg(bias, N, x, op);

  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return out;
  C10_CUDA_CHECK(pycompress::launch_int8_weight_only_mm(
      x.const_data_ptr(), x_dtype, w.const_data_ptr<int8_t>(), w_scale.const_data_ptr<float>(),
      groups, bias_ptr, bias_dtype, out.mutable_data_ptr(), M, N, K,
      c10::cuda::getCurrentCUDAStream()));
  return out;
}

at::Tensor pack_bits_cuda(const at::Tensor& x) {
  constexpr const char* op = "pycompress_C::pack_bits";
  TORCH_CHECK(x.dim() == 2, op, ": x must be 2-D [M, K]");
  check_cuda(x, x, op, "x");
  const LowbitDtype x_dtype = x.scalar_type() == at::kChar
                                  ? LowbitDtype::kInt8
                                  : float_dtype<LowbitDtype>(x.scalar_type(), op, "x");
  const int64_t M = x.size(0);
  const int64_t K = x.size(1);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor words = at::empty({M, (K + 31) / 32}, x.options().dtype(at::kInt));
  if (words.numel() == 0) return words;
  C10_CUDA_CHECK(pycompress::launch_pack_bits(x.const_data_ptr(), x_dtype,
                                              words.mutable_data_ptr<int32_t>(), M, K,
                                              c10::cuda::getCurrentCUDAStream()));
  return words;
}

at::Tensor binary_mm_cuda(const at::Tensor& a_bits, const at::Tensor& b_bits, int64_t K,
                          const at::Tensor& a_scale, const at::Tensor& b_scale,
                          const std::optional<at::Tensor>& bias, at::ScalarType out_dtype) {
  constexpr const char* op = "pycompress_C::binary_mm";
  TORCH_CHECK(K >= 1, op, ": K must be >= 1");
  const int64_t W = (K + 31) / 32;
  TORCH_CHECK(a_bits.dim() == 2 && a_bits.scalar_type() == at::kInt && a_bits.size(1) == W, op,
              ": a_bits must be int32 [M, ceil(K / 32)]");
  TORCH_CHECK(b_bits.dim() == 2 && b_bits.scalar_type() == at::kInt && b_bits.size(1) == W, op,
              ": b_bits must be int32 [N, ceil(K / 32)]");
  const int64_t M = a_bits.size(0);
  const int64_t N = b_bits.size(0);
  TORCH_CHECK(a_scale.scalar_type() == at::kFloat && a_scale.numel() == M, op,
              ": a_scale must be float32 [M]");
  TORCH_CHECK(b_scale.scalar_type() == at::kFloat && b_scale.numel() == N, op,
              ": b_scale must be float32 [N]");
  check_cuda(a_bits, a_bits, op, "a_bits");
  check_cuda(b_bits, a_bits, op, "b_bits");
  check_cuda(a_scale, a_bits, op, "a_scale");
  check_cuda(b_scale, a_bits, op, "b_scale");
  const auto [bias_ptr, bias_dtype] = bias_arg(bias, N, a_bits, op);
  const LowbitDtype out = float_dtype<LowbitDtype>(out_dtype, op, "out_dtype");

  const c10::cuda::CUDAGuard guard(a_bits.device());
  at::Tensor result = at::empty({M, N}, a_bits.options().dtype(out_dtype));
  if (M == 0 || N == 0) return result;
  C10_CUDA_CHECK(pycompress::launch_binary_mm(
      a_bits.const_data_ptr<int32_t>(), b_bits.const_data_ptr<int32_t>(),
      a_scale.const_data_ptr<float>(), b_scale.const_data_ptr<float>(), bias_ptr, bias_dtype,
      result.mutable_data_ptr(), out, M, N, K, c10::cuda::getCurrentCUDAStream()));
  return result;
}

// binary_weight_mm and ternary_weight_mm: x [M, K], packed weights int32 [N, ceil(K / per_word)].
using PackedLauncher = cudaError_t (*)(const void*, LowbitDtype, const int32_t*, const float*,
                                       const void*, LowbitDtype, void*, int64_t, int64_t, int64_t,
                                       cudaStream_t);

at::Tensor packed_weight_mm_cuda(const at::Tensor& x, const at::Tensor& w, const at::Tensor& alpha,
                                 const std::optional<at::Tensor>& bias, int64_t per_word,
                                 PackedLauncher launch, const char* op) {
  TORCH_CHECK(x.dim() == 2, op, ": x must be 2-D [M, K]");
  const int64_t M = x.size(0);
  const int64_t K = x.size(1);
  TORCH_CHECK(
      w.dim() == 2 && w.scalar_type() == at::kInt && w.size(1) == (K + per_word - 1) / per_word,
      op, ": the packed weights must be int32 [N, ceil(K / ", per_word, ")]");
  const int64_t N = w.size(0);
  TORCH_CHECK(alpha.scalar_type() == at::kFloat && alpha.numel() == N, op,
              ": alpha must be float32 [N]");
  check_cuda(x, x, op, "x");
  check_cuda(w, x, op, "the packed weights");
  check_cuda(alpha, x, op, "alpha");
  const LowbitDtype x_dtype = float_dtype<LowbitDtype>(x.scalar_type(), op, "x");
  const auto [bias_ptr, bias_dtype] = bias_arg(bias, N, x, op);

  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return out;
  C10_CUDA_CHECK(launch(x.const_data_ptr(), x_dtype, w.const_data_ptr<int32_t>(),
                        alpha.const_data_ptr<float>(), bias_ptr, bias_dtype,
                        out.mutable_data_ptr(), M, N, K, c10::cuda::getCurrentCUDAStream()));
  return out;
}

at::Tensor binary_weight_mm_cuda(const at::Tensor& x, const at::Tensor& w_bits,
                                 const at::Tensor& alpha, const std::optional<at::Tensor>& bias) {
  return packed_weight_mm_cuda(x, w_bits, alpha, bias, 32, &pycompress::launch_binary_weight_mm,
                               "pycompress_C::binary_weight_mm");
}

at::Tensor ternary_weight_mm_cuda(const at::Tensor& x, const at::Tensor& w_2bit,
                                  const at::Tensor& alpha, const std::optional<at::Tensor>& bias) {
  return packed_weight_mm_cuda(x, w_2bit, alpha, bias, 16, &pycompress::launch_ternary_weight_mm,
                               "pycompress_C::ternary_weight_mm");
}

}  // namespace

TORCH_LIBRARY_IMPL(pycompress_C, CUDA, m) {
  m.impl("int8_weight_only_mm", &int8_weight_only_mm_cuda);
  m.impl("pack_bits", &pack_bits_cuda);
  m.impl("binary_mm", &binary_mm_cuda);
  m.impl("binary_weight_mm", &binary_weight_mm_cuda);
  m.impl("ternary_weight_mm", &ternary_weight_mm_cuda);
}
