// CUDA implementations of pycompress_C::csr_mm and pycompress_C::bsr_mm (schemas in csrc/ops.cpp).
// The public ops in pycompress/ops/sparse.py validate shapes and dtypes first; this file only
// re-checks cheap invariants (the index arrays are trusted, as documented there), allocates the output
// and launches csrc/cuda/sparse.cu on the current stream.
#include <optional>

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

struct CommonArgs {
  SparseDtype dtype;  // of x, values and out
  const void* bias;   // or nullptr
  SparseDtype bias_dtype;
};

// The arguments both ops share: x [M, K], crow int32 [rows + 1], col int32 [nnz], values of x's dtype
// with values.shape[0] == nnz, bias [N]? of any float dtype.
CommonArgs check_common(const at::Tensor& x, const at::Tensor& crow, const at::Tensor& col,
                        const at::Tensor& values, const std::optional<at::Tensor>& bias, int64_t N,
                        const char* op) {
  TORCH_CHECK(x.dim() == 2, op, ": x must be 2-D [M, K] (got ", x.dim(), "-D)");
  TORCH_CHECK(crow.dim() == 1 && crow.numel() >= 1 && crow.scalar_type() == at::kInt, op,
              ": crow must be int32 [rows + 1] (got ", crow.scalar_type(), " ", crow.sizes(), ")");
  TORCH_CHECK(col.dim() == 1 && col.scalar_type() == at::kInt, op, ": col must be int32 [nnz] (got ",
              col.scalar_type(), " ", col.sizes(), ")");
  TORCH_CHECK(values.scalar_type() == x.scalar_type() && values.dim() >= 1 &&
                  values.size(0) == col.size(0),
              op, ": values must be of x's dtype ", x.scalar_type(),
              " with one entry per col index (got ", values.scalar_type(), " ", values.sizes(),
              " for ", col.numel(), " indices)");
  TORCH_CHECK(x.size(1) <= 0x7fffffff, op, ": K = x.shape[1] must be below 2^31");
  check_cuda(x, x, op, "x");
  check_cuda(crow, x, op, "crow");
  check_cuda(col, x, op, "col");
  check_cuda(values, x, op, "values");
  const SparseDtype dtype = float_dtype<SparseDtype>(x.scalar_type(), op, "x");
  if (!bias.has_value()) return {dtype, nullptr, SparseDtype::kNone};
  TORCH_CHECK(bias->dim() == 1 && bias->size(0) == N, op, ": bias must be [N] = [", N, "] (got ",
              bias->sizes(), ")");
  check_cuda(*bias, x, op, "bias");
  return {dtype, bias->const_data_ptr(), float_dtype<SparseDtype>(bias->scalar_type(), op, "bias")};
}

at::Tensor csr_mm_cuda(const at::Tensor& x, const at::Tensor& crow, const at::Tensor& col,
                       const at::Tensor& values, const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "pycompress_C::csr_mm";
  TORCH_CHECK(values.dim() == 1, op, ": values must be 1-D [nnz] (got ", values.dim(), "-D)");
  const int64_t N = crow.numel() - 1;
  const CommonArgs args = check_common(x, crow, col, values, bias, N, op);
  const int64_t M = x.size(0);
  const int64_t K = x.size(1);

  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return out;
  C10_CUDA_CHECK(pycompress::launch_csr_mm(
      x.const_data_ptr(), crow.const_data_ptr<int32_t>(), col.const_data_ptr<int32_t>(),
      values.const_data_ptr(), args.bias, args.bias_dtype, out.mutable_data_ptr(), args.dtype, M,
      N, K, c10::cuda::getCurrentCUDAStream()));
  return out;
}

at::Tensor bsr_mm_cuda(const at::Tensor& x, const at::Tensor& crow, const at::Tensor& col,
                       const at::Tensor& values, const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "pycompress_C::bsr_mm";
  TORCH_CHECK(values.dim() == 3 && values.size(1) == values.size(2) &&
                  (values.size(1) == 16 || values.size(1) == 32 || values.size(1) == 64),
              op, ": values must be [nnzb, B, B] with B in (16, 32, 64) (got ", values.sizes(), ")");
  const int64_t block = values.size(1);
  const int64_t N = (crow.numel() - 1) * block;
  const CommonArgs args = check_common(x, crow, col, values, bias, N, op);
  const int64_t M = x.size(0);
  const int64_t K = x.size(1);
  TORCH_CHECK(K % block == 0, op, ": K = x.shape[1] = ", K, " must be a multiple of the block size ",
              block);

  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return out;
  C10_CUDA_CHECK(pycompress::launch_bsr_mm(
      x.const_data_ptr(), crow.const_data_ptr<int32_t>(), col.const_data_ptr<int32_t>(),
      values.const_data_ptr(), block, args.bias, args.bias_dtype, out.mutable_data_ptr(),
      args.dtype, M, N, K, c10::cuda::getCurrentCUDAStream()));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pycompress_C, CUDA, m) {
  m.impl("csr_mm", &csr_mm_cuda);
  m.impl("bsr_mm", &bsr_mm_cuda);
}
