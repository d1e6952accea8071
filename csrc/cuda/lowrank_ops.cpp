// CUDA implementation of pycompress_C::lowrank_mm (schema in csrc/ops.cpp). The public op in
// pycompress/ops/lowrank.py validates inputs first; this file only re-checks cheap invariants, plans
// the launch for the current device, allocates the output (and, for launches that split the rank, the
// float32 workspace) and launches csrc/cuda/lowrank.cu on the current stream.
#include <optional>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "pycompress/cuda_op_checks.h"
#include "pycompress/lowrank_cuda.h"

namespace {

using pycompress::LowrankDtype;
using pycompress::check_cuda;
using pycompress::float_dtype;

at::Tensor lowrank_mm_cuda(const at::Tensor& x, const at::Tensor& v, const at::Tensor& u,
                           const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "pycompress_C::lowrank_mm";
  TORCH_CHECK(x.dim() == 2 && x.size(1) >= 1, op, ": x must be 2-D [M, K] with K >= 1 (got ",
              x.sizes(), ")");
  const int64_t M = x.size(0);
  const int64_t K = x.size(1);
  TORCH_CHECK(v.dim() == 2 && v.size(0) >= 1 && v.size(1) == K && v.scalar_type() == x.scalar_type(),
              op, ": v must be [r, K] = [r, ", K, "] with r >= 1, of x's dtype ", x.scalar_type(),
              " (got ", v.scalar_type(), " ", v.sizes(), ")");
  const int64_t r = v.size(0);
  TORCH_CHECK(u.dim() == 2 && u.size(1) == r && u.scalar_type() == x.scalar_type(), op,
              ": u must be [N, r] = [N, ", r, "] of x's dtype ", x.scalar_type(), " (got ",
              u.scalar_type(), " ", u.sizes(), ")");
  const int64_t N = u.size(0);
  // The kernels count steps of K and rank chunks in int.
  TORCH_CHECK(K <= (int64_t{1} << 30) && r <= (int64_t{1} << 24), op,
              ": K = x.shape[1] must be at most 2^30 and r = v.shape[0] at most 2^24 (got K = ", K,
              ", r = ", r, ")");
  check_cuda(x, x, op, "x");
  check_cuda(v, x, op, "v");
  check_cuda(u, x, op, "u");
  const LowrankDtype dtype = float_dtype<LowrankDtype>(x.scalar_type(), op, "x");
  const void* bias_ptr = nullptr;
  LowrankDtype bias_dtype = LowrankDtype::kNone;
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == N, op, ": bias must be [N] = [", N, "] (got ",
                bias->sizes(), ")");
    check_cuda(*bias, x, op, "bias");
    bias_dtype = float_dtype<LowrankDtype>(bias->scalar_type(), op, "bias");
    bias_ptr = bias->const_data_ptr();
  }

  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return out;
  pycompress::LowrankMmPlan plan;
  C10_CUDA_CHECK(pycompress::plan_lowrank_mm(x.const_data_ptr(), v.const_data_ptr(),
                                             u.const_data_ptr(), dtype, M, N, K, r, &plan));
  at::Tensor workspace;
  void* workspace_ptr = nullptr;
  if (plan.workspace_bytes > 0) {
    workspace = at::empty({plan.workspace_bytes}, x.options().dtype(at::kByte));
    workspace_ptr = workspace.mutable_data_ptr();
  }
  C10_CUDA_CHECK(pycompress::launch_lowrank_mm(
      x.const_data_ptr(), v.const_data_ptr(), u.const_data_ptr(), bias_ptr, bias_dtype,
      out.mutable_data_ptr(), dtype, M, N, K, r, plan, workspace_ptr,
      c10::cuda::getCurrentCUDAStream()));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pycompress_C, CUDA, m) { m.impl("lowrank_mm", &lowrank_mm_cuda); }
