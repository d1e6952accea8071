// CUDA kernels of the codebook GEMM: weights are 4-bit or 8-bit indices into per-tensor or
// per-output-channel codebooks, decoded on chip. A decode kernel on the CUDA cores for small M (and
// float32), and a tensor-core tile kernel (mma.sync m16n8k16, f32 accumulate) for float16 / bfloat16
// at larger M, which decodes weight tiles into shared memory.
//
// EXPERIMENTAL: these kernels have been compiled (sm_80, sm_90a) and their SASS checked, but they have
// not yet run on a GPU. The backend registry marks the CUDA backend experimental until its tests pass
// on real hardware.
//
// Contract: csrc/include/pycompress/codebook_cuda.h and pycompress/ops/codebook.py (the reference).
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "pycompress/codebook_cuda.h"
#include "pycompress/cuda_common.cuh"
#include "pycompress/sparse_tiles.cuh"

namespace pycompress {
namespace {

constexpr int kThreads = 256;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int64_t kMaxGridY = 65535;

// ---------------------------------------------------------------------------------------------------
// Decode kernel (M <= 16, or float32 x): memory bound on idx, which every block streams exactly once
// for its kMT rows of x.
//
// A block owns kBlockRows = 16 output channels. Its 8 warps are kWarpsN = 2 row groups x kWarpsK = 4
// slices of K (split-K across warps); a warp's lanes are 4 groups of 8, group j holding rows
// 8 wn + 4 rr + j (rr = 0, 1) and lane l8 of it, like the same lane of the other groups, the same
// stretch of K. Each lane loads whole 16-byte units of idx (32 weights at 4 bits, 16 at 8 bits) of its
// two rows, kUnroll units per row in flight, looks the weights up in the block's codebook rows in
// shared memory (the 16-entry tables of the 4 rows a warp decodes at once occupy 4 x 32 bytes, all
// banks once, for 16-bit dtypes), and multiplies them with x from shared memory in float32. The lanes'
// partial sums meet by shuffles within the group of 8, the warps' in shared memory.
// x is staged per super-chunk of Ks columns (all kMT rows); its 16-byte chunks are permuted within
// groups of 8 so that the 8 lanes of a group, which read chunks U apart (U: chunks per unit), hit
// 8 distinct bank groups (the 4 groups of a warp read the same addresses, which broadcast).
// Rows whose idx rows are not whole, aligned units (K not a multiple of the unit) are read bytewise.

constexpr int kWarpsK = 4;
constexpr int kWarpsN = 2;
constexpr int kGroupLanes = 8;
constexpr int kRowsPerLane = 2;
constexpr int kRowsPerWarp = 4 * kRowsPerLane;
constexpr int kBlockRows = kWarpsN * kRowsPerWarp;
constexpr int kKLanes = kWarpsK * kGroupLanes;  // lanes of a block over the K of one row
constexpr int kXStageBytes = 24576;

static_assert(kWarpsK * kWarpsN * 32 == kThreads, "8 warps");

template <typename T, int kBits, int kMT>
struct Decode {
  using Bits = typename Element<T>::Bits;
  static constexpr int kC = 1 << kBits;            // codebook entries
  static constexpr int kPerUnit = 128 / kBits;     // weights per 16-byte unit of idx
  static constexpr int kPerByte = 8 / kBits;       // weights per byte of idx
  static constexpr int kPerChunk = 16 / sizeof(T);  // elements of x per 16-byte chunk
  static constexpr int kU = kPerUnit / kPerChunk;   // chunks of x per unit of idx
  // Units per row and lane in flight: 64 weights (more makes the 4-bit kernels spill).
  static constexpr int kUnroll = 64 / kPerUnit;
  // Columns of x per super-chunk: whole groups of 8 chunks (the permutation's span) within the budget.
  static constexpr int kKs = kXStageBytes / (kMT * static_cast<int>(sizeof(T))) / 64 * 64;
  static constexpr int kRowBytes = kKs * static_cast<int>(sizeof(T));

  static_assert(kKs >= kPerUnit && kKs % (8 * kPerChunk) == 0, "a super-chunk holds whole units");
  static_assert(kU == 2 || kU == 4 || kU == 8, "chunk permutation");
};

// Position of 16-byte chunk c of a staged row of x: c ^ ((c / 8) % U) stays within c's group of 8.
// Lane l8 of a group reads chunks U (l8 + 8 i) + q at once; those land on 8 distinct positions mod 8.
template <int kU>
__device__ __forceinline__ int x_chunk_position(int c) {
  return c ^ ((c >> 3) & (kU - 1));
}

struct DecodeArgs {
  const void* x;         // [M, K]
  const uint8_t* idx;    // [N, idx_cols]
  const void* codebook;  // [G, C]
  const void* bias;
  void* out;
  int64_t M;
  int64_t N;
  int64_t K;
  int64_t idx_cols;
  int64_t m_offset;  // first row of x of the launch (grids are split past 65535 blocks in y)
  bool per_channel;
  bool x_vec;    // x 16-byte aligned with rows of whole 16-byte chunks: staged by cp.async
  bool idx_vec;  // idx 16-byte aligned and K a multiple of the unit: idx read in 16-byte units
  SparseDtype bias_dtype;
};

// Weights 8 s .. 8 s + 7 of a unit (as 4 words), looked up in `table` and widened to float32.
template <typename T, int kBits>
__device__ __forceinline__ void decode8(const uint32_t (&words)[4], int s,
                                        const typename Element<T>::Bits* table, float (&w)[8]) {
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    uint32_t index;
    if constexpr (kBits == 4) {
      index = (words[s] >> (4 * e)) & 0xfu;
    } else {
      index = (words[2 * s + e / 4] >> (8 * (e % 4))) & 0xffu;
    }
    w[e] = Element<T>::to_float(table[index]);
  }
}

// Units u0 + kKLanes i (i < kUnroll) of the lane's rows; zeros past u_end.
template <int kUnroll>
__device__ __forceinline__ void load_units(uint4 (&units)[kUnroll][kRowsPerLane],
                                           const uint8_t* const (&idx_row)[kRowsPerLane], int64_t u0,
                                           int64_t u_end) {
#pragma unroll
  for (int i = 0; i < kUnroll; ++i) {
    const int64_t u = u0 + i * kKLanes;
#pragma unroll
    for (int rr = 0; rr < kRowsPerLane; ++rr) {
      units[i][rr] = u < u_end ? __ldg(reinterpret_cast<const uint4*>(idx_row[rr]) + u)
                               : make_uint4(0u, 0u, 0u, 0u);
    }
  }
}

template <typename T, int kBits, int kMT>
__global__ void __launch_bounds__(kThreads, 1) codebook_decode_kernel(const DecodeArgs args) {
  using D = Decode<T, kBits, kMT>;
  using Bits = typename D::Bits;
  __shared__ __align__(16) uint8_t xs[kMT * D::kRowBytes];
  __shared__ Bits tables[kBlockRows * D::kC];
  __shared__ float red[kWarpsK * kBlockRows * kMT];

  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid >> 5;
  const int lane = tid & 31;
  const int wk = warp % kWarpsK;
  const int wn = warp / kWarpsK;
  const int group = lane / kGroupLanes;
  const int l8 = lane % kGroupLanes;
  const int k_lane = wk * kGroupLanes + l8;
  const int64_t M = args.M;
  const int64_t N = args.N;
  const int64_t K = args.K;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kBlockRows;
  const int64_t m0 = args.m_offset + static_cast<int64_t>(blockIdx.y) * kMT;
  const int64_t m_rows = M - m0 < kMT ? M - m0 : kMT;

  // The codebook rows of the block's channels (rows past N: zeros), or the one shared table.
  const Bits* __restrict__ codebook = static_cast<const Bits*>(args.codebook);
  const int table_entries = args.per_channel ? kBlockRows * D::kC : D::kC;
  for (int i = tid; i < table_entries; i += kThreads) {
    const int64_t row = args.per_channel ? n0 + i / D::kC : 0;
    tables[i] = row < N ? codebook[row * D::kC + i % D::kC] : Bits(0);
  }

  // The lane's rows; rows past N read row N - 1 (keeping loads in bounds) and are never stored.
  int local_row[kRowsPerLane];
  const uint8_t* idx_row[kRowsPerLane];
  const Bits* table[kRowsPerLane];
#pragma unroll
  for (int rr = 0; rr < kRowsPerLane; ++rr) {
    local_row[rr] = wn * kRowsPerWarp + rr * 4 + group;
    const int64_t n = n0 + local_row[rr] < N ? n0 + local_row[rr] : N - 1;
    idx_row[rr] = args.idx + n * args.idx_cols;
    table[rr] = tables + (args.per_channel ? local_row[rr] * D::kC : 0);
  }

  float acc[kRowsPerLane][kMT];
#pragma unroll
  for (int rr = 0; rr < kRowsPerLane; ++rr)
#pragma unroll
    for (int m = 0; m < kMT; ++m) acc[rr][m] = 0.0f;

  const uint32_t xs_base = static_cast<uint32_t>(__cvta_generic_to_shared(xs));
  const Bits* __restrict__ x = static_cast<const Bits*>(args.x);
  for (int64_t s0 = 0; s0 < K; s0 += D::kKs) {
    if (s0 > 0) __syncthreads();  // every warp is done with the previous super-chunk
    constexpr int kRowChunks = D::kKs / D::kPerChunk;
    if (args.x_vec) {
      for (int i = tid; i < kMT * kRowChunks; i += kThreads) {
        const int m = i / kRowChunks;
        const int c = i % kRowChunks;
        const int64_t gk = s0 + static_cast<int64_t>(c) * D::kPerChunk;
        const bool valid = m < m_rows && gk < K;
        cp_async_16(xs_base + m * D::kRowBytes + x_chunk_position<D::kU>(c) * 16,
                    x + (valid ? (m0 + m) * K + gk : 0), valid);
      }
      cp_async_commit();
    } else {
      for (int i = tid; i < kMT * D::kKs; i += kThreads) {
        const int m = i / D::kKs;
        const int k = i % D::kKs;
        const int64_t gk = s0 + k;
        const int offset = m * D::kRowBytes + x_chunk_position<D::kU>(k / D::kPerChunk) * 16 +
                           (k % D::kPerChunk) * static_cast<int>(sizeof(Bits));
        *reinterpret_cast<Bits*>(xs + offset) = m < m_rows && gk < K ? x[(m0 + m) * K + gk] : Bits(0);
      }
    }
    const int64_t s1 = s0 + D::kKs < K ? s0 + D::kKs : K;

    if (args.idx_vec) {
      const int64_t u_begin = s0 / D::kPerUnit + k_lane;
      const int64_t u_end = s1 / D::kPerUnit;  // K % kPerUnit == 0 on this path
      constexpr int kUnroll = D::kUnroll;
      uint4 units[kUnroll][kRowsPerLane];
      // The first units are in flight while the super-chunk of x lands.
      load_units(units, idx_row, u_begin, u_end);
      cp_async_wait<0>();
      __syncthreads();
      for (int64_t u0 = u_begin; u0 < u_end; u0 += kKLanes * kUnroll) {
        // The next units are in flight while these are multiplied.
        uint4 next[kUnroll][kRowsPerLane];
        const bool more = u0 + kKLanes * kUnroll < u_end;
        if (more) load_units(next, idx_row, u0 + kKLanes * kUnroll, u_end);
#pragma unroll
        for (int i = 0; i < kUnroll; ++i) {
          const int64_t u = u0 + i * kKLanes;
          if (u >= u_end) break;
          const int c0 = static_cast<int>(u * D::kPerUnit - s0) / D::kPerChunk;
#pragma unroll
          for (int s = 0; s < D::kPerUnit / 8; ++s) {
            float w[kRowsPerLane][8];
#pragma unroll
            for (int rr = 0; rr < kRowsPerLane; ++rr) {
              const uint32_t words[4] = {units[i][rr].x, units[i][rr].y, units[i][rr].z,
                                         units[i][rr].w};
              decode8<T, kBits>(words, s, table[rr], w[rr]);
            }
#pragma unroll
            for (int m = 0; m < kMT; ++m) {
              if (m >= m_rows) break;
              // Columns 8 s .. 8 s + 7 of the unit: 8 / kPerChunk whole chunks.
              float xv[8];
#pragma unroll
              for (int h = 0; h < 8 / D::kPerChunk; ++h) {
                const int c = c0 + s * (8 / D::kPerChunk) + h;
                const uint4 raw = *reinterpret_cast<const uint4*>(
                    xs + m * D::kRowBytes + x_chunk_position<D::kU>(c) * 16);
                const uint32_t rw[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
                for (int e = 0; e < D::kPerChunk; ++e) {
                  if constexpr (sizeof(Bits) == 4) {
                    xv[h * D::kPerChunk + e] = Element<T>::to_float(rw[e]);
                  } else {
                    xv[h * D::kPerChunk + e] =
                        Element<T>::to_float(static_cast<Bits>(rw[e / 2] >> (16 * (e % 2))));
                  }
                }
              }
#pragma unroll
              for (int rr = 0; rr < kRowsPerLane; ++rr)
#pragma unroll
                for (int e = 0; e < 8; ++e) acc[rr][m] = ieee_fma(xv[e], w[rr][e], acc[rr][m]);
            }
          }
        }
        if (more) {
#pragma unroll
          for (int i = 0; i < kUnroll; ++i)
#pragma unroll
            for (int rr = 0; rr < kRowsPerLane; ++rr) units[i][rr] = next[i][rr];
        }
      }
    } else {
      cp_async_wait<0>();
      __syncthreads();
      const int64_t b_begin = s0 / D::kPerByte;
      const int64_t b_end = ceil_div<int64_t>(s1, D::kPerByte);
      for (int64_t b = b_begin + k_lane; b < b_end; b += kKLanes) {
        uint32_t bytes[kRowsPerLane];
#pragma unroll
        for (int rr = 0; rr < kRowsPerLane; ++rr) bytes[rr] = __ldg(idx_row[rr] + b);
#pragma unroll
        for (int e = 0; e < D::kPerByte; ++e) {
          const int64_t k = b * D::kPerByte + e;
          if (k >= s1) break;  // the padding nibble of an odd K is never read
          const int kk = static_cast<int>(k - s0);
          float w[kRowsPerLane];
#pragma unroll
          for (int rr = 0; rr < kRowsPerLane; ++rr) {
            w[rr] = Element<T>::to_float(table[rr][(bytes[rr] >> (kBits * e)) & (D::kC - 1)]);
          }
          const int offset = x_chunk_position<D::kU>(kk / D::kPerChunk) * 16 +
                             (kk % D::kPerChunk) * static_cast<int>(sizeof(Bits));
#pragma unroll
          for (int m = 0; m < kMT; ++m) {
            if (m >= m_rows) break;
            const float xv =
                Element<T>::to_float(*reinterpret_cast<const Bits*>(xs + m * D::kRowBytes + offset));
#pragma unroll
            for (int rr = 0; rr < kRowsPerLane; ++rr) acc[rr][m] = ieee_fma(xv, w[rr], acc[rr][m]);
          }
        }
      }
    }
  }

  // Lanes of a group of 8 differ in the low 3 bits of the lane index.
#pragma unroll
  for (int rr = 0; rr < kRowsPerLane; ++rr)
#pragma unroll
    for (int m = 0; m < kMT; ++m) {
      float v = acc[rr][m];
#pragma unroll
      for (int offset = kGroupLanes / 2; offset > 0; offset >>= 1) {
        v = ieee_add(v, __shfl_xor_sync(kFullMask, v, offset));
      }
      if (l8 == 0) red[(wk * kBlockRows + local_row[rr]) * kMT + m] = v;
    }
  __syncthreads();
  T* __restrict__ out = static_cast<T*>(args.out);
  for (int i = tid; i < kBlockRows * kMT; i += kThreads) {
    const int row = i % kBlockRows;
    const int m = i / kBlockRows;
    const int64_t n = n0 + row;
    if (n >= N || m >= m_rows) continue;
    float v = red[row * kMT + m];
#pragma unroll
    for (int w = 1; w < kWarpsK; ++w) v = ieee_add(v, red[(w * kBlockRows + row) * kMT + m]);
    if (args.bias != nullptr) v = ieee_add(v, load_bias(args.bias, args.bias_dtype, n));
    store_out(out + (m0 + m) * N + n, v);
  }
}

template <typename T, int kBits, int kMT>
cudaError_t launch_decode_tiles(DecodeArgs args, cudaStream_t stream) {
  const int64_t blocks_n = ceil_div<int64_t>(args.N, kBlockRows);
  const int64_t tiles_m = ceil_div<int64_t>(args.M, kMT);
  if (blocks_n > 0x7fffffff) return cudaErrorInvalidValue;
  for (int64_t t = 0; t < tiles_m; t += kMaxGridY) {
    const int64_t count = tiles_m - t < kMaxGridY ? tiles_m - t : kMaxGridY;
    args.m_offset = t * kMT;
    codebook_decode_kernel<T, kBits, kMT>
        <<<dim3(static_cast<unsigned>(blocks_n), static_cast<unsigned>(count)), kThreads, 0,
           stream>>>(args);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

// The smallest row tile covering M (rows of x in a tile cost registers and FMAs even when unused);
// larger M runs tiles of the largest (8 rows for float32, whose x takes twice the shared memory).
template <typename T, int kBits>
cudaError_t launch_decode(const DecodeArgs& args, cudaStream_t stream) {
  if (args.M <= 1) return launch_decode_tiles<T, kBits, 1>(args, stream);
  if (args.M <= 2) return launch_decode_tiles<T, kBits, 2>(args, stream);
  if (args.M <= 4) return launch_decode_tiles<T, kBits, 4>(args, stream);
  if constexpr (sizeof(T) == 4) {
    return launch_decode_tiles<T, kBits, 8>(args, stream);
  } else {
    if (args.M <= 8) return launch_decode_tiles<T, kBits, 8>(args, stream);
    return launch_decode_tiles<T, kBits, 16>(args, stream);
  }
}

// ---------------------------------------------------------------------------------------------------
// Tensor-core tile kernel (float16 / bfloat16, M > 16, K % 8 == 0, x 16-byte aligned): out^T = W x^T
// per 64 (weight rows) x 128 (rows of x) tile, W as the A operand of mma.sync m16n8k16. Per 64-column
// K tile, x is staged by a cp.async ring and W decoded into a double-buffered shared tile: every
// thread loads the indices of 16 weights of one row (tile k + 1, into registers, while tile k is
// multiplied), then looks them up in the block's codebook rows and stores them as two 16-byte chunks.
// Fragment loads and the epilogue are those of the sparse tile kernels (sparse_tiles.cuh).

using CbTile = MmaTile<128, 64, 4, 2, 1>;
constexpr int kCbBK = 64;
constexpr int kCbChunks = kCbBK / 8;  // 16-byte chunks per tile row
constexpr int kCbStages = 3;
constexpr int kCbXBytes = CbTile::kBM * kCbBK * 2;
constexpr int kCbWBytes = CbTile::kBN * kCbBK * 2;
constexpr int kCbTablesOffset = kCbStages * kCbXBytes + 2 * kCbWBytes;

static_assert(CbTile::kThreads == kThreads, "8 warps");
static_assert(CbTile::kBN * kCbBK == 16 * kThreads, "each thread decodes 16 weights of a tile");
static_assert(CbTile::smem_bytes(kCbStages * kCbXBytes) == kCbStages * kCbXBytes,
              "the epilogue fits in the x ring");

struct TileArgs {
  const uint16_t* x;  // [M, K] float16 / bfloat16 bits
  const uint8_t* idx;
  const uint16_t* codebook;
  const void* bias;
  void* out;
  int64_t M;
  int64_t N;
  int64_t K;
  int64_t idx_cols;
  SparseDtype bias_dtype;
  bool per_channel;
  bool idx_vec;       // idx aligned and rows whole vectors of one thread's indices (8 or 16 bytes)
  bool vector_store;  // N % 8 == 0 and out 16-byte aligned
};

// The raw indices of weights k .. k + 15 of a row (bytes in order: 8 at 4 bits, 16 at 8 bits), and
// how many of them lie below K.
struct Indices {
  uint4 raw;
  int valid;
};

template <int kBits>
__device__ __forceinline__ Indices load_indices(const TileArgs& a, int64_t n, int64_t k) {
  Indices ind{make_uint4(0u, 0u, 0u, 0u), 0};
  if (n >= a.N || k >= a.K) return ind;
  ind.valid = a.K - k < 16 ? static_cast<int>(a.K - k) : 16;
  const uint8_t* src = a.idx + n * a.idx_cols + k * kBits / 8;
  if (a.idx_vec && ind.valid == 16) {
    if constexpr (kBits == 4) {
      const uint2 v = __ldg(reinterpret_cast<const uint2*>(src));
      ind.raw.x = v.x;
      ind.raw.y = v.y;
    } else {
      ind.raw = __ldg(reinterpret_cast<const uint4*>(src));
    }
  } else {
    uint32_t w[4] = {0u, 0u, 0u, 0u};
    const int bytes = (ind.valid * kBits + 7) / 8;
#pragma unroll
    for (int b = 0; b < 16 * kBits / 8; ++b) {
      if (b < bytes) w[b / 4] |= static_cast<uint32_t>(__ldg(src + b)) << (8 * (b % 4));
    }
    ind.raw = make_uint4(w[0], w[1], w[2], w[3]);
  }
  return ind;
}

// Looks up the 16 weights (zeros past K) and stores them as chunks 2 part and 2 part + 1 of `row`.
template <int kBits>
__device__ __forceinline__ void decode_store(uint32_t tile, int row, int part, const Indices& ind,
                                             const uint16_t* table) {
  const uint32_t words[4] = {ind.raw.x, ind.raw.y, ind.raw.z, ind.raw.w};
  uint32_t packed[2][4];
#pragma unroll
  for (int e = 0; e < 16; ++e) {
    uint32_t index;
    if constexpr (kBits == 4) {
      index = (words[e / 8] >> (4 * (e % 8))) & 0xfu;
    } else {
      index = (words[e / 4] >> (8 * (e % 4))) & 0xffu;
    }
    const uint32_t bits = e < ind.valid ? table[index] : 0u;
    if (e % 2 == 0) {
      packed[e / 8][(e % 8) / 2] = bits;
    } else {
      packed[e / 8][(e % 8) / 2] |= bits << 16;
    }
  }
  st_shared_16(tile + tile_offset<kCbChunks>(row, 2 * part), packed[0]);
  st_shared_16(tile + tile_offset<kCbChunks>(row, 2 * part + 1), packed[1]);
}

template <typename T, int kBits>
__global__ void __launch_bounds__(kThreads) codebook_mm_tile_kernel(const TileArgs args) {
  constexpr int kC = 1 << kBits;
  extern __shared__ __align__(128) uint8_t smem[];
  const uint32_t smem_base = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const uint32_t w_base = smem_base + kCbStages * kCbXBytes;
  uint16_t* tables = reinterpret_cast<uint16_t*>(smem + kCbTablesOffset);
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t M = args.M;
  const int64_t N = args.N;
  const int64_t K = args.K;
  const int64_t tiles_m = ceil_div<int64_t>(M, CbTile::kBM);
  // Consecutive blocks share their weight tile (its indices come from HBM once, then from L2).
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) % tiles_m * CbTile::kBM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) / tiles_m * CbTile::kBN;

  const int table_entries = args.per_channel ? CbTile::kBN * kC : kC;
  for (int i = tid; i < table_entries; i += kThreads) {
    const int64_t row = args.per_channel ? n0 + i / kC : 0;
    tables[i] = row < N ? args.codebook[row * kC + i % kC] : uint16_t{0};
  }

  // Decoding role: 16 weights (part) of one weight row of each K tile.
  const int d_row = tid / 4;
  const int d_part = tid % 4;
  const uint16_t* d_table = tables + (args.per_channel ? d_row * kC : 0);
  const int64_t d_n = n0 + d_row;

  const int k_tiles = static_cast<int>(ceil_div<int64_t>(K, kCbBK));
  auto stage_x = [&](int kt) {
    const int64_t k0 = static_cast<int64_t>(kt) * kCbBK;
    stage_tile<CbTile::kBM, kCbChunks, kThreads>(
        smem_base + (kt % kCbStages) * kCbXBytes, true, [&](int r, int c, bool& valid) {
          const int64_t gm = m0 + r;
          const int64_t gk = k0 + 8 * c;
          valid = gm < M && gk < K;
          return args.x + (valid ? gm * K + gk : 0);
        });
  };
#pragma unroll
  for (int s = 0; s < kCbStages - 1; ++s) {
    if (s < k_tiles) stage_x(s);
    cp_async_commit();
  }
  __syncthreads();  // the tables are staged
  decode_store<kBits>(w_base, d_row, d_part, load_indices<kBits>(args, d_n, 16 * d_part), d_table);

  const auto [lane, wm, wn, wk] = warp_position<CbTile>();
  float acc[CbTile::kMI][CbTile::kNI][4];
  zero_accumulators(acc);
  // Lane roles of the fragment loads (those of the BSR kernel, sparse.cu).
  const SwizzledRow<kCbChunks> a_row(wn * CbTile::kWN + (lane & 15));
  const int a_chunk = lane >> 4;
  const SwizzledRow<kCbChunks> b_row(wm * CbTile::kWM + (lane & 7) + ((lane >> 4) << 3));
  const int b_chunk = (lane >> 3) & 1;

  // The ring protocol of the tile kernels for x; W tile kt + 1 is decoded into the other buffer after
  // tile kt is multiplied, which the next iteration's barrier orders before its use.
  for (int kt = 0; kt < k_tiles; ++kt) {
    Indices next_w{};
    const bool more = kt + 1 < k_tiles;
    if (more) {
      next_w = load_indices<kBits>(args, d_n, static_cast<int64_t>(kt + 1) * kCbBK + 16 * d_part);
    }
    cp_async_wait<kCbStages - 2>();
    __syncthreads();
    if (kt + kCbStages - 1 < k_tiles) stage_x(kt + kCbStages - 1);
    cp_async_commit();

    const uint32_t tile_x = smem_base + (kt % kCbStages) * kCbXBytes;
    const uint32_t tile_w = w_base + (kt % 2) * kCbWBytes;
#pragma unroll
    for (int ks = 0; ks < kCbBK / 16; ++ks) {
      uint32_t af[CbTile::kMI][4];
#pragma unroll
      for (int mi = 0; mi < CbTile::kMI; ++mi) {
        ldmatrix_x4(af[mi], tile_w + a_row.at(16 * mi, 2 * ks + a_chunk));
      }
#pragma unroll
      for (int np = 0; np < CbTile::kNI / 2; ++np) {
        uint32_t bf[4];
        ldmatrix_x4(bf, tile_x + b_row.at(16 * np, 2 * ks + b_chunk));
#pragma unroll
        for (int mi = 0; mi < CbTile::kMI; ++mi) {
          mma_16816<T>(acc[mi][2 * np], af[mi], bf[0], bf[1]);
          mma_16816<T>(acc[mi][2 * np + 1], af[mi], bf[2], bf[3]);
        }
      }
    }
    if (more) decode_store<kBits>(w_base + ((kt + 1) % 2) * kCbWBytes, d_row, d_part, next_w, d_table);
  }

  mma_tile_epilogue<CbTile, T>(args, m0, n0, acc, smem);
}

template <typename T, int kBits>
cudaError_t launch_tiles(const TileArgs& args, cudaStream_t stream) {
  const auto kernel = codebook_mm_tile_kernel<T, kBits>;
  const int table_bytes = (args.per_channel ? CbTile::kBN : 1) * (1 << kBits) * 2;
  const int smem = kCbTablesOffset + table_bytes;
  const cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) return err;
  const int64_t blocks =
      ceil_div<int64_t>(args.M, CbTile::kBM) * ceil_div<int64_t>(args.N, CbTile::kBN);
  if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
  kernel<<<dim3(static_cast<unsigned>(blocks)), dim3(kThreads), smem, stream>>>(args);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_typed(const void* x, const uint8_t* idx, const void* codebook, bool per_channel,
                         int bits, const void* bias, SparseDtype bias_dtype, void* out, int64_t M,
                         int64_t N, int64_t K, cudaStream_t stream) {
  const int64_t idx_cols = bits == 4 ? (K + 1) / 2 : K;
  if constexpr (sizeof(T) == 2) {
    if (M > 16 && K % 8 == 0 && is_aligned(x, 16)) {
      // A thread's 16 indices are 8 (4-bit) or 16 (8-bit) bytes: vector loads need rows of whole ones.
      const int64_t vec_bytes = bits == 4 ? 8 : 16;
      const TileArgs args{static_cast<const uint16_t*>(x),
                          idx,
                          static_cast<const uint16_t*>(codebook),
                          bias,
                          out,
                          M,
                          N,
                          K,
                          idx_cols,
                          bias_dtype,
                          per_channel,
                          is_aligned(idx, vec_bytes) && idx_cols % vec_bytes == 0,
                          N % 8 == 0 && is_aligned(out, 16)};
      return bits == 4 ? launch_tiles<T, 4>(args, stream) : launch_tiles<T, 8>(args, stream);
    }
  }
  const int per_unit = 128 / bits;
  const DecodeArgs args{x,
                        idx,
                        codebook,
                        bias,
                        out,
                        M,
                        N,
                        K,
                        idx_cols,
                        0,
                        per_channel,
                        is_aligned(x, 16) && (K * static_cast<int64_t>(sizeof(T))) % 16 == 0,
                        is_aligned(idx, 16) && K % per_unit == 0,
                        bias_dtype};
  return bits == 4 ? launch_decode<T, 4>(args, stream) : launch_decode<T, 8>(args, stream);
}

}  // namespace

cudaError_t launch_codebook_mm(const void* x, const uint8_t* idx, const void* codebook,
                               int64_t groups, int bits, const void* bias,
                               CodebookDtype bias_dtype, void* out, CodebookDtype dtype, int64_t M,
                               int64_t N, int64_t K, cudaStream_t stream) {
  if (M < 0 || N < 0 || K < 1 || K > 0x7fffffff) return cudaErrorInvalidValue;
  if (bits != 4 && bits != 8) return cudaErrorInvalidValue;
  if (groups != 1 && groups != N) return cudaErrorInvalidValue;
  if ((bias == nullptr) != (bias_dtype == CodebookDtype::kNone)) return cudaErrorInvalidValue;
  if (M == 0 || N == 0) return cudaSuccess;
  const bool per_channel = groups > 1;
  switch (dtype) {
    case CodebookDtype::kFloat32:
      return launch_typed<float>(x, idx, codebook, per_channel, bits, bias, bias_dtype, out, M, N,
                                 K, stream);
    case CodebookDtype::kFloat16:
      return launch_typed<__half>(x, idx, codebook, per_channel, bits, bias, bias_dtype, out, M, N,
                                  K, stream);
    case CodebookDtype::kBFloat16:
      return launch_typed<__nv_bfloat16>(x, idx, codebook, per_channel, bits, bias, bias_dtype, out,
                                         M, N, K, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace pycompress
