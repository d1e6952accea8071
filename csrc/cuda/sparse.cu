// CUDA kernels of the unstructured sparse family: the CSR GEMM on the CUDA cores (all float dtypes),
// and the block-sparse (BSR, blocks of 16, 32 or 64) GEMM on the tensor cores (mma.sync m16n8k16, f32
// accumulate) for float16 / bfloat16, with a CUDA-core (SIMT) kernel for float32.
//
// EXPERIMENTAL: these kernels have been compiled (sm_80, sm_90a) and their SASS checked, but they have
// not yet run on a GPU. The backend registry marks the CUDA backend experimental until its tests pass
// on real hardware.
//
// Contract: csrc/include/pycompress/sparse_cuda.h and pycompress/ops/sparse.py (the references).
// Products are summed in float32 in any order and rounded once; the index arrays are trusted.
#include <climits>
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "pycompress/cuda_common.cuh"
#include "pycompress/sparse_cuda.h"
#include "pycompress/sparse_tiles.cuh"

namespace pycompress {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;

// ---------------------------------------------------------------------------------------------------
// csr_mm: out[m, n] = sum over the entries i of row n of values[i] * x[m, col[i]].
//
// A block of 8 warps owns 8 kRows weight rows (kRows per warp) and a tile of kMT rows of x. The tile
// of x is staged in shared memory transposed (xs[k][m], kMT consecutive values per column k, in x's
// dtype), over chunks of K that fit kCsrStageBytes. A warp walks each of its rows through a chunk in
// batches of 32 entries: lane l loads entry cursor + l (coalesced col / value loads; one batch per row
// is loaded for all rows at once so that kRows loads are in flight). The lanes are kMT "m-lanes" x
// kE = 32 / kMT "entry-lanes" (lane = e * kMT + m): each step, entry-lane e takes batch entry j0 + e
// (broadcast by shuffles) and m-lane m multiplies its value with xs[col][m], so every lane does one FMA
// per step for any kMT. The entry-lanes' partial sums meet by shuffles at the end.
// Columns are ascending within a row, so the entries of a chunk are a prefix of the row's remaining
// entries: a batch's entries below the chunk's end are a prefix of the batch, and the cursor advances
// by their count.

constexpr int kCsrWarps = 8;
constexpr int kCsrThreads = 32 * kCsrWarps;
constexpr int kCsrStageBytes = 32768;

// Staged elements per column k: kMT, padded so that the row stride is an odd number of 32-bit words
// (the staging stores of a warp, one per column, then hit distinct banks).
template <typename Bits, int kMT>
__host__ __device__ constexpr int csr_stride() {
  if (kMT == 1) return 1;
  if (sizeof(Bits) == 4) return kMT % 2 == 1 ? kMT : kMT + 1;
  return (kMT / 2) % 2 == 1 ? kMT : kMT + 2;
}

struct CsrArgs {
  const void* x;
  const int32_t* crow;
  const int32_t* col;
  const void* values;
  const void* bias;
  void* out;
  int64_t M;
  int64_t N;
  int64_t K;
  SparseDtype bias_dtype;
};

template <typename T, int kMT, int kRows>
__global__ void __launch_bounds__(kCsrThreads, 2) csr_mm_kernel(const CsrArgs args) {
  using Bits = typename Element<T>::Bits;
  static_assert(32 % kMT == 0, "the m-lanes divide the warp");
  constexpr int kE = 32 / kMT;
  constexpr int kStride = csr_stride<Bits, kMT>();
  constexpr int kChunk = kCsrStageBytes / (kStride * static_cast<int>(sizeof(Bits)));
  __shared__ Bits xs[kChunk * kStride];

  const int64_t M = args.M;
  const int64_t N = args.N;
  const int64_t K = args.K;
  const int64_t tiles_m = ceil_div<int64_t>(M, kMT);
  // Consecutive blocks share their weight rows (read from HBM once, then from L2).
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) % tiles_m * kMT;
  const int64_t row_block = static_cast<int64_t>(blockIdx.x) / tiles_m;
  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid >> 5;
  const int lane = tid & 31;
  const int m = lane % kMT;
  const int e_lane = lane / kMT;
  const int64_t n_first = (row_block * kCsrWarps + warp) * kRows;

  const Bits* __restrict__ x = static_cast<const Bits*>(args.x);
  const Bits* __restrict__ values = static_cast<const Bits*>(args.values);
  const int32_t* __restrict__ col = args.col;

  int cursor[kRows];
  int end[kRows];
  float acc[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int64_t n = n_first + r;
    cursor[r] = n < N ? __ldg(args.crow + n) : 0;
    end[r] = n < N ? __ldg(args.crow + n + 1) : 0;
    acc[r] = 0.0f;
  }

  for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
    const int width = static_cast<int>(K - k0 < kChunk ? K - k0 : kChunk);
    const int c_end = static_cast<int>(k0) + width;
    if (k0 > 0) __syncthreads();  // every warp is done with the previous chunk
    for (int mm = warp; mm < kMT; mm += kCsrWarps) {
      const int64_t gm = m0 + mm;
      const Bits* src = x + (gm < M ? gm : 0) * K + k0;
      for (int kk = lane; kk < width; kk += 32) xs[kk * kStride + mm] = gm < M ? src[kk] : Bits(0);
    }
    __syncthreads();

    // One batch per row in flight; entries past the row read as column INT_MAX (never taken).
    int batch_col[kRows];
    Bits batch_val[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int e = cursor[r] + lane;
      const bool in = e < end[r];
      batch_col[r] = in ? __ldg(col + e) : INT_MAX;
      batch_val[r] = in ? values[e] : Bits(0);
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      int bc = batch_col[r];
      Bits bv = batch_val[r];
      while (true) {
        const int taken = __popc(__ballot_sync(kFullMask, bc < c_end));
        // j0 + e_lane <= 31: j0 is a multiple of kE below taken <= 32.
        for (int j0 = 0; j0 < taken; j0 += kE) {
          const int j = j0 + e_lane;
          const int c = __shfl_sync(kFullMask, bc, j);
          const Bits v = static_cast<Bits>(__shfl_sync(kFullMask, static_cast<uint32_t>(bv), j));
          if (j < taken) {
            const float xv = Element<T>::to_float(xs[(c - static_cast<int>(k0)) * kStride + m]);
            acc[r] = ieee_fma(Element<T>::to_float(v), xv, acc[r]);
          }
        }
        cursor[r] += taken;
        if (taken < 32) break;
        const int e = cursor[r] + lane;
        const bool in = e < end[r];
        bc = in ? __ldg(col + e) : INT_MAX;
        bv = in ? values[e] : Bits(0);
      }
    }
  }

  T* __restrict__ out = static_cast<T*>(args.out);
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    float v = acc[r];
#pragma unroll
    for (int offset = kMT; offset < 32; offset <<= 1) {
      v = ieee_add(v, __shfl_xor_sync(kFullMask, v, offset));
    }
    const int64_t n = n_first + r;
    const int64_t gm = m0 + m;
    if (e_lane == 0 && n < N && gm < M) {
      if (args.bias != nullptr) v = ieee_add(v, load_bias(args.bias, args.bias_dtype, n));
      store_out(out + gm * N + n, v);
    }
  }
}

template <typename T, int kMT, int kRows>
cudaError_t launch_csr_tiles(const CsrArgs& args, cudaStream_t stream) {
  const int64_t tiles_m = ceil_div<int64_t>(args.M, kMT);
  const int64_t row_blocks = ceil_div<int64_t>(args.N, kCsrWarps * kRows);
  if (tiles_m * row_blocks > 0x7fffffff) return cudaErrorInvalidValue;
  csr_mm_kernel<T, kMT, kRows>
      <<<dim3(static_cast<unsigned>(tiles_m * row_blocks)), kCsrThreads, 0, stream>>>(args);
  return cudaGetLastError();
}

// The smallest x tile covering M (up to 32 rows per tile): unused m-lanes cost steps. Wider tiles
// keep more rows per block, so that each staged chunk of x serves more entries.
template <typename T>
cudaError_t launch_csr_typed(const CsrArgs& args, cudaStream_t stream) {
  if (args.M <= 1) return launch_csr_tiles<T, 1, 8>(args, stream);
  if (args.M <= 2) return launch_csr_tiles<T, 2, 8>(args, stream);
  if (args.M <= 4) return launch_csr_tiles<T, 4, 8>(args, stream);
  if (args.M <= 8) return launch_csr_tiles<T, 8, 8>(args, stream);
  if (args.M <= 16) return launch_csr_tiles<T, 16, 8>(args, stream);
  return launch_csr_tiles<T, 32, 16>(args, stream);
}

// ---------------------------------------------------------------------------------------------------
// bsr_mm on the tensor cores (float16 / bfloat16): out^T = W x^T block by block, the B x B weight
// blocks as the A operand of mma.sync m16n8k16 (rows: weight rows; K: the block's columns) and the
// matching B-column slice of x as the B operand (N: rows of x).
//
// A block of 4 warps computes a kBM (x rows) x B (one block row of w) tile of out, looping over the
// block row's non-zero blocks: each stage of a cp.async ring holds kWarpsK consecutive blocks (values
// [B, B]) and their slices of x ([kBM, B]); warps are kWarpsM x kWarpsN over the output tile and
// kWarpsK over the blocks of a stage (their partial sums meet in shared memory). Operands per lane
// (lane = 4 g + t), from the PTX ISA's mma.m16n8k16 .f16/.bf16 fragment layouts:
//   A: a0a1 = weight row g, columns 2t, 2t + 1 of the 16-column step; a2a3 = row g + 8; a4a5 = row g,
//     columns 8 + 2t, 9 + 2t; a6a7 = row g + 8, same: ldmatrix.x4 over rows 0-15 x chunks 2 ks, 2 ks + 1.
//   B: b0b1 = x row g, columns 2t, 2t + 1; b2b3 = columns 8 + 2t, 9 + 2t: ldmatrix.x4 gives them for
//     two n8 tiles (x rows 0-7 and 8-15 of a 16-row group).
//   D: d0, d1 = weight row g, x rows 2t and 2t + 1; d2, d3 = weight row g + 8.
// The epilogue adds the bias in float32, casts, and writes out through shared memory in 16-byte row
// segments.

template <int kB_, int kBM_, int kWarpsM_, int kWarpsN_, int kWarpsK_>
struct BsrTile : MmaTile<kBM_, kB_, kWarpsM_, kWarpsN_, kWarpsK_> {
  using Base = MmaTile<kBM_, kB_, kWarpsM_, kWarpsN_, kWarpsK_>;
  static constexpr int kB = kB_;
  static constexpr int kStages = 4;
  static constexpr int kChunks = kB / 8;  // 16-byte chunks per row of a block or of a slice of x
  static constexpr int kWBytes = kB * kB * 2;
  static constexpr int kXBytes = Base::kBM * kB * 2;
  static constexpr int kStageBytes = kWarpsK_ * (kWBytes + kXBytes);
  static constexpr int kPipeBytes = kStages * kStageBytes;
  static constexpr int kSmemBytes = Base::smem_bytes(kPipeBytes);

  static_assert(Base::kThreads == 128, "4 warps");
  static_assert(Base::kWM % 16 == 0, "warp tiles are whole n8 pairs");
};

// Decode (M <= 16): the warps split the non-zero blocks (blocks of 64 have 4 m16 tiles to share).
using BsrDecode16 = BsrTile<16, 16, 1, 1, 4>;
using BsrDecode32 = BsrTile<32, 16, 1, 2, 2>;
using BsrDecode64 = BsrTile<64, 16, 1, 4, 1>;
// Larger M: 64 rows of x per block, the warps over the output tile.
using BsrWide16 = BsrTile<16, 64, 4, 1, 1>;
using BsrWide32 = BsrTile<32, 64, 2, 2, 1>;
using BsrWide64 = BsrTile<64, 64, 2, 2, 1>;

struct BsrArgs {
  const uint16_t* x;       // [M, K] float16 / bfloat16 bits
  const int32_t* crow;     // [N / B + 1]
  const int32_t* col;      // [nnzb]
  const uint16_t* values;  // [nnzb, B, B]
  const void* bias;
  void* out;  // [M, N]
  int64_t M;
  int64_t N;
  int64_t K;
  SparseDtype bias_dtype;
  bool async;         // x and values 16-byte aligned: tiles are staged by cp.async
  bool vector_store;  // N % 8 == 0 and out 16-byte aligned
};

// Stages blocks first .. first + kWarpsK - 1 of the block row (those below `end`) and their slices of
// x (rows m0 .. m0 + kBM - 1, zero past M). Without args.async the copies are synchronous stores,
// which the pipeline's barriers order as well.
template <class Cfg>
__device__ __forceinline__ void bsr_load_stage(uint32_t stage, const BsrArgs& a, int64_t m0,
                                               int first, int end) {
#pragma unroll
  for (int kk = 0; kk < Cfg::kWarpsK; ++kk) {
    const int b = first + kk;
    if (b >= end) break;
    const uint32_t tile_w = stage + kk * (Cfg::kWBytes + Cfg::kXBytes);
    const uint32_t tile_x = tile_w + Cfg::kWBytes;
    const uint16_t* block = a.values + static_cast<int64_t>(b) * Cfg::kB * Cfg::kB;
    stage_tile<Cfg::kB, Cfg::kChunks, Cfg::kThreads>(tile_w, a.async, [&](int r, int c, bool&) {
      return block + r * Cfg::kB + 8 * c;
    });
    const int64_t k_first = static_cast<int64_t>(__ldg(a.col + b)) * Cfg::kB;
    stage_tile<Cfg::kBM, Cfg::kChunks, Cfg::kThreads>(
        tile_x, a.async, [&](int r, int c, bool& valid) {
          const int64_t gm = m0 + r;
          valid = gm < a.M;
          return a.x + (valid ? gm * a.K + k_first + 8 * c : 0);
        });
  }
}

template <class Cfg, typename T>
__global__ void __launch_bounds__(Cfg::kThreads) bsr_mm_kernel(const BsrArgs args) {
  extern __shared__ __align__(128) uint8_t smem[];
  const uint32_t smem_base = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const int64_t M = args.M;
  const int64_t tiles_m = ceil_div<int64_t>(M, Cfg::kBM);
  // Consecutive blocks share their block row of w (read from HBM once, then from L2).
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) % tiles_m * Cfg::kBM;
  const int64_t block_row = static_cast<int64_t>(blockIdx.x) / tiles_m;
  const int64_t n0 = block_row * Cfg::kB;
  const int start = __ldg(args.crow + block_row);
  const int end = __ldg(args.crow + block_row + 1);

  const auto [lane, wm, wn, wk] = warp_position<Cfg>();
  float acc[Cfg::kMI][Cfg::kNI][4];
  zero_accumulators(acc);

  const int steps = (end - start + Cfg::kWarpsK - 1) / Cfg::kWarpsK;
#pragma unroll
  for (int s = 0; s < Cfg::kStages - 1; ++s) {
    if (s < steps) {
      bsr_load_stage<Cfg>(smem_base + s * Cfg::kStageBytes, args, m0, start + s * Cfg::kWarpsK,
                          end);
    }
    cp_async_commit();
  }

  // Lane roles of the fragment loads. A: lanes 0-15 give rows 0-15 of chunk 2 ks, lanes 16-31 of
  // chunk 2 ks + 1. B: lanes 0-7 give x rows 0-7 of chunk 2 ks, lanes 8-15 rows 0-7 of chunk
  // 2 ks + 1, lanes 16-31 the same for rows 8-15.
  const SwizzledRow<Cfg::kChunks> a_row(wn * Cfg::kWN + (lane & 15));
  const int a_chunk = lane >> 4;
  const SwizzledRow<Cfg::kChunks> b_row(wm * Cfg::kWM + (lane & 7) + ((lane >> 4) << 3));
  const int b_chunk = (lane >> 3) & 1;

  // The ring protocol of the 2:4 kernel: before step i, tile i has landed once at most kStages - 2
  // groups are pending, and the barrier proves the stage refilled next is no longer read.
  for (int i = 0; i < steps; ++i) {
    cp_async_wait<Cfg::kStages - 2>();
    __syncthreads();
    const int next = i + Cfg::kStages - 1;
    if (next < steps) {
      bsr_load_stage<Cfg>(smem_base + (next % Cfg::kStages) * Cfg::kStageBytes, args, m0,
                          start + next * Cfg::kWarpsK, end);
    }
    cp_async_commit();

    if (start + i * Cfg::kWarpsK + wk >= end) continue;
    const uint32_t tile_w =
        smem_base + (i % Cfg::kStages) * Cfg::kStageBytes + wk * (Cfg::kWBytes + Cfg::kXBytes);
    const uint32_t tile_x = tile_w + Cfg::kWBytes;
#pragma unroll
    for (int ks = 0; ks < Cfg::kB / 16; ++ks) {
      uint32_t af[Cfg::kMI][4];
#pragma unroll
      for (int mi = 0; mi < Cfg::kMI; ++mi) {
        ldmatrix_x4(af[mi], tile_w + a_row.at(16 * mi, 2 * ks + a_chunk));
      }
#pragma unroll
      for (int np = 0; np < Cfg::kNI / 2; ++np) {
        uint32_t bf[4];
        ldmatrix_x4(bf, tile_x + b_row.at(16 * np, 2 * ks + b_chunk));
#pragma unroll
        for (int mi = 0; mi < Cfg::kMI; ++mi) {
          mma_16816<T>(acc[mi][2 * np], af[mi], bf[0], bf[1]);
          mma_16816<T>(acc[mi][2 * np + 1], af[mi], bf[2], bf[3]);
        }
      }
    }
  }

  mma_tile_epilogue<Cfg, T>(args, m0, n0, acc, smem);
}

template <class Cfg, typename T>
cudaError_t launch_bsr_tiles(const BsrArgs& args, cudaStream_t stream) {
  const auto kernel = bsr_mm_kernel<Cfg, T>;
  const cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes);
  if (err != cudaSuccess) return err;
  const int64_t blocks = ceil_div<int64_t>(args.M, Cfg::kBM) * (args.N / Cfg::kB);
  if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
  kernel<<<dim3(static_cast<unsigned>(blocks)), dim3(Cfg::kThreads), Cfg::kSmemBytes, stream>>>(
      args);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_bsr_tensor_cores(const BsrArgs& args, int64_t block, cudaStream_t stream) {
  const bool decode = args.M <= 16;
  switch (block) {
    case 16:
      return decode ? launch_bsr_tiles<BsrDecode16, T>(args, stream)
                    : launch_bsr_tiles<BsrWide16, T>(args, stream);
    case 32:
      return decode ? launch_bsr_tiles<BsrDecode32, T>(args, stream)
                    : launch_bsr_tiles<BsrWide32, T>(args, stream);
    case 64:
      return decode ? launch_bsr_tiles<BsrDecode64, T>(args, stream)
                    : launch_bsr_tiles<BsrWide64, T>(args, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

// ---------------------------------------------------------------------------------------------------
// bsr_mm for float32 on the CUDA cores (no tensor cores). A block of 16 x 16 threads computes a
// (16 kRows) x B tile of out (one block row of w), each thread the x rows ty + 16 a and weight rows
// tx + 16 c; per non-zero block, the block and its slice of x are staged in shared memory.

constexpr int kBsrSimtThreads = 256;

template <int kB, int kRows>
__global__ void __launch_bounds__(kBsrSimtThreads)
    bsr_mm_simt_kernel(const float* __restrict__ x, const int32_t* __restrict__ crow,
                       const int32_t* __restrict__ col, const float* __restrict__ values,
                       const void* bias, SparseDtype bias_dtype, float* __restrict__ out,
                       int64_t M, int64_t N, int64_t K) {
  constexpr int kBM = 16 * kRows;
  constexpr int kC = kB / 16;
  // +1 column: a warp's reads ws[tx + 16 c][k] (16 rows) hit distinct banks.
  __shared__ float xs[kBM][kB + 1];
  __shared__ float ws[kB][kB + 1];
  const int tid = static_cast<int>(threadIdx.x);
  const int tx = tid % 16;
  const int ty = tid / 16;
  const int64_t tiles_m = ceil_div<int64_t>(M, kBM);
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) % tiles_m * kBM;
  const int64_t block_row = static_cast<int64_t>(blockIdx.x) / tiles_m;
  const int64_t n0 = block_row * kB;
  const int start = __ldg(crow + block_row);
  const int end = __ldg(crow + block_row + 1);

  float acc[kRows][kC];
#pragma unroll
  for (int a = 0; a < kRows; ++a)
#pragma unroll
    for (int c = 0; c < kC; ++c) acc[a][c] = 0.0f;

  for (int b = start; b < end; ++b) {
    const float* block = values + static_cast<int64_t>(b) * kB * kB;
    const int64_t k_first = static_cast<int64_t>(__ldg(col + b)) * kB;
    // kBsrSimtThreads is a multiple of kB: each thread keeps its column j.
    const int j = tid % kB;
#pragma unroll
    for (int i = 0; i < kB * kB / kBsrSimtThreads; ++i) {
      const int r = tid / kB + i * (kBsrSimtThreads / kB);
      ws[r][j] = block[r * kB + j];
    }
#pragma unroll
    for (int i = 0; i < kBM * kB / kBsrSimtThreads; ++i) {
      const int r = tid / kB + i * (kBsrSimtThreads / kB);
      const int64_t gm = m0 + r;
      xs[r][j] = gm < M ? x[gm * K + k_first + j] : 0.0f;
    }
    __syncthreads();
#pragma unroll 8
    for (int k = 0; k < kB; ++k) {
      float xa[kRows];
      float wc[kC];
#pragma unroll
      for (int a = 0; a < kRows; ++a) xa[a] = xs[ty + 16 * a][k];
#pragma unroll
      for (int c = 0; c < kC; ++c) wc[c] = ws[tx + 16 * c][k];
      fma_outer(xa, wc, acc);
    }
    __syncthreads();
  }

#pragma unroll
  for (int c = 0; c < kC; ++c) {
    const int64_t gn = n0 + tx + 16 * c;
    const float bv = bias != nullptr ? load_bias(bias, bias_dtype, gn) : 0.0f;
#pragma unroll
    for (int a = 0; a < kRows; ++a) {
      const int64_t gm = m0 + ty + 16 * a;
      if (gm < M) out[gm * N + gn] = ieee_add(acc[a][c], bv);
    }
  }
}

template <int kB>
cudaError_t launch_bsr_simt_block(const float* x, const int32_t* crow, const int32_t* col,
                                  const float* values, const void* bias, SparseDtype bias_dtype,
                                  float* out, int64_t M, int64_t N, int64_t K,
                                  cudaStream_t stream) {
  const int rows = M <= 16 ? 1 : 4;
  const int64_t blocks = ceil_div<int64_t>(M, 16 * rows) * (N / kB);
  if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(blocks));
  if (rows == 1) {
    bsr_mm_simt_kernel<kB, 1><<<grid, kBsrSimtThreads, 0, stream>>>(x, crow, col, values, bias,
                                                                      bias_dtype, out, M, N, K);
  } else {
    bsr_mm_simt_kernel<kB, 4><<<grid, kBsrSimtThreads, 0, stream>>>(x, crow, col, values, bias,
                                                                      bias_dtype, out, M, N, K);
  }
  return cudaGetLastError();
}

cudaError_t launch_bsr_simt(const float* x, const int32_t* crow, const int32_t* col,
                            const float* values, int64_t block, const void* bias,
                            SparseDtype bias_dtype, float* out, int64_t M, int64_t N, int64_t K,
                            cudaStream_t stream) {
  switch (block) {
    case 16:
      return launch_bsr_simt_block<16>(x, crow, col, values, bias, bias_dtype, out, M, N, K,
                                       stream);
    case 32:
      return launch_bsr_simt_block<32>(x, crow, col, values, bias, bias_dtype, out, M, N, K,
                                       stream);
    case 64:
      return launch_bsr_simt_block<64>(x, crow, col, values, bias, bias_dtype, out, M, N, K,
                                       stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t launch_csr_mm(const void* x, const int32_t* crow, const int32_t* col,
                          const void* values, const void* bias, SparseDtype bias_dtype, void* out,
                          SparseDtype dtype, int64_t M, int64_t N, int64_t K, cudaStream_t stream) {
  // Column indices and chunk offsets are int: K < 2^31.
  if (M < 0 || N < 0 || K < 0 || K > 0x7fffffff) return cudaErrorInvalidValue;
  if ((bias == nullptr) != (bias_dtype == SparseDtype::kNone)) return cudaErrorInvalidValue;
  if (M == 0 || N == 0) return cudaSuccess;
  const CsrArgs args{x, crow, col, values, bias, out, M, N, K, bias_dtype};
  switch (dtype) {
    case SparseDtype::kFloat32:
      return launch_csr_typed<float>(args, stream);
    case SparseDtype::kFloat16:
      return launch_csr_typed<__half>(args, stream);
    case SparseDtype::kBFloat16:
      return launch_csr_typed<__nv_bfloat16>(args, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

cudaError_t launch_bsr_mm(const void* x, const int32_t* crow, const int32_t* col,
                          const void* values, int64_t block, const void* bias,
                          SparseDtype bias_dtype, void* out, SparseDtype dtype, int64_t M,
                          int64_t N, int64_t K, cudaStream_t stream) {
  if (block != 16 && block != 32 && block != 64) return cudaErrorInvalidValue;
  if (M < 0 || N < 0 || K < 0 || N % block != 0 || K % block != 0) return cudaErrorInvalidValue;
  if ((bias == nullptr) != (bias_dtype == SparseDtype::kNone)) return cudaErrorInvalidValue;
  if (M == 0 || N == 0) return cudaSuccess;
  if (dtype == SparseDtype::kFloat32) {
    return launch_bsr_simt(static_cast<const float*>(x), crow, col,
                           static_cast<const float*>(values), block, bias, bias_dtype,
                           static_cast<float*>(out), M, N, K, stream);
  }
  const BsrArgs args{static_cast<const uint16_t*>(x),
                     crow,
                     col,
                     static_cast<const uint16_t*>(values),
                     bias,
                     out,
                     M,
                     N,
                     K,
                     bias_dtype,
                     is_aligned(x, 16) && is_aligned(values, 16),
                     N % 8 == 0 && is_aligned(out, 16)};
  switch (dtype) {
    case SparseDtype::kFloat16:
      return launch_bsr_tensor_cores<__half>(args, block, stream);
    case SparseDtype::kBFloat16:
      return launch_bsr_tensor_cores<__nv_bfloat16>(args, block, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace pycompress
