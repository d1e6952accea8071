// The few non-op helpers of pycompress._C, bound with pybind11: build information, CPU feature flags
// and a plain getenv. Ops are registered with TORCH_LIBRARY in csrc/ops.cpp and the per-family files.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdlib>
#include <string>

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
  // os.environ writes through to the process environment (putenv / unsetenv), so this reads the same
  // value as os.environ.get(name, ""), without its Python-level lookup (a KeyError raised and caught
  // when the variable is unset).
  m.def(
      "getenv",
      [](const std::string& name) {
        const char* value = std::getenv(name.c_str());
        return std::string(value != nullptr ? value : "");
      },
      "The value of environment variable `name`, or \"\" when it is unset");
}
