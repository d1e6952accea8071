// Argument checks shared by the torch registrations of the CUDA ops (csrc/cuda/*_ops.cpp).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

namespace pycompress {

// A float32 / float16 / bfloat16 dtype as the kernel family's Dtype enum (SparseDtype, LowbitDtype,
// Int8Dtype: each has kFloat32, kFloat16 and kBFloat16).
template <typename Dtype>
Dtype float_dtype(c10::ScalarType t, const char* op, const char* what) {
  TORCH_CHECK(t == at::kFloat || t == at::kHalf || t == at::kBFloat16, op, ": ", what,
              " must be float32, float16 or bfloat16 (got ", t, ")");
  return t == at::kFloat ? Dtype::kFloat32 : (t == at::kHalf ? Dtype::kFloat16 : Dtype::kBFloat16);
}

// t must be a contiguous tensor on the device of `like`.
inline void check_cuda(const at::Tensor& t, const at::Tensor& like, const char* op,
                       const char* name) {
  TORCH_CHECK(t.is_cuda() && t.device() == like.device(), op, ": ", name, " must be on ",
              like.device(), " (got ", t.device(), ")");
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

}  // namespace pycompress
