// Helpers shared by the CPU kernel files (csrc/cpu/int8.cpp, lowbit.cpp, sparse.cpp, sparse24.cpp,
// lowrank.cpp, codebook.cpp).
//
// The AVX2 helpers carry PYC_AVX2, the int8 family's target: AVX2 and F16C, no FMA, since int8_isa()
// does not require it. They inline into callers compiled with more features (the low-bit kernels add
// FMA), and hold no float multiply followed by an add that such a caller could contract.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <type_traits>

#include "pycompress/cpu_features.h"

#define PYC_AVX2 __attribute__((target("avx2,f16c")))
// The float kernels' AVX2 target, the features lowbit_isa() requires.
#define PYC_AVX2_FMA __attribute__((target("avx2,fma,f16c")))

namespace pycompress::cpu {

// Calls run(T{}) with T = float, c10::Half or c10::BFloat16 for a float32, float16 or bfloat16
// dtype; any other dtype is an error naming op and what.
template <typename Run>
void dispatch_float(at::ScalarType dtype, const char* op, const char* what, Run&& run) {
  switch (dtype) {
    case at::kFloat:
      run(float{});
      return;
    case at::kHalf:
      run(c10::Half{});
      return;
    case at::kBFloat16:
      run(c10::BFloat16{});
      return;
    default:
      TORCH_CHECK(false, op, ": ", what, " must be float32, float16 or bfloat16 (got ", dtype, ")");
  }
}

inline int64_t ceil_div(int64_t x, int64_t m) { return (x + m - 1) / m; }
inline int64_t round_up(int64_t x, int64_t m) { return ceil_div(x, m) * m; }

inline float to_float(float v) { return v; }
inline float to_float(c10::Half v) { return static_cast<float>(v); }
inline float to_float(c10::BFloat16 v) { return static_cast<float>(v); }

// t as float32: t itself when it is float32 already, else a contiguous copy.
inline at::Tensor as_float(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat ? t : t.to(at::kFloat).contiguous();
}

struct AlignedFree {
  void operator()(void* p) const { std::free(p); }
};

// count values of T, 64-byte aligned (a cache line, and the alignment of the aligned vector loads).
template <typename T>
std::unique_ptr<T[], AlignedFree> aligned_buffer(int64_t count, const char* op) {
  const size_t bytes = static_cast<size_t>(round_up(std::max<int64_t>(count, 1) * sizeof(T), 64));
  void* p = std::aligned_alloc(64, bytes);
  TORCH_CHECK(p != nullptr, op, ": out of memory for a ", bytes, "-byte buffer");
  return std::unique_ptr<T[], AlignedFree>(static_cast<T*>(p));
}

// The portable GEMMs' loop: f(m, n) for every row m < M of a and n < N of b, in parallel over blocks of
// `block` rows of b; each block meets every row of a in turn, so that its rows stay in cache.
template <typename F>
void for_each_by_b_blocks(int64_t M, int64_t N, int64_t block, const F& f) {
  at::parallel_for(0, ceil_div(N, block), 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const int64_t n1 = std::min(N, (c + 1) * block);
      for (int64_t m = 0; m < M; ++m) {
        for (int64_t n = c * block; n < n1; ++n) {
          f(m, n);
        }
      }
    }
  });
}

// Eight values as float32.
PYC_AVX2 inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
PYC_AVX2 inline __m256 load8(const c10::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
PYC_AVX2 inline __m256 load8(const c10::BFloat16* p) {
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}

// The sum of the 8 lanes of v.
PYC_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// The 8 x 8 transpose of r (r[i][j] becomes r[j][i]).
__attribute__((always_inline)) PYC_AVX2 inline void transpose8(__m256 r[8]) {
  __m256 t[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  __m256 s[8];
  for (int i = 0; i < 8; i += 4) {
    s[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    s[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    s[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    s[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm256_permute2f128_ps(s[i], s[i + 4], 0x20);
    r[i + 4] = _mm256_permute2f128_ps(s[i], s[i + 4], 0x31);
  }
}

// float32 lanes as float16 bit patterns (the four of a 128-bit vector in the low half), rounding to
// nearest even like c10::Half.
PYC_AVX2 inline __m128i half_bits(__m128 v) { return _mm_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
PYC_AVX2 inline __m128i half_bits(__m256 v) {
  return _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

// float32 lanes as bfloat16 bit patterns, placed like half_bits. c10::BFloat16's rounding: add 0x7fff
// plus the lowest kept bit, NaN as 0x7fc0.
PYC_AVX2 inline __m128i bf16_bits(__m128 v) {
  const __m128i u = _mm_castps_si128(v);
  const __m128i lsb = _mm_and_si128(_mm_srli_epi32(u, 16), _mm_set1_epi32(1));
  __m128i r = _mm_srli_epi32(_mm_add_epi32(u, _mm_add_epi32(lsb, _mm_set1_epi32(0x7fff))), 16);
  const __m128i nan = _mm_castps_si128(_mm_cmpunord_ps(v, v));
  r = _mm_blendv_epi8(r, _mm_set1_epi32(0x7fc0), nan);
  return _mm_packus_epi32(r, r);
}
PYC_AVX2 inline __m128i bf16_bits(__m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7fc0), nan);
  return _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
}

// The first cols of the kLanes values of T held in v, at dst. All of them is one store of constant size
// (a single vector move); fewer go through memory, so that nothing past dst + cols is written.
template <int kLanes, typename T, typename V>
inline void store_first(T* dst, const V& v, int64_t cols) {
  if (cols == kLanes) {
    std::memcpy(dst, &v, kLanes * sizeof(T));
  } else {
    std::memcpy(dst, &v, cols * sizeof(T));
  }
}

// Stores the first cols lanes of v (4 or 8 float32 values) at dst as OutT.
template <typename OutT, typename V>
PYC_AVX2 inline void store_lanes(OutT* dst, V v, int64_t cols) {
  constexpr int kLanes = sizeof(V) / sizeof(float);
  if constexpr (std::is_same_v<OutT, float>) {
    store_first<kLanes>(dst, v, cols);
  } else if constexpr (std::is_same_v<OutT, c10::Half>) {
    store_first<kLanes>(reinterpret_cast<uint16_t*>(dst), half_bits(v), cols);
  } else {
    static_assert(std::is_same_v<OutT, c10::BFloat16>, "float32, float16 or bfloat16 outputs");
    store_first<kLanes>(reinterpret_cast<uint16_t*>(dst), bf16_bits(v), cols);
  }
}

// ---------------------------------------------------------------------------------------------------
// Sparse GEMMs (defined in csrc/cpu/sparse.cpp; csrc/cpu/sparse24.cpp uses them too).
//
// They compute y^T: a stored weight entry w[n, k] is broadcast and multiplied by a contiguous row of x^T,
// so that every product is a full-width FMA whatever the sparsity pattern. x^T is held in "slabs" of
// W = 8 T columns of x (T vectors of 8 floats): slab s holds x[s W + j, k] at slab[(s K + k) W + j],
// float32, zero for rows past M, so that one row of a slab is T vectors.

// The vectors per slab row (1 to 4) for M rows of x: wide enough to amortize a broadcast over several
// FMAs, narrow enough that a slab row stays within a cache line or two.
int64_t slab_vectors(int64_t M);

// Packs x [M, K] (contiguous float32, float16 or bfloat16) into ceil(M / W) slabs of width W at dst.
void pack_x_slabs(const at::Tensor& x, int64_t W, float* dst, Isa isa);

// For rows r < rows: out[r ldo + j] (+)= sum over i in [start[r], start[r + 1]) of vals[i] * slab[idx[i] W + j],
// j < W = 8 T (T in 1..4); "+=" when accumulate. AVX2 + FMA.
void gather_rows_avx2(int T, const float* slab, const int32_t* start, const int32_t* idx, const float* vals,
                      int64_t rows, float* out, int64_t ldo, bool accumulate);

// out[m0 + j, n0 + r] = tile[r ldt + j] + bias[n0 + r] (bias may be null) for r < rows, j < cols, in
// out's dtype (float32, float16 or bfloat16; out is [M, N] contiguous).
void store_transposed(const float* tile, int64_t ldt, int64_t rows, int64_t cols, int64_t n0, int64_t m0,
                      const float* bias, const at::Tensor& out, Isa isa);

// ---------------------------------------------------------------------------------------------------
// Dense float32 GEMM against panels of x^T (defined in csrc/cpu/lowrank.cpp; csrc/cpu/codebook.cpp uses
// it too).
//
// The panels are the slabs of pack_x_slabs with W = 8 T columns (T = 1 or 2): panel p holds W columns of
// x^T, its row k (W floats) at b + p ldb + k W. The result is y^T, a row per row of a (a weight row), W
// columns per panel, so the weights are read in place, row by row, and only x is packed.

// The panel width W (8 or 16) for M rows of x: one vector for M <= 8, where wider panels would be mostly
// padding.
int64_t panel_width(int64_t M);

// For i < rows, p < panels, j < W: c[i ldc + p ldcp + j] (+)= sum over k < depth of a[i lda + k] *
// b[p ldb + k W + j] ("+=" when accumulate); b's rows are 32-byte aligned (as pack_x_slabs writes them into
// an aligned_buffer). AVX2 + FMA: register tiles of 12 / T rows of a by one panel
// (12 accumulators, each a broadcast of a times a vector of the panel), depth in blocks that keep the
// tile's rows of a and the panels' rows in L1.
void gemm_panels_avx2(int T, const float* a, int64_t lda, int64_t rows, int64_t depth, const float* b,
                      int64_t panels, int64_t ldb, float* c, int64_t ldc, int64_t ldcp, bool accumulate);

}  // namespace pycompress::cpu
