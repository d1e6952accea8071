// CPU kernel of the codebook op family: codebook_mm (layout in pycompress/ops/codebook.py).
//
// Two paths, picked at every call by pycompress::cpu::lowbit_isa() (PYCOMPRESS_CPU_ISA=scalar forces the
// portable one): AVX2 + FMA (compiled with target attributes) and scalar.
//
// The AVX2 path decodes weights in registers, 32 at a time:
// - 4-bit: the row's 16-entry table as four byte planes (byte b of every entry), so that one vpshufb looks
//   up byte b of 32 entries; the 16 index bytes split into a lane of low and a lane of high nibbles, and
//   two rounds of unpacking interleave the four looked-up bytes back into floats (0.8 ns per 8 weights
//   measured on Zen 3, against 1.2 ns for two vpermps and a blend). The floats come out with even and odd k
//   in separate lanes: x is permuted the same way once per call, or the vector back, as a path needs.
// - 8-bit: one 64-bit load of 8 indices and 8 scalar loads from the table (1 KiB, in L1): 2.1 ns per 8
//   weights measured on Zen 3, against 4.3 to 5 ns for vgatherdps (microcoded there).
// Two ways to use them:
// - Decode (M <= kDotMaxM rows): each decoded vector goes straight into FMAs with every row of x, dot
//   products along K summed across lanes at the end; idx is streamed once, the dense weight never exists.
// - Larger M: per chunk of up to 256 rows of x (packed as x^T panels, pack_x_slabs), a task owns a block
//   of 48 weight rows; per block of 256 columns it decodes them into a small buffer (L2) and runs the
//   panel GEMM of csrc/cpu/lowrank.cpp over it (y^T, transposed into y with the bias by store_transposed),
//   so the whole weight is never materialized either.
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
#include <vector>

#include "pycompress/cpu_features.h"
#include "pycompress/cpu_kernels.h"

namespace pycompress::cpu {
namespace {

struct CodebookArgs {
  const uint8_t* idx;  // [N, row_bytes]
  const float* codebook;  // [G, C] float32
  const float* bias;  // [N] or nullptr
  int64_t M, N, K, G, C, row_bytes;

  const uint8_t* row(int64_t n) const { return idx + n * row_bytes; }
  const float* table(int64_t n) const { return codebook + (G == 1 ? 0 : n) * C; }
};

// The index of weight k of a row of Bits-bit indices.
template <int Bits>
inline uint32_t index_at(const uint8_t* row, int64_t k) {
  if constexpr (Bits == 4) {
    return (row[k / 2] >> (4 * (k % 2))) & 15u;
  } else {
    return row[k];
  }
}

// Weights are decoded 32 at a time (kStep), as 4 vectors of 8.
constexpr int64_t kStep = 32;

// A 16-entry table as four byte planes, each in both 128-bit lanes: plane b holds byte b of every entry,
// so that one vpshufb with 32 4-bit indices looks up byte b of 32 entries.
struct Planes {
  __m256i b[4];
};

PYC_AVX2_FMA inline Planes byte_planes(const float* table) {
  // Per 4 entries: their byte 0s, then byte 1s, 2s, 3s.
  const __m128i order = _mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  __m128i q[4];
  for (int i = 0; i < 4; ++i) {
    q[i] = _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(table + 4 * i)), order);
  }
  // 4 x 4 transpose of 32-bit units: plane b gathers unit b of each group of 4 entries.
  const __m128i t0 = _mm_unpacklo_epi32(q[0], q[1]);
  const __m128i t1 = _mm_unpackhi_epi32(q[0], q[1]);
  const __m128i t2 = _mm_unpacklo_epi32(q[2], q[3]);
  const __m128i t3 = _mm_unpackhi_epi32(q[2], q[3]);
  return Planes{{_mm256_broadcastsi128_si256(_mm_unpacklo_epi64(t0, t2)),
                 _mm256_broadcastsi128_si256(_mm_unpackhi_epi64(t0, t2)),
                 _mm256_broadcastsi128_si256(_mm_unpacklo_epi64(t1, t3)),
                 _mm256_broadcastsi128_si256(_mm_unpackhi_epi64(t1, t3))}};
}

// Weights k .. k + 31 of a row of 4-bit indices (k a multiple of 32). The 16 bytes split into low nibbles
// (even k) in the low lane and high nibbles (odd k) in the high lane; four vpshufb look up the entries'
// bytes and two rounds of unpacking interleave them back into floats. Vector q holds the weights
// k + 8 q + kDecodedOrder[i]: the lanes split even and odd k.
PYC_AVX2_FMA inline void decode4(const uint8_t* row, int64_t k, const Planes& t, __m256 (&w)[4]) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k / 2));
  const __m256i nibbles = _mm256_and_si256(
      _mm256_inserti128_si256(_mm256_castsi128_si256(raw), _mm_srli_epi16(raw, 4), 1), _mm256_set1_epi8(15));
  const __m256i b0 = _mm256_shuffle_epi8(t.b[0], nibbles);
  const __m256i b1 = _mm256_shuffle_epi8(t.b[1], nibbles);
  const __m256i b2 = _mm256_shuffle_epi8(t.b[2], nibbles);
  const __m256i b3 = _mm256_shuffle_epi8(t.b[3], nibbles);
  const __m256i l01 = _mm256_unpacklo_epi8(b0, b1);
  const __m256i h01 = _mm256_unpackhi_epi8(b0, b1);
  const __m256i l23 = _mm256_unpacklo_epi8(b2, b3);
  const __m256i h23 = _mm256_unpackhi_epi8(b2, b3);
  w[0] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(l01, l23));
  w[1] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(l01, l23));
  w[2] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(h01, h23));
  w[3] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(h01, h23));
}

// The k offset (within 8) of each lane of decode4's vectors, and the inverse: lane j of
// _mm256_permutevar8x32_ps(w, kNaturalOrder) holds offset j.
alignas(32) constexpr int32_t kDecodedOrder[8] = {0, 2, 4, 6, 1, 3, 5, 7};
alignas(32) constexpr int32_t kNaturalOrder[8] = {0, 4, 1, 5, 2, 6, 3, 7};

// Weights k .. k + 7 of a row of 8-bit indices, in order (scalar lookups: see the top of the file).
PYC_AVX2_FMA inline __m256 decode8(const uint8_t* row, int64_t k, const float* table) {
  uint64_t v;
  std::memcpy(&v, row + k, sizeof(v));
  __m128 lo = _mm_load_ss(table + (v & 255));
  lo = _mm_insert_ps(lo, _mm_load_ss(table + ((v >> 8) & 255)), 0x10);
  lo = _mm_insert_ps(lo, _mm_load_ss(table + ((v >> 16) & 255)), 0x20);
  lo = _mm_insert_ps(lo, _mm_load_ss(table + ((v >> 24) & 255)), 0x30);
  __m128 hi = _mm_load_ss(table + ((v >> 32) & 255));
  hi = _mm_insert_ps(hi, _mm_load_ss(table + ((v >> 40) & 255)), 0x10);
  hi = _mm_insert_ps(hi, _mm_load_ss(table + ((v >> 48) & 255)), 0x20);
  hi = _mm_insert_ps(hi, _mm_load_ss(table + (v >> 56)), 0x30);
  return _mm256_set_m128(hi, lo);
}

// What decoding a row needs: the byte planes of its table (4-bit) or the table itself (8-bit).
template <int Bits>
struct RowTable;

template <>
struct RowTable<4> {
  Planes planes;
  PYC_AVX2_FMA void set(const float* table) { planes = byte_planes(table); }
  PYC_AVX2_FMA void decode(const uint8_t* row, int64_t k, __m256 (&w)[4]) const { decode4(row, k, planes, w); }
};

template <>
struct RowTable<8> {
  const float* table;
  void set(const float* t) { table = t; }
  PYC_AVX2_FMA void decode(const uint8_t* row, int64_t k, __m256 (&w)[4]) const {
    for (int q = 0; q < 4; ++q) {
      w[q] = decode8(row, k + 8 * q, table);
    }
  }
};

// ---------------------------------------------------------------------------------------------------
// Scalar path: each weight row decoded once into a buffer, then every row of x against it.

template <typename T, int Bits>
void codebook_mm_scalar(const CodebookArgs& p, const T* x, T* out) {
  at::parallel_for(0, p.N, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> w(p.K);
    for (int64_t n = begin; n < end; ++n) {
      const uint8_t* row = p.row(n);
      const float* table = p.table(n);
      for (int64_t k = 0; k < p.K; ++k) {
        w[k] = table[index_at<Bits>(row, k)];
      }
      for (int64_t m = 0; m < p.M; ++m) {
        const T* xr = x + m * p.K;
        float s = 0.0f;
        for (int64_t k = 0; k < p.K; ++k) {
          s += to_float(xr[k]) * w[k];
        }
        if (p.bias != nullptr) {
          s = s + p.bias[n];
        }
        out[m * p.N + n] = static_cast<T>(s);
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------------
// Decode path (small M)

// Most rows of x for the decode path; above, the panel path's broadcast GEMM wins.
constexpr int64_t kDotMaxM = 8;

// Rows [0, MR) of x against weight rows n0 .. n0 + NR - 1 (rows past N repeat the last one; their sums
// are not stored). x is float32 [MR, K]; xd is x with every 8 columns below kv = K / kStep * kStep in the
// order the decoder gives them (decode4's for 4-bit indices; for 8-bit, xd is x).
template <typename OutT, int Bits, int MR, int NR>
PYC_AVX2_FMA void dot_tile(const CodebookArgs& p, const float* x, const float* xd, int64_t n0, OutT* out) {
  const uint8_t* rows[NR];
  const float* tables[NR];
  RowTable<Bits> decoders[NR];
  for (int r = 0; r < NR; ++r) {
    const int64_t n = std::min(n0 + r, p.N - 1);
    rows[r] = p.row(n);
    tables[r] = p.table(n);
    decoders[r].set(tables[r]);
  }
  __m256 acc[MR][NR];
  for (int m = 0; m < MR; ++m) {
    for (int r = 0; r < NR; ++r) {
      acc[m][r] = _mm256_setzero_ps();
    }
  }
  const int64_t K = p.K;
  const int64_t kv = K / kStep * kStep;
  for (int64_t k = 0; k < kv; k += kStep) {
    for (int r = 0; r < NR; ++r) {
      __m256 w[4];
      decoders[r].decode(rows[r], k, w);
      for (int m = 0; m < MR; ++m) {
        for (int q = 0; q < 4; ++q) {
          acc[m][r] = _mm256_fmadd_ps(_mm256_loadu_ps(xd + m * K + k + 8 * q), w[q], acc[m][r]);
        }
      }
    }
  }
  for (int r = 0; r < NR && n0 + r < p.N; ++r) {
    for (int m = 0; m < MR; ++m) {
      float s = hsum(acc[m][r]);
      for (int64_t k = kv; k < K; ++k) {
        s += x[m * K + k] * tables[r][index_at<Bits>(rows[r], k)];
      }
      if (p.bias != nullptr) {
        s = s + p.bias[n0 + r];
      }
      out[m * p.N + n0 + r] = static_cast<OutT>(s);
    }
  }
}

// Weight rows per tile for MR rows of x: at most 8 accumulators plus what decoding holds in registers; one
// for 8-bit indices, whose scalar lookups are the cost (two rows measured 25% slower at M = 1).
template <typename OutT, int Bits, int MR>
void dot_path_rows(const CodebookArgs& p, const float* x, const float* xd, OutT* out) {
  constexpr int NR = Bits == 8 ? 1 : (MR <= 2 ? 4 : (MR <= 4 ? 2 : 1));
  at::parallel_for(0, ceil_div(p.N, NR), 16, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      dot_tile<OutT, Bits, MR, NR>(p, x, xd, g * NR, out);
    }
  });
}

// xd: x [M, K] float32 with every 8 columns below K / kStep * kStep in decode4's order.
PYC_AVX2_FMA void decoded_order_rows(const float* x, int64_t M, int64_t K, float* xd) {
  const __m256i order = _mm256_load_si256(reinterpret_cast<const __m256i*>(kDecodedOrder));
  const int64_t kv = K / kStep * kStep;
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t k = 0; k < kv; k += 8) {
      _mm256_storeu_ps(xd + m * K + k, _mm256_permutevar8x32_ps(_mm256_loadu_ps(x + m * K + k), order));
    }
    std::copy(x + m * K + kv, x + (m + 1) * K, xd + m * K + kv);
  }
}

template <typename OutT, int Bits>
void dot_path(const CodebookArgs& p, const at::Tensor& x, OutT* out) {
  const at::Tensor xf = as_float(x);
  const float* xp = xf.const_data_ptr<float>();
  std::unique_ptr<float[], AlignedFree> xd;
  if constexpr (Bits == 4) {
    xd = aligned_buffer<float>(p.M * p.K, "codebook_mm");
    decoded_order_rows(xp, p.M, p.K, xd.get());
  }
  const float* xdp = Bits == 4 ? xd.get() : xp;
  static_assert(kDotMaxM == 8, "the cases cover 1 .. kDotMaxM rows");
  switch (p.M) {
    case 1:
      dot_path_rows<OutT, Bits, 1>(p, xp, xdp, out);
      break;
    case 2:
      dot_path_rows<OutT, Bits, 2>(p, xp, xdp, out);
      break;
    case 3:
      dot_path_rows<OutT, Bits, 3>(p, xp, xdp, out);
      break;
    case 4:
      dot_path_rows<OutT, Bits, 4>(p, xp, xdp, out);
      break;
    case 5:
      dot_path_rows<OutT, Bits, 5>(p, xp, xdp, out);
      break;
    case 6:
      dot_path_rows<OutT, Bits, 6>(p, xp, xdp, out);
      break;
    case 7:
      dot_path_rows<OutT, Bits, 7>(p, xp, xdp, out);
      break;
    default:
      dot_path_rows<OutT, Bits, 8>(p, xp, xdp, out);
  }
}

// ---------------------------------------------------------------------------------------------------
// Panel path (larger M)

// Weight rows per task (a multiple of 12 and 8) and columns per decoded block: the block (48 KiB) stays in
// L2 while every panel of the chunk passes.
constexpr int64_t kRowBlock = 48;
constexpr int64_t kColBlock = 256;
// Most rows of x per chunk: its x^T panels (kChunkRows K floats) are shared by all tasks, and a task's y^T
// block (kRowBlock kChunkRows floats, 48 KiB) stays in L2.
constexpr int64_t kChunkRows = 256;

// Rows [n0, n0 + rows), columns [k0, k0 + kc) of the dense weight into w (row stride kc), in order; tables
// holds the rows' decoders. The rows' next block of indices is prefetched: they are as many short streams,
// which the hardware prefetcher does not follow.
template <int Bits>
PYC_AVX2_FMA void decode_block(const CodebookArgs& p, const RowTable<Bits>* tables, int64_t n0, int64_t rows,
                               int64_t k0, int64_t kc, float* w) {
  const __m256i natural = _mm256_load_si256(reinterpret_cast<const __m256i*>(kNaturalOrder));
  const int64_t block_bytes = kColBlock * Bits / 8;
  for (int64_t i = 0; i < rows; ++i) {
    const uint8_t* row = p.row(n0 + i);
    const int64_t next = k0 * Bits / 8 + block_bytes;
    for (int64_t b = next; b < std::min(p.row_bytes, next + block_bytes); b += 64) {
      _mm_prefetch(reinterpret_cast<const char*>(row + b), _MM_HINT_T0);
    }
    float* wr = w + i * kc;
    int64_t k = 0;
    for (; k + kStep <= kc; k += kStep) {
      __m256 v[4];
      tables[i].decode(row, k0 + k, v);
      for (int q = 0; q < 4; ++q) {
        _mm256_storeu_ps(wr + k + 8 * q, Bits == 4 ? _mm256_permutevar8x32_ps(v[q], natural) : v[q]);
      }
    }
    const float* table = p.table(n0 + i);
    for (; k < kc; ++k) {
      wr[k] = table[index_at<Bits>(row, k0 + k)];
    }
  }
}

template <int Bits>
void panel_path(const CodebookArgs& p, const at::Tensor& x, at::Tensor& out) {
  const int64_t K = p.K;
  const int64_t W = panel_width(p.M);
  const int64_t chunk_rows = std::min(round_up(p.M, W), kChunkRows);
  auto xp = aligned_buffer<float>(chunk_rows * K, "codebook_mm");
  // Chunks of rows of x one after another, each packed as x^T panels, then blocks of weight rows in
  // parallel: the weights are decoded once per chunk, which costs little next to the chunk's FMAs.
  for (int64_t m0 = 0; m0 < p.M; m0 += chunk_rows) {
    const int64_t rows_x = std::min(chunk_rows, p.M - m0);
    const int64_t panels = ceil_div(rows_x, W);
    pack_x_slabs(x.narrow(0, m0, rows_x), W, xp.get(), Isa::kAvx2);
    at::parallel_for(0, ceil_div(p.N, kRowBlock), 1, [&](int64_t begin, int64_t end) {
      auto w = aligned_buffer<float>(kRowBlock * kColBlock, "codebook_mm");
      auto y = aligned_buffer<float>(kRowBlock * panels * W, "codebook_mm");
      auto tables = aligned_buffer<RowTable<Bits>>(kRowBlock, "codebook_mm");
      for (int64_t blk = begin; blk < end; ++blk) {
        const int64_t n0 = blk * kRowBlock;
        const int64_t rows = std::min(kRowBlock, p.N - n0);
        for (int64_t i = 0; i < rows; ++i) {
          tables[i].set(p.table(n0 + i));
        }
        for (int64_t k0 = 0; k0 < K; k0 += kColBlock) {
          const int64_t kc = std::min(kColBlock, K - k0);
          decode_block<Bits>(p, tables.get(), n0, rows, k0, kc, w.get());
          gemm_panels_avx2(static_cast<int>(W / 8), w.get(), kc, rows, kc, xp.get() + k0 * W, panels, K * W, y.get(),
                           panels * W, W, k0 > 0);
        }
        store_transposed(y.get(), panels * W, rows, rows_x, n0, m0, p.bias, out, Isa::kAvx2);
      }
    });
  }
}

at::Tensor codebook_mm(const at::Tensor& x, const at::Tensor& idx, const at::Tensor& codebook,
                       const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "codebook_mm";
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.size(1) >= 1, op,
              ": x must be a contiguous [M, K] tensor, K >= 1");
  const int64_t M = x.size(0);
  const int64_t K = x.size(1);
  TORCH_CHECK(codebook.dim() == 2 && (codebook.size(1) == 16 || codebook.size(1) == 256) &&
                  codebook.scalar_type() == x.scalar_type() && codebook.is_contiguous(),
              op, ": codebook must be contiguous [G, 16] or [G, 256] of x's dtype");
  const int64_t C = codebook.size(1);
  const int bits = C == 16 ? 4 : 8;
  const int64_t row_bytes = bits == 4 ? ceil_div(K, 2) : K;
  TORCH_CHECK(idx.dim() == 2 && idx.size(1) == row_bytes && idx.scalar_type() == at::kByte && idx.is_contiguous(), op,
              ": idx must be contiguous uint8 [N, ", row_bytes, "] for ", bits, "-bit indices");
  const int64_t N = idx.size(0);
  const int64_t G = codebook.size(0);
  TORCH_CHECK(G == 1 || G == N, op, ": codebook must have G = 1 or G = N = ", N, " rows (got ", G, ")");
  TORCH_CHECK(!bias.has_value() || bias->numel() == N, op, ": bias must have N = ", N, " elements");
  const Isa isa = lowbit_isa();
  at::Tensor out = at::empty({M, N}, x.options());
  if (out.numel() == 0) {
    return out;
  }
  const at::Tensor cf = as_float(codebook);
  const at::Tensor bf = bias.has_value() ? as_float(*bias) : at::Tensor();
  const CodebookArgs p{idx.const_data_ptr<uint8_t>(), cf.const_data_ptr<float>(),
                       bf.defined() ? bf.const_data_ptr<float>() : nullptr, M, N, K, G, C, row_bytes};
  auto run = [&](auto tag) {
    using T = decltype(tag);
    auto by_bits = [&](auto bits_tag) {
      constexpr int Bits = decltype(bits_tag)::value;
      if (isa == Isa::kScalar) {
        codebook_mm_scalar<T, Bits>(p, x.const_data_ptr<T>(), out.mutable_data_ptr<T>());
      } else if (M <= kDotMaxM) {
        dot_path<T, Bits>(p, x, out.mutable_data_ptr<T>());
      } else {
        panel_path<Bits>(p, x, out);
      }
    };
    if (bits == 4) {
      by_bits(std::integral_constant<int, 4>{});
    } else {
      by_bits(std::integral_constant<int, 8>{});
    }
  };
  dispatch_float(x.scalar_type(), op, "x", run);
  return out;
}

}  // namespace
}  // namespace pycompress::cpu

TORCH_LIBRARY_IMPL(pycompress_C, CPU, m) { m.impl("codebook_mm", &pycompress::cpu::codebook_mm); }
