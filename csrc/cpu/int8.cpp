// CPU kernels of the int8 op family: quantize_per_token and int8_mm (math in pycompress/ops/int8.py).
//
// Two paths, picked at every call by pycompress::cpu::int8_isa() (PYCOMPRESS_CPU_ISA=scalar forces the
// portable one): AVX2 (compiled with target attributes, so the build needs no -march flag) and scalar.
//
// int8_mm on AVX2 multiplies sign-extended int16 values with vpmaddwd: each product pair sums to at most
// 2 * 128 * 128 = 2^15 in magnitude, inside int32, so the accumulation is exact for every int8 value,
// -128 included (vpmaddubsw would saturate int16). Without VNNI every vpmaddwd needs a vpaddd, so the
// int8 peak is about 1.6x the float32 FMA peak on Zen 3, not 2x.
// - Small M (direct path): a "dot" micro-kernel, 2 rows of a against 4 rows of b read in place along
//   K, sign-extended in the loop, summed across lanes at the end; b is streamed once, never packed.
// - Large M (packed path): a "broadcast" micro-kernel, 6 rows of a (broadcast pairs of k) against 16
//   columns of b packed as [k / 2][16][2] int16, with 12 accumulators of 8 columns and no lane sums.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <tuple>
#include <vector>

#include "pycompress/cpu_features.h"
#include "pycompress/cpu_kernels.h"

namespace pycompress::cpu {
namespace {

constexpr uint32_t kAbsMask = 0x7fffffffu;
constexpr uint32_t kInfBits = 0x7f800000u;

inline uint32_t float_bits(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  return u;
}

inline float bits_float(uint32_t u) {
  float v;
  std::memcpy(&v, &u, sizeof(v));
  return v;
}

// x * inv is NaN only for 0 * inf (a row whose absmax is so small that 127 / absmax overflows); such
// an element quantizes to 0.
inline int8_t quantize_value(float x, float inv) {
  const float r = std::nearbyint(x * inv);
  if (std::isnan(r)) {
    return 0;
  }
  return static_cast<int8_t>(std::min(std::max(r, -127.0f), 127.0f));
}

// Finishes a row from the bit pattern of its absmax. Bit patterns of non-negative floats order like the
// floats, and NaN patterns lie above +inf, so an integer max over |x| propagates NaN and inf.
// Returns false when the row is all zeros or non-finite (q and scale are then already written).
inline bool row_scale(uint32_t amax_bits, int64_t K, int8_t* q, float* scale, float* inv) {
  if (amax_bits >= kInfBits) {
    *scale = std::numeric_limits<float>::quiet_NaN();
    std::memset(q, 0, K);
    return false;
  }
  if (amax_bits == 0) {
    *scale = 1.0f;
    std::memset(q, 0, K);
    return false;
  }
  const float amax = bits_float(amax_bits);
  *scale = amax / 127.0f;
  *inv = 127.0f / amax;
  return true;
}

template <typename T>
void quantize_row_scalar(const T* x, int64_t K, int8_t* q, float* scale) {
  uint32_t amax_bits = 0;
  for (int64_t k = 0; k < K; ++k) {
    amax_bits = std::max(amax_bits, float_bits(to_float(x[k])) & kAbsMask);
  }
  float inv;
  if (!row_scale(amax_bits, K, q, scale, &inv)) {
    return;
  }
  for (int64_t k = 0; k < K; ++k) {
    q[k] = quantize_value(to_float(x[k]), inv);
  }
}

// ---------------------------------------------------------------------------------------------------
// AVX2 quantize_per_token

PYC_AVX2 inline __m256i quantize8(__m256 x, __m256 inv) {
  __m256 r = _mm256_round_ps(_mm256_mul_ps(x, inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  r = _mm256_and_ps(r, _mm256_cmp_ps(r, r, _CMP_ORD_Q));
  r = _mm256_min_ps(_mm256_max_ps(r, _mm256_set1_ps(-127.0f)), _mm256_set1_ps(127.0f));
  return _mm256_cvttps_epi32(r);
}

template <typename T>
PYC_AVX2 void quantize_row_avx2(const T* x, int64_t K, int8_t* q, float* scale) {
  const __m256i abs_mask = _mm256_set1_epi32(static_cast<int32_t>(kAbsMask));
  __m256i m0 = _mm256_setzero_si256();
  __m256i m1 = _mm256_setzero_si256();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    m0 = _mm256_max_epi32(m0, _mm256_and_si256(_mm256_castps_si256(load8(x + k)), abs_mask));
    m1 = _mm256_max_epi32(m1, _mm256_and_si256(_mm256_castps_si256(load8(x + k + 8)), abs_mask));
  }
  for (; k + 8 <= K; k += 8) {
    m0 = _mm256_max_epi32(m0, _mm256_and_si256(_mm256_castps_si256(load8(x + k)), abs_mask));
  }
  m0 = _mm256_max_epi32(m0, m1);
  __m128i m = _mm_max_epi32(_mm256_castsi256_si128(m0), _mm256_extracti128_si256(m0, 1));
  m = _mm_max_epi32(m, _mm_shuffle_epi32(m, _MM_SHUFFLE(1, 0, 3, 2)));
  m = _mm_max_epi32(m, _mm_shuffle_epi32(m, _MM_SHUFFLE(2, 3, 0, 1)));
  uint32_t amax_bits = static_cast<uint32_t>(_mm_cvtsi128_si32(m));
  for (; k < K; ++k) {
    amax_bits = std::max(amax_bits, float_bits(to_float(x[k])) & kAbsMask);
  }

  float inv_s;
  if (!row_scale(amax_bits, K, q, scale, &inv_s)) {
    return;
  }
  const __m256 inv = _mm256_set1_ps(inv_s);
  // packs interleaves the 128-bit lanes; this puts the four groups of 8 back in order.
  const __m256i lane_fix = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  k = 0;
  for (; k + 32 <= K; k += 32) {
    const __m256i i0 = quantize8(load8(x + k), inv);
    const __m256i i1 = quantize8(load8(x + k + 8), inv);
    const __m256i i2 = quantize8(load8(x + k + 16), inv);
    const __m256i i3 = quantize8(load8(x + k + 24), inv);
    const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + k), _mm256_permutevar8x32_epi32(p, lane_fix));
  }
  for (; k < K; ++k) {
    q[k] = quantize_value(to_float(x[k]), inv_s);
  }
}

template <typename T>
void quantize_per_token_impl(const at::Tensor& x, at::Tensor& q, at::Tensor& scale, Isa isa) {
  const int64_t M = x.size(0);
  const int64_t K = x.size(1);
  const T* xp = x.const_data_ptr<T>();
  int8_t* qp = q.mutable_data_ptr<int8_t>();
  float* sp = scale.mutable_data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(K, 1));
  at::parallel_for(0, M, grain, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      if (isa == Isa::kAvx2) {
        quantize_row_avx2(xp + m * K, K, qp + m * K, sp + m);
      } else {
        quantize_row_scalar(xp + m * K, K, qp + m * K, sp + m);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> quantize_per_token(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "quantize_per_token: x must be a contiguous 2-D tensor");
  const Isa isa = int8_isa();
  at::Tensor q = at::empty({x.size(0), x.size(1)}, x.options().dtype(at::kChar));
  at::Tensor scale = at::empty({x.size(0)}, x.options().dtype(at::kFloat));
  switch (x.scalar_type()) {
    case at::kFloat:
      quantize_per_token_impl<float>(x, q, scale, isa);
      break;
    case at::kHalf:
      quantize_per_token_impl<c10::Half>(x, q, scale, isa);
      break;
    case at::kBFloat16:
      quantize_per_token_impl<c10::BFloat16>(x, q, scale, isa);
      break;
    default:
      TORCH_CHECK(false, "quantize_per_token: x must be float32, float16 or bfloat16 (got ", x.scalar_type(), ")");
  }
  return {q, scale};
}

// ---------------------------------------------------------------------------------------------------
// int8_mm

// Scales and bias, as float32, padded with zeros to a multiple of kBcNR columns so that the vector
// epilogues may read a whole vector past any valid column.
struct Epilogue {
  const float* a_scale;
  std::vector<float> b_scale;
  std::vector<float> bias;  // empty when there is no bias
  void* out;
  int64_t N;
};

template <typename OutT>
inline void store_scalar(const Epilogue& ep, int64_t m, int64_t n, int32_t acc) {
  float v = static_cast<float>(acc) * ep.a_scale[m];
  v = v * ep.b_scale[n];
  if (!ep.bias.empty()) {
    v = v + ep.bias[n];
  }
  static_cast<OutT*>(ep.out)[m * ep.N + n] = static_cast<OutT>(v);
}

// Portable path: int32 dot products, b rows in chunks that stay in cache while every row of a passes.
template <typename OutT>
void int8_mm_scalar(const int8_t* a, const int8_t* b, int64_t M, int64_t N, int64_t K, const Epilogue& ep) {
  const int64_t chunk = std::max<int64_t>(1, (64 * 1024) / std::max<int64_t>(K, 1));
  for_each_by_b_blocks(M, N, chunk, [&](int64_t m, int64_t n) {
    const int8_t* ar = a + m * K;
    const int8_t* br = b + n * K;
    int32_t acc = 0;
    for (int64_t k = 0; k < K; ++k) {
      acc += static_cast<int32_t>(ar[k]) * static_cast<int32_t>(br[k]);
    }
    store_scalar<OutT>(ep, m, n, acc);
  });
}

// Dot micro-kernel (small M): kMR rows of a against kNR rows of b, 2 x 4 accumulators.
constexpr int kNR = 4;
constexpr int kMR = 2;
// Broadcast micro-kernel (large M): kBcMR rows of a against kBcNR columns, 6 x 2 accumulators.
constexpr int kBcMR = 6;
constexpr int kBcNR = 16;
constexpr int64_t kKC = 1024;  // K block: a few rows of packed a and b per micro-kernel stay in L1
constexpr int64_t kMC = 96;    // M block of the packed path, a multiple of kBcMR
constexpr int64_t kNC = 128;   // N block of the packed path, a multiple of kBcNR
// Below this many rows the direct path wins (measured on Zen 3): b is read once, without packing.
constexpr int64_t kDirectMaxM = 32;

// Sums each of four vectors across its lanes: [sum(v0), sum(v1), sum(v2), sum(v3)].
PYC_AVX2 inline __m128i hsum4(__m256i v0, __m256i v1, __m256i v2, __m256i v3) {
  const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(v0, v1), _mm256_hadd_epi32(v2, v3));
  return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

// out[i] = [dot(a_i, b_0), .., dot(a_i, b_3)] over kc (a multiple of 16) values. a holds int16 rows with
// stride lda; b holds int16 rows with stride ldb, or, when BInt8, int8 rows sign-extended here.
template <int MR, bool BInt8>
PYC_AVX2 inline void dot_kernel(const int16_t* a, int64_t lda, const void* b, int64_t ldb, int64_t kc,
                                __m128i* out) {
  __m256i acc[MR][kNR];
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < kNR; ++j) {
      acc[i][j] = _mm256_setzero_si256();
    }
  }
  for (int64_t k = 0; k < kc; k += 16) {
    __m256i bv[kNR];
    for (int j = 0; j < kNR; ++j) {
      if constexpr (BInt8) {
        const int8_t* bp = static_cast<const int8_t*>(b) + j * ldb + k;
        bv[j] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bp)));
      } else {
        const int16_t* bp = static_cast<const int16_t*>(b) + j * ldb + k;
        bv[j] = _mm256_load_si256(reinterpret_cast<const __m256i*>(bp));
        // Keeps b in a register: GCC would otherwise fold it into each vpmaddwd, one load per row.
        __asm__("" : "+x"(bv[j]));
      }
    }
    for (int i = 0; i < MR; ++i) {
      const __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i * lda + k));
      for (int j = 0; j < kNR; ++j) {
        const __m256i p = _mm256_madd_epi16(av, bv[j]);
        // Adds in place: with _mm256_add_epi32, GCC adds into p and copies it back, one move per product.
        __asm__("vpaddd %1, %0, %0" : "+x"(acc[i][j]) : "x"(p));
      }
    }
  }
  for (int i = 0; i < MR; ++i) {
    out[i] = hsum4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]);
  }
}

template <bool BInt8>
PYC_AVX2 inline void dot_kernel_rows(int rows, const int16_t* a, int64_t lda, const void* b, int64_t ldb,
                                     int64_t kc, __m128i* out) {
  static_assert(kMR == 2, "dispatch below covers 1..kMR rows");
  if (rows == 2) {
    dot_kernel<2, BInt8>(a, lda, b, ldb, kc, out);
  } else {
    dot_kernel<1, BInt8>(a, lda, b, ldb, kc, out);
  }
}

// Writes columns n .. n + cols - 1 (cols <= 4) of row m from the int32 sums in acc.
template <typename OutT>
PYC_AVX2 inline void store4(const Epilogue& ep, int64_t m, int64_t n, int cols, __m128i acc) {
  __m128 v = _mm_mul_ps(_mm_cvtepi32_ps(acc), _mm_set1_ps(ep.a_scale[m]));
  v = _mm_mul_ps(v, _mm_loadu_ps(ep.b_scale.data() + n));
  if (!ep.bias.empty()) {
    v = _mm_add_ps(v, _mm_loadu_ps(ep.bias.data() + n));
  }
  store_lanes(static_cast<OutT*>(ep.out) + m * ep.N + n, v, cols);
}

// Sign-extends rows [row0, row0 + rows) x [k0, k0 + kc) of src (int8, stride K) into dst (int16, stride
// kcp >= kc, a multiple of 16), zero-filling columns past kc and rows up to rows_pad.
PYC_AVX2 void pack_int16(const int8_t* src, int64_t K, int64_t row0, int64_t rows, int64_t rows_pad, int64_t k0,
                         int64_t kc, int64_t kcp, int16_t* dst) {
  for (int64_t r = 0; r < rows_pad; ++r) {
    int16_t* d = dst + r * kcp;
    int64_t k = 0;
    if (r < rows) {
      const int8_t* s = src + (row0 + r) * K + k0;
      for (; k + 16 <= kc; k += 16) {
        const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + k));
        _mm256_store_si256(reinterpret_cast<__m256i*>(d + k), _mm256_cvtepi8_epi16(v));
      }
      for (; k < kc; ++k) {
        d[k] = s[k];
      }
    }
    for (; k < kcp; ++k) {
      d[k] = 0;
    }
  }
}

// Writes columns n .. n + cols - 1 (cols <= 8) of row m from the int32 sums in acc.
template <typename OutT>
PYC_AVX2 inline void store8(const Epilogue& ep, int64_t m, int64_t n, int cols, __m256i acc) {
  __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(acc), _mm256_set1_ps(ep.a_scale[m]));
  v = _mm256_mul_ps(v, _mm256_loadu_ps(ep.b_scale.data() + n));
  if (!ep.bias.empty()) {
    v = _mm256_add_ps(v, _mm256_loadu_ps(ep.bias.data() + n));
  }
  store_lanes(static_cast<OutT*>(ep.out) + m * ep.N + n, v, cols);
}

// Packs rows [n0, n0 + nc) x [k0, k0 + kc) of b (int8, stride K) for the broadcast micro-kernel: per
// kBcNR-column panel, per pair of k, the kBcNR columns' two values as int16 ([kcp / 2][kBcNR][2]).
// Columns past nc and k past kc are zero; kcp is a multiple of 16.
PYC_AVX2 void pack_b_pairs(const int8_t* b, int64_t K, int64_t n0, int64_t nc, int64_t nc_pad, int64_t k0,
                           int64_t kc, int64_t kcp, int16_t* dst) {
  const int64_t k16 = kc / 16 * 16;
  for (int64_t c0 = 0; c0 < nc_pad; c0 += 8) {
    int16_t* panel = dst + (c0 / kBcNR) * kcp * kBcNR + (c0 % kBcNR) * 2;
    int64_t k = 0;
    if (c0 + 8 <= nc) {
      const int8_t* src = b + (n0 + c0) * K + k0;
      for (; k < k16; k += 16) {
        __m256i r[8];
        for (int c = 0; c < 8; ++c) {
          r[c] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + c * K + k)));
        }
        // 8 x 8 transpose of 32-bit units (a unit is one column's pair of k values).
        __m256i t[8];
        for (int c = 0; c < 8; c += 2) {
          t[c] = _mm256_unpacklo_epi32(r[c], r[c + 1]);
          t[c + 1] = _mm256_unpackhi_epi32(r[c], r[c + 1]);
        }
        __m256i u[8];
        for (int c = 0; c < 8; c += 4) {
          u[c] = _mm256_unpacklo_epi64(t[c], t[c + 2]);
          u[c + 1] = _mm256_unpackhi_epi64(t[c], t[c + 2]);
          u[c + 2] = _mm256_unpacklo_epi64(t[c + 1], t[c + 3]);
          u[c + 3] = _mm256_unpackhi_epi64(t[c + 1], t[c + 3]);
        }
        int16_t* d = panel + (k / 2) * kBcNR * 2;
        for (int q = 0; q < 4; ++q) {
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + q * kBcNR * 2),
                              _mm256_permute2x128_si256(u[q], u[q + 4], 0x20));
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + (q + 4) * kBcNR * 2),
                              _mm256_permute2x128_si256(u[q], u[q + 4], 0x31));
        }
      }
    }
    for (; k < kcp; k += 2) {
      int16_t* d = panel + (k / 2) * kBcNR * 2;
      for (int c = 0; c < 8; ++c) {
        d[2 * c] = 0;
        d[2 * c + 1] = 0;
        if (c0 + c < nc) {
          const int8_t* s = b + (n0 + c0 + c) * K + k0;
          d[2 * c] = k < kc ? s[k] : 0;
          d[2 * c + 1] = k + 1 < kc ? s[k + 1] : 0;
        }
      }
    }
  }
}

// acc += vpmaddwd(x, y). One statement with one scratch register: as intrinsics, GCC computes both
// products of a row first and runs out of the 16 registers (12 accumulators, 2 of b, 1 of a, 1 scratch).
PYC_AVX2 inline void madd_acc(__m256i& acc, __m256i x, __m256i y) {
  __m256i scratch;
  __asm__("vpmaddwd %3, %2, %1\n\tvpaddd %1, %0, %0" : "+x"(acc), "=&x"(scratch) : "x"(x), "x"(y));
}

// acc[i][h] = sums for row i and columns 8h .. 8h + 7 over kcp values: a holds kBcMR int16 rows with
// stride kcp, b one panel from pack_b_pairs. a is read as broadcast pairs of k.
PYC_AVX2 inline void broadcast_kernel(const int16_t* a, const int16_t* b, int64_t kcp, __m256i out[kBcMR][2]) {
  static_assert(kBcMR == 6 && kBcNR == 16, "the accumulators below are written out for 6 x 16");
  // Named accumulators rather than an array: GCC keeps an array in memory, one load and store per step.
  __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
  __m256i c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  const int16_t* a1 = a + kcp;
  const int16_t* a2 = a + 2 * kcp;
  const int16_t* a3 = a + 3 * kcp;
  const int16_t* a4 = a + 4 * kcp;
  const int16_t* a5 = a + 5 * kcp;
  for (int64_t k = 0; k < kcp; k += 2) {
    __m256i b0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(b + k * kBcNR));
    __m256i b1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(b + k * kBcNR + 16));
    // Keeps b in registers: GCC would otherwise fold it into each vpmaddwd, one load per row.
    __asm__("" : "+x"(b0), "+x"(b1));
    __m256i av = _mm256_broadcastd_epi32(_mm_loadu_si32(a + k));
    madd_acc(c00, av, b0);
    madd_acc(c01, av, b1);
    av = _mm256_broadcastd_epi32(_mm_loadu_si32(a1 + k));
    madd_acc(c10, av, b0);
    madd_acc(c11, av, b1);
    av = _mm256_broadcastd_epi32(_mm_loadu_si32(a2 + k));
    madd_acc(c20, av, b0);
    madd_acc(c21, av, b1);
    av = _mm256_broadcastd_epi32(_mm_loadu_si32(a3 + k));
    madd_acc(c30, av, b0);
    madd_acc(c31, av, b1);
    av = _mm256_broadcastd_epi32(_mm_loadu_si32(a4 + k));
    madd_acc(c40, av, b0);
    madd_acc(c41, av, b1);
    av = _mm256_broadcastd_epi32(_mm_loadu_si32(a5 + k));
    madd_acc(c50, av, b0);
    madd_acc(c51, av, b1);
  }
  out[0][0] = c00;
  out[0][1] = c01;
  out[1][0] = c10;
  out[1][1] = c11;
  out[2][0] = c20;
  out[2][1] = c21;
  out[3][0] = c30;
  out[3][1] = c31;
  out[4][0] = c40;
  out[4][1] = c41;
  out[5][0] = c50;
  out[5][1] = c51;
}

struct PackBuffers {
  std::unique_ptr<int16_t[], AlignedFree> a;
  std::unique_ptr<int16_t[], AlignedFree> b;
  std::unique_ptr<int32_t[], AlignedFree> tile;  // only when K takes more than one block
};

// One (kMC x kNC) block of the output at (m0, n0): walks K in nkb blocks of kc_max, packing a (int16
// rows) and b (int16 pairs) into buf; int32 partial sums live in buf.tile until the last K block.
template <typename OutT>
PYC_AVX2 void packed_block(const int8_t* a, const int8_t* b, int64_t M, int64_t N, int64_t K, int64_t m0,
                           int64_t n0, int64_t nkb, int64_t kc_max, PackBuffers& buf, const Epilogue& ep) {
  const int64_t mc = std::min(kMC, M - m0);
  const int64_t nc = std::min(kNC, N - n0);
  const int64_t mc_pad = round_up(mc, kBcMR);
  const int64_t nc_pad = round_up(nc, kBcNR);
  for (int64_t kb = 0; kb < nkb; ++kb) {
    const int64_t k0 = kb * kc_max;
    const int64_t kc = std::min(kc_max, K - k0);
    const int64_t kcp = round_up(kc, 16);
    pack_int16(a, K, m0, mc, mc_pad, k0, kc, kcp, buf.a.get());
    pack_b_pairs(b, K, n0, nc, nc_pad, k0, kc, kcp, buf.b.get());
    const bool first = kb == 0;
    const bool last = kb == nkb - 1;
    for (int64_t j = 0; j < nc_pad; j += kBcNR) {
      for (int64_t i = 0; i < mc_pad; i += kBcMR) {
        __m256i acc[kBcMR][2];
        broadcast_kernel(buf.a.get() + i * kcp, buf.b.get() + j * kcp, kcp, acc);
        const int rows = static_cast<int>(std::min<int64_t>(kBcMR, mc - i));
        for (int r = 0; r < rows; ++r) {
          for (int h = 0; h < 2 && j + 8 * h < nc; ++h) {
            const int64_t jh = j + 8 * h;
            __m256i v = acc[r][h];
            if (nkb > 1) {
              auto* c = reinterpret_cast<__m256i*>(buf.tile.get() + (i + r) * kNC + jh);
              if (!first) {
                v = _mm256_add_epi32(v, _mm256_load_si256(c));
              }
              if (!last) {
                _mm256_store_si256(c, v);
                continue;
              }
            }
            store8<OutT>(ep, m0 + i + r, n0 + jh, static_cast<int>(std::min<int64_t>(8, nc - jh)), v);
          }
        }
      }
    }
  }
}

// Large M: tasks are (kMC x kNC) blocks of the output, each packing its own slices of a and b.
template <typename OutT>
void int8_mm_avx2_packed(const int8_t* a, const int8_t* b, int64_t M, int64_t N, int64_t K, const Epilogue& ep) {
  const int64_t nkb = (K + kKC - 1) / kKC;
  const int64_t kc_max = round_up((K + nkb - 1) / nkb, 16);
  const int64_t mblocks = (M + kMC - 1) / kMC;
  const int64_t nblocks = (N + kNC - 1) / kNC;
  at::parallel_for(0, mblocks * nblocks, 1, [&](int64_t begin, int64_t end) {
    PackBuffers buf{aligned_buffer<int16_t>(kMC * kc_max, "int8_mm"),
                    aligned_buffer<int16_t>(kNC * kc_max, "int8_mm"),
                    aligned_buffer<int32_t>(nkb > 1 ? kMC * kNC : 0, "int8_mm")};
    for (int64_t t = begin; t < end; ++t) {
      packed_block<OutT>(a, b, M, N, K, (t / nblocks) * kMC, (t % nblocks) * kNC, nkb, kc_max, buf, ep);
    }
  });
}

// Small M: every row of b is used at most M times, so b is read in place (sign-extended in the
// micro-kernel) instead of packed; a is widened to int16 once. The K % 16 tail is summed in scalar.
template <typename OutT>
PYC_AVX2 void int8_mm_avx2_direct(const int8_t* a, const int8_t* b, int64_t M, int64_t N, int64_t K,
                                  const Epilogue& ep) {
  const int64_t k16 = K / 16 * 16;
  const int64_t kp = round_up(K, 16);
  auto a16 = aligned_buffer<int16_t>(M * kp, "int8_mm");
  pack_int16(a, K, 0, M, M, 0, K, kp, a16.get());
  // The last group of b rows, padded with zero rows, so that the micro-kernel may read kNR rows.
  const int64_t n_full = N / kNR * kNR;
  std::vector<int8_t> b_tail;
  if (n_full < N) {
    b_tail.assign(kNR * K, 0);
    std::memcpy(b_tail.data(), b + n_full * K, (N - n_full) * K);
  }
  const int64_t groups = (N + kNR - 1) / kNR;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(M * K, 1));
  at::parallel_for(0, groups, grain, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      const int64_t n0 = g * kNR;
      const int8_t* bg = n0 < n_full ? b + n0 * K : b_tail.data();
      const int cols = static_cast<int>(std::min<int64_t>(kNR, N - n0));
      for (int64_t m0 = 0; m0 < M; m0 += kMR) {
        const int rows = static_cast<int>(std::min<int64_t>(kMR, M - m0));
        __m128i acc[kMR];
        dot_kernel_rows<true>(rows, a16.get() + m0 * kp, kp, bg, K, k16, acc);
        for (int r = 0; r < rows; ++r) {
          __m128i v = acc[r];
          if (k16 < K) {
            alignas(16) int32_t s[kNR];
            _mm_store_si128(reinterpret_cast<__m128i*>(s), v);
            const int8_t* ar = a + (m0 + r) * K;
            for (int c = 0; c < kNR; ++c) {
              for (int64_t k = k16; k < K; ++k) {
                s[c] += static_cast<int32_t>(ar[k]) * static_cast<int32_t>(bg[c * K + k]);
              }
            }
            v = _mm_load_si128(reinterpret_cast<const __m128i*>(s));
          }
          store4<OutT>(ep, m0 + r, n0, cols, v);
        }
      }
    }
  });
}

template <typename OutT>
void int8_mm_dispatch(const int8_t* a, const int8_t* b, int64_t M, int64_t N, int64_t K, const Epilogue& ep,
                      Isa isa) {
  if (isa == Isa::kScalar || K == 0) {
    int8_mm_scalar<OutT>(a, b, M, N, K, ep);
  } else if (M <= kDirectMaxM) {
    int8_mm_avx2_direct<OutT>(a, b, M, N, K, ep);
  } else {
    int8_mm_avx2_packed<OutT>(a, b, M, N, K, ep);
  }
}

std::vector<float> padded_float(const at::Tensor& t, int64_t n) {
  std::vector<float> v(round_up(n, kBcNR), 0.0f);
  const at::Tensor f = t.to(at::kFloat).contiguous();
  std::memcpy(v.data(), f.const_data_ptr<float>(), n * sizeof(float));
  return v;
}

at::Tensor int8_mm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& a_scale, const at::Tensor& b_scale,
                   const std::optional<at::Tensor>& bias, at::ScalarType out_dtype) {
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && a.size(1) == b.size(1), "int8_mm: a [M, K] and b [N, K] expected");
  TORCH_CHECK(a.scalar_type() == at::kChar && b.scalar_type() == at::kChar, "int8_mm: a and b must be int8");
  TORCH_CHECK(a.is_contiguous() && b.is_contiguous(), "int8_mm: a and b must be contiguous");
  const int64_t M = a.size(0);
  const int64_t N = b.size(0);
  const int64_t K = a.size(1);
  TORCH_CHECK(a_scale.scalar_type() == at::kFloat && a_scale.numel() == M && a_scale.is_contiguous(),
              "int8_mm: a_scale must be contiguous float32 [M]");
  TORCH_CHECK(b_scale.scalar_type() == at::kFloat && b_scale.numel() == N, "int8_mm: b_scale must be float32 [N]");
  TORCH_CHECK(!bias.has_value() || bias->numel() == N, "int8_mm: bias must have N elements");
  const Isa isa = int8_isa();

  at::Tensor out = at::empty({M, N}, a.options().dtype(out_dtype));
  if (M == 0 || N == 0) {
    return out;
  }
  Epilogue ep;
  ep.a_scale = a_scale.const_data_ptr<float>();
  ep.b_scale = padded_float(b_scale, N);
  if (bias.has_value()) {
    ep.bias = padded_float(*bias, N);
  }
  ep.out = out.mutable_data_ptr();
  ep.N = N;
  const int8_t* ap = a.const_data_ptr<int8_t>();
  const int8_t* bp = b.const_data_ptr<int8_t>();
  switch (out_dtype) {
    case at::kFloat:
      int8_mm_dispatch<float>(ap, bp, M, N, K, ep, isa);
      break;
    case at::kHalf:
      int8_mm_dispatch<c10::Half>(ap, bp, M, N, K, ep, isa);
      break;
    case at::kBFloat16:
      int8_mm_dispatch<c10::BFloat16>(ap, bp, M, N, K, ep, isa);
      break;
    default:
      TORCH_CHECK(false, "int8_mm: out_dtype must be float32, float16 or bfloat16 (got ", out_dtype, ")");
  }
  return out;
}

}  // namespace
}  // namespace pycompress::cpu

TORCH_LIBRARY_IMPL(pycompress_C, CPU, m) {
  m.impl("quantize_per_token", &pycompress::cpu::quantize_per_token);
  m.impl("int8_mm", &pycompress::cpu::int8_mm);
}
