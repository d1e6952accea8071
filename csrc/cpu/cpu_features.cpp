#include "pycompress/cpu_features.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>

namespace pycompress::cpu {

namespace {

Features detect() {
  Features f;
#if defined(__x86_64__) || defined(__i386__)
  // libgcc's __builtin_cpu_supports also checks, through XGETBV, that the OS saves the YMM/ZMM state.
  __builtin_cpu_init();
  f.avx2 = __builtin_cpu_supports("avx2");
  f.fma = __builtin_cpu_supports("fma");
  f.f16c = __builtin_cpu_supports("f16c");
  f.avx512f = __builtin_cpu_supports("avx512f");
  f.avx512bw = __builtin_cpu_supports("avx512bw");
  f.avx512vl = __builtin_cpu_supports("avx512vl");
  f.avx512vnni = __builtin_cpu_supports("avx512vnni");
  f.avx512vpopcntdq = __builtin_cpu_supports("avx512vpopcntdq");
#endif
  return f;
}

// The kernels need no FMA: leaving it out keeps the epilogue's multiply and add unfused, as the
// reference evaluates them.
bool avx2_usable(const Features& f) { return f.avx2 && f.f16c; }

}  // namespace

const Features& features() {
  static const Features f = detect();
  return f;
}

std::vector<std::pair<std::string, bool>> feature_flags() {
  const Features& f = features();
  return {
      {"avx2", f.avx2},
      {"fma", f.fma},
      {"f16c", f.f16c},
      {"avx512f", f.avx512f},
      {"avx512bw", f.avx512bw},
      {"avx512vl", f.avx512vl},
      {"avx512vnni", f.avx512vnni},
      {"avx512vpopcntdq", f.avx512vpopcntdq},
  };
}

namespace {

// PYCOMPRESS_CPU_ISA applied to a family whose AVX2 path this CPU can run or not (avx2); lacks names the
// features that path needs, for the error.
Isa choose_isa(bool avx2, const char* lacks) {
  const char* env = std::getenv("PYCOMPRESS_CPU_ISA");
  if (env == nullptr || env[0] == '\0' || std::strcmp(env, "auto") == 0) {
    return avx2 ? Isa::kAvx2 : Isa::kScalar;
  }
  if (std::strcmp(env, "scalar") == 0) {
    return Isa::kScalar;
  }
  if (std::strcmp(env, "avx2") == 0) {
    TORCH_CHECK(avx2, "PYCOMPRESS_CPU_ISA=avx2, but this CPU lacks ", lacks);
    return Isa::kAvx2;
  }
  TORCH_CHECK(false, "PYCOMPRESS_CPU_ISA must be one of auto, scalar, avx2 (got '", env, "')");
}

}  // namespace

Isa int8_isa() { return choose_isa(avx2_usable(features()), "AVX2 or F16C"); }

Isa lowbit_isa() {
  const Features& f = features();
  return choose_isa(avx2_usable(f) && f.fma, "AVX2, F16C or FMA");
}

std::string int8_mm_path() { return int8_isa() == Isa::kAvx2 ? "avx2" : "scalar"; }

}  // namespace pycompress::cpu
