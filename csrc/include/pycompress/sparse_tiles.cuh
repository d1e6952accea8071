// Device helpers shared by the tensor-core CUDA kernel files (csrc/cuda/sparse24.cu, sparse.cu, lowrank.cu,
// codebook.cu):
// float32 arithmetic and bias loads of the op contracts, the swizzled shared-memory tiles that
// ldmatrix reads, their staging, and the epilogue of the tensor-core tile kernels. Torch-free.
#pragma once

#include <cstdint>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "pycompress/cuda_common.cuh"
#include "pycompress/sparse_cuda.h"

namespace pycompress {

// In PTX for the same reason as ieee_mul (cuda_common.cuh): --use_fast_math would flush subnormals.
__device__ __forceinline__ float ieee_fma(float a, float b, float c) {
  float r;
  asm("fma.rn.f32 %0, %1, %2, %3;" : "=f"(r) : "f"(a), "f"(b), "f"(c));
  return r;
}

// acc += xa (outer) wc: one k step of the FFMA (SIMT) tile kernels, each thread holding R rows by C
// columns of the output tile in registers.
template <int R, int C>
__device__ __forceinline__ void fma_outer(const float (&xa)[R], const float (&wc)[C], float (&acc)[R][C]) {
#pragma unroll
  for (int i = 0; i < R; ++i)
#pragma unroll
    for (int c = 0; c < C; ++c) acc[i][c] = ieee_fma(xa[i], wc[c], acc[i][c]);
}

// An element type as raw bits (Bits), widened exactly to float32.
template <typename T>
struct Element;
template <>
struct Element<float> {
  using Bits = uint32_t;
  __device__ static float to_float(Bits b) { return __uint_as_float(b); }
};
template <>
struct Element<__half> {
  using Bits = uint16_t;
  __device__ static float to_float(Bits b) { return __half2float(__ushort_as_half(b)); }
};
template <>
struct Element<__nv_bfloat16> {
  using Bits = uint16_t;
  __device__ static float to_float(Bits b) { return __uint_as_float(static_cast<uint32_t>(b) << 16); }
};

// bias[i] widened exactly to float32.
__device__ __forceinline__ float load_bias(const void* bias, SparseDtype dtype, int64_t i) {
  switch (dtype) {
    case SparseDtype::kFloat16:
      return __half2float(static_cast<const __half*>(bias)[i]);
    case SparseDtype::kBFloat16:
      return __uint_as_float(
          static_cast<uint32_t>(__bfloat16_as_ushort(static_cast<const __nv_bfloat16*>(bias)[i]))
          << 16);
    default:
      return static_cast<const float*>(bias)[i];
  }
}

// d += a b on the dense tensor cores: mma.sync m16n8k16, float16 or bfloat16 (T) operands, float32
// accumulate. Fragments per lane (lane = 4 g + t), from the PTX ISA's mma.m16n8k16 .f16/.bf16 layouts:
// a0a1 = A row g, columns 2t, 2t + 1; a2a3 = row g + 8; a4a5 = row g, columns 8 + 2t, 9 + 2t; a6a7 =
// row g + 8, same; b0 = B column g, rows 2t, 2t + 1; b1 = rows 8 + 2t, 9 + 2t; d0, d1 = row g, columns
// 2t, 2t + 1; d2, d3 = row g + 8.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                          uint32_t b1) {
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ __half from_float<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Byte offset of 16-byte chunk `chunk` of row `row` in a tile of kChunks-chunk rows. ldmatrix reads
// one chunk of 8 consecutive rows (from a multiple of 8) per phase; XOR-ing the chunk with a function
// of the row spreads those 8 reads over the 8 16-byte bank groups of a 128-byte line. The function is
// the same for rows 8 apart, so a lane's rows row + 8 i share it (SwizzledRow).
template <int kChunks>
__device__ __forceinline__ int swizzle_flip(int row) {
  static_assert(kChunks == 2 || kChunks == 4 || kChunks == 8 || kChunks == 16, "row size");
  constexpr int kRowsPerLine = kChunks >= 8 ? 1 : 8 / kChunks;
  return kChunks >= 8 ? (row & 7) : ((row / kRowsPerLine) & (kChunks - 1));
}

template <int kChunks>
__device__ __forceinline__ uint32_t tile_offset(int row, int chunk) {
  return static_cast<uint32_t>(row * kChunks * 16 + ((chunk ^ swizzle_flip<kChunks>(row)) << 4));
}

template <int kChunks>
struct SwizzledRow {
  uint32_t base;  // byte offset of the row
  int flip;
  __device__ __forceinline__ SwizzledRow(int row)
      : base(static_cast<uint32_t>(row * kChunks * 16)), flip(swizzle_flip<kChunks>(row)) {}
  // Row row + rows_below (a multiple of 8), chunk `chunk`.
  __device__ __forceinline__ uint32_t at(int rows_below, int chunk) const {
    return base + static_cast<uint32_t>(rows_below * kChunks * 16 + ((chunk ^ flip) << 4));
  }
};

// Eight consecutive 16-bit elements (src[0..7] where in range), packed for a 16-byte shared store.
__device__ __forceinline__ void gather8(uint32_t (&w)[4], const uint16_t* src, bool valid) {
#pragma unroll
  for (int e = 0; e < 4; ++e) w[e] = 0u;
  if (valid) {
#pragma unroll
    for (int e = 0; e < 8; ++e) w[e >> 1] |= static_cast<uint32_t>(src[e]) << (16 * (e & 1));
  }
}

// 16 bytes (zeros when !valid) from global to shared memory: by cp.async when `async` (src 16-byte
// aligned), otherwise gathered and stored synchronously, which the pipelines' barriers order as well.
__device__ __forceinline__ void copy16(uint32_t dst, const uint16_t* src, bool valid, bool async) {
  if (async) {
    cp_async_16(dst, src, valid);
  } else {
    uint32_t w[4];
    gather8(w, src, valid);
    st_shared_16(dst, w);
  }
}

// Stages a swizzled tile of kRows rows of kChunks 16-byte chunks with the block's kThreads threads.
// source(r, c, valid) returns the global address of chunk c of row r and sets valid to false where
// the chunk lies outside the matrix (it is then zero-filled).
template <int kRows, int kChunks, int kThreads, class Source>
__device__ __forceinline__ void stage_tile(uint32_t tile, bool async, Source source) {
  constexpr int kTotal = kRows * kChunks;
  const int tid = static_cast<int>(threadIdx.x);
#pragma unroll
  for (int i = 0; i < ceil_div(kTotal, kThreads); ++i) {
    const int id = tid + i * kThreads;
    if (kTotal % kThreads == 0 || id < kTotal) {
      const int r = id / kChunks;
      const int c = id % kChunks;
      bool valid = true;
      const uint16_t* src = source(r, c, valid);
      copy16(tile + tile_offset<kChunks>(r, c), src, valid, async);
    }
  }
}

// Geometry of the tensor-core tile kernels: a kBM (rows of x) x kBN (weight rows) output tile, warps
// kWarpsM x kWarpsN over it and kWarpsK over K, each warp kMI x kNI MMA tiles (m16 over weight rows,
// n8 over rows of x). The epilogue reuses the pipeline's shared memory for the K-split partial sums
// (kRedBytes) followed by the output tile (kOutBytes).
template <int kBM_, int kBN_, int kWarpsM_, int kWarpsN_, int kWarpsK_>
struct MmaTile {
  static constexpr int kBM = kBM_;
  static constexpr int kBN = kBN_;
  static constexpr int kWarpsM = kWarpsM_;
  static constexpr int kWarpsN = kWarpsN_;
  static constexpr int kWarpsK = kWarpsK_;
  static constexpr int kThreads = 32 * kWarpsM * kWarpsN * kWarpsK;
  static constexpr int kWN = kBN / kWarpsN;  // weight rows per warp
  static constexpr int kWM = kBM / kWarpsM;  // x rows per warp
  static constexpr int kMI = kWN / 16;       // m16 tiles per warp
  static constexpr int kNI = kWM / 8;        // n8 tiles per warp
  static constexpr int kAccPerLane = kMI * kNI * 4;
  static constexpr int kRedBytes = (kWarpsK - 1) * kWarpsM * kWarpsN * kAccPerLane * 32 * 4;
  // Staged output rows are padded by 8 elements: the rows 2t (t = 0..3) one store instruction writes
  // then start on different banks, and 16-byte row segments stay aligned.
  static constexpr int kOutStride = kBN + 8;
  static constexpr int kOutBytes = kBM * kOutStride * 2;

  // Dynamic shared memory of a kernel whose pipeline takes pipe_bytes.
  static constexpr int smem_bytes(int pipe_bytes) {
    return pipe_bytes > kRedBytes + kOutBytes ? pipe_bytes : kRedBytes + kOutBytes;
  }

  static_assert(kWN % 16 == 0 && kWM % 8 == 0, "warp tiles are whole m16 x n8 MMA tiles");
};

// Position of the calling thread's warp in a tile kernel's block (Cfg: an MmaTile), and its lane.
struct WarpPosition {
  int lane;
  int wm;
  int wn;
  int wk;
};

template <class Cfg>
__device__ __forceinline__ WarpPosition warp_position() {
  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid >> 5;
  return {tid & 31, warp % Cfg::kWarpsM, (warp / Cfg::kWarpsM) % Cfg::kWarpsN,
          warp / (Cfg::kWarpsM * Cfg::kWarpsN)};
}

template <int kMI, int kNI>
__device__ __forceinline__ void zero_accumulators(float (&acc)[kMI][kNI][4]) {
#pragma unroll
  for (int mi = 0; mi < kMI; ++mi)
#pragma unroll
    for (int ni = 0; ni < kNI; ++ni)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[mi][ni][j] = 0.0f;
}

// Epilogue of the tensor-core tile kernels (Cfg: an MmaTile). The accumulators `acc` follow the mma D
// layout (lane = 4 g + t: d0, d1 = weight row g, x rows 2t and 2t + 1; d2, d3 = weight row g + 8).
// The K-split partial sums meet in `smem`, the bias is added in float32, the sum cast to T once, and
// out written through the staged output tile in 16-byte row segments (whole vectors when
// args.vector_store).
template <class Cfg, typename T, class Args>
__device__ __forceinline__ void mma_tile_epilogue(const Args& args, int64_t m0, int64_t n0,
                                                  float (&acc)[Cfg::kMI][Cfg::kNI][4],
                                                  uint8_t* smem) {
  const int64_t M = args.M;
  const int64_t N = args.N;
  const int tid = static_cast<int>(threadIdx.x);
  const auto [lane, wm, wn, wk] = warp_position<Cfg>();

  cp_async_wait<0>();
  __syncthreads();
  if constexpr (Cfg::kWarpsK > 1) {
    float* red = reinterpret_cast<float*>(smem);
    // Partial sums as [K warp - 1][warp position][accumulator][lane]: lanes write consecutive words.
    const int position = wn * Cfg::kWarpsM + wm;
    constexpr int kPositions = Cfg::kWarpsM * Cfg::kWarpsN;
    if (wk > 0) {
      float* dst = red + ((wk - 1) * kPositions + position) * Cfg::kAccPerLane * 32 + lane;
#pragma unroll
      for (int mi = 0; mi < Cfg::kMI; ++mi)
#pragma unroll
        for (int ni = 0; ni < Cfg::kNI; ++ni)
#pragma unroll
          for (int j = 0; j < 4; ++j) dst[((mi * Cfg::kNI + ni) * 4 + j) * 32] = acc[mi][ni][j];
    }
    __syncthreads();
    if (wk == 0) {
#pragma unroll
      for (int other = 0; other < Cfg::kWarpsK - 1; ++other) {
        const float* src = red + (other * kPositions + position) * Cfg::kAccPerLane * 32 + lane;
#pragma unroll
        for (int mi = 0; mi < Cfg::kMI; ++mi)
#pragma unroll
          for (int ni = 0; ni < Cfg::kNI; ++ni)
#pragma unroll
            for (int j = 0; j < 4; ++j) {
              acc[mi][ni][j] = ieee_add(acc[mi][ni][j], src[((mi * Cfg::kNI + ni) * 4 + j) * 32]);
            }
      }
    }
  }

  T* staged = reinterpret_cast<T*>(smem + Cfg::kRedBytes);
  if (wk == 0) {
    const int g = lane >> 2;
    const int t = lane & 3;
#pragma unroll
    for (int mi = 0; mi < Cfg::kMI; ++mi) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = wn * Cfg::kWN + 16 * mi + 8 * h + g;  // weight row in the tile
        const int64_t gn = n0 + row;
        const float b =
            args.bias != nullptr && gn < N ? load_bias(args.bias, args.bias_dtype, gn) : 0.0f;
#pragma unroll
        for (int ni = 0; ni < Cfg::kNI; ++ni) {
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            const int xr = wm * Cfg::kWM + 8 * ni + 2 * t + c;  // x row in the tile
            staged[xr * Cfg::kOutStride + row] = from_float<T>(ieee_add(acc[mi][ni][2 * h + c], b));
          }
        }
      }
    }
  }
  __syncthreads();

  T* __restrict__ out = static_cast<T*>(args.out);
  constexpr int kSegments = Cfg::kBN / 8;  // 16-byte segments per output row of the tile
#pragma unroll
  for (int i = 0; i < ceil_div(Cfg::kBM * kSegments, Cfg::kThreads); ++i) {
    const int id = tid + i * Cfg::kThreads;
    if (id >= Cfg::kBM * kSegments) break;
    const int r = id / kSegments;
    const int c = id % kSegments;
    const int64_t gm = m0 + r;
    const int64_t gn = n0 + 8 * c;
    if (gm >= M || gn >= N) continue;
    const T* src = staged + r * Cfg::kOutStride + 8 * c;
    T* dst = out + gm * N + gn;
    if (args.vector_store) {
      *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        if (gn + e < N) dst[e] = src[e];
      }
    }
  }
}

}  // namespace pycompress
