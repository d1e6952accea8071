// CUDA kernels of the 2:4 op family: compression into the sparse tensor-core layout, the 2:4 GEMM on
// the sparse tensor cores (mma.sp::ordered_metadata m16n8k32, f32 accumulate; sm_80 and sm_90a) for
// float16 / bfloat16, and a CUDA-core (SIMT, no tensor cores) GEMM for float32.
//
// EXPERIMENTAL: these kernels have been compiled (sm_80, sm_90a) and their SASS checked, but they have
// not yet run on a GPU. The backend registry marks the CUDA backend experimental until its tests pass
// on real hardware.
//
// Contract: csrc/include/pycompress/sparse_cuda.h and pycompress/ops/sparse24.py (the reference).
// compress is bit-exact; the GEMMs sum float32 products in any order and round once.
#include <cstdint>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "pycompress/cuda_common.cuh"
#include "pycompress/sparse_cuda.h"
#include "pycompress/sparse_tiles.cuh"

namespace pycompress {
namespace {

// ---------------------------------------------------------------------------------------------------
// sparse24_compress: one thread per metadata word, i.e. per 16 columns (4 groups) of a row. K % 16 == 0
// puts row ends on word boundaries, so word i of the flat [N, K / 16] meta covers flat elements
// 16 i .. 16 i + 15 of w and flat values 8 i .. 8 i + 7. Elements are moved as raw bits (U = uint16_t
// for float16 / bfloat16, uint32_t for float32), so NaN payloads and -0.0 survive.

constexpr int kCompressThreads = 256;

// Zero is +-0 (the magnitude bits are 0): NaN and subnormals are non-zero, as in the reference.
__device__ __forceinline__ bool is_zero_bits(uint16_t bits) { return (bits & 0x7fffu) == 0; }
__device__ __forceinline__ bool is_zero_bits(uint32_t bits) { return (bits & 0x7fffffffu) == 0; }

// Element j of 16 raw bytes holding 16 / sizeof(U) elements.
template <typename U>
__device__ __forceinline__ U element_of(const uint4& v, int j) {
  constexpr int kPerWord = 4 / sizeof(U);
  const int w = j / kPerWord;
  const uint32_t word = w == 0 ? v.x : (w == 1 ? v.y : (w == 2 ? v.z : v.w));
  if constexpr (sizeof(U) == 4) {
    return word;
  } else {
    return static_cast<U>(word >> (16 * (j % kPerWord)));
  }
}

template <typename U>
__device__ __forceinline__ uint32_t pack_word(const U (&e)[8], int w) {
  if constexpr (sizeof(U) == 4) {
    return e[w];
  } else {
    return static_cast<uint32_t>(e[2 * w]) | (static_cast<uint32_t>(e[2 * w + 1]) << 16);
  }
}

// kVector: w and values are 16-byte aligned (every thread's 16 elements and 8 values are whole
// 16-byte vectors); otherwise elements move one by one.
template <typename U, bool kVector>
__global__ void __launch_bounds__(kCompressThreads)
    sparse24_compress_kernel(const U* __restrict__ w, U* __restrict__ values,
                             uint16_t* __restrict__ meta, int64_t words) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kCompressThreads + threadIdx.x;
  if (i >= words) return;
  constexpr int kPerVec = 16 / sizeof(U);
  U e[16];
  if constexpr (kVector) {
    const uint4* src = reinterpret_cast<const uint4*>(w + 16 * i);
#pragma unroll
    for (int v = 0; v < 16 / kPerVec; ++v) {
      const uint4 raw = __ldg(src + v);
#pragma unroll
      for (int j = 0; j < kPerVec; ++j) e[v * kPerVec + j] = element_of<U>(raw, j);
    }
  } else {
#pragma unroll
    for (int j = 0; j < 16; ++j) e[j] = w[16 * i + j];
  }

  U kept[8];
  uint32_t word = 0;
#pragma unroll
  for (int g = 0; g < 4; ++g) {
    // The reference's order of preference: the non-zero positions, then the zero ones, each
    // ascending; the first two are kept, in ascending order.
    int first = -1;
    int second = -1;
#pragma unroll
    for (int p = 0; p < 4; ++p) {
      if (!is_zero_bits(e[4 * g + p])) {
        if (first < 0) {
          first = p;
        } else if (second < 0) {
          second = p;
        }
      }
    }
#pragma unroll
    for (int p = 0; p < 4; ++p) {
      if (is_zero_bits(e[4 * g + p])) {
        if (first < 0) {
          first = p;
        } else if (second < 0) {
          second = p;
        }
      }
    }
    const int lo = first < second ? first : second;
    const int hi = first < second ? second : first;
    // Selected with compile-time indices: a runtime index into e would put e in local memory.
    U v0 = 0;
    U v1 = 0;
#pragma unroll
    for (int p = 0; p < 4; ++p) {
      if (p == lo) v0 = e[4 * g + p];
      if (p == hi) v1 = e[4 * g + p];
    }
    kept[2 * g] = v0;
    kept[2 * g + 1] = v1;
    word |= static_cast<uint32_t>(lo | (hi << 2)) << (4 * g);
  }

  if constexpr (kVector) {
    uint4* dst = reinterpret_cast<uint4*>(values + 8 * i);
    if constexpr (sizeof(U) == 2) {
      dst[0] = make_uint4(pack_word(kept, 0), pack_word(kept, 1), pack_word(kept, 2),
                          pack_word(kept, 3));
    } else {
      dst[0] = make_uint4(kept[0], kept[1], kept[2], kept[3]);
      dst[1] = make_uint4(kept[4], kept[5], kept[6], kept[7]);
    }
  } else {
#pragma unroll
    for (int j = 0; j < 8; ++j) values[8 * i + j] = kept[j];
  }
  meta[i] = static_cast<uint16_t>(word);
}

template <typename U>
cudaError_t launch_compress_typed(const void* w, void* values, int16_t* meta, int64_t words,
                                  cudaStream_t stream) {
  const U* src = static_cast<const U*>(w);
  U* dst = static_cast<U*>(values);
  uint16_t* m = reinterpret_cast<uint16_t*>(meta);
  const dim3 grid(static_cast<unsigned>(ceil_div<int64_t>(words, kCompressThreads)));
  if (is_aligned(w, 16) && is_aligned(values, 16)) {
    sparse24_compress_kernel<U, true><<<grid, kCompressThreads, 0, stream>>>(src, dst, m, words);
  } else {
    sparse24_compress_kernel<U, false><<<grid, kCompressThreads, 0, stream>>>(src, dst, m, words);
  }
  return cudaGetLastError();
}

// ---------------------------------------------------------------------------------------------------
// sparse24_mm on the sparse tensor cores. The weight is the sparse A operand: out^T = W x^T, so the
// MMA's M dimension runs over weight rows (n) and its N dimension over rows of x (m).
//
// One mma.sp m16n8k32 multiplies a 16 x 32 slice of W (16 weight rows, 32 columns of K; held as
// 16 x 16 kept values plus metadata) by a 32 x 8 slice of x^T (8 rows of x). Its operands per lane
// (lane = 4 g + t, g = lane / 4, t = lane % 4), from the PTX ISA's sparse mma.m16n8k32 .f16/.bf16
// fragment layouts:
//   A (4 registers of 2 kept values): a0a1 = row g, kept values 2t, 2t + 1 of the slice (group t,
//     columns 4t .. 4t + 3); a2a3 = the same of row g + 8; a4a5 = row g, kept values 8 + 2t, 9 + 2t
//     (group 4 + t, columns 16 + 4t .. 16 + 4t + 3); a6a7 = the same of row g + 8. This is the dense
//     m16n8k16 A layout over the 16 x 16 kept values, so ldmatrix.x4 loads it from the values tile.
//   B (4 registers of 2 values): register j = x row g, columns 8j + 2t, 8j + 2t + 1 of the slice,
//     i.e. one ldmatrix.x4 over 8 rows of x and the slice's four 16-byte chunks.
//   Metadata (one 32-bit register; sparsity selector 0, so lanes with t = 0 and t = 1 supply it):
//     lane 4g + s (s = 0, 1) holds in bits 0..15 the 4 nibbles of weight row g for columns
//     16 s .. 16 s + 15 of the slice, and in bits 16..31 those of row g + 8. Nibble q of a 16-bit half
//     describes group q of those 16 columns: bits 0-1 the first kept position, bits 2-3 the second.
//     That half is exactly one stored int16 meta word (meta[n, k / 16]), so lane 4g + s takes word
//     2 ks + s of rows g and g + 8 (ks: the slice's index in the K tile) and pairs them. Lanes with
//     t = 2, 3 compute the same pairing; the selector makes the MMA ignore them.
//     The ::ordered_metadata form (advised over plain mma.sp, which may be slower on some targets)
//     needs the two positions of a nibble in increasing order, which the stored layout guarantees;
//     nibbles 0b0000, 0b0101, 0b1010 and 0b1111 are undefined for any form, hence kNeutralMeta.
//   D (4 floats): d0, d1 = weight row g, x rows 2t and 2t + 1; d2, d3 = weight row g + 8, same.
// The metadata tile is staged per row as one 32-bit word per slice (two int16 words, the lower address
// in the low half), so a lane reads two 32-bit words per m16 tile and slice and selects halves with
// one byte permute.
//
// A block computes a kBM (x rows) x kBN (weight rows) tile of out; warps are kWarpsM x kWarpsN over
// the tile and kWarpsK over the slices of each K tile (their partial sums meet in shared memory). Each
// stage of the kStages-deep cp.async ring holds the values tile [kBN, kBK / 2], the x tile [kBM, kBK]
// and the metadata tile [kBN, kBK / 32] words; the epilogue adds the bias in float32, casts, and
// writes out through shared memory in 16-byte row segments.

template <int kBM_, int kBN_, int kBK_, int kWarpsM_, int kWarpsN_, int kWarpsK_, int kStages_,
          int kMinBlocks_>
struct Sp24Tile : MmaTile<kBM_, kBN_, kWarpsM_, kWarpsN_, kWarpsK_> {
  using Base = MmaTile<kBM_, kBN_, kWarpsM_, kWarpsN_, kWarpsK_>;
  static constexpr int kBK = kBK_;
  static constexpr int kStages = kStages_;
  static constexpr int kMinBlocks = kMinBlocks_;
  static constexpr int kSlices = kBK / 32;  // k32 slices per K tile
  static constexpr int kSlicesPerWarp = kSlices / kWarpsK_;
  static constexpr int kVChunks = kBK / 16;  // 16-byte chunks per values row (8 values, 16 columns)
  static constexpr int kXChunks = kBK / 8;   // 16-byte chunks per x row
  static constexpr int kVBytes = kBN_ * kVChunks * 16;
  static constexpr int kXBytes = kBM_ * kXChunks * 16;
  static constexpr int kMetaBytes = kBN_ * kSlices * 4;
  static constexpr int kStageBytes = kVBytes + kXBytes + kMetaBytes;
  static constexpr int kPipeBytes = kStages * kStageBytes;
  static constexpr int kSmemBytes = Base::smem_bytes(kPipeBytes);

  static_assert(kBK % 32 == 0 && kSlices % kWarpsK_ == 0, "K-split warps share the slices evenly");
  static_assert(kStageBytes % 16 == 0, "stages stay 16-byte aligned");
  static_assert(kBN_ % 32 == 0, "staged rows 2t then start 8t banks apart");
};

// Large M and N: 128 x 256 tiles, 8 warps of 64 x 64 (4 x 8 MMAs per slice, so that shared-memory
// reads of the fragments stay below the tensor cores' rate), 4 stages (136 KiB).
using Sp24Large = Sp24Tile<128, 256, 64, 2, 4, 1, 4, 1>;
// Mid-size M, or too few large tiles to fill the GPU: 64 x 32 tiles, K tiles split over 2 warps.
using Sp24Medium = Sp24Tile<64, 32, 64, 2, 2, 2, 4, 2>;
// Decode (M <= 16): streams the weight once; 16 x 32 tiles, 128-column K tiles split over 4 warps.
using Sp24Decode = Sp24Tile<16, 32, 128, 1, 2, 4, 4, 2>;

struct Sp24MmArgs {
  const uint16_t* x;       // [M, K] float16 / bfloat16 bits
  const uint16_t* values;  // [N, K / 2]
  const uint16_t* meta;    // [N, K / 16]
  const void* bias;        // [N] or nullptr
  void* out;               // [M, N]
  int64_t M;
  int64_t N;
  int64_t K;
  SparseDtype bias_dtype;
  bool vector_store;  // N % 8 == 0 and out 16-byte aligned: whole 16-byte row segments are stored
};

// 4-byte cp.async (only the .ca form takes sizes below 16); src_bytes == 0 zero-fills.
__device__ __forceinline__ void cp_async_4(uint32_t dst, const void* src, bool valid) {
  const int src_bytes = valid ? 4 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst),
               "l"(__cvta_generic_to_global(src)), "r"(src_bytes)
               : "memory");
}

__device__ __forceinline__ void st_shared_32(uint32_t dst, uint32_t v) {
  asm volatile("st.shared.u32 [%0], %1;\n" ::"r"(dst), "r"(v) : "memory");
}

__device__ __forceinline__ uint32_t ld_shared_32(uint32_t src) {
  uint32_t v;
  asm volatile("ld.shared.u32 %0, [%1];\n" : "=r"(v) : "r"(src));
  return v;
}

template <typename T>
__device__ __forceinline__ void mma_sp(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[4],
                                       uint32_t e) {
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    asm volatile(
        "mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9, %10, %11}, {%0, %1, %2, %3}, %12, 0x0;\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]),
          "r"(e));
  } else {
    asm volatile(
        "mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9, %10, %11}, {%0, %1, %2, %3}, %12, 0x0;\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]),
          "r"(e));
  }
}

// Metadata of rows past N and of columns past K: every group keeps positions 0 and 1. Any valid
// nibble would do (their values and x are zero); zero nibbles are invalid for mma.sp.
constexpr uint32_t kNeutralMeta = 0x4444u;

// Stages K tile [k0, k0 + kBK) of the block's values, x and metadata tiles.
// kAsync (K % 32 == 0, x and values 16-byte aligned, meta 4-byte aligned): all by cp.async, zero-filled
// outside the matrices. Chunks are whole: a 16-byte values chunk covers 16 columns and an x chunk 8,
// and K % 16 == 0. Metadata words of rows past N are read from row N - 1 (their values are zero, and
// the metadata must stay valid); slices past K are zero-filled and skipped by the MMA loop.
// Otherwise the elements are gathered one by one and stored synchronously, which the pipeline's
// barriers order as well, with kNeutralMeta outside the matrix.
template <class Cfg, bool kAsync>
__device__ __forceinline__ void sp24_load_stage(uint32_t stage, const Sp24MmArgs& a, int64_t m0,
                                                int64_t n0, int64_t k0) {
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t M = a.M;
  const int64_t N = a.N;
  const int64_t K = a.K;
  const uint32_t tile_v = stage;
  const uint32_t tile_x = stage + Cfg::kVBytes;
  const uint32_t tile_m = tile_x + Cfg::kXBytes;

  stage_tile<Cfg::kBN, Cfg::kVChunks, Cfg::kThreads>(
      tile_v, kAsync, [&](int r, int c, bool& valid) {
        const int64_t gn = n0 + r;
        const int64_t gk = k0 + 16 * c;
        valid = gn < N && gk < K;
        return a.values + (valid ? gn * (K / 2) + gk / 2 : 0);
      });
  stage_tile<Cfg::kBM, Cfg::kXChunks, Cfg::kThreads>(
      tile_x, kAsync, [&](int r, int c, bool& valid) {
        const int64_t gm = m0 + r;
        const int64_t gk = k0 + 8 * c;
        valid = gm < M && gk < K;
        return a.x + (valid ? gm * K + gk : 0);
      });

  constexpr int kMTotal = Cfg::kBN * Cfg::kSlices;
#pragma unroll
  for (int i = 0; i < ceil_div(kMTotal, Cfg::kThreads); ++i) {
    const int id = tid + i * Cfg::kThreads;
    if (kMTotal % Cfg::kThreads == 0 || id < kMTotal) {
      const int r = id / Cfg::kSlices;
      const int s = id % Cfg::kSlices;
      const int64_t gk = k0 + 32 * s;
      const uint32_t dst = tile_m + static_cast<uint32_t>(id) * 4;
      if constexpr (kAsync) {
        const int64_t gn = n0 + r < N ? n0 + r : N - 1;
        const bool valid = gk < K;
        cp_async_4(dst, a.meta + (valid ? gn * (K / 16) + gk / 16 : 0), valid);
      } else {
        const int64_t gn = n0 + r;
        uint32_t lo = kNeutralMeta;
        uint32_t hi = kNeutralMeta;
        if (gn < N) {
          const uint16_t* row = a.meta + gn * (K / 16);
          if (gk < K) lo = row[gk / 16];
          if (gk + 16 < K) hi = row[gk / 16 + 1];
        }
        st_shared_32(dst, lo | (hi << 16));
      }
    }
  }
}

template <class Cfg, typename T, bool kAsync>
__global__ void __launch_bounds__(Cfg::kThreads, Cfg::kMinBlocks)
    sparse24_mm_kernel(const Sp24MmArgs args) {
  extern __shared__ __align__(128) uint8_t smem[];
  const uint32_t smem_base = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const int64_t M = args.M;
  const int64_t N = args.N;
  const int64_t K = args.K;

  // Blocks walk kGroupM tile rows (of x) at a time, so that blocks running together share tiles in L2.
  constexpr int64_t kGroupM = 8;
  const int64_t tiles_m = ceil_div<int64_t>(M, Cfg::kBM);
  const int64_t tiles_n = ceil_div<int64_t>(N, Cfg::kBN);
  const int64_t pid = blockIdx.x;
  const int64_t group_blocks = kGroupM * tiles_n;
  const int64_t first_tile_m = pid / group_blocks * kGroupM;
  const int64_t group_rows = tiles_m - first_tile_m < kGroupM ? tiles_m - first_tile_m : kGroupM;
  const int64_t in_group = pid % group_blocks;
  const int64_t m0 = (first_tile_m + in_group % group_rows) * Cfg::kBM;
  const int64_t n0 = in_group / group_rows * Cfg::kBN;

  const auto [lane, wm, wn, wk] = warp_position<Cfg>();
  float acc[Cfg::kMI][Cfg::kNI][4];
  zero_accumulators(acc);

  const int k_tiles = static_cast<int>(ceil_div<int64_t>(K, Cfg::kBK));
#pragma unroll
  for (int s = 0; s < Cfg::kStages - 1; ++s) {
    if (s < k_tiles) {
      sp24_load_stage<Cfg, kAsync>(smem_base + s * Cfg::kStageBytes, args, m0, n0,
                                   static_cast<int64_t>(s) * Cfg::kBK);
    }
    cp_async_commit();
  }

  // Lane roles of the fragment loads (see the comment above Sp24Tile). A: lanes 0-15 give rows 0-15
  // of chunk 2 ks (kept values 0-7 of the slice), lanes 16-31 rows 0-15 of chunk 2 ks + 1; matrices
  // land in a0a1, a2a3, a4a5, a6a7. B: lanes 8j .. 8j + 7 give the 8 x rows of chunk 4 ks + j.
  const SwizzledRow<Cfg::kVChunks> a_row(wn * Cfg::kWN + (lane & 15));
  const int a_chunk = lane >> 4;
  const SwizzledRow<Cfg::kXChunks> b_row(wm * Cfg::kWM + (lane & 7));
  const int b_chunk = lane >> 3;
  const int meta_row = wn * Cfg::kWN + (lane >> 2);
  const uint32_t meta_select = (lane & 1) ? 0x7632u : 0x5410u;

  // Before iteration kt, kStages - 1 + kt groups were committed and group g holds tile g; waiting
  // until at most kStages - 2 are pending means tile kt has landed. The barrier then also proves
  // that every warp is done with the stage consumed in iteration kt - 1, which is refilled next.
  for (int kt = 0; kt < k_tiles; ++kt) {
    cp_async_wait<Cfg::kStages - 2>();
    __syncthreads();
    const int next = kt + Cfg::kStages - 1;
    if (next < k_tiles) {
      sp24_load_stage<Cfg, kAsync>(smem_base + (next % Cfg::kStages) * Cfg::kStageBytes, args, m0,
                                   n0, static_cast<int64_t>(next) * Cfg::kBK);
    }
    cp_async_commit();

    const int64_t k0 = static_cast<int64_t>(kt) * Cfg::kBK;
    const uint32_t tile_v = smem_base + (kt % Cfg::kStages) * Cfg::kStageBytes;
    const uint32_t tile_x = tile_v + Cfg::kVBytes;
    const uint32_t tile_m = tile_x + Cfg::kXBytes;
#pragma unroll
    for (int j = 0; j < Cfg::kSlicesPerWarp; ++j) {
      const int ks = wk + j * Cfg::kWarpsK;
      // Slices past K hold no data and (on the cp.async path) zero, i.e. invalid, metadata.
      if (k0 + 32 * ks >= K) break;
      uint32_t af[Cfg::kMI][4];
      uint32_t ef[Cfg::kMI];
#pragma unroll
      for (int mi = 0; mi < Cfg::kMI; ++mi) {
        ldmatrix_x4(af[mi], tile_v + a_row.at(16 * mi, 2 * ks + a_chunk));
        const int row = meta_row + 16 * mi;
        const uint32_t top = ld_shared_32(tile_m + (row * Cfg::kSlices + ks) * 4);
        const uint32_t bottom = ld_shared_32(tile_m + ((row + 8) * Cfg::kSlices + ks) * 4);
        ef[mi] = __byte_perm(top, bottom, meta_select);
      }
#pragma unroll
      for (int ni = 0; ni < Cfg::kNI; ++ni) {
        uint32_t bf[4];
        ldmatrix_x4(bf, tile_x + b_row.at(8 * ni, 4 * ks + b_chunk));
#pragma unroll
        for (int mi = 0; mi < Cfg::kMI; ++mi) mma_sp<T>(acc[mi][ni], af[mi], bf, ef[mi]);
      }
    }
  }

  mma_tile_epilogue<Cfg, T>(args, m0, n0, acc, smem);
}

template <class Cfg, typename T>
cudaError_t launch_sparse24_tiles(const Sp24MmArgs& args, cudaStream_t stream) {
  const bool async = args.K % 32 == 0 && is_aligned(args.x, 16) && is_aligned(args.values, 16) &&
                     is_aligned(args.meta, 4);
  const auto kernel =
      async ? sparse24_mm_kernel<Cfg, T, true> : sparse24_mm_kernel<Cfg, T, false>;
  const cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes);
  if (err != cudaSuccess) return err;
  const int64_t blocks =
      ceil_div<int64_t>(args.M, Cfg::kBM) * ceil_div<int64_t>(args.N, Cfg::kBN);
  if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
  kernel<<<dim3(static_cast<unsigned>(blocks)), dim3(Cfg::kThreads), Cfg::kSmemBytes, stream>>>(
      args);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_sparse24_tensor_cores(const Sp24MmArgs& args, cudaStream_t stream) {
  if (args.M <= Sp24Decode::kBM) return launch_sparse24_tiles<Sp24Decode, T>(args, stream);
  // Large tiles only when they fill every SM at least once (otherwise smaller ones give more blocks),
  // and where a block may have their shared memory (not on sm_86 / sm_89, which run the sm_80 code
  // with at most 99 KiB per block).
  int device = 0;
  int sms = 0;
  int smem_per_block = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err == cudaSuccess) {
    err = cudaDeviceGetAttribute(&smem_per_block, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  }
  if (err != cudaSuccess) return err;
  const int64_t large_blocks =
      ceil_div<int64_t>(args.M, Sp24Large::kBM) * ceil_div<int64_t>(args.N, Sp24Large::kBN);
  if (large_blocks >= sms && smem_per_block >= Sp24Large::kSmemBytes) {
    return launch_sparse24_tiles<Sp24Large, T>(args, stream);
  }
  return launch_sparse24_tiles<Sp24Medium, T>(args, stream);
}

// ---------------------------------------------------------------------------------------------------
// sparse24_mm for float32 on the CUDA cores (no tensor cores: mma.sp has no float32 form). A block of
// 16 x 16 threads computes a (16 kRows) x 64 tile of out, each thread kRows x 4 outputs with rows
// ty + 16 a and columns tx + 16 c; per 32-column K tile, x is staged transposed and the weight
// decompressed (zeros written out) into shared memory.

constexpr int kSimtThreads = 256;
constexpr int kSimtBN = 64;
constexpr int kSimtBK = 32;

template <int kRows>
__global__ void __launch_bounds__(kSimtThreads)
    sparse24_mm_simt_kernel(const float* __restrict__ x, const float* __restrict__ values,
                            const uint16_t* __restrict__ meta, const void* bias,
                            SparseDtype bias_dtype, float* __restrict__ out, int64_t M, int64_t N,
                            int64_t K) {
  constexpr int kBM = 16 * kRows;
  // +1 column: the transposing stores of a warp (32 consecutive k of a row of x, or 8 groups x 4
  // rows of w) hit distinct banks.
  __shared__ float xs[kSimtBK][kBM + 1];
  __shared__ float ws[kSimtBK][kSimtBN + 1];
  const int tid = static_cast<int>(threadIdx.x);
  const int tx = tid % 16;
  const int ty = tid / 16;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kSimtBN;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kBM;

  float acc[kRows][4];
#pragma unroll
  for (int a = 0; a < kRows; ++a)
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[a][c] = 0.0f;

  for (int64_t k0 = 0; k0 < K; k0 += kSimtBK) {
    // kSimtThreads is a multiple of kSimtBK and of kSimtBK / 4: each thread keeps its column (group).
#pragma unroll
    for (int i = 0; i < kBM * kSimtBK / kSimtThreads; ++i) {
      const int r = tid / kSimtBK + i * (kSimtThreads / kSimtBK);
      const int c = tid % kSimtBK;
      const int64_t gm = m0 + r;
      const int64_t gk = k0 + c;
      xs[c][r] = gm < M && gk < K ? x[gm * K + gk] : 0.0f;
    }
    // 64 rows x 8 groups of 4 columns.
#pragma unroll
    for (int i = 0; i < kSimtBN * (kSimtBK / 4) / kSimtThreads; ++i) {
      const int r = tid / (kSimtBK / 4) + i * (kSimtThreads / (kSimtBK / 4));
      const int q = tid % (kSimtBK / 4);
      const int64_t gn = n0 + r;
      const int64_t group = k0 / 4 + q;
      float v0 = 0.0f;
      float v1 = 0.0f;
      uint32_t i0 = 0;
      uint32_t i1 = 1;
      if (gn < N && 4 * group < K) {
        v0 = values[gn * (K / 2) + 2 * group];
        v1 = values[gn * (K / 2) + 2 * group + 1];
        const uint32_t nibble =
            (static_cast<uint32_t>(meta[gn * (K / 16) + group / 4]) >> (4 * (group % 4))) & 0xfu;
        i0 = nibble & 3u;
        i1 = nibble >> 2;
      }
#pragma unroll
      for (uint32_t p = 0; p < 4; ++p) ws[4 * q + p][r] = p == i1 ? v1 : (p == i0 ? v0 : 0.0f);
    }
    __syncthreads();
#pragma unroll 8
    for (int k = 0; k < kSimtBK; ++k) {
      float xa[kRows];
      float wc[4];
#pragma unroll
      for (int a = 0; a < kRows; ++a) xa[a] = xs[k][ty + 16 * a];
#pragma unroll
      for (int c = 0; c < 4; ++c) wc[c] = ws[k][tx + 16 * c];
      fma_outer(xa, wc, acc);
    }
    __syncthreads();
  }

#pragma unroll
  for (int c = 0; c < 4; ++c) {
    const int64_t gn = n0 + tx + 16 * c;
    if (gn >= N) continue;
    const float b = bias != nullptr ? load_bias(bias, bias_dtype, gn) : 0.0f;
#pragma unroll
    for (int a = 0; a < kRows; ++a) {
      const int64_t gm = m0 + ty + 16 * a;
      if (gm < M) out[gm * N + gn] = ieee_add(acc[a][c], b);
    }
  }
}

cudaError_t launch_sparse24_simt(const float* x, const float* values, const uint16_t* meta,
                                 const void* bias, SparseDtype bias_dtype, float* out, int64_t M,
                                 int64_t N, int64_t K, cudaStream_t stream) {
  const int64_t tiles_n = ceil_div<int64_t>(N, kSimtBN);
  const int rows = M <= 16 ? 1 : 4;
  const int64_t tiles_m = ceil_div<int64_t>(M, 16 * rows);
  if (tiles_n > 0x7fffffff || tiles_m > 65535) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(tiles_n), static_cast<unsigned>(tiles_m));
  if (rows == 1) {
    sparse24_mm_simt_kernel<1>
        <<<grid, kSimtThreads, 0, stream>>>(x, values, meta, bias, bias_dtype, out, M, N, K);
  } else {
    sparse24_mm_simt_kernel<4>
        <<<grid, kSimtThreads, 0, stream>>>(x, values, meta, bias, bias_dtype, out, M, N, K);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_sparse24_compress(const void* w, SparseDtype dtype, void* values, int16_t* meta,
                                     int64_t N, int64_t K, cudaStream_t stream) {
  if (N < 0 || K <= 0 || K % 16 != 0) return cudaErrorInvalidValue;
  if (N == 0) return cudaSuccess;
  const int64_t words = N * (K / 16);
  if (ceil_div<int64_t>(words, kCompressThreads) > 0x7fffffff) return cudaErrorInvalidValue;
  switch (dtype) {
    case SparseDtype::kFloat32:
      return launch_compress_typed<uint32_t>(w, values, meta, words, stream);
    case SparseDtype::kFloat16:
    case SparseDtype::kBFloat16:
      return launch_compress_typed<uint16_t>(w, values, meta, words, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

cudaError_t launch_sparse24_mm(const void* x, const void* values, const int16_t* meta,
                               const void* bias, SparseDtype bias_dtype, void* out,
                               SparseDtype dtype, int64_t M, int64_t N, int64_t K,
                               cudaStream_t stream) {
  if (M < 0 || N < 0 || K <= 0 || K % 16 != 0 || K > 0x7fffffff - 256) {
    return cudaErrorInvalidValue;
  }
  if ((bias == nullptr) != (bias_dtype == SparseDtype::kNone)) return cudaErrorInvalidValue;
  if (M == 0 || N == 0) return cudaSuccess;
  const uint16_t* meta_bits = reinterpret_cast<const uint16_t*>(meta);
  if (dtype == SparseDtype::kFloat32) {
    return launch_sparse24_simt(static_cast<const float*>(x), static_cast<const float*>(values),
                                meta_bits, bias, bias_dtype, static_cast<float*>(out), M, N, K,
                                stream);
  }
  const Sp24MmArgs args{static_cast<const uint16_t*>(x),
                        static_cast<const uint16_t*>(values),
                        meta_bits,
                        bias,
                        out,
                        M,
                        N,
                        K,
                        bias_dtype,
                        N % 8 == 0 && is_aligned(out, 16)};
  switch (dtype) {
    case SparseDtype::kFloat16:
      return launch_sparse24_tensor_cores<__half>(args, stream);
    case SparseDtype::kBFloat16:
      return launch_sparse24_tensor_cores<__nv_bfloat16>(args, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace pycompress
