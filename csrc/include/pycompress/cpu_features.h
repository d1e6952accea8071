// Run-time CPU feature detection and the choice of SIMD path for the CPU kernels.
//
// The kernels are built with -O3 -fopenmp only (never -march=native); SIMD code is compiled with function
// target attributes and picked here at run time. The environment variable PYCOMPRESS_CPU_ISA, read at
// every call (so a test may change it in-process), overrides the choice:
//   unset, "" or "auto": the best path this CPU supports;
//   "scalar": the portable path;
//   "avx2": the AVX2 path (an error if the CPU lacks a feature that family's AVX2 path needs).
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace pycompress::cpu {

struct Features {
  bool avx2 = false;
  bool fma = false;
  bool f16c = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vl = false;
  bool avx512vnni = false;
  bool avx512vpopcntdq = false;
};

// Detected once (CPUID and the OS's saved register state), then cached.
const Features& features();

// ("avx2", true), ("fma", true), ... in the order of the fields of Features.
std::vector<std::pair<std::string, bool>> feature_flags();

enum class Isa { kScalar, kAvx2 };

// The path the int8 kernels (int8_mm, quantize_per_token) take now, after PYCOMPRESS_CPU_ISA.
Isa int8_isa();

// int8_isa() as a name: "avx2" or "scalar".
std::string int8_mm_path();

// The path the low-bit kernels (csrc/cpu/lowbit.cpp) take now; their AVX2 path also needs FMA.
Isa lowbit_isa();

}  // namespace pycompress::cpu
