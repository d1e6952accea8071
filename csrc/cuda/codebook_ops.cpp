// CUDA implementation of pycompress_C::codebook_mm (schema in csrc/ops.cpp). The public op in
// pycompress/ops/codebook.py validates inputs first; this file only re-checks cheap invariants,
// allocates the output and launches csrc/cuda/codebook.cu on the current stream.
#include <optional>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "pycompress/codebook_cuda.h"
#include "pycompress/cuda_op_checks.h"

namespace {

using pycompress::CodebookDtype;
using pycompress::check_cuda;
using pycompress::float_dtype;

at::Tensor codebook_mm_cuda(const at::Tensor& x, const at::Tensor& idx, const at::Tensor& codebook,
                            const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "pycompress_C::codebook_mm";
  TORCH_CHECK(x.dim() == 2 && x.size(1) >= 1, op, ": x must be 2-D [M, K] with K >= 1 (got ",
              x.sizes(), ")");
  const int64_t M = x.size(0);
  const int64_t K = x.size(1);
  TORCH_CHECK(codebook.dim() == 2 && (codebook.size(1) == 16 || codebook.size(1) == 256) &&
                  codebook.scalar_type() == x.scalar_type(),
              op, ": codebook must be [G, C] with C = 16 (4-bit) or 256 (8-bit), of x's dtype ",
              x.scalar_type(), " (got ", codebook.scalar_type(), " ", codebook.sizes(), ")");
  const int bits = codebook.size(1) == 16 ? 4 : 8;
  const int64_t cols = bits == 4 ? (K + 1) / 2 : K;
  TORCH_CHECK(idx.dim() == 2 && idx.size(1) == cols && idx.scalar_type() == at::kByte, op,
              ": idx must be uint8 [N, ", cols, "] for ", bits, "-bit indices and K = ", K, " (got ",
              idx.scalar_type(), " ", idx.sizes(), ")");
  const int64_t N = idx.size(0);
  const int64_t groups = codebook.size(0);
  TORCH_CHECK(groups == 1 || groups == N, op, ": codebook must have G = 1 or G = N = ", N,
              " rows (got ", groups, ")");
  TORCH_CHECK(K <= 0x7fffffff, op, ": K = x.shape[1] must be below 2^31 (got ", K, ")");
  check_cuda(x, x, op, "x");
  check_cuda(idx, x, op, "idx");
  check_cuda(codebook, x, op, "codebook");
  const CodebookDtype dtype = float_dtype<CodebookDtype>(x.scalar_type(), op, "x");
  const void* bias_ptr = nullptr;
  CodebookDtype bias_dtype = CodebookDtype::kNone;
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == N, op, ": bias must be [N] = [", N, "] (got ",
                bias->sizes(), ")");
    check_cuda(*bias, x, op, "bias");
    bias_dtype = float_dtype<CodebookDtype>(bias->scalar_type(), op, "bias");
    bias_ptr = bias->const_data_ptr();
  }

  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return out;
  C10_CUDA_CHECK(pycompress::launch_codebook_mm(
      x.const_data_ptr(), idx.const_data_ptr<uint8_t>(), codebook.const_data_ptr(), groups, bits,
      bias_ptr, bias_dtype, out.mutable_data_ptr(), dtype, M, N, K,
      c10::cuda::getCurrentCUDAStream()));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pycompress_C, CUDA, m) { m.impl("codebook_mm", &codebook_mm_cuda); }
