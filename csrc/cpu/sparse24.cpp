// CPU kernels of the 2:4 op family: sparse24_compress and sparse24_mm (layout in pycompress/ops/sparse24.py).
//
// sparse24_compress is one portable pass (a packing step, bound by memory): a 16-entry table maps the
// non-zero pattern of a group of 4 to its kept positions, the reference's rule.
//
// sparse24_mm has two paths, picked at every call by pycompress::cpu::lowbit_isa()
// (PYCOMPRESS_CPU_ISA=scalar forces the portable one): AVX2 + FMA (compiled with target attributes) and
// scalar. On AVX2:
// - Small M (at most kSmallMaxM rows): the weight stream is the cost (values are half the dense bytes,
//   meta 1/16 more), so weights are decoded in registers, never in memory, with software prefetch ahead
//   of each row, and every row of x meets them there. One row of x: per 16 columns, vpermps with indices
//   shifted out of the meta word gathers x to the order of the 8 values (permute_tile). Two to eight
//   rows: each meta byte (two groups) indexes a table of vpermps indices that expand the values to two
//   dense vectors, with zeros where nothing is kept (expand_tile). Dot products are summed across lanes
//   at the end.
// - Larger M: x^T in slabs (pycompress/cpu_kernels.h) and the gather kernel that csr_mm uses: each stored
//   value is broadcast against a slab row, so only half the dense FMAs are done. A task owns a block of
//   weight rows and a chunk of slabs; per block of columns it decodes the rows' meta into column indices
//   (and values into float32) once, for all its slabs, whose rows of that block stay in L1.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "pycompress/cpu_features.h"
#include "pycompress/cpu_kernels.h"

namespace pycompress::cpu {
namespace {

#define PYC_AVX2_FMA __attribute__((target("avx2,fma,f16c")))

// ---------------------------------------------------------------------------------------------------
// Tables of the layout

// kKeep[mask]: the meta nibble (i0 | i1 << 2) of a group whose non-zero entries are the set bits of mask:
// its non-zero positions first (the lowest two, should there be more), then its lowest zero positions,
// sorted. This is the reference's rank by (is zero, position).
constexpr std::array<uint8_t, 16> make_keep() {
  std::array<uint8_t, 16> keep{};
  for (int mask = 0; mask < 16; ++mask) {
    int picked[2] = {0, 0};
    int count = 0;
    for (int pass = 0; pass < 2; ++pass) {
      for (int p = 0; p < 4 && count < 2; ++p) {
        const bool nonzero = (mask >> p) & 1;
        if (nonzero == (pass == 0)) {
          picked[count++] = p;
        }
      }
    }
    const int i0 = std::min(picked[0], picked[1]);
    const int i1 = std::max(picked[0], picked[1]);
    keep[mask] = static_cast<uint8_t>(i0 | (i1 << 2));
  }
  return keep;
}
constexpr std::array<uint8_t, 16> kKeep = make_keep();

// kExpand[b][q]: for meta byte b (groups 2h and 2h + 1 of a 16-column slice, h = 0 or 1), the vpermps index
// of dense lane q (group q / 4, position q % 4) into [v0, v1, v2, v3, 0, ...], the group pair's values
// (v 2g + s at position i_s of group g). Lanes not kept index the zero (4).
struct ExpandTable {
  alignas(32) int32_t idx[256][8];
};
constexpr ExpandTable make_expand() {
  ExpandTable t{};
  for (int b = 0; b < 256; ++b) {
    for (int q = 0; q < 8; ++q) {
      const int g = q / 4;
      const int p = q % 4;
      const int nibble = (b >> (4 * g)) & 15;
      t.idx[b][q] = p == (nibble >> 2) ? 2 * g + 1 : p == (nibble & 3) ? 2 * g : 4;
    }
  }
  return t;
}
constexpr ExpandTable kExpand = make_expand();

// ---------------------------------------------------------------------------------------------------
// sparse24_compress

// Bits: the storage of one entry (uint32_t for float32, uint16_t for float16 and bfloat16); an entry is
// non-zero when its bits other than the sign are (so -0.0 is zero and NaN is not).
template <typename Bits>
void compress_rows(const Bits* w, int64_t n0, int64_t n1, int64_t K, Bits* values, uint16_t* meta) {
  constexpr Bits kMagnitude = std::numeric_limits<Bits>::max() >> 1;
  for (int64_t n = n0; n < n1; ++n) {
    const Bits* row = w + n * K;
    Bits* v = values + n * (K / 2);
    uint16_t* mt = meta + n * (K / 16);
    for (int64_t j = 0; j < K / 16; ++j) {
      uint32_t word = 0;
      for (int t = 0; t < 4; ++t) {
        const int64_t g = 4 * j + t;
        const Bits* e = row + 4 * g;
        const int mask = ((e[0] & kMagnitude) != 0) | (((e[1] & kMagnitude) != 0) << 1) |
                         (((e[2] & kMagnitude) != 0) << 2) | (((e[3] & kMagnitude) != 0) << 3);
        const uint32_t nibble = kKeep[mask];
        v[2 * g] = e[nibble & 3];
        v[2 * g + 1] = e[nibble >> 2];
        word |= nibble << (4 * t);
      }
      mt[j] = static_cast<uint16_t>(word);
    }
  }
}

std::tuple<at::Tensor, at::Tensor> sparse24_compress(const at::Tensor& w) {
  constexpr const char* op = "sparse24_compress";
  TORCH_CHECK(w.dim() == 2 && w.is_contiguous(), op, ": w must be a contiguous [N, K] tensor");
  const int64_t N = w.size(0);
  const int64_t K = w.size(1);
  TORCH_CHECK(K > 0 && K % 16 == 0, op, ": w must have K a positive multiple of 16 columns (got ", K, ")");
  at::Tensor values = at::empty({N, K / 2}, w.options());
  at::Tensor meta = at::empty({N, K / 16}, w.options().dtype(at::kShort));
  auto* mp = reinterpret_cast<uint16_t*>(meta.mutable_data_ptr<int16_t>());
  const int64_t grain = std::max<int64_t>(1, 65536 / K);
  auto run = [&](auto tag) {
    using Bits = decltype(tag);
    const auto* wp = static_cast<const Bits*>(w.const_data_ptr());
    auto* vp = static_cast<Bits*>(values.mutable_data_ptr());
    at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) { compress_rows(wp, begin, end, K, vp, mp); });
  };
  switch (w.scalar_type()) {
    case at::kFloat:
      run(uint32_t{});
      break;
    case at::kHalf:
    case at::kBFloat16:
      run(uint16_t{});
      break;
    default:
      TORCH_CHECK(false, op, ": w must be float32, float16 or bfloat16 (got ", w.scalar_type(), ")");
  }
  return {values, meta};
}

// ---------------------------------------------------------------------------------------------------
// sparse24_mm

struct MmArgs {
  const float* x;  // [M, K] float32 (not on the gather path, which packs x itself)
  const void* values;  // [N, K / 2] of the op's dtype
  const uint16_t* meta;  // [N, K / 16]
  const float* bias;  // [N] or nullptr
  int64_t M, N, K;
};

template <typename VT>
const VT* values_of(const MmArgs& p) {
  return static_cast<const VT*>(p.values);
}

template <typename VT>
void sparse24_mm_scalar(const MmArgs& p, VT* out) {
  const int64_t K = p.K;
  at::parallel_for(0, p.N, 1, [&](int64_t begin, int64_t end) {
    auto dense = aligned_buffer<float>(K, "sparse24_mm");
    for (int64_t n = begin; n < end; ++n) {
      const VT* v = values_of<VT>(p) + n * (K / 2);
      const uint16_t* mt = p.meta + n * (K / 16);
      std::fill(dense.get(), dense.get() + K, 0.0f);
      for (int64_t g = 0; g < K / 4; ++g) {
        const uint32_t nibble = (mt[g / 4] >> (4 * (g % 4))) & 15u;
        dense[4 * g + (nibble & 3)] = to_float(v[2 * g]);
        dense[4 * g + (nibble >> 2)] = to_float(v[2 * g + 1]);
      }
      for (int64_t m = 0; m < p.M; ++m) {
        const float* xr = p.x + m * K;
        float s = 0.0f;
        for (int64_t k = 0; k < K; ++k) {
          s += xr[k] * dense[k];
        }
        if (p.bias != nullptr) {
          s = s + p.bias[n];
        }
        out[m * p.N + n] = static_cast<VT>(s);
      }
    }
  });
}

// The dense weights of 16 columns from their 8 values and meta word: lo for columns 0..7, hi for 8..15.
template <typename VT>
PYC_AVX2_FMA inline void expand16(const VT* v, uint32_t word, __m256& lo, __m256& hi) {
  const __m256 vals = load8(v);
  const __m256 zero = _mm256_setzero_ps();
  const __m256i ilo = _mm256_load_si256(reinterpret_cast<const __m256i*>(kExpand.idx[word & 0xff]));
  // Indices 0..3 of the table become 4..7 (the values of groups 2 and 3) and the zero index 4 becomes 0.
  const __m256i ihi = _mm256_xor_si256(_mm256_load_si256(reinterpret_cast<const __m256i*>(kExpand.idx[word >> 8])),
                                       _mm256_set1_epi32(4));
  lo = _mm256_permutevar8x32_ps(_mm256_blend_ps(vals, zero, 0xF0), ilo);
  hi = _mm256_permutevar8x32_ps(_mm256_blend_ps(vals, zero, 0x0F), ihi);
}

PYC_AVX2_FMA inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// How far ahead (in values) the small-M kernels prefetch a weight row: their NR rows are 2 NR concurrent
// streams (values and meta) of short reads per step, more than the hardware prefetcher follows at full
// speed.
constexpr int64_t kPrefetchValues = 512;

// The values and meta of weight rows n0 .. n0 + NR - 1; rows past N repeat the last one.
template <typename VT, int NR>
struct WeightRows {
  const VT* values[NR];
  const uint16_t* meta[NR];

  WeightRows(const MmArgs& p, int64_t n0) {
    for (int r = 0; r < NR; ++r) {
      const int64_t n = std::min(n0 + r, p.N - 1);
      values[r] = values_of<VT>(p) + n * (p.K / 2);
      meta[r] = p.meta + n * (p.K / 16);
    }
  }

  PYC_AVX2_FMA void prefetch(int r, int64_t j) const {
    _mm_prefetch(reinterpret_cast<const char*>(values[r] + 8 * j + kPrefetchValues), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(meta[r] + j + kPrefetchValues / 8), _MM_HINT_T0);
  }
};

// out[m, n0 + r] = the lane sum of acc[m][r] (+ bias), for the rows below N.
template <typename VT, int MR, int NR>
PYC_AVX2_FMA void store_sums(const MmArgs& p, int64_t n0, const __m256 (&acc)[MR][NR], VT* out) {
  for (int r = 0; r < NR && n0 + r < p.N; ++r) {
    for (int m = 0; m < MR; ++m) {
      float s = hsum(acc[m][r]);
      if (p.bias != nullptr) {
        s = s + p.bias[n0 + r];
      }
      out[m * p.N + n0 + r] = static_cast<VT>(s);
    }
  }
}

// One row of x against weight rows n0 .. n0 + NR - 1, x gathered to the values' order: per 16 columns,
// lane e of idx is the position of entry e (code 2 e of the meta word) within its 8 columns of x, and two
// vpermps and a blend bring those columns to the values, so the FMA needs no zero lanes.
template <typename VT, int NR>
PYC_AVX2_FMA void permute_tile(const MmArgs& p, int64_t n0, VT* out) {
  const WeightRows<VT, NR> w(p, n0);
  const __m256i shifts = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
  const __m256i groups = _mm256_setr_epi32(0, 0, 4, 4, 0, 0, 4, 4);
  const __m256i three = _mm256_set1_epi32(3);
  __m256 acc[1][NR];
  for (int r = 0; r < NR; ++r) {
    acc[0][r] = _mm256_setzero_ps();
  }
  for (int64_t j = 0; j < p.K / 16; ++j) {
    const __m256 xlo = _mm256_loadu_ps(p.x + 16 * j);
    const __m256 xhi = _mm256_loadu_ps(p.x + 16 * j + 8);
    for (int r = 0; r < NR; ++r) {
      w.prefetch(r, j);
      // Both 16-bit halves of a lane hold the word; shifts up to 14 read the low one.
      const __m256i word = _mm256_set1_epi16(static_cast<int16_t>(w.meta[r][j]));
      const __m256i idx = _mm256_add_epi32(_mm256_and_si256(_mm256_srlv_epi32(word, shifts), three), groups);
      const __m256 g =
          _mm256_blend_ps(_mm256_permutevar8x32_ps(xlo, idx), _mm256_permutevar8x32_ps(xhi, idx), 0xF0);
      acc[0][r] = _mm256_fmadd_ps(g, load8(w.values[r] + 8 * j), acc[0][r]);
    }
  }
  store_sums<VT, 1, NR>(p, n0, acc, out);
}

// Rows [0, MR) of x against weight rows n0 .. n0 + NR - 1, each 16 weight columns expanded to two dense
// vectors (expand16) once for the MR rows.
template <typename VT, int MR, int NR>
PYC_AVX2_FMA void expand_tile(const MmArgs& p, int64_t n0, VT* out) {
  const WeightRows<VT, NR> w(p, n0);
  __m256 acc[MR][NR];
  for (int m = 0; m < MR; ++m) {
    for (int r = 0; r < NR; ++r) {
      acc[m][r] = _mm256_setzero_ps();
    }
  }
  for (int64_t j = 0; j < p.K / 16; ++j) {
    for (int r = 0; r < NR; ++r) {
      w.prefetch(r, j);
      __m256 lo, hi;
      expand16(w.values[r] + 8 * j, w.meta[r][j], lo, hi);
      for (int m = 0; m < MR; ++m) {
        const float* xr = p.x + m * p.K + 16 * j;
        acc[m][r] = _mm256_fmadd_ps(_mm256_loadu_ps(xr), lo, acc[m][r]);
        acc[m][r] = _mm256_fmadd_ps(_mm256_loadu_ps(xr + 8), hi, acc[m][r]);
      }
    }
  }
  store_sums<VT, MR, NR>(p, n0, acc, out);
}

// tile(n0) for every group of NR weight rows, in parallel.
template <int NR, typename Tile>
void for_row_groups(const MmArgs& p, const Tile& tile) {
  at::parallel_for(0, ceil_div(p.N, NR), 16, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      tile(g * NR);
    }
  });
}

// Most rows of x for the small-M paths.
constexpr int64_t kSmallMaxM = 8;

// The gather path's blocking. A task owns up to kMaxRowBlock weight rows (fewer when that leaves too few
// tasks) and kSlabColumns columns of x; per block of kTileBytes / (4 W) columns of w (a multiple of 16),
// the slab rows of the block (16 KiB) stay in L1 while the task's rows pass, and the decoded block
// (indices and values, 128 KiB for W = 32) in L2 while the task's slabs pass. Each task reads its slabs
// once, so more rows per task mean fewer passes over x.
constexpr int64_t kMaxRowBlock = 256;
constexpr int64_t kTileBytes = 16384;
// The task's sums, kMaxRowBlock x kSlabColumns floats (256 KiB), stay in L2.
constexpr int64_t kSlabColumns = 256;

// The column index (within the block) and float32 value of every entry of `chunks` 16-column slices of
// one weight row.
template <typename VT>
PYC_AVX2_FMA void decode_entries(const VT* v, const uint16_t* meta, int64_t chunks, int32_t* idx, float* vals) {
  // Entry e = 2 t + s of a slice: its position i_s in group t is at bits 2 e, 2 e + 1 of the word.
  const __m256i shifts = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
  const __m256i groups = _mm256_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12);
  const __m256i three = _mm256_set1_epi32(3);
  for (int64_t j = 0; j < chunks; ++j) {
    const __m256i codes = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(meta[j]), shifts), three);
    const __m256i cols = _mm256_add_epi32(codes, _mm256_add_epi32(groups, _mm256_set1_epi32(static_cast<int>(16 * j))));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(idx + 8 * j), cols);
    _mm256_storeu_ps(vals + 8 * j, load8(v + 8 * j));
  }
}

template <typename VT>
void gather_path(const at::Tensor& x, const MmArgs& p, at::Tensor& out) {
  const int64_t M = p.M;
  const int64_t N = p.N;
  const int64_t K = p.K;
  const int T = static_cast<int>(slab_vectors(M));
  const int64_t W = 8 * T;
  const int64_t slabs = ceil_div(M, W);
  auto packed = aligned_buffer<float>(slabs * K * W, "sparse24_mm");
  pack_x_slabs(x, W, packed.get(), Isa::kAvx2);
  const int64_t per_chunk = std::max<int64_t>(1, kSlabColumns / W);
  const int64_t chunks = ceil_div(slabs, per_chunk);
  int64_t row_block = kMaxRowBlock;
  while (row_block > 32 && ceil_div(N, row_block) * chunks < 4 * static_cast<int64_t>(at::get_num_threads())) {
    row_block /= 2;
  }
  const int64_t blocks = ceil_div(N, row_block);
  const int64_t ldo = per_chunk * W;
  const int64_t block_cols = kTileBytes / (4 * W) / 16 * 16;
  at::parallel_for(0, blocks * chunks, 1, [&](int64_t begin, int64_t end) {
    auto idx = aligned_buffer<int32_t>(row_block * block_cols / 2, "sparse24_mm");
    auto vals = aligned_buffer<float>(row_block * block_cols / 2, "sparse24_mm");
    auto sums = aligned_buffer<float>(row_block * ldo, "sparse24_mm");
    std::vector<int32_t> start(row_block + 1);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n0 = (t / chunks) * row_block;
      const int64_t rows = std::min(row_block, N - n0);
      const int64_t s0 = (t % chunks) * per_chunk;
      const int64_t s1 = std::min(slabs, s0 + per_chunk);
      for (int64_t k0 = 0; k0 < K; k0 += block_cols) {
        const int64_t entries = std::min(block_cols, K - k0) / 2;
        for (int64_t r = 0; r < rows; ++r) {
          const VT* v = values_of<VT>(p) + (n0 + r) * (K / 2) + k0 / 2;
          const uint16_t* mt = p.meta + (n0 + r) * (K / 16) + k0 / 16;
          // The row's next block: the task's rows are that many short streams, which the hardware
          // prefetcher does not follow.
          if (k0 + block_cols < K) {
            for (int64_t byte = 0; byte < block_cols / 2 * static_cast<int64_t>(sizeof(VT)); byte += 64) {
              _mm_prefetch(reinterpret_cast<const char*>(v + block_cols / 2) + byte, _MM_HINT_T0);
            }
            _mm_prefetch(reinterpret_cast<const char*>(mt + block_cols / 16), _MM_HINT_T0);
          }
          decode_entries(v, mt, entries / 8, idx.get() + r * entries, vals.get() + r * entries);
        }
        for (int64_t r = 0; r <= rows; ++r) {
          start[r] = static_cast<int32_t>(r * entries);
        }
        for (int64_t s = s0; s < s1; ++s) {
          gather_rows_avx2(T, packed.get() + (s * K + k0) * W, start.data(), idx.get(), vals.get(), rows,
                           sums.get() + (s - s0) * W, ldo, k0 > 0);
        }
      }
      for (int64_t s = s0; s < s1; ++s) {
        store_transposed(sums.get() + (s - s0) * W, ldo, rows, std::min(W, M - s * W), n0, s * W, p.bias, out,
                         Isa::kAvx2);
      }
    }
  });
}

template <typename VT>
void sparse24_mm_avx2(const at::Tensor& x, const MmArgs& p, at::Tensor& out) {
  VT* o = out.mutable_data_ptr<VT>();
  // Tiles of MR x NR with at most 8 accumulators (each takes two dependent FMAs per step in expand_tile).
  static_assert(kSmallMaxM == 8, "the cases cover 1 .. kSmallMaxM rows");
  switch (p.M) {
    case 1:
      for_row_groups<8>(p, [&](int64_t n0) { permute_tile<VT, 8>(p, n0, o); });
      break;
    case 2:
      for_row_groups<4>(p, [&](int64_t n0) { expand_tile<VT, 2, 4>(p, n0, o); });
      break;
    case 3:
      for_row_groups<2>(p, [&](int64_t n0) { expand_tile<VT, 3, 2>(p, n0, o); });
      break;
    case 4:
      for_row_groups<2>(p, [&](int64_t n0) { expand_tile<VT, 4, 2>(p, n0, o); });
      break;
    case 5:
      for_row_groups<1>(p, [&](int64_t n0) { expand_tile<VT, 5, 1>(p, n0, o); });
      break;
    case 6:
      for_row_groups<1>(p, [&](int64_t n0) { expand_tile<VT, 6, 1>(p, n0, o); });
      break;
    case 7:
      for_row_groups<1>(p, [&](int64_t n0) { expand_tile<VT, 7, 1>(p, n0, o); });
      break;
    case 8:
      for_row_groups<1>(p, [&](int64_t n0) { expand_tile<VT, 8, 1>(p, n0, o); });
      break;
    default:
      gather_path<VT>(x, p, out);
  }
}

at::Tensor sparse24_mm(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                       const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "sparse24_mm";
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), op, ": x must be a contiguous [M, K] tensor");
  const int64_t M = x.size(0);
  const int64_t K = x.size(1);
  TORCH_CHECK(K > 0 && K % 16 == 0, op, ": x must have K a positive multiple of 16 columns (got ", K, ")");
  TORCH_CHECK(values.dim() == 2 && values.size(1) == K / 2 && values.scalar_type() == x.scalar_type() &&
                  values.is_contiguous(),
              op, ": values must be contiguous [N, K / 2] of x's dtype");
  const int64_t N = values.size(0);
  TORCH_CHECK(meta.dim() == 2 && meta.size(0) == N && meta.size(1) == K / 16 && meta.scalar_type() == at::kShort &&
                  meta.is_contiguous(),
              op, ": meta must be contiguous int16 [N, K / 16]");
  TORCH_CHECK(!bias.has_value() || bias->numel() == N, op, ": bias must have N = ", N, " elements");
  const Isa isa = lowbit_isa();
  at::Tensor out = at::empty({M, N}, x.options());
  if (out.numel() == 0) {
    return out;
  }
  const at::Tensor bf = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  // The gather path reads x through its slabs; the others read it as float32 rows.
  const bool gather = isa == Isa::kAvx2 && M > kSmallMaxM;
  const at::Tensor xf = gather || x.scalar_type() == at::kFloat ? x : x.to(at::kFloat).contiguous();
  const MmArgs p{gather ? nullptr : xf.const_data_ptr<float>(),
                 values.const_data_ptr(),
                 reinterpret_cast<const uint16_t*>(meta.const_data_ptr<int16_t>()),
                 bf.defined() ? bf.const_data_ptr<float>() : nullptr,
                 M,
                 N,
                 K};
  auto run = [&](auto tag) {
    using VT = decltype(tag);
    if (isa == Isa::kAvx2) {
      sparse24_mm_avx2<VT>(x, p, out);
    } else {
      sparse24_mm_scalar<VT>(p, out.mutable_data_ptr<VT>());
    }
  };
  dispatch_float(x.scalar_type(), op, "x", run);
  return out;
}

}  // namespace
}  // namespace pycompress::cpu

TORCH_LIBRARY_IMPL(pycompress_C, CPU, m) {
  m.impl("sparse24_compress", &pycompress::cpu::sparse24_compress);
  m.impl("sparse24_mm", &pycompress::cpu::sparse24_mm);
}
