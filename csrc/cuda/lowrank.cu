// CUDA kernels of the fused low-rank GEMM y = (x v^T) u^T + bias: one kernel computes both products,
// keeping t = x v^T in shared memory. float16 / bfloat16 run on the tensor cores (mma.sync m16n8k16,
// f32 accumulate, tiles staged by cp.async; sm_80 and sm_90a); float32, and (b)float16 shapes whose
// rows are not whole 16-byte vectors, run on the CUDA cores (FFMA).
//
// EXPERIMENTAL: these kernels have been compiled (sm_80, sm_90a) and their SASS checked, but they have
// not yet run on a GPU. The backend registry marks the CUDA backend experimental until its tests pass
// on real hardware.
//
// Contract: csrc/include/pycompress/lowrank_cuda.h and pycompress/ops/lowrank.py (the reference).
//
// Work split. A block owns block_m rows of x, a chunk of r_chunk rank columns [r0, r0 + r_chunk) and a
// range of output columns. Phase 1 computes t[block_m, r_chunk] = x v^T over all of K into shared
// memory (rounded to x's dtype); phase 2 multiplies t by the matching columns of u, tile after tile of
// the block's output range. With one chunk (r_splits == 1) phase 2 writes y + bias directly; with more,
// the chunks' partial products meet in a float32 workspace by atomic adds, and the last block of an
// output tile to finish (an arrival counter per tile) writes that tile.
//
// Cost model (plan_lowrank_mm). At small M one block per row tile would leave most SMs idle, so the
// work is split, in two ways:
//   - over N (n_splits): each block recomputes t for its rows, reading its v chunk and x again (from
//     L2 once another block has brought them in): (n_splits - 1) * r * K extra elements of v;
//   - over r (r_splits): no recomputation, but every output element takes r_splits float32 atomic
//     adds, and the workspace is cleared, read and written once more.
// For every chunk size (a multiple of 16 whose t fits in shared memory) the planner takes the smallest
// n_splits that gives at least one block per SM, and estimates the time as the largest of: the unique
// bytes over HBM bandwidth, all bytes the blocks load (v chunk, x once per 64 rank rows, u columns,
// atomics at kAtomicBytes each) over L2 bandwidth, and one block's bytes over the bandwidth of one
// block's cp.async ring times the waves of blocks. It keeps the fastest plan that covers every SM
// (the fastest of all when none can). The bandwidths are H100 estimates, to be calibrated on the GPU.
// For M = 1, N = K = 8192, r = 512 on 132 SMs this gives 32 chunks of 16 rank columns and 5 splits of
// N (v read 5 times, 4 of them from L2; u once; 32 atomic adds per output).
//
// Tensor-core kernel. Every shared tile is a "slice": 16 columns (two 16-byte chunks) of consecutive
// rows, swizzled (tile_offset<2>) so that ldmatrix reads are free of bank conflicts. A ring of kStages
// stages of kStageBytes runs through the block's whole schedule: first the phase-1 steps (pass after
// pass of 64 rank rows; per step, slices of v and of x for up to 16 consecutive 16-column steps of K, so
// that a stage always carries about 8 KiB of v even for a 16-row chunk), then the phase-2 steps (four
// slices of u, [128 output columns, 16 rank columns] each). Phase 2's first tiles are thus in flight
// while phase 1 finishes. The MMA puts v (phase 1) or u (phase 2) on the A side (m16 over rank rows or
// output columns) and x or t on the B side (n8 over rows of x), which suits small M.
// Phase 1 warps share each pass's m16 tiles and split the K steps of a stage; their partial sums meet in
// shared memory at the end of the pass, and t is written as slices [block_m, 16] of x's dtype. Phase 2
// warps each own 16 of a tile's 128 output columns and write them from registers.
#include <cstdint>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "pycompress/cuda_common.cuh"
#include "pycompress/lowrank_cuda.h"
#include "pycompress/sparse_tiles.cuh"

namespace pycompress {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxGrid = 0x7fffffff;
// Planner estimates (bytes per microsecond): HBM, L2 to the SMs, and one block's cp.async ring (48 KiB
// in flight over about 0.7 us of latency); an atomic add in L2 counts as kAtomicBytes loaded bytes.
constexpr double kHbmBytesPerUs = 3.0e6;
constexpr double kL2BytesPerUs = 7.0e6;
constexpr double kBlockBytesPerUs = 7.0e4;
constexpr double kAtomicBytes = 16.0;

struct LrArgs {
  const void* x;  // [M, K]
  const void* v;  // [r, K]
  const void* u;  // [N, r]
  const void* bias;
  void* out;           // [M, N]
  float* partial;      // [M, N] float32 partial sums when r_splits > 1, else nullptr
  unsigned* arrivals;  // one counter per output tile (m tile, n split) when r_splits > 1
  int64_t M;
  int64_t N;
  int64_t K;
  int64_t r;
  int r_chunk;
  int r_splits;
  int n_splits;
  int n_tiles_per_split;
  int m_tiles;
  LowrankDtype bias_dtype;
};

// The block's share of the work: blockIdx.x runs over m tiles fastest, then rank chunks, then splits
// of N, so that the blocks of one rank chunk (which read the same v rows) run together.
struct LrBlock {
  int64_t m0;       // first row of x
  int64_t r0;       // first rank column of the chunk
  int64_t n_begin;  // first output column
  int n_tiles;      // output tiles of the block (tile_n columns each)
  int tile_id;      // (m tile, n split): the arrival counter of the output tile
};

template <int kBM, int kTileN>
__device__ __forceinline__ LrBlock lr_block(const LrArgs& a) {
  const int b = static_cast<int>(blockIdx.x);
  const int mt = b % a.m_tiles;
  const int rest = b / a.m_tiles;
  const int rc = rest % a.r_splits;
  const int ns = rest / a.r_splits;
  const int total_tiles = static_cast<int>(ceil_div<int64_t>(a.N, kTileN));
  const int first_tile = ns * a.n_tiles_per_split;
  const int tiles = total_tiles - first_tile < a.n_tiles_per_split ? total_tiles - first_tile
                                                                    : a.n_tiles_per_split;
  return {static_cast<int64_t>(mt) * kBM, static_cast<int64_t>(rc) * a.r_chunk,
          static_cast<int64_t>(first_tile) * kTileN, tiles, ns * a.m_tiles + mt};
}

// The bias of output column n, added by the block that writes the column (never to partial sums).
__device__ __forceinline__ float lr_bias(const LrArgs& a, int64_t n) {
  return a.bias != nullptr && a.partial == nullptr ? load_bias(a.bias, a.bias_dtype, n) : 0.0f;
}

// Output element (m, n): the finished sum plus bias, or a partial sum added to the workspace. Float
// atomics flush subnormal partial sums to zero; the contract's tolerance covers that.
template <typename T>
__device__ __forceinline__ void lr_store(const LrArgs& a, int64_t m, int64_t n, float acc, float b) {
  if (a.partial != nullptr) {
    atomicAdd(a.partial + m * a.N + n, acc);
  } else {
    store_out(static_cast<T*>(a.out) + m * a.N + n, ieee_add(acc, b));
  }
}

// With r_splits > 1, called by every thread of a block after its last atomic add: the last block of
// the output tile to arrive writes the tile from the workspace. The fences order every block's adds
// before its arrival, and the arrivals before the last block's reads (which bypass L1).
template <typename T, int kBM, int kTileN>
__device__ __forceinline__ void lr_finish_split(const LrArgs& a, const LrBlock& blk) {
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    last = atomicAdd(a.arrivals + blk.tile_id, 1u) == static_cast<unsigned>(a.r_splits - 1);
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  const int64_t rows = a.M - blk.m0 < kBM ? a.M - blk.m0 : kBM;
  const int64_t span = static_cast<int64_t>(blk.n_tiles) * kTileN;
  const int64_t cols = a.N - blk.n_begin < span ? a.N - blk.n_begin : span;
  T* __restrict__ out = static_cast<T*>(a.out);
  for (int64_t i = threadIdx.x; i < rows * cols; i += kThreads) {
    const int64_t m = blk.m0 + i / cols;
    const int64_t n = blk.n_begin + i % cols;
    const float b = a.bias != nullptr ? load_bias(a.bias, a.bias_dtype, n) : 0.0f;
    store_out(out + m * a.N + n, ieee_add(__ldcg(a.partial + m * a.N + n), b));
  }
}

// ---------------------------------------------------------------------------------------------------
// Tensor-core kernel (float16 / bfloat16; K % 8 == 0, r % 8 == 0, x, v, u 16-byte aligned).

constexpr int kStages = 4;
constexpr int kStageBytes = 16384;
constexpr int kSliceRowBytes = 32;   // 16 columns of 16-bit elements
constexpr int kPassRows = 64;        // rank rows of a phase-1 pass: four m16 tiles
constexpr int kVRegionBytes = 8192;  // v slices of a phase-1 stage; its x slices follow
constexpr int kRegionRows = kVRegionBytes / kSliceRowBytes;
constexpr int kTileN = 128;  // output columns of a phase-2 tile: rows of a u slice
constexpr int kUSlices = kStageBytes / (kTileN * kSliceRowBytes);

template <int kBM_>
struct LrTile {
  static constexpr int kBM = kBM_;
  static constexpr int kNI = kBM / 8;  // n8 tiles over the rows of x
  // Slices per phase-1 stage are bounded by the x region: kMaxSlices slices of kBM rows.
  static constexpr int kMaxSlices = kRegionRows / kBM;
  static constexpr int kRedBytes = kWarps * kNI * 4 * 32 * 4;
  static constexpr int kFixedBytes = kStages * kStageBytes + kRedBytes;  // t follows

  static_assert(kBM % 16 == 0 && kMaxSlices >= 4, "a full pass stages 4 slices per step");
  static_assert(kTileN == 16 * kWarps, "phase-2 warps own 16 columns of a tile each");
};

// Phase-1 schedule of a block: ceil(r_chunk / 64) passes (all of 64 rank rows but a last one of
// 16 last_tiles rows), each over the k_slices 16-column steps of K, q of them per stage.
struct Phase1 {
  int k_slices;
  int full_passes;
  int full_steps;
  int last_tiles;
  int last_q;
  int last_steps;
  int steps;
};

__device__ __forceinline__ Phase1 make_phase1(int64_t K, int r_chunk, int max_slices) {
  Phase1 p;
  p.k_slices = static_cast<int>(ceil_div<int64_t>(K, 16));
  p.full_passes = r_chunk / kPassRows;
  p.full_steps = ceil_div(p.k_slices, 4);
  p.last_tiles = (r_chunk % kPassRows) / 16;
  // As many slices as keep the v region full (16 rank rows: 16 slices), within the x region.
  p.last_q = p.last_tiles == 0 ? 1 : (16 / p.last_tiles < max_slices ? 16 / p.last_tiles : max_slices);
  p.last_steps = p.last_tiles == 0 ? 0 : ceil_div(p.k_slices, p.last_q);
  p.steps = p.full_passes * p.full_steps + p.last_steps;
  return p;
}

struct Step1 {
  int pass;
  int tiles;  // m16 tiles of rank rows in the pass
  int q;      // slices per stage in the pass
  int first;  // first 16-column step of K in the stage
  int count;  // steps of K in the stage
  bool pass_end;
};

__device__ __forceinline__ Step1 phase1_step(const Phase1& p, int s) {
  Step1 st;
  int j;
  int steps;
  if (s < p.full_passes * p.full_steps) {
    st.pass = s / p.full_steps;
    j = s - st.pass * p.full_steps;
    st.tiles = 4;
    st.q = 4;
    steps = p.full_steps;
  } else {
    st.pass = p.full_passes;
    j = s - p.full_passes * p.full_steps;
    st.tiles = p.last_tiles;
    st.q = p.last_q;
    steps = p.last_steps;
  }
  st.first = j * st.q;
  st.count = p.k_slices - st.first < st.q ? p.k_slices - st.first : st.q;
  st.pass_end = j == steps - 1;
  return st;
}

// Phase-2 schedule: the block's tiles x (r_chunk / 16) slices, kUSlices per stage.
struct Phase2 {
  int ks;  // slices per tile
  int slices;
  int steps;
};

// Stages ring step s: phase-1 slices of v ([rows, 16] each, stacked in the v region) and of x
// ([kBM, 16] each, stacked in the x region), or phase-2 slices of u ([kTileN, 16] each). Chunks outside
// the matrices, the chunk or the stage's steps are zero-filled.
template <class Cfg>
__device__ __forceinline__ void lr_load_step(uint32_t stage, const LrArgs& a, const LrBlock& blk,
                                             const Phase1& p1, const Phase2& p2, int s) {
  const int64_t K = a.K;
  const int64_t r = a.r;
  if (s < p1.steps) {
    const Step1 st = phase1_step(p1, s);
    const int rows = 16 * st.tiles;
    const int64_t row0 = blk.r0 + static_cast<int64_t>(kPassRows) * st.pass;
    const uint16_t* v = static_cast<const uint16_t*>(a.v);
    stage_tile<kRegionRows, 2, kThreads>(stage, true, [&](int R, int c, bool& valid) {
      const int q = R / rows;
      const int64_t gr = row0 + (R - q * rows);
      const int64_t gk = 16 * static_cast<int64_t>(st.first + q) + 8 * c;
      valid = q < st.count && gr < r && gk < K;
      return v + (valid ? gr * K + gk : 0);
    });
    const uint16_t* x = static_cast<const uint16_t*>(a.x);
    stage_tile<kRegionRows, 2, kThreads>(stage + kVRegionBytes, true, [&](int R, int c, bool& valid) {
      const int q = R / Cfg::kBM;
      const int64_t gm = blk.m0 + (R - q * Cfg::kBM);
      const int64_t gk = 16 * static_cast<int64_t>(st.first + q) + 8 * c;
      valid = q < st.count && gm < a.M && gk < K;
      return x + (valid ? gm * K + gk : 0);
    });
  } else {
    const int first = (s - p1.steps) * kUSlices;
    const uint16_t* u = static_cast<const uint16_t*>(a.u);
    stage_tile<kUSlices * kTileN, 2, kThreads>(stage, true, [&](int R, int c, bool& valid) {
      const int slice = first + R / kTileN;
      const int nt = slice / p2.ks;
      const int64_t gn = blk.n_begin + static_cast<int64_t>(nt) * kTileN + R % kTileN;
      const int64_t gc = blk.r0 + 16 * (slice - nt * p2.ks) + 8 * c;
      valid = slice < p2.slices && gn < a.N && gc < r;
      return u + (valid ? gn * r + gc : 0);
    });
  }
}

template <class Cfg, typename T>
__global__ void __launch_bounds__(kThreads) lowrank_mm_kernel(const LrArgs args) {
  constexpr int kBM = Cfg::kBM;
  constexpr int kNI = Cfg::kNI;
  extern __shared__ __align__(128) uint8_t smem[];
  const uint32_t smem_base = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const uint32_t t_base = smem_base + Cfg::kFixedBytes;
  float* red = reinterpret_cast<float*>(smem + kStages * kStageBytes);
  const LrBlock blk = lr_block<kBM, kTileN>(args);
  const Phase1 p1 = make_phase1(args.K, args.r_chunk, Cfg::kMaxSlices);
  Phase2 p2;
  p2.ks = args.r_chunk / 16;
  p2.slices = blk.n_tiles * p2.ks;
  p2.steps = ceil_div(p2.slices, kUSlices);
  const int steps = p1.steps + p2.steps;

  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid >> 5;
  const int lane = tid & 31;
  const int g = lane >> 2;
  const int t4 = lane & 3;
  float acc[kNI][4];
#pragma unroll
  for (int ni = 0; ni < kNI; ++ni)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[ni][j] = 0.0f;

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < steps) lr_load_step<Cfg>(smem_base + s * kStageBytes, args, blk, p1, p2, s);
    cp_async_commit();
  }

  // Fragment rows (the BSR kernel's lane roles on 2-chunk slices). B (x or t): lanes 0-7 give rows
  // 0-7 of chunk 0, lanes 8-15 rows 0-7 of chunk 1, lanes 16-31 the same for rows 8-15; matrices land
  // in b0, b1 of n8 tile 2 np and b0, b1 of tile 2 np + 1.
  const SwizzledRow<2> b_row((lane & 7) + ((lane >> 4) << 3));
  const int b_chunk = (lane >> 3) & 1;
  const int a_chunk = lane >> 4;

  // Ring protocol of the tile kernels (sparse24.cu): before step s, s + kStages - 1 groups were
  // committed and group i holds step i; waiting until kStages - 2 are pending lands step s, and the
  // barrier proves that the stage refilled next (read in step s - 1) is free.
  for (int s = 0; s < steps; ++s) {
    cp_async_wait<kStages - 2>();
    __syncthreads();
    const int next = s + kStages - 1;
    if (next < steps) {
      lr_load_step<Cfg>(smem_base + (next % kStages) * kStageBytes, args, blk, p1, p2, next);
    }
    cp_async_commit();
    const uint32_t stage = smem_base + (s % kStages) * kStageBytes;

    if (s < p1.steps) {
      const Step1 st = phase1_step(p1, s);
      const int rows = 16 * st.tiles;
      const int groups = kWarps / st.tiles;  // warps per m16 tile, splitting the stage's K steps
      const int tile = warp % st.tiles;
      const int kg = warp / st.tiles;
      if (kg < groups) {
        const SwizzledRow<2> a_row(16 * tile + (lane & 15));
        for (int q = kg; q < st.count; q += groups) {
          uint32_t af[4];
          ldmatrix_x4(af, stage + a_row.at(q * rows, a_chunk));
#pragma unroll
          for (int np = 0; np < kNI / 2; ++np) {
            uint32_t bf[4];
            ldmatrix_x4(bf, stage + kVRegionBytes + b_row.at(q * kBM + 16 * np, b_chunk));
            mma_16816<T>(acc[2 * np], af, bf[0], bf[1]);
            mma_16816<T>(acc[2 * np + 1], af, bf[2], bf[3]);
          }
        }
      }
      if (st.pass_end) {
        // The K-split partial sums meet in `red` ([warp][accumulator][lane]), the first warp of each
        // m16 tile rounds the sum to T and writes rank rows 16 tile + g (+ 8) of t.
        if (kg > 0 && kg < groups) {
#pragma unroll
          for (int ni = 0; ni < kNI; ++ni)
#pragma unroll
            for (int j = 0; j < 4; ++j) red[((warp * kNI + ni) * 4 + j) * 32 + lane] = acc[ni][j];
        }
        __syncthreads();
        if (kg == 0) {
          for (int other = 1; other < groups; ++other) {
            const int w = tile + other * st.tiles;
#pragma unroll
            for (int ni = 0; ni < kNI; ++ni)
#pragma unroll
              for (int j = 0; j < 4; ++j) {
                acc[ni][j] = ieee_add(acc[ni][j], red[((w * kNI + ni) * 4 + j) * 32 + lane]);
              }
          }
          // t slice pass * 4 + tile holds rank rows [16 (pass * 4 + tile), +16) of the chunk; d0, d1
          // are rank row g (chunk 0, element g), d2, d3 rank row g + 8 (chunk 1), of x rows 2 t4 (+1).
          const uint32_t slice = static_cast<uint32_t>(st.pass * 4 + tile) * kBM * kSliceRowBytes;
#pragma unroll
          for (int ni = 0; ni < kNI; ++ni)
#pragma unroll
            for (int h = 0; h < 2; ++h)
#pragma unroll
              for (int c = 0; c < 2; ++c) {
                const int m = 8 * ni + 2 * t4 + c;
                const uint32_t offset = Cfg::kFixedBytes + slice + tile_offset<2>(m, h) + 2 * g;
                *reinterpret_cast<T*>(smem + offset) = from_float<T>(acc[ni][2 * h + c]);
              }
        }
#pragma unroll
        for (int ni = 0; ni < kNI; ++ni)
#pragma unroll
          for (int j = 0; j < 4; ++j) acc[ni][j] = 0.0f;
      }
    } else {
      const int first = (s - p1.steps) * kUSlices;
      const SwizzledRow<2> a_row(16 * warp + (lane & 15));
#pragma unroll
      for (int q = 0; q < kUSlices; ++q) {
        const int slice = first + q;
        if (slice >= p2.slices) break;
        const int nt = slice / p2.ks;
        const int ks = slice - nt * p2.ks;
        const int64_t n_row0 = blk.n_begin + static_cast<int64_t>(nt) * kTileN + 16 * warp;
        if (n_row0 < args.N) {
          uint32_t af[4];
          ldmatrix_x4(af, stage + a_row.at(q * kTileN, a_chunk));
#pragma unroll
          for (int np = 0; np < kNI / 2; ++np) {
            uint32_t bf[4];
            ldmatrix_x4(bf, t_base + static_cast<uint32_t>(ks * kBM * kSliceRowBytes) +
                                b_row.at(16 * np, b_chunk));
            mma_16816<T>(acc[2 * np], af, bf[0], bf[1]);
            mma_16816<T>(acc[2 * np + 1], af, bf[2], bf[3]);
          }
        }
        if (ks == p2.ks - 1) {
          // The warp's 16 output columns of tile nt are complete: d0, d1 = column n_row0 + g, rows
          // 2 t4 (+1) of n8 tile ni; d2, d3 = column n_row0 + 8 + g.
          if (n_row0 < args.N) {
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              const int64_t n = n_row0 + 8 * h + g;
              if (n >= args.N) continue;
              const float b = lr_bias(args, n);
#pragma unroll
              for (int ni = 0; ni < kNI; ++ni)
#pragma unroll
                for (int c = 0; c < 2; ++c) {
                  const int64_t m = blk.m0 + 8 * ni + 2 * t4 + c;
                  if (m < args.M) lr_store<T>(args, m, n, acc[ni][2 * h + c], b);
                }
            }
          }
#pragma unroll
          for (int ni = 0; ni < kNI; ++ni)
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[ni][j] = 0.0f;
        }
      }
    }
  }
  cp_async_wait<0>();
  if (args.partial != nullptr) lr_finish_split<T, kBM, kTileN>(args, blk);
}

// ---------------------------------------------------------------------------------------------------
// CUDA-core kernel (float32, and float16 / bfloat16 rows that are not whole 16-byte vectors). The same
// work split, with a 16 x 16 thread grid: thread (tx, ty) computes rows ty + 16 a (a < kRows) and
// columns tx + 16 c (c < 4) of a 64-column tile. Phase 1 stages x and v transposed per 32 columns of
// K and writes t (rounded to T, held as float32) into shared memory [kBM, r_chunk]; phase 2 stages u
// transposed per 32 rank columns and reads t from there.

constexpr int kSimtBK = 32;
constexpr int kSimtTileN = 64;

// v rounded to T (the precision of t in the contract), held as float32.
template <typename T>
__device__ __forceinline__ float round_to(float v) {
  if constexpr (std::is_same<T, __half>::value) {
    return __half2float(__float2half_rn(v));
  } else if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    return __bfloat162float(__float2bfloat16_rn(v));
  } else {
    return v;
  }
}

template <int kBM>
constexpr int simt_static_bytes() {
  return kSimtBK * (kBM + 1) * 4 + kSimtBK * (kSimtTileN + 1) * 4;
}

template <typename T, int kRows>
__global__ void __launch_bounds__(kThreads) lowrank_mm_simt_kernel(const LrArgs args) {
  using Bits = typename Element<T>::Bits;
  constexpr int kBM = 16 * kRows;
  extern __shared__ __align__(128) uint8_t smem[];
  float* t_s = reinterpret_cast<float*>(smem);  // [kBM][r_chunk]
  // +1 column: the transposing stores of a warp (32 consecutive columns of one row) hit distinct banks.
  __shared__ float xs[kSimtBK][kBM + 1];
  __shared__ float ws[kSimtBK][kSimtTileN + 1];  // v rows (phase 1) or u rows (phase 2), transposed

  const LrBlock blk = lr_block<kBM, kSimtTileN>(args);
  const Bits* __restrict__ x = static_cast<const Bits*>(args.x);
  const Bits* __restrict__ v = static_cast<const Bits*>(args.v);
  const Bits* __restrict__ u = static_cast<const Bits*>(args.u);
  const int64_t M = args.M;
  const int64_t N = args.N;
  const int64_t K = args.K;
  const int64_t r = args.r;
  const int rc = args.r_chunk;
  const int tid = static_cast<int>(threadIdx.x);
  const int tx = tid % 16;
  const int ty = tid / 16;
  const int col = tid % kSimtBK;  // staging: each thread keeps one column of the K (or rank) tile
  const int row = tid / kSimtBK;
  constexpr int kRowStep = kThreads / kSimtBK;

  for (int pass = 0; pass * kPassRows < rc; ++pass) {
    const int rows = rc - pass * kPassRows < kPassRows ? rc - pass * kPassRows : kPassRows;
    const int64_t r_first = blk.r0 + static_cast<int64_t>(pass) * kPassRows;
    float acc[kRows][4];
#pragma unroll
    for (int i = 0; i < kRows; ++i)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[i][c] = 0.0f;
    for (int64_t k0 = 0; k0 < K; k0 += kSimtBK) {
      const int64_t gk = k0 + col;
#pragma unroll
      for (int i = 0; i < kBM / kRowStep; ++i) {
        const int mr = row + i * kRowStep;
        const int64_t gm = blk.m0 + mr;
        xs[col][mr] = gm < M && gk < K ? Element<T>::to_float(x[gm * K + gk]) : 0.0f;
      }
#pragma unroll
      for (int i = 0; i < kSimtTileN / kRowStep; ++i) {
        const int j = row + i * kRowStep;
        const int64_t gr = r_first + j;
        ws[col][j] = j < rows && gr < r && gk < K ? Element<T>::to_float(v[gr * K + gk]) : 0.0f;
      }
      __syncthreads();
#pragma unroll 8
      for (int k = 0; k < kSimtBK; ++k) {
        float xa[kRows];
        float wc[4];
#pragma unroll
        for (int i = 0; i < kRows; ++i) xa[i] = xs[k][ty + 16 * i];
#pragma unroll
        for (int c = 0; c < 4; ++c) wc[c] = ws[k][tx + 16 * c];
        fma_outer(xa, wc, acc);
      }
      __syncthreads();
    }
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int j = tx + 16 * c;
      if (j >= rows) continue;
#pragma unroll
      for (int i = 0; i < kRows; ++i) {
        t_s[(ty + 16 * i) * rc + pass * kPassRows + j] = round_to<T>(acc[i][c]);
      }
    }
  }
  __syncthreads();

  for (int nt = 0; nt < blk.n_tiles; ++nt) {
    const int64_t n0 = blk.n_begin + static_cast<int64_t>(nt) * kSimtTileN;
    float acc[kRows][4];
#pragma unroll
    for (int i = 0; i < kRows; ++i)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[i][c] = 0.0f;
    for (int k0 = 0; k0 < rc; k0 += kSimtBK) {
      const int64_t gc = blk.r0 + k0 + col;
#pragma unroll
      for (int i = 0; i < kSimtTileN / kRowStep; ++i) {
        const int j = row + i * kRowStep;
        const int64_t gn = n0 + j;
        ws[col][j] = gn < N && k0 + col < rc && gc < r ? Element<T>::to_float(u[gn * r + gc]) : 0.0f;
      }
      __syncthreads();
      const int k_end = rc - k0 < kSimtBK ? rc - k0 : kSimtBK;
#pragma unroll 8
      for (int k = 0; k < k_end; ++k) {
        float ta[kRows];
        float wc[4];
#pragma unroll
        for (int i = 0; i < kRows; ++i) ta[i] = t_s[(ty + 16 * i) * rc + k0 + k];
#pragma unroll
        for (int c = 0; c < 4; ++c) wc[c] = ws[k][tx + 16 * c];
        fma_outer(ta, wc, acc);
      }
      __syncthreads();
    }
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int64_t n = n0 + tx + 16 * c;
      if (n >= N) continue;
      const float b = lr_bias(args, n);
#pragma unroll
      for (int i = 0; i < kRows; ++i) {
        const int64_t m = blk.m0 + ty + 16 * i;
        if (m < M) lr_store<T>(args, m, n, acc[i][c], b);
      }
    }
  }
  if (args.partial != nullptr) lr_finish_split<T, kBM, kSimtTileN>(args, blk);
}

// ---------------------------------------------------------------------------------------------------
// Planning and launch.

struct Geometry {
  int block_m;
  int tile_n;
  int t_bytes;      // bytes per element of t in shared memory
  int fixed_bytes;  // dynamic shared memory besides t
  int static_bytes;
  int max_blocks_per_sm;  // by registers (256 threads of up to 127 or 255 registers)
};

Geometry geometry(bool tensor_cores, int64_t M) {
  const bool small = M <= 16;
  if (tensor_cores) {
    return small ? Geometry{16, kTileN, 2, LrTile<16>::kFixedBytes, 0, 2}
                 : Geometry{64, kTileN, 2, LrTile<64>::kFixedBytes, 0, 1};
  }
  return small ? Geometry{16, kSimtTileN, 4, 0, simt_static_bytes<16>(), 2}
               : Geometry{64, kSimtTileN, 4, 0, simt_static_bytes<64>(), 2};
}

template <class Cfg, typename T>
cudaError_t launch_tensor(const LrArgs& a, int64_t smem, unsigned grid, cudaStream_t stream) {
  const auto kernel = lowrank_mm_kernel<Cfg, T>;
  const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  kernel<<<grid, kThreads, static_cast<size_t>(smem), stream>>>(a);
  return cudaGetLastError();
}

template <typename T, int kRows>
cudaError_t launch_simt(const LrArgs& a, int64_t smem, unsigned grid, cudaStream_t stream) {
  const auto kernel = lowrank_mm_simt_kernel<T, kRows>;
  const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  kernel<<<grid, kThreads, static_cast<size_t>(smem), stream>>>(a);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_simt_rows(const LrArgs& a, int64_t block_m, int64_t smem, unsigned grid,
                             cudaStream_t stream) {
  return block_m == 16 ? launch_simt<T, 1>(a, smem, grid, stream)
                       : launch_simt<T, 4>(a, smem, grid, stream);
}

}  // namespace

cudaError_t plan_lowrank_mm(const void* x, const void* v, const void* u, LowrankDtype dtype,
                            int64_t M, int64_t N, int64_t K, int64_t r, LowrankMmPlan* plan) {
  // Rank chunks, tiles and steps are counted in int.
  if (M < 1 || N < 1 || K < 1 || r < 1 || K > (int64_t{1} << 30) || r > (int64_t{1} << 24)) {
    return cudaErrorInvalidValue;
  }
  if (dtype != LowrankDtype::kFloat32 && dtype != LowrankDtype::kFloat16 &&
      dtype != LowrankDtype::kBFloat16) {
    return cudaErrorInvalidValue;
  }
  const bool tensor_cores = dtype != LowrankDtype::kFloat32 && K % 8 == 0 && r % 8 == 0 &&
                            is_aligned(x, 16) && is_aligned(v, 16) && is_aligned(u, 16);
  const Geometry geo = geometry(tensor_cores, M);

  int device = 0;
  int sms = 0;
  int smem_optin = 0;
  int smem_per_sm = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err == cudaSuccess) {
    err = cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  }
  if (err == cudaSuccess) {
    err = cudaDeviceGetAttribute(&smem_per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device);
  }
  if (err != cudaSuccess) return err;

  // The largest chunk whose t fits beside the fixed shared memory (the 16 bytes: the finishing
  // block's flag).
  const int64_t r16 = ceil_div<int64_t>(r, 16) * 16;
  const int64_t room = smem_optin - geo.static_bytes - 16 - geo.fixed_bytes;
  int64_t chunk_cap = room / (static_cast<int64_t>(geo.t_bytes) * geo.block_m) / 16 * 16;
  if (chunk_cap > r16) chunk_cap = r16;
  if (chunk_cap < 16) return cudaErrorInvalidConfiguration;

  const int64_t m_tiles = ceil_div<int64_t>(M, geo.block_m);
  const int64_t n_tiles = ceil_div<int64_t>(N, geo.tile_n);
  const int64_t x_rows = M < geo.block_m ? M : geo.block_m;
  const double elem = dtype == LowrankDtype::kFloat32 ? 4.0 : 2.0;
  const double unique = elem * (static_cast<double>(r) * (K + N) + static_cast<double>(M) * (K + N));
  double best = -1.0;
  bool best_fills = false;
  for (int64_t want = 1; want <= r16 / 16; ++want) {
    const int64_t chunk = ceil_div<int64_t>(ceil_div<int64_t>(r, want), 16) * 16;
    const int64_t r_splits = ceil_div<int64_t>(r, chunk);
    if (chunk > chunk_cap || r_splits != want) continue;  // too big, or the chunking of a smaller want
    // At least the n_splits that cover the SMs (whole tiles per split may make it a few more).
    int64_t n_splits = ceil_div<int64_t>(sms, m_tiles * r_splits);
    if (n_splits > n_tiles) n_splits = n_tiles;
    const int64_t per_split = n_tiles / n_splits;
    n_splits = ceil_div<int64_t>(n_tiles, per_split);
    const int64_t blocks = m_tiles * r_splits * n_splits;
    if (blocks > kMaxGrid) continue;
    const int64_t smem = geo.fixed_bytes + geo.t_bytes * geo.block_m * chunk;
    int64_t per_sm = smem_per_sm / (smem + geo.static_bytes + 1024);
    if (per_sm > geo.max_blocks_per_sm) per_sm = geo.max_blocks_per_sm;
    if (per_sm < 1) per_sm = 1;
    // Bytes one block loads (its v chunk, x once per pass, u for its columns, its atomic adds).
    const double cols = static_cast<double>(per_split) * geo.tile_n;
    double block = elem * (static_cast<double>(chunk) * K + ceil_div<int64_t>(chunk, kPassRows) *
                                                              static_cast<double>(x_rows) * K +
                           cols * chunk);
    if (r_splits > 1) block += x_rows * cols * kAtomicBytes;
    double total = block * blocks;
    if (r_splits > 1) total += static_cast<double>(M) * N * (8.0 + elem);  // clear, finish
    const double waves = static_cast<double>(ceil_div<int64_t>(blocks, sms * per_sm));
    double time = unique / kHbmBytesPerUs;
    if (total / kL2BytesPerUs > time) time = total / kL2BytesPerUs;
    if (block * waves / kBlockBytesPerUs > time) time = block * waves / kBlockBytesPerUs;
    const bool fills = blocks >= sms;
    if (best < 0.0 || (fills && !best_fills) || (fills == best_fills && time < best)) {
      best = time;
      best_fills = fills;
      plan->tensor_cores = tensor_cores;
      plan->block_m = geo.block_m;
      plan->r_chunk = chunk;
      plan->r_splits = r_splits;
      plan->n_splits = n_splits;
      plan->n_tiles_per_split = per_split;
      plan->smem_bytes = smem;
      plan->workspace_bytes =
          r_splits > 1 ? ceil_div<int64_t>(M * N * 4, 16) * 16 + m_tiles * n_splits * 4 : 0;
    }
  }
  return best < 0.0 ? cudaErrorInvalidConfiguration : cudaSuccess;
}

cudaError_t launch_lowrank_mm(const void* x, const void* v, const void* u, const void* bias,
                              LowrankDtype bias_dtype, void* out, LowrankDtype dtype, int64_t M,
                              int64_t N, int64_t K, int64_t r, const LowrankMmPlan& plan,
                              void* workspace, cudaStream_t stream) {
  if (M < 1 || N < 1 || K < 1 || r < 1) return cudaErrorInvalidValue;
  if ((bias == nullptr) != (bias_dtype == LowrankDtype::kNone)) return cudaErrorInvalidValue;
  if ((plan.workspace_bytes > 0) != (workspace != nullptr) || plan.r_chunk < 16 ||
      plan.r_chunk % 16 != 0 || plan.r_splits != ceil_div<int64_t>(r, plan.r_chunk)) {
    return cudaErrorInvalidValue;
  }
  const Geometry geo = geometry(plan.tensor_cores, M);
  const int64_t m_tiles = ceil_div<int64_t>(M, geo.block_m);
  const int64_t blocks = m_tiles * plan.r_splits * plan.n_splits;
  if (geo.block_m != plan.block_m || blocks > kMaxGrid) return cudaErrorInvalidValue;
  float* partial = nullptr;
  unsigned* arrivals = nullptr;
  if (plan.workspace_bytes > 0) {
    const cudaError_t err = cudaMemsetAsync(workspace, 0, plan.workspace_bytes, stream);
    if (err != cudaSuccess) return err;
    partial = static_cast<float*>(workspace);
    arrivals = reinterpret_cast<unsigned*>(static_cast<uint8_t*>(workspace) +
                                           ceil_div<int64_t>(M * N * 4, 16) * 16);
  }
  const LrArgs args{x,
                    v,
                    u,
                    bias,
                    out,
                    partial,
                    arrivals,
                    M,
                    N,
                    K,
                    r,
                    static_cast<int>(plan.r_chunk),
                    static_cast<int>(plan.r_splits),
                    static_cast<int>(plan.n_splits),
                    static_cast<int>(plan.n_tiles_per_split),
                    static_cast<int>(m_tiles),
                    bias_dtype};
  const unsigned grid = static_cast<unsigned>(blocks);
  if (plan.tensor_cores) {
    const bool small = plan.block_m == 16;
    switch (dtype) {
      case LowrankDtype::kFloat16:
        return small ? launch_tensor<LrTile<16>, __half>(args, plan.smem_bytes, grid, stream)
                     : launch_tensor<LrTile<64>, __half>(args, plan.smem_bytes, grid, stream);
      case LowrankDtype::kBFloat16:
        return small ? launch_tensor<LrTile<16>, __nv_bfloat16>(args, plan.smem_bytes, grid, stream)
                     : launch_tensor<LrTile<64>, __nv_bfloat16>(args, plan.smem_bytes, grid, stream);
      default:
        return cudaErrorInvalidValue;
    }
  }
  switch (dtype) {
    case LowrankDtype::kFloat32:
      return launch_simt_rows<float>(args, plan.block_m, plan.smem_bytes, grid, stream);
    case LowrankDtype::kFloat16:
      return launch_simt_rows<__half>(args, plan.block_m, plan.smem_bytes, grid, stream);
    case LowrankDtype::kBFloat16:
      return launch_simt_rows<__nv_bfloat16>(args, plan.block_m, plan.smem_bytes, grid, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace pycompress
