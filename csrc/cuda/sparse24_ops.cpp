// CUDA implementations of pycompress_C::sparse24_compress and pycompress_C::sparse24_mm (schemas in
// csrc/ops.cpp). The public ops in pycompress/ops/sparse24.py validate inputs first (including the
// 2:4 pattern of w); this file only re-checks cheap invariants, allocates the outputs and launches
// csrc/cuda/sparse24.cu on the current stream.
#include <optional>
#include <tuple>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "pycompress/cuda_op_checks.h"
#include "pycompress/sparse_cuda.h"

namespace {

using pycompress::SparseDtype;
using pycompress::check_cuda;
using pycompress::float_dtype;

std::tuple<at::Tensor, at::Tensor> sparse24_compress_cuda(const at::Tensor& w) {
  constexpr const char* op = "pycompress_C::sparse24_compress";
  TORCH_CHECK(w.dim() == 2, op, ": w must be 2-D [N, K] (got ", w.dim(), "-D)");
  const int64_t N = w.size(0);
  const int64_t K = w.size(1);
  TORCH_CHECK(K > 0 && K % 16 == 0, op, ": w must have K a positive multiple of 16 columns (got ",
              K, ")");
  check_cuda(w, w, op, "w");
  const SparseDtype dtype = float_dtype<SparseDtype>(w.scalar_type(), op, "w");
  const c10::cuda::CUDAGuard guard(w.device());
  at::Tensor values = at::empty({N, K / 2}, w.options());
  at::Tensor meta = at::empty({N, K / 16}, w.options().dtype(at::kShort));
  if (N == 0) return {values, meta};
  C10_CUDA_CHECK(pycompress::launch_sparse24_compress(
      w.const_data_ptr(), dtype, values.mutable_data_ptr(), meta.mutable_data_ptr<int16_t>(), N,
      K, c10::cuda::getCurrentCUDAStream()));
  return {values, meta};
}

at::Tensor sparse24_mm_cuda(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                            const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "pycompress_C::sparse24_mm";
  TORCH_CHECK(x.dim() == 2, op, ": x must be 2-D [M, K] (got ", x.dim(), "-D)");
  const int64_t M = x.size(0);
  const int64_t K = x.size(1);
  TORCH_CHECK(K > 0 && K % 16 == 0, op, ": x must have K a positive multiple of 16 columns (got ",
              K, ")");
  TORCH_CHECK(values.dim() == 2 && values.size(1) == K / 2 && values.scalar_type() == x.scalar_type(),
              op, ": values must be [N, K / 2] = [N, ", K / 2, "] of x's dtype ", x.scalar_type(),
              " (got ", values.scalar_type(), " ", values.sizes(), ")");
  const int64_t N = values.size(0);
  TORCH_CHECK(meta.dim() == 2 && meta.size(0) == N && meta.size(1) == K / 16 &&
                  meta.scalar_type() == at::kShort,
              op, ": meta must be int16 [N, K / 16] = [", N, ", ", K / 16, "] (got ",
              meta.scalar_type(), " ", meta.sizes(), ")");
  check_cuda(x, x, op, "x");
  check_cuda(values, x, op, "values");
  check_cuda(meta, x, op, "meta");
  const SparseDtype dtype = float_dtype<SparseDtype>(x.scalar_type(), op, "x");
  const void* bias_ptr = nullptr;
  SparseDtype bias_dtype = SparseDtype::kNone;
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == N, op, ": bias must be [N] = [", N, "] (got ",
                bias->sizes(), ")");
    check_cuda(*bias, x, op, "bias");
    bias_dtype = float_dtype<SparseDtype>(bias->scalar_type(), op, "bias");
    bias_ptr = bias->const_data_ptr();
  }

  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return out;
  C10_CUDA_CHECK(pycompress::launch_sparse24_mm(
      x.const_data_ptr(), values.const_data_ptr(), meta.const_data_ptr<int16_t>(), bias_ptr,
      bias_dtype, out.mutable_data_ptr(), dtype, M, N, K, c10::cuda::getCurrentCUDAStream()));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pycompress_C, CUDA, m) {
  m.impl("sparse24_compress", &sparse24_compress_cuda);
  m.impl("sparse24_mm", &sparse24_mm_cuda);
}
