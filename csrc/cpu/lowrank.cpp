// CPU kernel of the low-rank op family: lowrank_mm (math in pycompress/ops/lowrank.py), and the dense
// panel GEMM that csrc/cpu/codebook.cpp shares (declared in pycompress/cpu_kernels.h).
//
// Two paths, picked at every call by pycompress::cpu::lowbit_isa() (PYCOMPRESS_CPU_ISA=scalar forces the
// portable one): AVX2 + FMA (compiled with target attributes) and scalar.
//
// The AVX2 path, for M <= kDotMaxRows (decode), runs both products as dot products of rows (row_dots):
// t [M, r] from the rows of v against the M rows of x, then y from the rows of u against t, each phase
// split over the threads by rows of v or u, the factors read once, in place, in their own dtype.
//
// Above that it runs both products through one register tile (panel_tile): 6 rows of a left operand read
// in place (one base pointer per three rows), each value broadcast, times a 16-wide panel of the right
// operand (two vectors), 12 FMAs per 2 panel loads and 6 broadcasts (12 x 8 for M <= 8), the depth in
// unrolled blocks of 16 steps (kTileUnroll: the whole op 1.10-1.27x faster than with a loop of single
// steps). t = x v^T lives in a per-thread buffer (L1 or L2), never in a tensor. Two layouts:
// - Up to kUnpackedMaxBlocks blocks of 64 rows per thread, or r > kPackedMaxRank: nothing of the factors
//   is packed, only x. Per block of block_rows(r) rows (64 to 256), x^T as panels (pack_x_slabs), then
//     phase 1: t^T [r, mb] = v [r, K] x^T, into a buffer laid out as panels of t^T, which is exactly the
//              right operand phase 2 wants;
//     phase 2: y^T [N, mb] = u [N, r] t^T, each register tile transposed in registers and written into y
//              with the bias (StoreTransposed).
//   Up to one block of rows, both phases run in one parallel region: phase 1 in per-thread
//   shares of panels (packing included) that whichever thread gets there first does (OnceUnits), then
//   each thread's run of rows of u (with fewer panels than threads, phase 1 is split over the rows of v
//   instead); above that each thread owns a run of panels, in blocks. A thread done with its own run
//   takes the last units of another's (StealRuns), so that a thread that runs late is made up for.
// - More rows, and r <= kPackedMaxRank: v^T and u^T are packed once per call as 16-wide panels,
//   and x and t are read in place as the left operand: t [48, r] = x v^T, then y = t u^T + bias written
//   straight from the registers (that saved about 15% at M >= 1024 over staging y^T and transposing it).
//   Each thread a run of row tiles (in blocks), then the last tiles of the others' runs (StealRuns).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <utility>
#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

#include "pycompress/cpu_features.h"
#include "pycompress/cpu_kernels.h"

namespace pycompress::cpu {
namespace {

// Depth of a block of gemm_panels_avx2: 6 rows of a (6 KiB) and a 16-wide panel slice (16 KiB) in L1.
constexpr int64_t kDepthBlock = 256;

// The sums of a register tile, row i and vector t: store(i, t, sums) writes them where they go.
// c[i ldc + 8 t ..] (+)= sums: the panel GEMM's float32 result.
struct StoreSums {
  static constexpr bool kWholeTile = false;
  float* c;
  int64_t ldc;
  bool accumulate;

  PYC_AVX2_FMA void operator()(int i, int t, __m256 v) const {
    float* ci = c + i * ldc + 8 * t;
    _mm256_storeu_ps(ci, accumulate ? _mm256_add_ps(v, _mm256_loadu_ps(ci)) : v);
  }
};

// sum over k < depth of a[i lda + k] b[k W + j] for i < MR, j < W = 8 T, to store. The same columns of the
// MR rows at `next` (stride lda) are prefetched: the rows of a are as many short streams, a block of depth
// each, which the hardware prefetcher does not follow. Not inlined: a call costs nothing next to a tile's
// depth of steps, and the loop's registers then do not depend on the caller (inlined into product_rows,
// GCC was seen to keep the panel vectors on the stack, a store and a load per step).
// The value at base + D + S ld bytes (S = 0, 1 or 2, D a constant) broadcast to 8 lanes, through one
// base + index + displacement address: a tile then needs one pointer per three of its rows of a, advanced
// once per block of steps. Written as a C++ expression, GCC keeps a pointer register per row (12 for a
// 12-row tile) and spills some of them to the stack in the loop.
// (a is never written while a tile runs: the tile is a function of its own.)
template <int S, int D>
__attribute__((always_inline)) PYC_AVX2_FMA inline __m256 broadcast_row(const char* base, int64_t ld) {
  static_assert(S >= 0 && S <= 2, "three rows per base pointer");
  __m256 v;
  if constexpr (S == 0) {
    __asm__("vbroadcastss %c2(%1), %0" : "=x"(v) : "r"(base), "i"(D));
  } else if constexpr (S == 1) {
    __asm__("vbroadcastss %c3(%1,%2,1), %0" : "=x"(v) : "r"(base), "r"(ld), "i"(D));
  } else {
    __asm__("vbroadcastss %c3(%1,%2,2), %0" : "=x"(v) : "r"(base), "r"(ld), "i"(D));
  }
  return v;
}

// Steps of a register tile done as one unrolled block: a loop of single steps ran at 66 GFLOP/s against
// 76-81 for blocks of 16 (Zen 3, one thread, 6 x 16 tiles with their panels in L2).
constexpr int kTileUnroll = 16;

// Row I of step K of a block: acc[I][t] += a[I][K] b[K][8 t ..] (b0, b1).
template <int MR, int T, int K, int I>
__attribute__((always_inline)) PYC_AVX2_FMA inline void tile_row(__m256 (&acc)[MR][T], const char* const* base,
                                                                  int64_t ld, __m256 b0, __m256 b1) {
  const __m256 av = broadcast_row<I % 3, K * static_cast<int>(sizeof(float))>(base[I / 3], ld);
  acc[I][0] = _mm256_fmadd_ps(av, b0, acc[I][0]);
  if constexpr (T == 2) {
    acc[I][T - 1] = _mm256_fmadd_ps(av, b1, acc[I][T - 1]);
  }
}

// Step K of a block (K < kTileUnroll): acc[i][t] += a[i][K] b[K][8 t ..], b at the block's first row.
template <int MR, int T, int K, int... I>
__attribute__((always_inline)) PYC_AVX2_FMA inline void tile_step(std::integer_sequence<int, I...>,
                                                                   __m256 (&acc)[MR][T], const char* const* base,
                                                                   int64_t ld, const float* b) {
  constexpr int W = 8 * T;
  static_assert(T == 1 || T == 2, "one or two vectors per panel row");
  // The panel's vectors, two named values (an array of them was seen kept on the stack, a store per step,
  // once the tile's epilogue had arrays of its own).
  __m256 b0 = _mm256_load_ps(b + K * W);
  __m256 b1 = T == 2 ? _mm256_load_ps(b + K * W + 8) : b0;
  // Keeps the panel vectors in registers: GCC would otherwise fold the loads into each FMA, a load per
  // row of a.
  __asm__("" : "+x"(b0), "+x"(b1));
  (tile_row<MR, T, K, I>(acc, base, ld, b0, b1), ...);
}

template <int MR, int T, int... K>
__attribute__((always_inline)) PYC_AVX2_FMA inline void tile_block(std::integer_sequence<int, K...>,
                                                                    __m256 (&acc)[MR][T], const char* const* base,
                                                                    int64_t ld, const float* b) {
  (tile_step<MR, T, K>(std::make_integer_sequence<int, MR>{}, acc, base, ld, b), ...);
}

// sum over k < depth of a[i lda + k] b[k W + j] for i < MR, j < W = 8 T, to store. The same columns of the
// MR rows at `next` (stride lda; nullptr for none) are prefetched: the rows of a are as many short
// streams, a block of depth each, which the hardware prefetcher does not follow. Not inlined: a call
// costs nothing next to a tile's depth of steps, and the loop's registers then do not depend on the caller
// (inlined into product_rows, GCC was seen to keep the panel vectors on the stack, a store and a load per
// step).
template <int MR, int T, class Store>
__attribute__((noinline)) PYC_AVX2_FMA void panel_tile(const float* a, int64_t lda, const float* b, int64_t depth,
                                                        const float* next, const Store& store) {
  constexpr int W = 8 * T;
  __m256 acc[MR][T];
#pragma GCC unroll 12
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 2
    for (int t = 0; t < T; ++t) {
      acc[i][t] = _mm256_setzero_ps();
    }
  }
  constexpr int kBases = (MR + 2) / 3;
  const int64_t ld = lda * static_cast<int64_t>(sizeof(float));
  const char* base[kBases];
#pragma GCC unroll 4
  for (int g = 0; g < kBases; ++g) {
    base[g] = reinterpret_cast<const char*>(a + 3 * g * lda);
  }
  static_assert(kTileUnroll == 16, "one prefetch of a 64-byte line per row and block");
  int64_t k = 0;
  for (; k + kTileUnroll <= depth; k += kTileUnroll) {
    if (next != nullptr) {
#pragma GCC unroll 12
      for (int i = 0; i < MR; ++i) {
        _mm_prefetch(reinterpret_cast<const char*>(next + i * lda + k), _MM_HINT_T0);
      }
    }
    tile_block<MR, T>(std::make_integer_sequence<int, kTileUnroll>{}, acc, base, ld, b + k * W);
#pragma GCC unroll 4
    for (int g = 0; g < kBases; ++g) {
      base[g] += kTileUnroll * sizeof(float);
    }
  }
  if (k < depth && next != nullptr) {
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) {
      _mm_prefetch(reinterpret_cast<const char*>(next + i * lda + k), _MM_HINT_T0);
    }
  }
  for (; k < depth; ++k) {
    tile_block<MR, T>(std::make_integer_sequence<int, 1>{}, acc, base, ld, b + k * W);
#pragma GCC unroll 4
    for (int g = 0; g < kBases; ++g) {
      base[g] += sizeof(float);
    }
  }
  if constexpr (Store::kWholeTile) {
    // A copy: passing acc itself by reference makes GCC keep it in memory, a store per sum and step.
    __m256 sums[MR][T];
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 2
      for (int t = 0; t < T; ++t) {
        sums[i][t] = acc[i][t];
      }
    }
    store.tile(sums);
  } else {
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 2
      for (int t = 0; t < T; ++t) {
        store(i, t, acc[i][t]);
      }
    }
  }
}

// panel_tile<rows, T> for the rows (1 .. R) left below a full tile.
template <int R, int T, class Store>
PYC_AVX2_FMA void panel_tile_rows(int rows, const float* a, int64_t lda, const float* b, int64_t depth,
                                  const Store& store) {
  if constexpr (R > 0) {
    if (rows == R) {
      panel_tile<R, T>(a, lda, b, depth, nullptr, store);
    } else {
      panel_tile_rows<R - 1, T>(rows, a, lda, b, depth, store);
    }
  }
}

template <int T>
PYC_AVX2_FMA void gemm_panels_t(const float* a, int64_t lda, int64_t rows, int64_t depth, const float* b,
                                int64_t panels, int64_t ldb, float* c, int64_t ldc, int64_t ldcp, bool accumulate) {
  constexpr int W = 8 * T;
  constexpr int MR = 12 / T;
  for (int64_t k0 = 0; k0 < depth; k0 += kDepthBlock) {
    const int64_t kc = std::min(kDepthBlock, depth - k0);
    const bool acc = accumulate || k0 > 0;
    int64_t i = 0;
    for (; i + MR <= rows; i += MR) {
      const float* ai = a + i * lda + k0;
      // The next tile's rows, while this one's first panel passes; later panels find theirs in L1.
      const float* next = i + 2 * MR <= rows ? ai + MR * lda : nullptr;
      for (int64_t p = 0; p < panels; ++p) {
        panel_tile<MR, T>(ai, lda, b + p * ldb + k0 * W, kc, p == 0 ? next : nullptr,
                          StoreSums{c + i * ldc + p * ldcp, ldc, acc});
      }
    }
    if (i < rows) {
      for (int64_t p = 0; p < panels; ++p) {
        panel_tile_rows<MR - 1, T>(static_cast<int>(rows - i), a + i * lda + k0, lda, b + p * ldb + k0 * W, kc,
                                   StoreSums{c + i * ldc + p * ldcp, ldc, acc});
      }
    }
  }
}

}  // namespace

int64_t panel_width(int64_t M) { return M <= 8 ? 8 : 16; }

void gemm_panels_avx2(int T, const float* a, int64_t lda, int64_t rows, int64_t depth, const float* b,
                      int64_t panels, int64_t ldb, float* c, int64_t ldc, int64_t ldcp, bool accumulate) {
  switch (T) {
    case 1:
      gemm_panels_t<1>(a, lda, rows, depth, b, panels, ldb, c, ldc, ldcp, accumulate);
      break;
    case 2:
      gemm_panels_t<2>(a, lda, rows, depth, b, panels, ldb, c, ldc, ldcp, accumulate);
      break;
    default:
      TORCH_CHECK(false, "gemm_panels_avx2: T must be 1 or 2 (got ", T, ")");
  }
}

namespace {

// ---------------------------------------------------------------------------------------------------
// lowrank_mm

// Rows of x per block of the unpacked path: as many as keep the block's t^T (mb r floats, read by every
// tile of phase 2) within kBlockBytes of L2, from kMinBlockRows to kMaxBlockRows (a multiple of 16).
// Against blocks of 64 rows (Zen 3, two threads, K = 384, N = 1536, r = 96, where a block is now up to
// 256 rows): 1.11-1.15x at M = 128, 1.08x at 192, 1.00-1.02x at 256.
constexpr int64_t kMinBlockRows = 64;
constexpr int64_t kMaxBlockRows = 256;
constexpr int64_t kBlockBytes = 128 * 1024;

int64_t block_rows(int64_t r) {
  return std::clamp<int64_t>(kBlockBytes / (4 * r) / 16 * 16, kMinBlockRows, kMaxBlockRows);
}
// Rows of u per task when phase 2 is split over the threads (a multiple of the tiles' 12 and 6 rows).
constexpr int64_t kNBlock = 48;

template <typename T>
void lowrank_mm_scalar(const T* x, const T* v, const T* u, const float* bias, T* out, int64_t M, int64_t N,
                       int64_t K, int64_t r) {
  at::parallel_for(0, M, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> t(r);
    for (int64_t m = begin; m < end; ++m) {
      const T* xr = x + m * K;
      for (int64_t j = 0; j < r; ++j) {
        const T* vr = v + j * K;
        float s = 0.0f;
        for (int64_t k = 0; k < K; ++k) {
          s += to_float(xr[k]) * to_float(vr[k]);
        }
        t[j] = to_float(static_cast<T>(s));
      }
      for (int64_t n = 0; n < N; ++n) {
        const T* ur = u + n * r;
        float s = 0.0f;
        for (int64_t j = 0; j < r; ++j) {
          s += t[j] * to_float(ur[j]);
        }
        if (bias != nullptr) {
          s = s + bias[n];
        }
        out[m * N + n] = static_cast<T>(s);
      }
    }
  });
}

// store_lanes for the last columns of a row. Not inlined: the partial store goes through memory, and GCC
// would then keep the tile's panel vectors there too, a store and a load per step.
template <typename OutT>
__attribute__((noinline)) PYC_AVX2_FMA void store_last_lanes(OutT* dst, __m256 v, int64_t cols) {
  store_lanes(dst, v, cols);
}

// The first B bytes of x at dst, by stores of 8, 4 and 2 bytes from the register (not through memory:
// a vector whose address is taken makes GCC keep the tile's panel vectors on the stack too).
template <int B>
PYC_AVX2 inline void store_bytes(char* dst, __m128i x) {
  if constexpr (B >= 8) {
    _mm_storel_epi64(reinterpret_cast<__m128i*>(dst), x);
    store_bytes<B - 8>(dst + 8, _mm_srli_si128(x, 8));
  } else if constexpr (B >= 4) {
    const int32_t w = _mm_cvtsi128_si32(x);
    std::memcpy(dst, &w, 4);
    store_bytes<B - 4>(dst + 4, _mm_srli_si128(x, 4));
  } else if constexpr (B >= 2) {
    const int16_t h = static_cast<int16_t>(_mm_extract_epi16(x, 0));
    std::memcpy(dst, &h, 2);
  }
}

// The first n (1 to 8, a constant) lanes of v at dst as OutT.
template <int n, typename OutT>
PYC_AVX2 inline void store_n(OutT* dst, __m256 v) {
  static_assert(n >= 1 && n <= 8, "1 to 8 lanes");
  char* d = reinterpret_cast<char*>(dst);
  if constexpr (std::is_same_v<OutT, float>) {
    if constexpr (n == 8) {
      _mm256_storeu_ps(dst, v);
    } else if constexpr (n >= 4) {
      _mm_storeu_ps(dst, _mm256_castps256_ps128(v));
      store_bytes<4 * (n - 4)>(d + 16, _mm_castps_si128(_mm256_extractf128_ps(v, 1)));
    } else {
      store_bytes<4 * n>(d, _mm_castps_si128(_mm256_castps256_ps128(v)));
    }
  } else {
    __m128i bits;
    if constexpr (std::is_same_v<OutT, c10::Half>) {
      bits = half_bits(v);
    } else {
      static_assert(std::is_same_v<OutT, c10::BFloat16>, "float32, float16 or bfloat16 outputs");
      bits = bf16_bits(v);
    }
    if constexpr (n == 8) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), bits);
    } else {
      store_bytes<2 * n>(d, bits);
    }
  }
}

// A register tile of y^T (MR <= 12 rows of u by W = 8 T rows of x) transposed in registers and written
// into y: y[c, i] = sums[i][c] + bias[i] for c < cols, i < MR, in y's dtype. y is neither staged in a
// buffer nor transposed by a pass of its own (that pass was about 12% of the kernel at M = 64, K = 384,
// N = 1536).
template <typename OutT>
struct StoreTransposed {
  static constexpr bool kWholeTile = true;
  OutT* y;  // y[m0, n0]
  int64_t N;
  const float* bias;  // bias + n0, zero-padded to 12 values past it, or nullptr
  int cols;  // rows of x in the tile, 1 to W

  template <int MR, int T>
  PYC_AVX2_FMA void tile(__m256 (&acc)[MR][T]) const {
    static_assert(MR >= 1 && MR <= 12, "tiles of up to 12 rows of u");
    const __m256 b = bias != nullptr ? _mm256_loadu_ps(bias) : _mm256_setzero_ps();
    const __m256 b4 = _mm256_zextps128_ps256(bias != nullptr ? _mm_loadu_ps(bias + 8) : _mm_setzero_ps());
#pragma GCC unroll 2
    for (int t = 0; t < T; ++t) {
      __m256 lo[8];
      __m256 hi[8];
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i) {
        lo[i] = i < MR ? acc[i][t] : _mm256_setzero_ps();
        hi[i] = i + 8 < MR ? acc[i + 8][t] : _mm256_setzero_ps();
      }
      transpose8(lo);
      if constexpr (MR > 8) {
        transpose8(hi);
      }
      // Row c of x: MR values (constant-size stores).
      auto row = [&](int c) PYC_AVX2_FMA {
        OutT* dst = y + (8 * t + c) * N;
        store_n<(MR < 8 ? MR : 8)>(dst, _mm256_add_ps(lo[c], b));
        if constexpr (MR > 8) {
          store_n<(MR > 8 ? MR - 8 : 1)>(dst + 8, _mm256_add_ps(hi[c], b4));
        }
      };
      if (cols >= 8 * (t + 1)) {
#pragma GCC unroll 8
        for (int c = 0; c < 8; ++c) {
          row(c);
        }
      } else {
        for (int c = 0; c < cols - 8 * t; ++c) {
          row(c);
        }
      }
    }
  }
};

// Units of work done once each, by whichever thread first needs them: the threads share them without a
// parallel region of their own (each region costs a wake-up, and a whole scheduling slice when the threads
// share their cores with other work), and a thread waits only for a unit that another thread is doing,
// never for one nobody has started, so that no order of the threads (or one thread doing all) can hang.
class OnceUnits {
 public:
  explicit OnceUnits(int64_t count) : state_(new std::atomic<int>[std::max<int64_t>(count, 1)]) {
    for (int64_t i = 0; i < count; ++i) {
      state_[i].store(kTodo, std::memory_order_relaxed);
    }
  }

  // Does unit i with work() if nobody has claimed it yet.
  template <class Work>
  void claim(int64_t i, const Work& work) {
    int expected = kTodo;
    if (state_[i].load(std::memory_order_relaxed) == kTodo &&
        state_[i].compare_exchange_strong(expected, kDoing, std::memory_order_acquire)) {
      work();
      state_[i].store(kDone, std::memory_order_release);
    }
  }

  // Returns once unit i is done (claimed by this thread or another).
  void wait(int64_t i) const {
    while (state_[i].load(std::memory_order_acquire) != kDone) {
      _mm_pause();
    }
  }

 private:
  static constexpr int kTodo = 0;
  static constexpr int kDoing = 1;
  static constexpr int kDone = 2;
  std::unique_ptr<std::atomic<int>[]> state_;
};

// Units [0, count) split into one run per thread, each thread doing its own run from the front and, once
// that is done, the other runs' units from their backs: a thread that starts late, runs slower or is
// preempted has its last units done by the others, while each thread's units stay contiguous (rows of u in
// order, the next tile's rows prefetched) for as long as nobody is behind. Each run's bounds are one
// atomic word ([lo, hi) as two 32-bit halves), so taking from either end is one compare-and-swap.
class StealRuns {
 public:
  // A span of units [first, first + count); count = 0 when every unit has been taken.
  struct Span {
    int64_t first;
    int64_t count;
  };

  StealRuns(int64_t count, int runs) : runs_(new std::atomic<uint64_t>[runs]), n_(runs) {
    TORCH_CHECK(count < (int64_t{1} << 32), "lowrank_mm: too many units of work (", count, ")");
    for (int i = 0; i < runs; ++i) {
      runs_[i].store(pack(count * i / runs, count * (i + 1) / runs), std::memory_order_relaxed);
    }
  }

  // The next units for thread `self` (< runs): up to `own` from the front of its run, else up to `stolen`
  // from the back of another's.
  Span next(int self, int64_t own = 1, int64_t stolen = 1) {
    Span span = take(self, true, own);
    for (int k = 1; span.count == 0 && k < n_; ++k) {
      span = take((self + k) % n_, false, stolen);
    }
    return span;
  }

 private:
  static uint64_t pack(int64_t lo, int64_t hi) { return static_cast<uint64_t>(lo) << 32 | static_cast<uint64_t>(hi); }

  Span take(int i, bool front, int64_t most) {
    uint64_t cur = runs_[i].load(std::memory_order_relaxed);
    while (true) {
      const int64_t lo = static_cast<int64_t>(cur >> 32);
      const int64_t hi = static_cast<int64_t>(cur & 0xffffffffu);
      const int64_t count = std::min(most, hi - lo);
      if (count <= 0) {
        return {0, 0};
      }
      if (runs_[i].compare_exchange_weak(cur, front ? pack(lo + count, hi) : pack(lo, hi - count),
                                         std::memory_order_relaxed)) {
        return {front ? lo : hi - count, count};
      }
    }
  }

  std::unique_ptr<std::atomic<uint64_t>[]> runs_;
  int n_;
};

struct LowRankArgs {
  const at::Tensor& x;  // [M, K] of the op's dtype
  const float* v;  // [r, K]
  const float* u;  // [N, r]
  const float* bias;  // [N] zero-padded to N + 16 values, or nullptr
  at::Tensor& out;
  int64_t M, N, K, r, W, mb;
};

// Panels of x^T and of t^T (W rows of x each) of one block of rows.
struct BlockBuffers {
  std::unique_ptr<float[], AlignedFree> xp;
  std::unique_ptr<float[], AlignedFree> tp;

  explicit BlockBuffers(const LowRankArgs& p)
      : xp(aligned_buffer<float>(p.mb * p.K, "lowrank_mm")), tp(aligned_buffer<float>(p.mb * p.r, "lowrank_mm")) {}
};

// Phase 1 for rows [j0, j1) of v and the given x^T panels: the same t^T panels, rounded to the op's dtype.
template <typename VT>
void phase1(const LowRankArgs& p, int64_t panels, const float* xp, float* tp, int64_t j0, int64_t j1) {
  const int64_t W = p.W;
  gemm_panels_avx2(static_cast<int>(W / 8), p.v + j0 * p.K, p.K, j1 - j0, p.K, xp, panels, p.K * W, tp + j0 * W, W,
                   p.r * W, false);
  if constexpr (!std::is_same_v<VT, float>) {
    for (int64_t q = 0; q < panels; ++q) {
      float* rows = tp + q * p.r * W + j0 * W;
      for (int64_t i = 0; i < (j1 - j0) * W; ++i) {
        rows[i] = to_float(static_cast<VT>(rows[i]));
      }
    }
  }
}

// Phase 2 for rows [n0, n1) of u and the block's rows [m0, m0 + rows) of x (its t^T panels at tp):
// y[m0 .., n0 .. n1) = t u^T + bias, a tile of 12 / T rows of u (read in place, in L1 while the block's
// panels pass) by one panel at a time, over the whole rank, written from the registers.
template <int T, typename OutT>
void phase2_t(const LowRankArgs& p, const float* tp, int64_t n0, int64_t n1, int64_t m0, int64_t rows) {
  constexpr int MR = 12 / T;
  constexpr int W = 8 * T;
  const int64_t r = p.r;
  const int64_t panels = ceil_div(rows, W);
  OutT* y = p.out.mutable_data_ptr<OutT>() + m0 * p.N;
  auto store = [&](int64_t n, int64_t q) {
    return StoreTransposed<OutT>{y + W * q * p.N + n, p.N, p.bias != nullptr ? p.bias + n : nullptr,
                                 static_cast<int>(std::min<int64_t>(W, rows - W * q))};
  };
  int64_t n = n0;
  for (; n + MR <= n1; n += MR) {
    const float* a = p.u + n * r;
    // The next tile's rows of u, while this one's first panel passes.
    const float* next = n + 2 * MR <= n1 ? a + MR * r : nullptr;
    for (int64_t q = 0; q < panels; ++q) {
      // The lines of y two tiles on: the tile's stores go to W rows N apart, which the hardware
      // prefetcher does not follow (0.996-1.098x in A/B runs at M = 32-256, K = 384).
      if (n + 2 * MR < n1) {
        const int64_t cols = std::min<int64_t>(W, rows - W * q);
        const OutT* ahead = y + W * q * p.N + n + 2 * MR;
        for (int64_t c = 0; c < cols; ++c) {
          _mm_prefetch(reinterpret_cast<const char*>(ahead + c * p.N), _MM_HINT_T0);
        }
      }
      panel_tile<MR, T>(a, r, tp + q * r * W, r, q == 0 ? next : nullptr, store(n, q));
    }
  }
  if (n < n1) {
    for (int64_t q = 0; q < panels; ++q) {
      panel_tile_rows<MR - 1, T>(static_cast<int>(n1 - n), p.u + n * r, r, tp + q * r * W, r, store(n, q));
    }
  }
}

template <typename OutT>
void phase2(const LowRankArgs& p, const float* tp, int64_t n0, int64_t n1, int64_t m0, int64_t rows) {
  if (p.W == 8) {
    phase2_t<1, OutT>(p, tp, n0, n1, m0, rows);
  } else {
    phase2_t<2, OutT>(p, tp, n0, n1, m0, rows);
  }
}

template <typename VT>
void lowrank_mm_unpacked(const LowRankArgs& p) {
  const int64_t W = p.W;
  const int64_t panels = ceil_div(p.M, W);
  const int threads = at::get_num_threads();
  if (p.M > p.mb || threads == 1) {
    // Each thread its own run of panels, in blocks of up to p.mb rows, then the others' last panels,
    // kMinBlockRows at a time (StealRuns).
    StealRuns runs(panels, threads);
    at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
      BlockBuffers buf(p);
      for (int64_t i = begin; i < end; ++i) {
        for (StealRuns::Span span = runs.next(static_cast<int>(i), p.mb / W, kMinBlockRows / W); span.count > 0;
             span = runs.next(static_cast<int>(i), p.mb / W, kMinBlockRows / W)) {
          const int64_t m0 = span.first * W;
          const int64_t rows = std::min(span.count * W, p.M - m0);
          pack_x_slabs(p.x.narrow(0, m0, rows), W, buf.xp.get(), Isa::kAvx2);
          phase1<VT>(p, ceil_div(rows, W), buf.xp.get(), buf.tp.get(), 0, p.r);
          phase2<VT>(p, buf.tp.get(), 0, p.N, m0, rows);
        }
      }
    });
    return;
  }
  // One block, split over the threads in one parallel region. Phase 1 a panel at a time (pack x's rows,
  // then t^T for all of v), each panel done by whichever thread claims it first (OnceUnits: every thread
  // starts with its own share of panels and goes on to the others' unclaimed ones, so a thread that wakes
  // late or is preempted is made up for); then phase 2 in steps of kNBlock rows of u, each thread its own
  // run of them and then the others' last ones (StealRuns), for the same reason. When there are fewer panels than threads, phase 1 is split over the
  // rows of v instead, in a region of its own after the packing.
  BlockBuffers buf(p);
  StealRuns steps(ceil_div(p.N, kNBlock), threads);
  auto run_phase2 = [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      for (StealRuns::Span step = steps.next(static_cast<int>(i)); step.count > 0;
           step = steps.next(static_cast<int>(i))) {
        phase2<VT>(p, buf.tp.get(), step.first * kNBlock, std::min(p.N, (step.first + 1) * kNBlock), 0, p.M);
      }
    }
  };
  if (panels >= threads) {
    // Units of a thread's share of panels: a panel at a time would read all of v once per panel.
    const int64_t share = ceil_div(panels, threads);
    const int64_t units = ceil_div(panels, share);
    OnceUnits done(units);
    at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
      for (int64_t j = 0; j < units; ++j) {
        const int64_t i = (begin + j) % units;
        done.claim(i, [&] {
          const int64_t m0 = i * share * W;
          const int64_t rows = std::min(p.M - m0, share * W);
          pack_x_slabs(p.x.narrow(0, m0, rows), W, buf.xp.get() + m0 * p.K, Isa::kAvx2);
          phase1<VT>(p, ceil_div(rows, W), buf.xp.get() + m0 * p.K, buf.tp.get() + m0 * p.r, 0, p.r);
        });
      }
      for (int64_t i = 0; i < units; ++i) {
        done.wait(i);
      }
      run_phase2(begin, end);
    });
    return;
  }
  const int64_t MR = 12 / (W / 8);
  pack_x_slabs(p.x, W, buf.xp.get(), Isa::kAvx2);
  at::parallel_for(0, ceil_div(p.r, MR), 1, [&](int64_t begin, int64_t end) {
    phase1<VT>(p, panels, buf.xp.get(), buf.tp.get(), begin * MR, std::min(p.r, end * MR));
  });
  at::parallel_for(0, threads, 1, run_phase2);
}

// ---------------------------------------------------------------------------------------------------
// Large M: both factors packed once per call

// Most row blocks of kMinBlockRows per thread for the unpacked path, which reads all of u (from L3 or
// memory) once per block; beyond that packing v^T and u^T once per call is cheaper. Measured on Zen 3 at
// K = 384, N = 1536, r = 96, unpacked against packed: one thread 1.03x at M = 128 (2 blocks), 0.70x at
// 192, 0.99x at 256; two threads 1.06-1.18x at M = 128, 1.06-1.13x at 256 (2 blocks each), 0.92x at 384,
// 0.95x at 1024; 1.22x at (128, 4096, 4096) r = 256.
constexpr int64_t kUnpackedMaxBlocks = 2;
// Largest rank (rounded up to 16) for the packed path: its phase 1 runs every row tile over all r / 16
// panels of v^T, one depth block (kDepthBlock) at a time, so those panels (r kDepthBlock floats, 256 KiB
// here) must stay in L2. Beyond that the unpacked path is faster at every M measured (Zen 3, two threads,
// N = K = 4096, r = 1024: 2.5x at M = 128, 1.2x at M = 256 and 512).
constexpr int64_t kPackedMaxRank = 256;
// The packed path's blocking: the block's t and a chunk of panels of u^T, each about kPackedBytes, stay in
// L2 while phase 2 runs every tile of the block over the chunk (3% faster than a 48-row block against
// every panel on two threads at M = 1024). Blocks are 48 to 192 rows (a multiple of 6).
constexpr int64_t kPackedBytes = 96 * 1024;
int64_t packed_block_rows(int64_t rp) { return std::clamp<int64_t>(kPackedBytes / (4 * rp) / 6 * 6, 48, 192); }
// Tiles of 6 rows taken at a time from the back of another thread's run once a thread's own run is done
// (48 rows, the smallest block): a smaller block reads all of u^T for fewer rows, so only the ends of the
// runs are cut this fine.
constexpr int64_t kStolenTiles = 8;

// Panels of u^T (r 16 floats each) per chunk.
int64_t panel_chunk(int64_t r) { return std::max<int64_t>(1, kPackedBytes / (r * 16 * 4)); }

// A factor w [rows, cols] as panels of 16 rows (the slabs of pack_x_slabs with W = 16: w^T in 16-wide
// column panels), packed on first use by whichever thread first needs them, `unit` panels at a time
// (OnceUnits): a thread that finds a unit ready later in the call does not wait at all.
class SharedPanels {
 public:
  SharedPanels(const at::Tensor& w, int64_t unit, const char* op)
      : w_(w),
        unit_(unit),
        panels_(ceil_div(w.size(0), 16)),
        data_(aligned_buffer<float>(panels_ * 16 * w.size(1), op)),
        units_(ceil_div(panels_, unit)) {}

  int64_t panels() const { return panels_; }

  // The panels, once [q0, q1) are packed: this thread packs the units nobody has claimed, then waits for
  // those that another thread is packing.
  const float* ready(int64_t q0, int64_t q1) {
    const int64_t u0 = q0 / unit_;
    const int64_t u1 = ceil_div(q1, unit_);
    for (int64_t i = u0; i < u1; ++i) {
      units_.claim(i, [&] {
        const int64_t r0 = 16 * unit_ * i;
        const int64_t r1 = std::min(w_.size(0), r0 + 16 * unit_);
        pack_x_slabs(w_.narrow(0, r0, r1 - r0), 16, data_.get() + r0 * w_.size(1), Isa::kAvx2);
      });
    }
    for (int64_t i = u0; i < u1; ++i) {
      units_.wait(i);
    }
    return data_.get();
  }

 private:
  const at::Tensor& w_;
  int64_t unit_;
  int64_t panels_;
  std::unique_ptr<float[], AlignedFree> data_;
  OnceUnits units_;
};

// Writes the sums of row i, vector t of a tile as y[i, n0 + 8 t ..] + bias, in y's dtype, the columns
// below N (y is the tile's first row).
template <typename OutT>
struct StoreOut {
  static constexpr bool kWholeTile = false;
  OutT* y;
  int64_t N, n0;
  const float* bias;  // padded with zeros to a multiple of 16 columns, or nullptr

  PYC_AVX2_FMA void operator()(int i, int t, __m256 v) const {
    const int64_t n = n0 + 8 * t;
    if (bias != nullptr) {
      v = _mm256_add_ps(v, _mm256_loadu_ps(bias + n));
    }
    if (n + 8 <= N) {
      store_lanes(y + i * N + n, v, 8);
    } else if (n < N) {
      store_last_lanes(y + i * N + n, v, N - n);
    }
  }
};

// y [rows, N] = t [rows, r] (stride ldt) u^T (+ bias), ut holding u^T. In chunks of panels (about
// kPackedBytes) that stay in L2 while every tile of rows passes; a tile's rows of t stay in L1 while the
// chunk's panels pass. y is written from the registers, a full line per row of a tile.
template <typename OutT>
PYC_AVX2_FMA void product_rows(const float* t, int64_t ldt, int64_t rows, int64_t r, SharedPanels& ut, int64_t N,
                               const float* bias, OutT* y) {
  constexpr int MR = 6;
  const int64_t chunk = panel_chunk(r);
  for (int64_t q0 = 0; q0 < ut.panels(); q0 += chunk) {
    const int64_t q1 = std::min(ut.panels(), q0 + chunk);
    const float* up = ut.ready(q0, q1);
    int64_t i = 0;
    for (; i + MR <= rows; i += MR) {
      for (int64_t q = q0; q < q1; ++q) {
        // The next tile's rows of t, while this one's first panel of the chunk passes.
        const float* next = q == q0 && i + 2 * MR <= rows ? t + (i + MR) * ldt : nullptr;
        panel_tile<MR, 2>(t + i * ldt, ldt, up + q * r * 16, r, next,
                          StoreOut<OutT>{y + i * N, N, 16 * q, bias});
      }
    }
    if (i < rows) {
      for (int64_t q = q0; q < q1; ++q) {
        panel_tile_rows<MR - 1, 2>(static_cast<int>(rows - i), t + i * ldt, ldt, up + q * r * 16, r,
                                   StoreOut<OutT>{y + i * N, N, 16 * q, bias});
      }
    }
  }
}

template <typename VT>
void lowrank_mm_packed(const at::Tensor& x, const at::Tensor& v, const at::Tensor& u, const float* bias,
                       at::Tensor& out) {
  constexpr const char* op = "lowrank_mm";
  const int64_t M = x.size(0);
  const int64_t K = x.size(1);
  const int64_t r = v.size(0);
  const int64_t N = u.size(0);
  const int64_t rp = round_up(r, 16);
  // Half a chunk per unit, so that the threads, which start on the same chunk, share its packing.
  SharedPanels vt(v, std::max<int64_t>(1, ceil_div(rp / 16, 2 * at::get_num_threads())), op);
  SharedPanels ut(u, std::max<int64_t>(1, panel_chunk(r) / 2), op);
  const at::Tensor xf = as_float(x);
  const float* xp = xf.const_data_ptr<float>();
  VT* y = out.mutable_data_ptr<VT>();
  const int64_t mb = packed_block_rows(rp);
  // Each thread its own run of 6-row tiles, in blocks of up to mb rows, then the others' last tiles,
  // kStolenTiles at a time (StealRuns).
  const int threads = at::get_num_threads();
  StealRuns tiles(ceil_div(M, 6), threads);
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    // t [mb, rp]: the padding columns are zeros (v^T's padding) and never read.
    auto t = aligned_buffer<float>(mb * rp, op);
    for (int64_t i = begin; i < end; ++i) {
      for (StealRuns::Span span = tiles.next(static_cast<int>(i), mb / 6, kStolenTiles); span.count > 0;
           span = tiles.next(static_cast<int>(i), mb / 6, kStolenTiles)) {
        const int64_t m0 = 6 * span.first;
        const int64_t rows = std::min(6 * span.count, M - m0);
        gemm_panels_avx2(2, xp + m0 * K, K, rows, K, vt.ready(0, vt.panels()), vt.panels(), K * 16, t.get(), rp,
                         16, false);
        if constexpr (!std::is_same_v<VT, float>) {
          for (int64_t j = 0; j < rows * rp; ++j) {
            t[j] = to_float(static_cast<VT>(t[j]));
          }
        }
        product_rows(t.get(), rp, rows, r, ut, N, bias, y + m0 * N);
      }
    }
  });
}


// ---------------------------------------------------------------------------------------------------
// Small M (decode): both products as dot products of rows

// Most rows of x for the dot-product path. The panel path computes 8 columns of x^T per FMA, so with M
// rows it does 8 / M times the useful work; the dot-product path does none extra and reads v and u once,
// as the panel path does.
// (Measured on Zen 3, two threads, against the panel path: 3.6x faster at M = 1, 2.0x at M = 4 for
// N = K = 4096, r = 1024; beyond 4 rows a step holds one row of a against M rows of x, bound by the loads
// of x: 1.5x slower at M = 6.)
constexpr int64_t kDotMaxRows = 4;

// out[m ldo + g] = sum_k xs[m ldx + k] a[g lda + k] (+ bias[g]) for m < MM, g < G. G MM accumulators.
template <int MM, int G, typename AT>
PYC_AVX2_FMA inline void dot_group(const float* xs, int64_t ldx, const AT* a, int64_t lda, int64_t K,
                                   const float* bias, float* out, int64_t ldo) {
  __m256 acc[G][MM];
#pragma GCC unroll 8
  for (int g = 0; g < G; ++g) {
#pragma GCC unroll 4
    for (int m = 0; m < MM; ++m) {
      acc[g][m] = _mm256_setzero_ps();
    }
  }
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    __m256 xv[MM];
#pragma GCC unroll 4
    for (int m = 0; m < MM; ++m) {
      xv[m] = _mm256_loadu_ps(xs + m * ldx + k);
    }
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) {
      const __m256 av = load8(a + g * lda + k);
#pragma GCC unroll 4
      for (int m = 0; m < MM; ++m) {
        acc[g][m] = _mm256_fmadd_ps(av, xv[m], acc[g][m]);
      }
    }
  }
  for (int g = 0; g < G; ++g) {
    for (int m = 0; m < MM; ++m) {
      float sum = hsum(acc[g][m]);
      for (int64_t kk = k; kk < K; ++kk) {
        sum += xs[m * ldx + kk] * to_float(a[g * lda + kk]);
      }
      out[m * ldo + g] = bias != nullptr ? sum + bias[g] : sum;
    }
  }
}

// out[m ldo + j] = sum_k xs[m ldx + k] a[j lda + k] (+ bias[j]) for m < MM and the rows [j0, j1) of a:
// G rows of a per step (8 accumulators), each row read once as a stream.
template <int MM, typename AT>
PYC_AVX2_FMA void row_dots(const float* xs, int64_t ldx, const AT* a, int64_t lda, int64_t K, int64_t j0,
                           int64_t j1, const float* bias, float* out, int64_t ldo) {
  constexpr int G = 8 / MM;
  int64_t j = j0;
  for (; j + G <= j1; j += G) {
    dot_group<MM, G>(xs, ldx, a + j * lda, lda, K, bias != nullptr ? bias + j : nullptr, out + j, ldo);
  }
  for (; j < j1; ++j) {
    dot_group<MM, 1>(xs, ldx, a + j * lda, lda, K, bias != nullptr ? bias + j : nullptr, out + j, ldo);
  }
}

template <int MM, typename VT>
void lowrank_mm_dots_m(const float* xs, const VT* v, const VT* u, const float* bias, float* t, float* y, int64_t N,
                       int64_t K, int64_t r) {
  // Grains of 64 rows: a few dozen KiB of v or u per task at the K and r of a transformer layer.
  at::parallel_for(0, r, 64, [&](int64_t begin, int64_t end) {
    row_dots<MM>(xs, K, v, K, K, begin, end, nullptr, t, r);
    if constexpr (!std::is_same_v<VT, float>) {
      for (int m = 0; m < MM; ++m) {
        for (int64_t j = begin; j < end; ++j) {
          t[m * r + j] = to_float(static_cast<VT>(t[m * r + j]));
        }
      }
    }
  });
  at::parallel_for(0, N, 64, [&](int64_t begin, int64_t end) { row_dots<MM>(t, r, u, r, r, begin, end, bias, y, N); });
}

// M <= kDotMaxRows: t [M, r] in a buffer, then y; the factors are read in place in their own dtype.
template <typename VT>
void lowrank_mm_dots(const at::Tensor& x, const at::Tensor& v, const at::Tensor& u, const float* bias,
                     at::Tensor& out) {
  constexpr const char* op = "lowrank_mm";
  const int64_t M = x.size(0);
  const int64_t K = x.size(1);
  const int64_t r = v.size(0);
  const int64_t N = u.size(0);
  const at::Tensor xf = as_float(x);
  auto t = aligned_buffer<float>(M * r, op);
  const bool direct = std::is_same_v<VT, float>;
  std::unique_ptr<float[], AlignedFree> ybuf;
  if (!direct) {
    ybuf = aligned_buffer<float>(M * N, op);
  }
  float* y = direct ? reinterpret_cast<float*>(out.mutable_data_ptr<VT>()) : ybuf.get();
  const float* xs = xf.const_data_ptr<float>();
  const VT* vp = v.const_data_ptr<VT>();
  const VT* up = u.const_data_ptr<VT>();
  switch (M) {
    case 1:
      lowrank_mm_dots_m<1>(xs, vp, up, bias, t.get(), y, N, K, r);
      break;
    case 2:
      lowrank_mm_dots_m<2>(xs, vp, up, bias, t.get(), y, N, K, r);
      break;
    case 3:
      lowrank_mm_dots_m<3>(xs, vp, up, bias, t.get(), y, N, K, r);
      break;
    default:
      lowrank_mm_dots_m<4>(xs, vp, up, bias, t.get(), y, N, K, r);
      break;
  }
  if (!direct) {
    VT* o = out.mutable_data_ptr<VT>();
    for (int64_t i = 0; i < M * N; ++i) {
      o[i] = static_cast<VT>(y[i]);
    }
  }
}

at::Tensor lowrank_mm(const at::Tensor& x, const at::Tensor& v, const at::Tensor& u,
                      const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "lowrank_mm";
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.size(1) >= 1, op,
              ": x must be a contiguous [M, K] tensor, K >= 1");
  const int64_t M = x.size(0);
  const int64_t K = x.size(1);
  TORCH_CHECK(v.dim() == 2 && v.size(0) >= 1 && v.size(1) == K && v.scalar_type() == x.scalar_type() &&
                  v.is_contiguous(),
              op, ": v must be contiguous [r, K] of x's dtype, r >= 1");
  const int64_t r = v.size(0);
  TORCH_CHECK(u.dim() == 2 && u.size(1) == r && u.scalar_type() == x.scalar_type() && u.is_contiguous(), op,
              ": u must be contiguous [N, r] of x's dtype");
  const int64_t N = u.size(0);
  TORCH_CHECK(!bias.has_value() ||
                  (bias->dim() == 1 && bias->size(0) == N && bias->is_contiguous() &&
                   (bias->scalar_type() == at::kFloat || bias->scalar_type() == at::kHalf ||
                    bias->scalar_type() == at::kBFloat16)),
              op, ": bias must be a contiguous float32, float16 or bfloat16 [N] tensor, N = ", N);
  const Isa isa = lowbit_isa();
  at::Tensor out = at::empty({M, N}, x.options());
  if (out.numel() == 0) {
    return out;
  }
  // The bias as float32, zero-padded by 16 values: the register tiles add it a vector at a time.
  std::unique_ptr<float[], AlignedFree> bias_pad;
  if (bias.has_value()) {
    const at::Tensor bf = as_float(*bias);
    bias_pad = aligned_buffer<float>(N + 16, op);
    std::fill(std::copy(bf.const_data_ptr<float>(), bf.const_data_ptr<float>() + N, bias_pad.get()),
              bias_pad.get() + N + 16, 0.0f);
  }
  const float* bp = bias_pad.get();
  auto run = [&](auto tag) {
    using VT = decltype(tag);
    if (isa == Isa::kScalar) {
      lowrank_mm_scalar<VT>(x.const_data_ptr<VT>(), v.const_data_ptr<VT>(), u.const_data_ptr<VT>(), bp,
                            out.mutable_data_ptr<VT>(), M, N, K, r);
      return;
    }
    if (M <= kDotMaxRows) {
      lowrank_mm_dots<VT>(x, v, u, bp, out);
      return;
    }
    if (M > kUnpackedMaxBlocks * kMinBlockRows * at::get_num_threads() && round_up(r, 16) <= kPackedMaxRank) {
      lowrank_mm_packed<VT>(x, v, u, bp, out);
      return;
    }
    // The factors are read in place as float32 rows: other dtypes are converted once.
    const at::Tensor vf = as_float(v);
    const at::Tensor uf = as_float(u);
    const int64_t W = panel_width(M);
    const LowRankArgs p{x, vf.const_data_ptr<float>(), uf.const_data_ptr<float>(), bp, out, M, N, K, r, W,
                        std::min(round_up(M, W), block_rows(r))};
    lowrank_mm_unpacked<VT>(p);
  };
  dispatch_float(x.scalar_type(), op, "x", run);
  return out;
}

}  // namespace
}  // namespace pycompress::cpu

TORCH_LIBRARY_IMPL(pycompress_C, CPU, m) { m.impl("lowrank_mm", &pycompress::cpu::lowrank_mm); }
