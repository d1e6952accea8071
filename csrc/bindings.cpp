// The few non-op helpers of pycompress._C, bound with pybind11: build information and CPU feature
// flags. Ops are registered with TORCH_LIBRARY in csrc/ops.cpp and the per-family files.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "pycompress/cpu_features.h"

#ifndef PYCOMPRESS_WITH_CUDA
#define PYCOMPRESS_WITH_CUDA 0
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "pycompress native kernels (ops live in torch.ops.pycompress_C)";
  m.def("built_with_cuda", []() { return PYCOMPRESS_WITH_CUDA != 0; });
  m.def("cpu_feature_flags", &pycompress::cpu::feature_flags,
        "CPU features detected at run time, as (name, present) pairs");
  m.def("int8_mm_cpu_path", &pycompress::cpu::int8_mm_path,
        "The SIMD path the CPU int8_mm kernel takes on this machine");
}
