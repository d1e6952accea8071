// CPU kernels of the low-bit op family: int8_weight_only_mm, pack_bits, binary_mm, binary_weight_mm and
// ternary_weight_mm (math and packed layouts in pycompress/ops/lowbit.py).
//
// Two paths, picked at every call by pycompress::cpu::lowbit_isa() (PYCOMPRESS_CPU_ISA=scalar forces the
// portable one): AVX2 + FMA (compiled with target attributes, so the build needs no -march flag) and scalar.
//
// The weight-only GEMMs (W8A16, W1A16, ternary) read x as float32 rows (converted and zero-padded once
// when it is not float32 already) and decode the weights in registers, never into memory:
// - int8: vpmovsxbd + vcvtdq2ps, then FMA; a group scale is folded into the converted weights, as the
//   reference's dequantized matrix holds it;
// - 1 bit: the word is broadcast and vpsllvd moves bit k of lane k to the sign bit, where vblendvps picks
//   x or -x by that bit alone, so no lane mask is built;
// - ternary: the same shift puts the sign bit of a code at bit 31 and its nonzero bit at bit 30; one
//   blend picks x or -x, a second (after doubling the shifted word) picks that or zero.
// Each task owns a group of kNG output columns and a chunk of rows: micro-tiles of MR rows of x against
// NR weight rows, accumulated along all of K in vector registers and summed across lanes at the end, so
// the weight rows of the group (a few KiB) stay in L1 while every row of the chunk passes.
//
// binary_mm counts bits with the nibble table of vpshufb. Both operands are first split into low and
// high nibbles of each byte ("nibble planes", bits past K cleared), so that a pair of 256-bit words costs
// two XORs, two lookups and two byte additions; byte sums are widened with vpsadbw before they can
// overflow. (This is faster than 64-bit POPCNT, which costs an XOR, a POPCNT and an ADD per 64 bits on
// the integer units.) Tasks own blocks of b rows (split into a per-thread buffer that stays in L2);
// micro-tiles of 4 rows of a against 2 rows of b walk all of K.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "pycompress/cpu_features.h"
#include "pycompress/cpu_kernels.h"

namespace pycompress::cpu {
namespace {

// The AVX2 kernels here also use FMA, which lowbit_isa() requires and the shared PYC_AVX2 leaves out.
#define PYC_AVX2_FMA __attribute__((target("avx2,fma,f16c")))

// Float outputs: c10's conversions round to nearest even.
template <typename OutT>
inline void store_out(void* out, int64_t index, float v) {
  static_cast<OutT*>(out)[index] = static_cast<OutT>(v);
}

// bias as float32 (it may come in any float dtype), or an undefined tensor.
at::Tensor float_bias(const std::optional<at::Tensor>& bias, int64_t N, const char* op) {
  if (!bias.has_value()) {
    return at::Tensor();
  }
  TORCH_CHECK(bias->numel() == N, op, ": bias must have N elements");
  return bias->to(at::kFloat).contiguous();
}

const float* data_or_null(const at::Tensor& t) { return t.defined() ? t.const_data_ptr<float>() : nullptr; }

// ---------------------------------------------------------------------------------------------------
// Activations as float32 rows of kp >= K values, zeros past K.

template <typename T>
PYC_AVX2_FMA void convert_row_avx2(const T* src, int64_t K, int64_t kp, float* dst) {
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    _mm256_storeu_ps(dst + k, load8(src + k));
  }
  for (; k < K; ++k) {
    dst[k] = to_float(src[k]);
  }
  std::fill(dst + K, dst + kp, 0.0f);
}

template <typename T>
void convert_row_scalar(const T* src, int64_t K, int64_t kp, float* dst) {
  for (int64_t k = 0; k < K; ++k) {
    dst[k] = to_float(src[k]);
  }
  std::fill(dst + K, dst + kp, 0.0f);
}

// x [M, K] as float32 [M, kp]: x itself when it is float32 and kp == K, else a converted copy.
at::Tensor float_rows(const at::Tensor& x, int64_t kp, Isa isa) {
  const int64_t M = x.size(0);
  const int64_t K = x.size(1);
  if (x.scalar_type() == at::kFloat && kp == K) {
    return x;
  }
  at::Tensor xf = at::empty({M, kp}, x.options().dtype(at::kFloat));
  float* dst = xf.mutable_data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, 65536 / kp);
  auto run = [&](auto tag) {
    using T = decltype(tag);
    const T* src = x.const_data_ptr<T>();
    at::parallel_for(0, M, grain, [&](int64_t begin, int64_t end) {
      for (int64_t m = begin; m < end; ++m) {
        if (isa == Isa::kAvx2) {
          convert_row_avx2(src + m * K, K, kp, dst + m * kp);
        } else {
          convert_row_scalar(src + m * K, K, kp, dst + m * kp);
        }
      }
    });
  };
  dispatch_float(x.scalar_type(), "float_rows", "x", run);
  return xf;
}

// ---------------------------------------------------------------------------------------------------
// Shared driver of the weight-only GEMMs (AVX2 path).

// Output columns per task: the weight rows of a group stay in L1 while the rows of x pass.
constexpr int64_t kNG = 8;

PYC_AVX2_FMA inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// mask's sign bit ? b : a, lane by lane. As inline assembly: GCC turns _mm256_blendv_ps into a compare
// against zero plus the blend, one more instruction for a mask whose sign bit is all that matters here.
PYC_AVX2_FMA inline __m256 blend_by_sign(__m256 a, __m256 b, __m256 mask) {
  __m256 r;
  __asm__("vblendvps %3, %2, %1, %0" : "=x"(r) : "x"(a), "xm"(b), "x"(mask));
  return r;
}

// Where the sums go: y = sum * scale[n] + bias[n] (scale and bias optional), cast to the output dtype.
struct Output {
  const float* scale;
  const float* bias;
  void* out;
  int64_t N;
};

// Writes the MR x NR sums of a tile at (m0, n0); columns past N are dropped.
template <typename OutT, int MR, int NR>
inline void store_tile(const Output& o, const float (&sums)[MR][NR], int64_t m0, int64_t n0) {
  for (int r = 0; r < NR && n0 + r < o.N; ++r) {
    for (int m = 0; m < MR; ++m) {
      float v = sums[m][r];
      if (o.scale != nullptr) {
        v = v * o.scale[n0 + r];
      }
      if (o.bias != nullptr) {
        v = v + o.bias[n0 + r];
      }
      store_out<OutT>(o.out, (m0 + m) * o.N + n0 + r, v);
    }
  }
}

template <typename OutT, int MR, int NR, class Kern>
PYC_AVX2_FMA inline void run_tile(const Kern& kern, const Output& o, int64_t m, int64_t n) {
  float sums[MR][NR];
  kern.template tile<MR, NR>(m, n, sums);
  store_tile<OutT, MR, NR>(o, sums, m, n);
}

// Walks rows [m0, m1) of x against the kNG weight rows from n0 with Kern::tile<MR, NR>(m, n, sums):
// tiles of Kern::kMR x Kern::kNR while they fit, then of 2 x Kern::kNR, then single rows against
// Kern::kNR1 columns at a time. Sizes are per kernel: as many accumulators as the 16 registers allow.
template <typename OutT, class Kern>
PYC_AVX2_FMA void run_group(const Kern& kern, const Output& o, int64_t m0, int64_t m1, int64_t n0) {
  static_assert(kNG % Kern::kNR == 0 && kNG % Kern::kNR1 == 0, "tiles must cover the group");
  int64_t m = m0;
  for (; m + Kern::kMR <= m1; m += Kern::kMR) {
    for (int64_t c = 0; c < kNG; c += Kern::kNR) {
      run_tile<OutT, Kern::kMR, Kern::kNR>(kern, o, m, n0 + c);
    }
  }
  if constexpr (Kern::kMR > 2) {
    for (; m + 2 <= m1; m += 2) {
      for (int64_t c = 0; c < kNG; c += Kern::kNR) {
        run_tile<OutT, 2, Kern::kNR>(kern, o, m, n0 + c);
      }
    }
  }
  for (; m < m1; ++m) {
    for (int64_t c = 0; c < kNG; c += Kern::kNR1) {
      run_tile<OutT, 1, Kern::kNR1>(kern, o, m, n0 + c);
    }
  }
}

template <typename OutT, class Kern>
void run_weight_gemm(const Kern& kern, const Output& o, int64_t M, int64_t K) {
  const int64_t groups = ceil_div(o.N, kNG);
  // Rows per task: all of them, unless that leaves too few tasks to share among the threads.
  const int64_t want = 4 * static_cast<int64_t>(at::get_num_threads());
  const int64_t mchunks = groups >= want ? 1 : std::min(ceil_div(M, 48), ceil_div(want, groups));
  const int64_t mc = ceil_div(M, mchunks);
  const int64_t tasks = groups * mchunks;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, mc * K));
  at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t m0 = (t % mchunks) * mc;
      run_group<OutT>(kern, o, m0, std::min(M, m0 + mc), (t / mchunks) * kNG);
    }
  });
}

// ---------------------------------------------------------------------------------------------------
// int8_weight_only_mm

struct Int8WeightArgs {
  const float* x;  // [M, K] float32
  const int8_t* w;  // [N, K]
  const float* scale;  // [N] or [N, G]
  int64_t N, K, G, gs;
};

template <bool kGrouped>
struct Int8WeightKern {
  static constexpr int kMR = 3;
  static constexpr int kNR = 4;
  static constexpr int kNR1 = 8;
  Int8WeightArgs p;

  // Per channel: one segment [0, K), the scale is applied to the sums. Grouped: one segment per group,
  // its scale folded into the converted weights.
  template <int MR, int NR>
  PYC_AVX2_FMA void tile(int64_t m0, int64_t n0, float (&sums)[MR][NR]) const {
    const int64_t K = p.K;
    const float* x = p.x + m0 * K;
    // Columns past N repeat the last row; their sums are dropped.
    const int8_t* wr[NR];
    const float* sr[NR];
    for (int r = 0; r < NR; ++r) {
      const int64_t n = std::min(n0 + r, p.N - 1);
      wr[r] = p.w + n * K;
      sr[r] = p.scale + n * p.G;
    }
    __m256 acc[MR][NR];
    float tail[MR][NR];
    for (int m = 0; m < MR; ++m) {
      for (int r = 0; r < NR; ++r) {
        acc[m][r] = _mm256_setzero_ps();
        tail[m][r] = 0.0f;
      }
    }
    for (int64_t g = 0; g < p.G; ++g) {
      const int64_t k1 = (g + 1) * p.gs;
      __m256 sc[NR];
      if constexpr (kGrouped) {
        for (int r = 0; r < NR; ++r) {
          sc[r] = _mm256_set1_ps(sr[r][g]);
        }
      }
      int64_t k = g * p.gs;
      for (; k + 8 <= k1; k += 8) {
        __m256 xv[MR];
        for (int m = 0; m < MR; ++m) {
          xv[m] = _mm256_loadu_ps(x + m * K + k);
        }
        // One weight row at a time: converting all NR first would need NR more registers.
        for (int r = 0; r < NR; ++r) {
          const __m128i w8 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(wr[r] + k));
          __m256 wf = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(w8));
          if constexpr (kGrouped) {
            wf = _mm256_mul_ps(wf, sc[r]);
          }
          for (int m = 0; m < MR; ++m) {
            acc[m][r] = _mm256_fmadd_ps(xv[m], wf, acc[m][r]);
          }
        }
      }
      for (; k < k1; ++k) {
        for (int r = 0; r < NR; ++r) {
          const float wv = kGrouped ? static_cast<float>(wr[r][k]) * sr[r][g] : static_cast<float>(wr[r][k]);
          for (int m = 0; m < MR; ++m) {
            tail[m][r] += x[m * K + k] * wv;
          }
        }
      }
    }
    for (int m = 0; m < MR; ++m) {
      for (int r = 0; r < NR; ++r) {
        sums[m][r] = hsum(acc[m][r]) + tail[m][r];
      }
    }
  }
};

template <typename OutT>
void int8_weight_scalar(const Int8WeightArgs& p, const Output& o, int64_t M, bool grouped) {
  at::parallel_for(0, p.N, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const int8_t* wr = p.w + n * p.K;
      for (int64_t m = 0; m < M; ++m) {
        const float* xr = p.x + m * p.K;
        float sums[1][1] = {{0.0f}};
        for (int64_t g = 0; g < p.G; ++g) {
          float part = 0.0f;
          for (int64_t k = g * p.gs; k < (g + 1) * p.gs; ++k) {
            part += xr[k] * static_cast<float>(wr[k]);
          }
          sums[0][0] += grouped ? part * p.scale[n * p.G + g] : part;
        }
        store_tile<OutT, 1, 1>(o, sums, m, n);
      }
    }
  });
}

template <template <typename> class Fn, typename... Args>
void by_float_dtype(at::ScalarType dtype, const char* op, Args&&... args) {
  switch (dtype) {
    case at::kFloat:
      Fn<float>::run(std::forward<Args>(args)...);
      break;
    case at::kHalf:
      Fn<c10::Half>::run(std::forward<Args>(args)...);
      break;
    case at::kBFloat16:
      Fn<c10::BFloat16>::run(std::forward<Args>(args)...);
      break;
    default:
      TORCH_CHECK(false, op, ": the output must be float32, float16 or bfloat16 (got ", dtype, ")");
  }
}

template <typename OutT>
struct Int8WeightRun {
  static void run(const Int8WeightArgs& p, const Output& o, int64_t M, bool grouped, Isa isa) {
    if (isa == Isa::kScalar) {
      int8_weight_scalar<OutT>(p, o, M, grouped);
    } else if (grouped) {
      run_weight_gemm<OutT>(Int8WeightKern<true>{p}, o, M, p.K);
    } else {
      run_weight_gemm<OutT>(Int8WeightKern<false>{p}, o, M, p.K);
    }
  }
};

at::Tensor int8_weight_only_mm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& w_scale,
                               const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "int8_weight_only_mm";
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), op, ": x [M, K] and w [N, K] expected");
  TORCH_CHECK(w.scalar_type() == at::kChar, op, ": w must be int8");
  TORCH_CHECK(x.is_contiguous() && w.is_contiguous(), op, ": x and w must be contiguous");
  const int64_t M = x.size(0);
  const int64_t K = x.size(1);
  const int64_t N = w.size(0);
  TORCH_CHECK(w_scale.scalar_type() == at::kFloat && w_scale.is_contiguous() && w_scale.size(0) == N &&
                  (w_scale.dim() == 1 || w_scale.dim() == 2),
              op, ": w_scale must be contiguous float32 [N] or [N, G]");
  // One group is the per-channel case.
  const bool grouped = w_scale.dim() == 2 && w_scale.size(1) > 1;
  const int64_t G = grouped ? w_scale.size(1) : 1;
  TORCH_CHECK(K % G == 0, op, ": the number of groups must divide K");
  const Isa isa = lowbit_isa();
  at::Tensor out = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) {
    return out;
  }
  const at::Tensor xf = float_rows(x, K, isa);
  const at::Tensor bf = float_bias(bias, N, op);
  const Int8WeightArgs p{xf.const_data_ptr<float>(), w.const_data_ptr<int8_t>(), w_scale.const_data_ptr<float>(),
                         N, K, G, K / G};
  const Output o{grouped ? nullptr : w_scale.const_data_ptr<float>(), data_or_null(bf), out.mutable_data_ptr(), N};
  by_float_dtype<Int8WeightRun>(x.scalar_type(), op, p, o, M, grouped, isa);
  return out;
}

// ---------------------------------------------------------------------------------------------------
// binary_weight_mm and ternary_weight_mm

struct PackedWeightArgs {
  const float* x;  // [M, ldx] float32, zeros past K
  const int32_t* w;  // [N, words]
  int64_t N, ldx, words;
};

// One step of the 1-bit kernel: acc += (bit 31 of word << shift) ? nx : x. One statement: as intrinsics,
// GCC computes the blends of several rows ahead and spills the accumulators.
PYC_AVX2_FMA inline __m256 add_signed(__m256 acc, __m256i word, const __m256i& shift, __m256 x, __m256 nx) {
  __m256 t;
  __asm__("vpsllvd %2, %3, %1\n\tvblendvps %1, %5, %4, %1\n\tvaddps %1, %0, %0"
          : "+x"(acc), "=&x"(t)
          : "m"(shift), "x"(word), "x"(x), "x"(nx));
  return acc;
}

// One step of the ternary kernel: word << shift holds the sign of each code at bit 31 and its nonzero bit
// at bit 30; acc += nonzero ? (sign ? nx : x) : 0.
PYC_AVX2_FMA inline __m256 add_ternary(__m256 acc, __m256i word, const __m256i& shift, __m256 x, __m256 nx,
                                     __m256 zero) {
  __m256 t;
  __m256 u;
  __asm__(
      "vpsllvd %3, %4, %1\n\tvblendvps %1, %6, %5, %2\n\tvpaddd %1, %1, %1\n\t"
      "vblendvps %1, %2, %7, %2\n\tvaddps %2, %0, %0"
      : "+x"(acc), "=&x"(t), "=&x"(u)
      : "m"(shift), "x"(word), "x"(x), "x"(nx), "x"(zero));
  return acc;
}

// Lane j of quarter q shifts bit 8q + j of a word to the sign bit.
alignas(32) constexpr int32_t kBitShifts[4][8] = {{31, 30, 29, 28, 27, 26, 25, 24},
                                                  {23, 22, 21, 20, 19, 18, 17, 16},
                                                  {15, 14, 13, 12, 11, 10, 9, 8},
                                                  {7, 6, 5, 4, 3, 2, 1, 0}};
// Lane j of half h shifts code 8h + j (bits 2 (8h + j) and 2 (8h + j) + 1) to bits 30 and 31.
alignas(32) constexpr int32_t kCodeShifts[2][8] = {{30, 28, 26, 24, 22, 20, 18, 16}, {14, 12, 10, 8, 6, 4, 2, 0}};

// One row of x against kNR rows of words, each word broadcast once and kept in a register for its 32
// (or 16) values; a row of x and its negation stay in two registers for the kNR rows. Both kernels are
// limited by vector instructions, not by loads, so rows of x are taken one at a time.
template <bool kTernary>
struct PackedWeightKern {
  static constexpr int kMR = 1;
  static constexpr int kNR = 4;
  static constexpr int kNR1 = 4;
  static constexpr int kPerWord = kTernary ? 16 : 32;
  PackedWeightArgs p;

  template <int MR, int NR>
  PYC_AVX2_FMA void tile(int64_t m0, int64_t n0, float (&sums)[MR][NR]) const {
    static_assert(MR == 1, "one row of x at a time");
    const float* x = p.x + m0 * p.ldx;
    const float* wr[NR];
    for (int r = 0; r < NR; ++r) {
      // As float pointers for vbroadcastss, a plain load. Columns past N repeat the last row.
      wr[r] = reinterpret_cast<const float*>(p.w + std::min(n0 + r, p.N - 1) * p.words);
    }
    const auto* shifts = reinterpret_cast<const __m256i*>(kTernary ? &kCodeShifts[0][0] : &kBitShifts[0][0]);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256 zero = _mm256_setzero_ps();
    __m256 acc[NR];
    for (int r = 0; r < NR; ++r) {
      acc[r] = _mm256_setzero_ps();
    }
    for (int64_t wi = 0; wi < p.words; ++wi) {
      __m256i word[NR];
      for (int r = 0; r < NR; ++r) {
        word[r] = _mm256_castps_si256(_mm256_broadcast_ss(wr[r] + wi));
      }
      for (int q = 0; q < kPerWord / 8; ++q) {
        const __m256 xv = _mm256_loadu_ps(x + wi * kPerWord + q * 8);
        const __m256 nx = _mm256_xor_ps(xv, sign);
        for (int r = 0; r < NR; ++r) {
          if constexpr (kTernary) {
            acc[r] = add_ternary(acc[r], word[r], shifts[q], xv, nx, zero);
          } else {
            acc[r] = add_signed(acc[r], word[r], shifts[q], xv, nx);
          }
        }
      }
    }
    for (int r = 0; r < NR; ++r) {
      sums[0][r] = hsum(acc[r]);
    }
  }
};

// Portable path of both: value(w, k) is the weight (-1, 0 or 1) at k of the row of words w.
template <typename OutT, typename Value>
void packed_weight_scalar(const PackedWeightArgs& p, const Output& o, int64_t M, int64_t K, Value value) {
  at::parallel_for(0, p.N, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const uint32_t* wr = reinterpret_cast<const uint32_t*>(p.w + n * p.words);
      for (int64_t m = 0; m < M; ++m) {
        const float* xr = p.x + m * p.ldx;
        float sums[1][1] = {{0.0f}};
        for (int64_t k = 0; k < K; ++k) {
          const int v = value(wr, k);
          sums[0][0] += v > 0 ? xr[k] : (v < 0 ? -xr[k] : 0.0f);
        }
        store_tile<OutT, 1, 1>(o, sums, m, n);
      }
    }
  });
}

inline int binary_value(const uint32_t* w, int64_t k) { return (w[k / 32] >> (k % 32)) & 1u ? -1 : 1; }

inline int ternary_value(const uint32_t* w, int64_t k) {
  const uint32_t code = (w[k / 16] >> (2 * (k % 16))) & 3u;
  return code == 1u ? 1 : (code == 3u ? -1 : 0);
}

// The Fn of by_float_dtype for binary_weight_mm (kTernary false) and ternary_weight_mm.
template <bool kTernary>
struct PackedWeightRun {
  template <typename OutT>
  struct Out {
    static void run(const PackedWeightArgs& p, const Output& o, int64_t M, int64_t K, Isa isa) {
      if (isa == Isa::kScalar) {
        packed_weight_scalar<OutT>(p, o, M, K, kTernary ? ternary_value : binary_value);
      } else {
        run_weight_gemm<OutT>(PackedWeightKern<kTernary>{p}, o, M, K);
      }
    }
  };
};

// Shared entry of binary_weight_mm (per_word 32) and ternary_weight_mm (per_word 16).
template <template <typename> class Run>
at::Tensor packed_weight_mm(const char* op, int64_t per_word, const at::Tensor& x, const at::Tensor& w,
                            const at::Tensor& alpha, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2, op, ": x [M, K] and packed weights [N, words] expected");
  TORCH_CHECK(w.scalar_type() == at::kInt, op, ": the packed weights must be int32");
  TORCH_CHECK(x.is_contiguous() && w.is_contiguous(), op, ": x and the packed weights must be contiguous");
  const int64_t M = x.size(0);
  const int64_t K = x.size(1);
  const int64_t N = w.size(0);
  const int64_t words = w.size(1);
  TORCH_CHECK(words == ceil_div(K, per_word), op, ": the packed weights must have ceil(K / ", per_word,
              ") words per row");
  TORCH_CHECK(alpha.scalar_type() == at::kFloat && alpha.is_contiguous() && alpha.numel() == N, op,
              ": alpha must be contiguous float32 [N]");
  const Isa isa = lowbit_isa();
  at::Tensor out = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) {
    return out;
  }
  // The vector kernels read whole words: x is zero-padded to match, so the codes past K add nothing.
  const at::Tensor xf = float_rows(x, isa == Isa::kAvx2 ? words * per_word : K, isa);
  const at::Tensor bf = float_bias(bias, N, op);
  const PackedWeightArgs p{xf.const_data_ptr<float>(), w.const_data_ptr<int32_t>(), N, xf.size(1), words};
  const Output o{alpha.const_data_ptr<float>(), data_or_null(bf), out.mutable_data_ptr(), N};
  by_float_dtype<Run>(x.scalar_type(), op, p, o, M, K, isa);
  return out;
}

at::Tensor binary_weight_mm(const at::Tensor& x, const at::Tensor& w_bits, const at::Tensor& alpha,
                            const std::optional<at::Tensor>& bias) {
  return packed_weight_mm<PackedWeightRun<false>::Out>("binary_weight_mm", 32, x, w_bits, alpha, bias);
}

at::Tensor ternary_weight_mm(const at::Tensor& x, const at::Tensor& w_2bit, const at::Tensor& alpha,
                             const std::optional<at::Tensor>& bias) {
  return packed_weight_mm<PackedWeightRun<true>::Out>("ternary_weight_mm", 16, x, w_2bit, alpha, bias);
}

// ---------------------------------------------------------------------------------------------------
// pack_bits

inline bool is_below_zero(int8_t v) { return v < 0; }
template <typename T>
inline bool is_below_zero(T v) {
  return to_float(v) < 0.0f;
}

// Bit j of the result: src[j] < 0, for j < n <= 32 (zero and NaN give 0).
template <typename T>
inline uint32_t pack_word_scalar(const T* src, int64_t n) {
  uint32_t word = 0;
  for (int64_t j = 0; j < n; ++j) {
    if (is_below_zero(src[j])) {
      word |= 1u << j;
    }
  }
  return word;
}

template <typename T>
PYC_AVX2_FMA inline uint32_t pack_word_avx2(const T* src) {
  if constexpr (std::is_same_v<T, int8_t>) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
    return static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_cmpgt_epi8(_mm256_setzero_si256(), v)));
  } else {
    // An ordered compare: -0 and NaN (of either sign) are not below zero.
    const __m256 zero = _mm256_setzero_ps();
    uint32_t word = 0;
    for (int q = 0; q < 4; ++q) {
      const __m256 lt = _mm256_cmp_ps(load8(src + 8 * q), zero, _CMP_LT_OQ);
      word |= static_cast<uint32_t>(_mm256_movemask_ps(lt)) << (8 * q);
    }
    return word;
  }
}

template <typename T>
PYC_AVX2_FMA void pack_row_avx2(const T* src, int64_t K, uint32_t* dst) {
  const int64_t full = K / 32;
  for (int64_t w = 0; w < full; ++w) {
    dst[w] = pack_word_avx2(src + 32 * w);
  }
  if (full * 32 < K) {
    dst[full] = pack_word_scalar(src + 32 * full, K - 32 * full);
  }
}

template <typename T>
void pack_row_scalar(const T* src, int64_t K, uint32_t* dst) {
  for (int64_t w = 0; w * 32 < K; ++w) {
    dst[w] = pack_word_scalar(src + 32 * w, std::min<int64_t>(32, K - 32 * w));
  }
}

template <typename T>
void pack_bits_impl(const at::Tensor& x, at::Tensor& out, Isa isa) {
  const int64_t M = x.size(0);
  const int64_t K = x.size(1);
  const int64_t W = out.size(1);
  const T* src = x.const_data_ptr<T>();
  uint32_t* dst = reinterpret_cast<uint32_t*>(out.mutable_data_ptr<int32_t>());
  at::parallel_for(0, M, std::max<int64_t>(1, 65536 / std::max<int64_t>(K, 1)), [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      if (isa == Isa::kAvx2) {
        pack_row_avx2(src + m * K, K, dst + m * W);
      } else {
        pack_row_scalar(src + m * K, K, dst + m * W);
      }
    }
  });
}

at::Tensor pack_bits(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "pack_bits: x must be a contiguous 2-D tensor");
  const Isa isa = lowbit_isa();
  at::Tensor out = at::empty({x.size(0), ceil_div(x.size(1), 32)}, x.options().dtype(at::kInt));
  switch (x.scalar_type()) {
    case at::kFloat:
      pack_bits_impl<float>(x, out, isa);
      break;
    case at::kHalf:
      pack_bits_impl<c10::Half>(x, out, isa);
      break;
    case at::kBFloat16:
      pack_bits_impl<c10::BFloat16>(x, out, isa);
      break;
    case at::kChar:
      pack_bits_impl<int8_t>(x, out, isa);
      break;
    default:
      TORCH_CHECK(false, "pack_bits: x must be float32, float16, bfloat16 or int8 (got ", x.scalar_type(), ")");
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------
// binary_mm

struct BinaryArgs {
  const uint32_t* a;  // [M, W]
  const uint32_t* b;  // [N, W]
  const float* a_scale;
  const float* b_scale;  // [N], padded with zeros to a multiple of 8 on the AVX2 path
  const float* bias;  // [N] (padded likewise) or nullptr
  void* out;
  int64_t M, N, K, W;
};

template <typename OutT>
inline void store_binary(const BinaryArgs& p, int64_t m, int64_t n, int32_t popcount) {
  const int32_t dot = static_cast<int32_t>(p.K) - 2 * popcount;
  float v = (static_cast<float>(dot) * p.a_scale[m]) * p.b_scale[n];
  if (p.bias != nullptr) {
    v = v + p.bias[n];
  }
  store_out<OutT>(p.out, m * p.N + n, v);
}

// The last word of a row with its bits past K cleared.
inline uint32_t last_word_mask(int64_t K) { return K % 32 == 0 ? ~0u : (1u << (K % 32)) - 1u; }

template <typename OutT>
void binary_mm_scalar(const BinaryArgs& p) {
  const uint32_t mask = last_word_mask(p.K);
  const int64_t W = p.W;
  // Blocks of b rows that stay in cache while every row of a passes.
  const int64_t rows = std::max<int64_t>(1, 16384 / (W * 4));
  for_each_by_b_blocks(p.M, p.N, rows, [&](int64_t m, int64_t n) {
    const uint32_t* ar = p.a + m * W;
    const uint32_t* br = p.b + n * W;
    int32_t count = 0;
    for (int64_t w = 0; w + 1 < W; ++w) {
      count += __builtin_popcount(ar[w] ^ br[w]);
    }
    count += __builtin_popcount((ar[W - 1] ^ br[W - 1]) & mask);
    store_binary<OutT>(p, m, n, count);
  });
}

// Nibble planes: per 256 bits of a row (a "step"), 32 bytes of low nibbles then 32 bytes of high nibbles.
constexpr int64_t kStepBytes = 64;
// Byte counters gain at most 8 per step (two nibbles of 4 bits): 31 steps fit in a byte.
constexpr int64_t kMaxSteps = 31;
constexpr int kBmmMR = 4;
constexpr int kBmmNR = 2;

// Splits `rows` rows of bits from src (W words each, bits past K cleared) into nibble planes of `steps`
// steps per row at dst; rows past `rows` up to `rows_pad` are zero.
PYC_AVX2_FMA void split_nibbles(const uint32_t* src, int64_t rows, int64_t rows_pad, int64_t W, int64_t K,
                            int64_t steps, uint8_t* dst) {
  const __m256i low = _mm256_set1_epi8(0x0f);
  const uint32_t mask = last_word_mask(K);
  // The last step goes through a copy when it holds fewer than 8 words or bits past K.
  const bool copy_last = W % 8 != 0 || mask != ~0u;
  for (int64_t r = 0; r < rows_pad; ++r) {
    uint8_t* d = dst + r * steps * kStepBytes;
    if (r >= rows) {
      std::memset(d, 0, steps * kStepBytes);
      continue;
    }
    const uint32_t* s = src + r * W;
    for (int64_t st = 0; st < steps; ++st) {
      __m256i v;
      if (st + 1 < steps || !copy_last) {
        v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + 8 * st));
      } else {
        alignas(32) uint32_t tmp[8] = {};
        const int64_t n = W - 8 * st;
        std::memcpy(tmp, s + 8 * st, n * sizeof(uint32_t));
        tmp[n - 1] &= mask;
        v = _mm256_load_si256(reinterpret_cast<const __m256i*>(tmp));
      }
      _mm256_store_si256(reinterpret_cast<__m256i*>(d + st * kStepBytes), _mm256_and_si256(v, low));
      _mm256_store_si256(reinterpret_cast<__m256i*>(d + st * kStepBytes + 32),
                         _mm256_and_si256(_mm256_srli_epi16(v, 4), low));
    }
  }
}

// The byte sums of v0 and v1 (each 64-bit lane of vpsadbw holds less than 2^11) in the low and high
// halves of the four 64-bit lanes.
PYC_AVX2_FMA inline __m256i sad_pair(__m256i v0, __m256i v1) {
  const __m256i z = _mm256_setzero_si256();
  return _mm256_or_si256(_mm256_sad_epu8(v0, z), _mm256_slli_epi64(_mm256_sad_epu8(v1, z), 32));
}

// Lanes of four sad_pair results summed: [s0, s1, s2, s3] as 64-bit lanes, each two int32 sums.
PYC_AVX2_FMA inline __m256i sum_lanes4(__m256i s0, __m256i s1, __m256i s2, __m256i s3) {
  const __m256i t01 = _mm256_add_epi64(_mm256_unpacklo_epi64(s0, s1), _mm256_unpackhi_epi64(s0, s1));
  const __m256i t23 = _mm256_add_epi64(_mm256_unpacklo_epi64(s2, s3), _mm256_unpackhi_epi64(s2, s3));
  return _mm256_add_epi64(_mm256_permute2x128_si256(t01, t23, 0x20), _mm256_permute2x128_si256(t01, t23, 0x31));
}

// acc += the bit counts of the bytes of x xor y (nibbles, so the table lookup counts them). One statement
// with one scratch register, y read from memory: as intrinsics, GCC keeps more values live than the 16
// registers hold and spills accumulators.
PYC_AVX2_FMA inline __m256i count_xor(__m256i acc, __m256i x, const __m256i& y, __m256i lut) {
  __m256i t;
  __asm__("vpxor %3, %2, %1\n\tvpshufb %1, %4, %1\n\tvpaddb %1, %0, %0"
          : "+x"(acc), "=&x"(t)
          : "x"(x), "m"(y), "x"(lut));
  return acc;
}

// counts[i * ldc + j] = popcount(a_i xor b_j) over `steps` steps of nibble planes: MR rows of a (stride lda
// bytes) against kBmmNR rows of b (stride ldb bytes); all kBmmMR rows of counts are written.
template <int MR>
PYC_AVX2_FMA void popcount_tile(const uint8_t* a, int64_t lda, const uint8_t* b, int64_t ldb, int64_t steps,
                            int32_t* counts, int64_t ldc) {
  static_assert(kBmmMR == 4 && kBmmNR == 2 && MR <= kBmmMR, "the sums below are written out for 4 x 2");
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2,
                                       2, 3, 2, 3, 3, 4);
  // counts as four 64-bit lanes, one per row of a.
  __m256i total = _mm256_setzero_si256();
  for (int64_t s0 = 0; s0 < steps; s0 += kMaxSteps) {
    const int64_t s1 = std::min(steps, s0 + kMaxSteps);
    // Rows past MR stay zero.
    __m256i acc[kBmmMR][kBmmNR];
    for (int i = 0; i < kBmmMR; ++i) {
      for (int j = 0; j < kBmmNR; ++j) {
        acc[i][j] = _mm256_setzero_si256();
      }
    }
    for (int64_t s = s0; s < s1; ++s) {
      const int64_t off = s * kStepBytes;
      __m256i bl[kBmmNR];
      __m256i bh[kBmmNR];
      for (int j = 0; j < kBmmNR; ++j) {
        bl[j] = _mm256_load_si256(reinterpret_cast<const __m256i*>(b + j * ldb + off));
        bh[j] = _mm256_load_si256(reinterpret_cast<const __m256i*>(b + j * ldb + off + 32));
      }
      for (int i = 0; i < MR; ++i) {
        const auto* ai = reinterpret_cast<const __m256i*>(a + i * lda + off);
        for (int j = 0; j < kBmmNR; ++j) {
          acc[i][j] = count_xor(acc[i][j], bl[j], ai[0], lut);
          acc[i][j] = count_xor(acc[i][j], bh[j], ai[1], lut);
        }
      }
    }
    total = _mm256_add_epi32(total, sum_lanes4(sad_pair(acc[0][0], acc[0][1]), sad_pair(acc[1][0], acc[1][1]),
                                               sad_pair(acc[2][0], acc[2][1]), sad_pair(acc[3][0], acc[3][1])));
  }
  const __m128i lo = _mm256_castsi256_si128(total);
  const __m128i hi = _mm256_extracti128_si256(total, 1);
  _mm_storel_epi64(reinterpret_cast<__m128i*>(counts), lo);
  _mm_storeh_pd(reinterpret_cast<double*>(counts + ldc), _mm_castsi128_pd(lo));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(counts + 2 * ldc), hi);
  _mm_storeh_pd(reinterpret_cast<double*>(counts + 3 * ldc), _mm_castsi128_pd(hi));
}

// Row m, columns [n0, n0 + cols) of the output from their popcounts (counts, readable up to a multiple
// of 8; p.b_scale and p.bias are padded likewise).
template <typename OutT>
PYC_AVX2_FMA void binary_store_row(const BinaryArgs& p, int64_t m, int64_t n0, int64_t cols, const int32_t* counts) {
  const __m256i k = _mm256_set1_epi32(static_cast<int32_t>(p.K));
  const __m256 sa = _mm256_set1_ps(p.a_scale[m]);
  OutT* dst = static_cast<OutT*>(p.out) + m * p.N + n0;
  for (int64_t c = 0; c < cols; c += 8) {
    const __m256i cnt = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(counts + c));
    const __m256 dot = _mm256_cvtepi32_ps(_mm256_sub_epi32(k, _mm256_add_epi32(cnt, cnt)));
    __m256 v = _mm256_mul_ps(_mm256_mul_ps(dot, sa), _mm256_loadu_ps(p.b_scale + n0 + c));
    if (p.bias != nullptr) {
      v = _mm256_add_ps(v, _mm256_loadu_ps(p.bias + n0 + c));
    }
    store_lanes(dst + c, v, std::min<int64_t>(8, cols - c));
  }
}

// Most b rows per block (a multiple of kBmmNR and of 8).
constexpr int64_t kBmmMaxNb = 64;

template <typename OutT>
PYC_AVX2_FMA void binary_mm_block(const BinaryArgs& p, const uint8_t* a_planes, int64_t steps, int64_t m0,
                              int64_t m1, int64_t n0, int64_t n1, uint8_t* b_planes) {
  const int64_t ld = steps * kStepBytes;
  const int64_t nb = n1 - n0;
  split_nibbles(p.b + n0 * p.W, nb, round_up(nb, kBmmNR), p.W, p.K, steps, b_planes);
  alignas(32) int32_t counts[kBmmMR][kBmmMaxNb];
  for (int64_t m = m0; m < m1; m += kBmmMR) {
    const int rows = static_cast<int>(std::min<int64_t>(kBmmMR, m1 - m));
    const uint8_t* a = a_planes + m * ld;
    for (int64_t j = 0; j < nb; j += kBmmNR) {
      const uint8_t* b = b_planes + j * ld;
      int32_t* c = &counts[0][j];
      switch (rows) {
        case 4:
          popcount_tile<4>(a, ld, b, ld, steps, c, kBmmMaxNb);
          break;
        case 3:
          popcount_tile<3>(a, ld, b, ld, steps, c, kBmmMaxNb);
          break;
        case 2:
          popcount_tile<2>(a, ld, b, ld, steps, c, kBmmMaxNb);
          break;
        default:
          popcount_tile<1>(a, ld, b, ld, steps, c, kBmmMaxNb);
      }
    }
    for (int i = 0; i < rows; ++i) {
      binary_store_row<OutT>(p, m + i, n0, nb, counts[i]);
    }
  }
}

template <typename OutT>
void binary_mm_avx2(const BinaryArgs& p) {
  const int64_t steps = ceil_div(p.W, 8);
  const int64_t ld = steps * kStepBytes;
  const int64_t m_pad = round_up(p.M, kBmmMR);
  auto a_planes = aligned_buffer<uint8_t>(m_pad * ld, "binary_mm");
  at::parallel_for(0, ceil_div(m_pad, kBmmMR), 1, [&](int64_t begin, int64_t end) {
    const int64_t r0 = begin * kBmmMR;
    const int64_t r1 = std::min(p.M, end * kBmmMR);
    split_nibbles(p.a + r0 * p.W, std::max<int64_t>(0, r1 - r0), end * kBmmMR - r0, p.W, p.K, steps,
                  a_planes.get() + r0 * ld);
  });
  // Blocks of b rows whose planes (at most 128 KiB) stay in L2 while every row of a passes.
  const int64_t nb = std::clamp<int64_t>((128 * 1024 / ld) / 8 * 8, 8, kBmmMaxNb);
  const int64_t nblocks = ceil_div(p.N, nb);
  const int64_t want = 4 * static_cast<int64_t>(at::get_num_threads());
  const int64_t mchunks = nblocks >= want ? 1 : std::min(ceil_div(p.M, 16), ceil_div(want, nblocks));
  const int64_t mc = round_up(ceil_div(p.M, mchunks), kBmmMR);
  at::parallel_for(0, nblocks * mchunks, 1, [&](int64_t begin, int64_t end) {
    auto b_planes = aligned_buffer<uint8_t>(nb * ld, "binary_mm");
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n0 = (t / mchunks) * nb;
      const int64_t m0 = (t % mchunks) * mc;
      if (m0 < p.M) {
        binary_mm_block<OutT>(p, a_planes.get(), steps, m0, std::min(p.M, m0 + mc), n0, std::min(p.N, n0 + nb),
                              b_planes.get());
      }
    }
  });
}

template <typename OutT>
struct BinaryMmRun {
  static void run(const BinaryArgs& p, Isa isa) {
    if (isa == Isa::kScalar) {
      binary_mm_scalar<OutT>(p);
    } else {
      binary_mm_avx2<OutT>(p);
    }
  }
};

at::Tensor binary_mm(const at::Tensor& a_bits, const at::Tensor& b_bits, int64_t K, const at::Tensor& a_scale,
                     const at::Tensor& b_scale, const std::optional<at::Tensor>& bias, at::ScalarType out_dtype) {
  constexpr const char* op = "binary_mm";
  TORCH_CHECK(a_bits.dim() == 2 && b_bits.dim() == 2 && a_bits.size(1) == b_bits.size(1), op,
              ": a_bits [M, W] and b_bits [N, W] expected");
  TORCH_CHECK(a_bits.scalar_type() == at::kInt && b_bits.scalar_type() == at::kInt, op,
              ": a_bits and b_bits must be int32");
  TORCH_CHECK(a_bits.is_contiguous() && b_bits.is_contiguous(), op, ": a_bits and b_bits must be contiguous");
  TORCH_CHECK(K >= 1 && a_bits.size(1) == ceil_div(K, 32), op, ": the rows must hold ceil(K / 32) words");
  const int64_t M = a_bits.size(0);
  const int64_t N = b_bits.size(0);
  TORCH_CHECK(a_scale.scalar_type() == at::kFloat && a_scale.is_contiguous() && a_scale.numel() == M, op,
              ": a_scale must be contiguous float32 [M]");
  TORCH_CHECK(b_scale.scalar_type() == at::kFloat && b_scale.is_contiguous() && b_scale.numel() == N, op,
              ": b_scale must be contiguous float32 [N]");
  const Isa isa = lowbit_isa();
  at::Tensor out = at::empty({M, N}, a_bits.options().dtype(out_dtype));
  if (M == 0 || N == 0) {
    return out;
  }
  // Padded so that the vector epilogue may read whole vectors past N.
  const int64_t n_pad = round_up(N, 8);
  std::vector<float> b_scale_pad(b_scale.const_data_ptr<float>(), b_scale.const_data_ptr<float>() + N);
  b_scale_pad.resize(n_pad, 0.0f);
  std::vector<float> bias_pad;
  if (bias.has_value()) {
    const at::Tensor bf = float_bias(bias, N, op);
    bias_pad.assign(bf.const_data_ptr<float>(), bf.const_data_ptr<float>() + N);
    bias_pad.resize(n_pad, 0.0f);
  }
  const BinaryArgs p{reinterpret_cast<const uint32_t*>(a_bits.const_data_ptr<int32_t>()),
                     reinterpret_cast<const uint32_t*>(b_bits.const_data_ptr<int32_t>()),
                     a_scale.const_data_ptr<float>(),
                     b_scale_pad.data(),
                     bias.has_value() ? bias_pad.data() : nullptr,
                     out.mutable_data_ptr(),
                     M,
                     N,
                     K,
                     a_bits.size(1)};
  by_float_dtype<BinaryMmRun>(out_dtype, op, p, isa);
  return out;
}

}  // namespace
}  // namespace pycompress::cpu

TORCH_LIBRARY_IMPL(pycompress_C, CPU, m) {
  m.impl("int8_weight_only_mm", &pycompress::cpu::int8_weight_only_mm);
  m.impl("pack_bits", &pycompress::cpu::pack_bits);
  m.impl("binary_mm", &pycompress::cpu::binary_mm);
  m.impl("binary_weight_mm", &pycompress::cpu::binary_weight_mm);
  m.impl("ternary_weight_mm", &pycompress::cpu::ternary_weight_mm);
}
