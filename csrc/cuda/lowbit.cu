// CUDA kernels of the low-bit op family: weight-only GEMMs with int8, 1-bit and 2-bit (ternary)
// weights decoded in registers, sign-bit packing, and the W1A1 GEMM on the 1-bit tensor cores (BMMA,
// sm_80 / sm_90).
//
// EXPERIMENTAL: these kernels have been compiled (sm_80, sm_90a) but have not yet run on a GPU. The
// backend registry marks the CUDA low-bit backend experimental until its tests pass on real hardware.
//
// Contract: see csrc/include/pycompress/lowbit_cuda.h and pycompress/ops/lowbit.py (the reference).
// Float accumulation order is free for the weight-only GEMMs; binary_mm is exact up to its epilogue,
// which follows the contract's operation order in IEEE float32.
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "pycompress/cuda_common.cuh"
#include "pycompress/lowbit_cuda.h"

namespace pycompress {
namespace {

// In PTX for the same reason as ieee_mul (cuda_common.cuh): products and sums of (b)float16 or
// float32 inputs may be subnormal, and --use_fast_math would flush them.
__device__ __forceinline__ float ieee_fma(float a, float b, float c) {
  float r;
  asm("fma.rn.f32 %0, %1, %2, %3;" : "=f"(r) : "f"(a), "f"(b), "f"(c));
  return r;
}

// bfloat16 is the upper half of a float32, so widening is a shift and keeps subnormals.
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) {
  return __uint_as_float(static_cast<uint32_t>(__bfloat16_as_ushort(v)) << 16);
}

__device__ __forceinline__ float load_bias(const void* bias, LowbitDtype dtype, int64_t i) {
  switch (dtype) {
    case LowbitDtype::kFloat16:
      return to_float(static_cast<const __half*>(bias)[i]);
    case LowbitDtype::kBFloat16:
      return to_float(static_cast<const __nv_bfloat16*>(bias)[i]);
    default:
      return static_cast<const float*>(bias)[i];
  }
}

// Eight consecutive elements of x from a 16-byte aligned address, widened to float32.
__device__ __forceinline__ void load_x8(const float* p, float (&f)[8]) {
  const float4 lo = __ldg(reinterpret_cast<const float4*>(p));
  const float4 hi = __ldg(reinterpret_cast<const float4*>(p) + 1);
  f[0] = lo.x;
  f[1] = lo.y;
  f[2] = lo.z;
  f[3] = lo.w;
  f[4] = hi.x;
  f[5] = hi.y;
  f[6] = hi.z;
  f[7] = hi.w;
}

__device__ __forceinline__ void load_x8(const __half* p, float (&f)[8]) {
  const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
  const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 pair = __half22float2(*reinterpret_cast<const __half2*>(&words[i]));
    f[2 * i] = pair.x;
    f[2 * i + 1] = pair.y;
  }
}

__device__ __forceinline__ void load_x8(const __nv_bfloat16* p, float (&f)[8]) {
  const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
  const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = __uint_as_float(words[i] << 16);
    f[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
  }
}

// ---------------------------------------------------------------------------------------------------
// Weight-only GEMMs (W8A16, W1A16, W2A16 ternary): out = x @ decode(w).T, one kernel for every M.
// Decode (M <= 16) is memory bound on w, which is streamed exactly once per block of kMT rows of x:
// each warp owns kRowsPerWarp weight rows, every lane loads whole units (16 bytes of int8, one word
// of bits) of them, decodes them in registers and multiplies them with x read through L1 (x is
// small and shared by every warp of the SM), and the warp reduces its partial sums with shuffles.
// Larger M runs the same kernel on tiles of kMaxMT rows of x; the tiles of one weight block are
// consecutive blocks, so that they run together and read w from HBM once and then from L2.
//
// A weight format supplies: Storage (element type of a weight row), Unit (one vector load),
// kPerUnit (weights per unit), load(row, unit), decode8(unit, s, w) for weights 8 s .. 8 s + 7 of a
// unit, and decode_one(row, k) for the scalar path.

struct Int8Weights {
  using Storage = int8_t;
  using Unit = uint4;
  static constexpr int kPerUnit = 16;
  __device__ static Unit zero() { return make_uint4(0u, 0u, 0u, 0u); }
  __device__ static Unit load(const Storage* row, int64_t unit) {
    return __ldg(reinterpret_cast<const uint4*>(row) + unit);
  }
  // I2F is a quarter-rate instruction, too slow to keep up with HBM at M = 1. Instead each byte b
  // (biased to b + 128 by flipping its sign bit) becomes the mantissa of 2^23 + b + 128, and one exact
  // subtraction leaves b.
  __device__ static void decode8(const Unit& u, int s, float (&w)[8]) {
    const uint32_t words[2] = {(s == 0 ? u.x : u.z) ^ 0x80808080u,
                               (s == 0 ? u.y : u.w) ^ 0x80808080u};
#pragma unroll
    for (int i = 0; i < 2; ++i) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const uint32_t biased = __byte_perm(words[i], 0x4b000000u, 0x7440u | j);
        w[4 * i + j] = __uint_as_float(biased) - 8388736.0f;
      }
    }
  }
  __device__ static float decode_one(const Storage* row, int64_t k) {
    return static_cast<float>(row[k]);
  }
};

// Bit k % 32 of word k / 32; 1 means -1. The weight is built as the float +-1.0 by placing the bit in
// the sign of 1.0f.
struct BinaryWeights {
  using Storage = uint32_t;
  using Unit = uint32_t;
  static constexpr int kPerUnit = 32;
  __device__ static Unit zero() { return 0u; }
  __device__ static Unit load(const Storage* row, int64_t unit) { return __ldg(row + unit); }
  __device__ static void decode8(Unit u, int s, float (&w)[8]) {
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      w[e] = __uint_as_float(0x3f800000u | ((u << (31 - (8 * s + e))) & 0x80000000u));
    }
  }
  __device__ static float decode_one(const Storage* row, int64_t k) {
    return (__ldg(row + (k >> 5)) >> (k & 31)) & 1u ? -1.0f : 1.0f;
  }
};

// Code of element k in bits 2 (k % 16) .. 2 (k % 16) + 1 of word k / 16: the low bit makes the
// magnitude 1.0f, the high bit the sign (0b10, which the format never holds, decodes to -0).
struct TernaryWeights {
  using Storage = uint32_t;
  using Unit = uint32_t;
  static constexpr int kPerUnit = 16;
  __device__ static Unit zero() { return 0u; }
  __device__ static Unit load(const Storage* row, int64_t unit) { return __ldg(row + unit); }
  __device__ static float code_to_float(uint32_t code) {
    return __uint_as_float(((code & 1u) ? 0x3f800000u : 0u) | ((code & 2u) << 30));
  }
  __device__ static void decode8(Unit u, int s, float (&w)[8]) {
#pragma unroll
    for (int e = 0; e < 8; ++e) w[e] = code_to_float((u >> (2 * (8 * s + e))) & 3u);
  }
  __device__ static float decode_one(const Storage* row, int64_t k) {
    return code_to_float((__ldg(row + (k >> 4)) >> (2 * (k & 15))) & 3u);
  }
};

constexpr int kGemvWarps = 4;
constexpr int kRowsPerWarp = 2;
constexpr int kRowsPerBlock = kGemvWarps * kRowsPerWarp;
// Units each lane has in flight per row before it starts computing.
constexpr int kGemvUnroll = 2;
// Larger tiles would spill: the scheduler keeps the x values of every row of the tile in flight.
template <typename T>
constexpr int kMaxMT = sizeof(T) == 4 ? 8 : 16;
constexpr int64_t kMaxGridY = 65535;

struct GemvArgs {
  const void* x;
  const void* w;
  const float* scale;  // [N] (applied after the reduction) or [N, groups] (applied per group)
  const void* bias;
  void* out;
  int64_t M;
  int64_t N;
  int64_t K;
  int64_t n_offset;    // first weight row of this launch (grids are split past 65535 blocks in y)
  int64_t row_stride;  // Storage elements per weight row
  int64_t vec_units;   // leading units of each row read by vector loads (0 when misaligned)
  int64_t groups;
  uint32_t group_size;  // K < 2^31 (checked by the launcher), so group indices need no 64-bit division
  LowbitDtype bias_dtype;
};

template <class F, typename T, int kMT, bool kGrouped>
__global__ void __launch_bounds__(32 * kGemvWarps, 1) weight_gemv_kernel(const GemvArgs args) {
  static_assert(kMT * kRowsPerWarp <= 32, "one lane stores each output of the warp");
  using Storage = typename F::Storage;
  using Unit = typename F::Unit;
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int warp = static_cast<int>(threadIdx.x) >> 5;
  const int64_t n0 =
      args.n_offset + static_cast<int64_t>(blockIdx.y) * kRowsPerBlock + warp * kRowsPerWarp;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kMT;
  const int64_t M = args.M;
  const int64_t N = args.N;
  const int64_t K = args.K;
  // Whole warps past N have nothing to store (and no block-wide barrier to reach).
  if (n0 >= N) return;

  // Rows past M or N read the last valid row (keeping every load in bounds) and are never stored.
  const Storage* wrow[kRowsPerWarp];
  const float* srow[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t n = n0 + r < N ? n0 + r : N - 1;
    wrow[r] = static_cast<const Storage*>(args.w) + n * args.row_stride;
    srow[r] = args.scale + n * args.groups;
  }
  const T* xrow[kMT];
#pragma unroll
  for (int m = 0; m < kMT; ++m) {
    const int64_t row = m0 + m < M ? m0 + m : M - 1;
    xrow[m] = static_cast<const T*>(args.x) + row * K;
  }

  float acc[kMT][kRowsPerWarp];
#pragma unroll
  for (int m = 0; m < kMT; ++m)
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) acc[m][r] = 0.0f;

  const int64_t vec_units = args.vec_units;
  for (int64_t c0 = lane; c0 < vec_units; c0 += 32 * kGemvUnroll) {
    Unit units[kGemvUnroll][kRowsPerWarp];
#pragma unroll
    for (int u = 0; u < kGemvUnroll; ++u) {
      const int64_t c = c0 + 32 * u;
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        units[u][r] = c < vec_units ? F::load(wrow[r], c) : F::zero();
      }
    }
#pragma unroll
    for (int u = 0; u < kGemvUnroll; ++u) {
      const int64_t c = c0 + 32 * u;
      if (c >= vec_units) continue;
      const int64_t k0 = c * F::kPerUnit;
      // With grouped scales a unit lies inside one group (the launcher checks group_size %
      // kPerUnit == 0): its partial sums are scaled once.
      float part[kMT][kRowsPerWarp];
#pragma unroll
      for (int m = 0; m < kMT; ++m)
#pragma unroll
        for (int r = 0; r < kRowsPerWarp; ++r) part[m][r] = kGrouped ? 0.0f : acc[m][r];
#pragma unroll
      for (int s = 0; s < F::kPerUnit / 8; ++s) {
        float w[kRowsPerWarp][8];
#pragma unroll
        for (int r = 0; r < kRowsPerWarp; ++r) F::decode8(units[u][r], s, w[r]);
#pragma unroll
        for (int m = 0; m < kMT; ++m) {
          float xf[8];
          load_x8(xrow[m] + k0 + 8 * s, xf);
#pragma unroll
          for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
            for (int e = 0; e < 8; ++e) part[m][r] = ieee_fma(xf[e], w[r][e], part[m][r]);
        }
      }
      if constexpr (kGrouped) {
        const uint32_t g = static_cast<uint32_t>(k0) / args.group_size;
#pragma unroll
        for (int r = 0; r < kRowsPerWarp; ++r) {
          const float sc = __ldg(srow[r] + g);
#pragma unroll
          for (int m = 0; m < kMT; ++m) acc[m][r] = ieee_fma(part[m][r], sc, acc[m][r]);
        }
      } else {
#pragma unroll
        for (int m = 0; m < kMT; ++m)
#pragma unroll
          for (int r = 0; r < kRowsPerWarp; ++r) acc[m][r] = part[m][r];
      }
    }
  }

  // Columns past the vector units (all of them when the rows are misaligned), one per lane.
  for (int64_t k = vec_units * F::kPerUnit + lane; k < K; k += 32) {
    float w[kRowsPerWarp];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      w[r] = F::decode_one(wrow[r], k);
      if constexpr (kGrouped) {
        w[r] = ieee_mul(w[r], __ldg(srow[r] + static_cast<uint32_t>(k) / args.group_size));
      }
    }
#pragma unroll
    for (int m = 0; m < kMT; ++m) {
      const float xv = to_float(xrow[m][k]);
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) acc[m][r] = ieee_fma(xv, w[r], acc[m][r]);
    }
  }

  T* __restrict__ out = static_cast<T*>(args.out);
#pragma unroll
  for (int m = 0; m < kMT; ++m) {
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      float v = acc[m][r];
#pragma unroll
      for (int offset = 16; offset > 0; offset >>= 1) {
        v = ieee_add(v, __shfl_xor_sync(0xffffffffu, v, offset));
      }
      const int64_t row = m0 + m;
      const int64_t col = n0 + r;
      if (lane == m * kRowsPerWarp + r && row < M && col < N) {
        float y = kGrouped ? v : ieee_mul(args.scale[col], v);
        if (args.bias != nullptr) y = ieee_add(y, load_bias(args.bias, args.bias_dtype, col));
        store_out(out + row * N + col, y);
      }
    }
  }
}

template <class F, typename T, int kMT, bool kGrouped>
cudaError_t launch_gemv_tiles(GemvArgs args, cudaStream_t stream) {
  const dim3 block(32 * kGemvWarps);
  const int64_t tiles_m = ceil_div<int64_t>(args.M, kMT);
  const int64_t blocks_n = ceil_div<int64_t>(args.N, kRowsPerBlock);
  for (int64_t b = 0; b < blocks_n; b += kMaxGridY) {
    const int64_t count = blocks_n - b < kMaxGridY ? blocks_n - b : kMaxGridY;
    args.n_offset = b * kRowsPerBlock;
    weight_gemv_kernel<F, T, kMT, kGrouped>
        <<<dim3(static_cast<unsigned>(tiles_m), static_cast<unsigned>(count)), block, 0, stream>>>(
            args);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

// The smallest row tile covering M (up to kMaxMT): rows of x in a tile cost FMAs even when unused.
template <class F, typename T, bool kGrouped>
cudaError_t launch_gemv_for_m(const GemvArgs& args, cudaStream_t stream) {
  if (args.M <= 1) return launch_gemv_tiles<F, T, 1, kGrouped>(args, stream);
  if (args.M <= 2) return launch_gemv_tiles<F, T, 2, kGrouped>(args, stream);
  if (args.M <= 4) return launch_gemv_tiles<F, T, 4, kGrouped>(args, stream);
  if (args.M <= 8) return launch_gemv_tiles<F, T, 8, kGrouped>(args, stream);
  return launch_gemv_tiles<F, T, kMaxMT<T>, kGrouped>(args, stream);
}

// Vector loads need 16-byte aligned rows of x and a whole, aligned unit at the start of every
// weight row; then units [0, K / kPerUnit) of a row, and the x elements they meet, are in bounds.
template <class F, typename T, bool kGrouped>
cudaError_t launch_gemv_typed(GemvArgs args, cudaStream_t stream) {
  const bool x_vec = is_aligned(args.x, 16) && (args.K * sizeof(T)) % 16 == 0;
  constexpr size_t kUnitBytes = sizeof(typename F::Unit);
  const bool w_vec = is_aligned(args.w, kUnitBytes) &&
                     (args.row_stride * sizeof(typename F::Storage)) % kUnitBytes == 0;
  const bool groups_vec = !kGrouped || args.group_size % F::kPerUnit == 0;
  args.vec_units = x_vec && w_vec && groups_vec ? args.K / F::kPerUnit : 0;
  return launch_gemv_for_m<F, T, kGrouped>(args, stream);
}

template <class F, bool kGrouped>
cudaError_t launch_gemv(const GemvArgs& args, LowbitDtype x_dtype, cudaStream_t stream) {
  if (args.M < 0 || args.N < 0 || args.K < 0 || args.K > 0x7fffffff) return cudaErrorInvalidValue;
  if (args.M == 0 || args.N == 0) return cudaSuccess;
  if ((args.bias == nullptr) != (args.bias_dtype == LowbitDtype::kNone)) {
    return cudaErrorInvalidValue;
  }
  if (ceil_div<int64_t>(args.M, 8) > 0x7fffffff) return cudaErrorInvalidValue;
  switch (x_dtype) {
    case LowbitDtype::kFloat32:
      return launch_gemv_typed<F, float, kGrouped>(args, stream);
    case LowbitDtype::kFloat16:
      return launch_gemv_typed<F, __half, kGrouped>(args, stream);
    case LowbitDtype::kBFloat16:
      return launch_gemv_typed<F, __nv_bfloat16, kGrouped>(args, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

// ---------------------------------------------------------------------------------------------------
// pack_bits: one warp per output word. Lane j tests element 32 w + j, and the warp's ballot is the
// word itself (bit j comes from lane j). Negativity is read from the bits, not by a float compare,
// which --use_fast_math would make flush negative subnormals to -0 (and so pack them as +1).

__device__ __forceinline__ bool is_negative(float v) {
  const uint32_t u = __float_as_uint(v);
  const uint32_t mag = u & 0x7fffffffu;
  return (u >> 31) != 0 && mag != 0 && mag <= 0x7f800000u;
}
__device__ __forceinline__ bool is_negative(__half v) {
  const uint32_t u = __half_as_ushort(v);
  const uint32_t mag = u & 0x7fffu;
  return (u >> 15) != 0 && mag != 0 && mag <= 0x7c00u;
}
__device__ __forceinline__ bool is_negative(__nv_bfloat16 v) {
  const uint32_t u = __bfloat16_as_ushort(v);
  const uint32_t mag = u & 0x7fffu;
  return (u >> 15) != 0 && mag != 0 && mag <= 0x7f80u;
}
__device__ __forceinline__ bool is_negative(int8_t v) { return v < 0; }

constexpr int kPackThreads = 256;
constexpr int64_t kPackMaxBlocks = 65536;

template <typename T>
__global__ void __launch_bounds__(kPackThreads)
    pack_bits_kernel(const T* __restrict__ x, uint32_t* __restrict__ words, int64_t M, int64_t K,
                     int64_t W) {
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int64_t total = M * W;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * (kPackThreads / 32);
  // i is the same for the whole warp, so every lane reaches each ballot.
  for (int64_t i = (static_cast<int64_t>(blockIdx.x) * kPackThreads + threadIdx.x) / 32; i < total;
       i += stride) {
    const int64_t m = i / W;
    const int64_t k = (i - m * W) * 32 + lane;
    const bool negative = k < K && is_negative(x[m * K + k]);
    const uint32_t word = __ballot_sync(0xffffffffu, negative);
    if (lane == 0) words[i] = word;
  }
}

template <typename T>
cudaError_t launch_pack_typed(const T* x, uint32_t* words, int64_t M, int64_t K,
                              cudaStream_t stream) {
  const int64_t W = ceil_div<int64_t>(K, 32);
  int64_t blocks = ceil_div<int64_t>(M * W, kPackThreads / 32);
  blocks = blocks > kPackMaxBlocks ? kPackMaxBlocks : blocks;
  pack_bits_kernel<T><<<dim3(static_cast<unsigned>(blocks)), dim3(kPackThreads), 0, stream>>>(
      x, words, M, K, W);
  return cudaGetLastError();
}

// ---------------------------------------------------------------------------------------------------
// binary_mm: sum_k popc(a xor b) on the 1-bit tensor cores, mma m16n8k256 .b1 .xor.popc (on sm_90
// as two .and.popc, see mma_b1_xor). Block tile 128 x 128 x 512 bits, 8 warps as 2 (M) x 4 (N), warp
// tile 64 x 32 = 4 x 4 BMMA tiles, a kStages-deep cp.async ring. In bytes, the .b1 m16n8k256
// fragments are laid out exactly like the .s8 m16n8k32 ones (a0: row g, bytes 4t .. 4t + 3 of the
// first 16; a1: row g + 8; a2, a3: the next 16 bytes; b0, b1 likewise for column g), so tiles are
// staged as 64-byte rows and read with ldmatrix as for int8.
//
// Bits past K in the last word of a row may hold anything: tiles carry them, and the epilogue
// subtracts their popcount (a_last ^ b_last) & tail_mask from each sum. Words past W are zero-filled
// in both operands and add nothing.

constexpr int kBM = 128;
constexpr int kBN = 128;
constexpr int kBKBytes = 64;
constexpr int kBKWords = kBKBytes / 4;
constexpr int kStages = 4;
constexpr int kWarpsM = 2;
constexpr int kWarpsN = 4;
constexpr int kThreads = 32 * kWarpsM * kWarpsN;
constexpr int kWM = kBM / kWarpsM;
constexpr int kWN = kBN / kWarpsN;
constexpr int kMI = kWM / 16;
constexpr int kNI = kWN / 8;
constexpr int kTileABytes = kBM * kBKBytes;
constexpr int kTileBBytes = kBN * kBKBytes;
constexpr int kStageBytes = kTileABytes + kTileBBytes;
constexpr int kSmemBytes = kStages * kStageBytes;
// Blocks walk kGroupM tile rows at a time, so that concurrently running blocks share tiles in L2.
constexpr int kGroupM = 8;

static_assert(kBKBytes == kSwizzleRowBytes, "tile rows are swizzled as whole 64-byte rows");
static_assert(kNI % 2 == 0, "B fragments are loaded two n8 tiles per ldmatrix.x4");
static_assert((kBM * kBKBytes / 16) % kThreads == 0 && (kBN * kBKBytes / 16) % kThreads == 0,
              "every thread copies the same number of 16-byte chunks");

struct BinaryMmArgs {
  const uint32_t* a;
  const uint32_t* b;
  const float* a_scale;
  const float* b_scale;
  const void* bias;
  void* out;
  int64_t M;
  int64_t N;
  int64_t W;  // words per row, ceil(K / 32)
  int K;
  uint32_t tail_mask;  // bits of the last word past K (0 when K % 32 == 0)
  LowbitDtype bias_dtype;
  bool paired_store;  // N even and out aligned to two elements: store column pairs at once
};

// d += popc(a xor b). sm_90 has no XOR BMMA: ptxas would lower the .xor form to two AND BMMAs,
// popc(a & ~b) + popc(~a & b), inside a subroutine called once per mma. The kernel issues that pair
// itself, with ~a and ~b computed once per fragment (na, nb) instead of once per mma.
__device__ __forceinline__ void mma_b1_xor(int (&d)[4], const uint32_t (&a)[4],
                                           const uint32_t (&na)[4], const uint32_t (&b)[2],
                                           const uint32_t (&nb)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile(
      "mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc {%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      "mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc {%0, %1, %2, %3}, "
      "{%10, %11, %12, %13}, {%14, %15}, {%0, %1, %2, %3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(nb[0]), "r"(nb[1]), "r"(na[0]),
        "r"(na[1]), "r"(na[2]), "r"(na[3]), "r"(b[0]), "r"(b[1]));
#else
  asm volatile(
      "mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.xor.popc {%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// The complements are only read on sm_90 (see mma_b1_xor); elsewhere the compiler drops them.
template <int N>
__device__ __forceinline__ void complement(uint32_t (&dst)[N], const uint32_t (&src)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) dst[i] = ~src[i];
}

// Stages rows [row0, row0 + kRows) x words [w0, w0 + kBKWords) of the row-major [rows, W] word matrix
// g into a swizzled shared tile, with zeros outside the matrix. kAligned: W % 4 == 0 and g 16-byte
// aligned, so every in-range chunk is 4 whole aligned words and goes by cp.async; otherwise words are
// gathered one by one and stored synchronously, which the pipeline's barriers order just as well.
template <bool kAligned, int kRows>
__device__ __forceinline__ void load_tile(uint32_t tile, const uint32_t* __restrict__ g,
                                          int64_t rows, int64_t W, int64_t row0, int64_t w0) {
  constexpr int kChunksPerThread = kRows * kBKBytes / 16 / kThreads;
#pragma unroll
  for (int i = 0; i < kChunksPerThread; ++i) {
    const int id = static_cast<int>(threadIdx.x) + i * kThreads;
    const int r = id >> 2;
    const int c = id & 3;
    const int64_t gr = row0 + r;
    const int64_t gw = w0 + c * 4;
    const uint32_t dst = tile + swizzle(r, c);
    if constexpr (kAligned) {
      const bool valid = gr < rows && gw < W;
      cp_async_16(dst, valid ? g + gr * W + gw : g, valid);
    } else {
      uint32_t w[4] = {0u, 0u, 0u, 0u};
      if (gr < rows) {
        const uint32_t* src = g + gr * W;
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          if (gw + e < W) w[e] = src[gw + e];
        }
      }
      st_shared_16(dst, w);
    }
  }
}

template <bool kAligned, typename Out>
__global__ void __launch_bounds__(kThreads, 2) binary_mm_kernel(const BinaryMmArgs args) {
  extern __shared__ __align__(128) uint8_t smem[];
  const uint32_t smem_base = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const int64_t M = args.M;
  const int64_t N = args.N;
  const int64_t W = args.W;

  const int64_t tiles_m = ceil_div<int64_t>(M, kBM);
  const int64_t tiles_n = ceil_div<int64_t>(N, kBN);
  const int64_t pid = blockIdx.x;
  const int64_t group_blocks = kGroupM * tiles_n;
  const int64_t first_tile_m = pid / group_blocks * kGroupM;
  const int64_t group_rows =
      tiles_m - first_tile_m < kGroupM ? tiles_m - first_tile_m : int64_t{kGroupM};
  const int64_t in_group = pid % group_blocks;
  const int64_t m0 = (first_tile_m + in_group % group_rows) * kBM;
  const int64_t n0 = in_group / group_rows * kBN;

  const int warp = static_cast<int>(threadIdx.x) >> 5;
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int warp_m = warp / kWarpsN;
  const int warp_n = warp % kWarpsN;

  auto load_stage = [&](int stage, int64_t kt) {
    const uint32_t tile_a = smem_base + stage * kStageBytes;
    const int64_t w0 = kt * kBKWords;
    load_tile<kAligned, kBM>(tile_a, args.a, M, W, m0, w0);
    load_tile<kAligned, kBN>(tile_a + kTileABytes, args.b, N, W, n0, w0);
  };

  int acc[kMI][kNI][4];
#pragma unroll
  for (int mi = 0; mi < kMI; ++mi)
#pragma unroll
    for (int ni = 0; ni < kNI; ++ni)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[mi][ni][j] = 0;

  const int64_t k_tiles = ceil_div<int64_t>(W, kBKWords);
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < k_tiles) load_stage(s, s);
    cp_async_commit();
  }

  // ldmatrix.x4 lane roles: lanes 8j..8j+7 give the row addresses of matrix j. For A, matrices
  // 0..3 are (rows 0-7, bytes 0-15), (rows 8-15, bytes 0-15), (rows 0-7, bytes 16-31), (rows 8-15,
  // bytes 16-31) of a 16-row x 256-bit tile: a0..a3. For B they are (n 0-7, bytes 0-15), (n 0-7,
  // bytes 16-31), (n 8-15, bytes 0-15), (n 8-15, bytes 16-31): b0, b1 of two adjacent n8 tiles.
  const int a_row = warp_m * kWM + (lane & 15);
  const int a_chunk = lane >> 4;
  const int b_row = warp_n * kWN + (lane & 7) + ((lane >> 4) << 3);
  const int b_chunk = (lane >> 3) & 1;

  // Before iteration kt, kStages - 1 + kt groups were committed and group g holds tile g; waiting
  // until at most kStages - 2 are pending means tile kt has landed. The barrier then also proves
  // that every warp is done with the stage consumed in iteration kt - 1, which is refilled next.
  for (int64_t kt = 0; kt < k_tiles; ++kt) {
    cp_async_wait<kStages - 2>();
    __syncthreads();
    const int64_t next = kt + kStages - 1;
    if (next < k_tiles) load_stage(static_cast<int>(next % kStages), next);
    cp_async_commit();

    const uint32_t tile_a = smem_base + static_cast<uint32_t>(kt % kStages) * kStageBytes;
    const uint32_t tile_b = tile_a + kTileABytes;
#pragma unroll
    for (int ks = 0; ks < kBKBytes / 32; ++ks) {
      uint32_t af[kMI][4];
      uint32_t bf[kNI][2];
#pragma unroll
      for (int mi = 0; mi < kMI; ++mi) {
        ldmatrix_x4(af[mi], tile_a + swizzle(a_row + mi * 16, ks * 2 + a_chunk));
      }
#pragma unroll
      for (int np = 0; np < kNI / 2; ++np) {
        uint32_t r[4];
        ldmatrix_x4(r, tile_b + swizzle(b_row + np * 16, ks * 2 + b_chunk));
        bf[2 * np][0] = r[0];
        bf[2 * np][1] = r[1];
        bf[2 * np + 1][0] = r[2];
        bf[2 * np + 1][1] = r[3];
      }
      uint32_t naf[kMI][4];
      uint32_t nbf[kNI][2];
#pragma unroll
      for (int mi = 0; mi < kMI; ++mi) complement(naf[mi], af[mi]);
#pragma unroll
      for (int ni = 0; ni < kNI; ++ni) complement(nbf[ni], bf[ni]);
#pragma unroll
      for (int mi = 0; mi < kMI; ++mi)
#pragma unroll
        for (int ni = 0; ni < kNI; ++ni) {
          mma_b1_xor(acc[mi][ni], af[mi], naf[mi], bf[ni], nbf[ni]);
        }
    }
  }

  // Accumulator fragment: lane holds rows g and g + 8, columns 2t and 2t + 1 of each 16 x 8 tile.
  const int g = lane >> 2;
  const int t = lane & 3;
  const bool has_bias = args.bias != nullptr;
  const uint32_t tail_mask = args.tail_mask;
  float col_scale[kNI][2];
  float col_bias[kNI][2];
  uint32_t col_tail[kNI][2];
#pragma unroll
  for (int ni = 0; ni < kNI; ++ni) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int64_t col = n0 + warp_n * kWN + ni * 8 + t * 2 + j;
      const bool in = col < N;
      col_scale[ni][j] = in ? args.b_scale[col] : 0.0f;
      col_bias[ni][j] = in && has_bias ? load_bias(args.bias, args.bias_dtype, col) : 0.0f;
      col_tail[ni][j] = in && tail_mask != 0 ? args.b[col * W + W - 1] & tail_mask : 0u;
    }
  }
  Out* __restrict__ out = static_cast<Out*>(args.out);
#pragma unroll
  for (int mi = 0; mi < kMI; ++mi) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t row = m0 + warp_m * kWM + mi * 16 + h * 8 + g;
      if (row >= M) continue;
      const float row_scale = args.a_scale[row];
      const uint32_t row_tail = tail_mask != 0 ? args.a[row * W + W - 1] & tail_mask : 0u;
      Out* out_row = out + row * N;
#pragma unroll
      for (int ni = 0; ni < kNI; ++ni) {
        float v[2];
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          // differ <= K < 2^31, so K - 2 differ fits in int32 although 2 differ may not: the
          // difference is taken modulo 2^32.
          const uint32_t differ = static_cast<uint32_t>(acc[mi][ni][2 * h + j]) -
                                  static_cast<uint32_t>(__popc(row_tail ^ col_tail[ni][j]));
          const int dot = static_cast<int>(static_cast<uint32_t>(args.K) - 2u * differ);
          v[j] = ieee_mul(ieee_mul(__int2float_rn(dot), row_scale), col_scale[ni][j]);
          if (has_bias) v[j] = ieee_add(v[j], col_bias[ni][j]);
        }
        const int64_t col = n0 + warp_n * kWN + ni * 8 + t * 2;
        if (args.paired_store) {
          if (col < N) store_out_pair(out_row + col, v[0], v[1]);
        } else {
          if (col < N) store_out(out_row + col, v[0]);
          if (col + 1 < N) store_out(out_row + col + 1, v[1]);
        }
      }
    }
  }
}

template <typename Out>
cudaError_t launch_binary_mm_typed(const BinaryMmArgs& args, cudaStream_t stream) {
  const bool aligned = args.W % 4 == 0 && is_aligned(args.a, 16) && is_aligned(args.b, 16);
  const auto kernel = aligned ? binary_mm_kernel<true, Out> : binary_mm_kernel<false, Out>;
  const cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes);
  if (err != cudaSuccess) return err;
  const int64_t blocks = ceil_div<int64_t>(args.M, kBM) * ceil_div<int64_t>(args.N, kBN);
  kernel<<<dim3(static_cast<unsigned>(blocks)), dim3(kThreads), kSmemBytes, stream>>>(args);
  return cudaGetLastError();
}

GemvArgs weight_only_args(const void* x, const void* w, const float* scale, const void* bias,
                          LowbitDtype bias_dtype, void* out, int64_t M, int64_t N, int64_t K,
                          int64_t row_stride) {
  GemvArgs args{};
  args.x = x;
  args.w = w;
  args.scale = scale;
  args.bias = bias;
  args.out = out;
  args.M = M;
  args.N = N;
  args.K = K;
  args.row_stride = row_stride;
  args.groups = 1;
  args.group_size = static_cast<uint32_t>(K);
  args.bias_dtype = bias_dtype;
  return args;
}

}  // namespace

cudaError_t launch_int8_weight_only_mm(const void* x, LowbitDtype x_dtype, const int8_t* w,
                                       const float* w_scale, int64_t groups, const void* bias,
                                       LowbitDtype bias_dtype, void* out, int64_t M, int64_t N,
                                       int64_t K, cudaStream_t stream) {
  if (groups < 1 || K % groups != 0) return cudaErrorInvalidValue;
  GemvArgs args = weight_only_args(x, w, w_scale, bias, bias_dtype, out, M, N, K, K);
  if (groups == 1) return launch_gemv<Int8Weights, false>(args, x_dtype, stream);
  args.groups = groups;
  args.group_size = static_cast<uint32_t>(K / groups);
  return launch_gemv<Int8Weights, true>(args, x_dtype, stream);
}

cudaError_t launch_pack_bits(const void* x, LowbitDtype x_dtype, int32_t* words, int64_t M,
                             int64_t K, cudaStream_t stream) {
  if (M < 0 || K < 0) return cudaErrorInvalidValue;
  if (M == 0 || K == 0) return cudaSuccess;
  uint32_t* dst = reinterpret_cast<uint32_t*>(words);
  switch (x_dtype) {
    case LowbitDtype::kFloat32:
      return launch_pack_typed(static_cast<const float*>(x), dst, M, K, stream);
    case LowbitDtype::kFloat16:
      return launch_pack_typed(static_cast<const __half*>(x), dst, M, K, stream);
    case LowbitDtype::kBFloat16:
      return launch_pack_typed(static_cast<const __nv_bfloat16*>(x), dst, M, K, stream);
    case LowbitDtype::kInt8:
      return launch_pack_typed(static_cast<const int8_t*>(x), dst, M, K, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

cudaError_t launch_binary_mm(const int32_t* a_bits, const int32_t* b_bits, const float* a_scale,
                             const float* b_scale, const void* bias, LowbitDtype bias_dtype,
                             void* out, LowbitDtype out_dtype, int64_t M, int64_t N, int64_t K,
                             cudaStream_t stream) {
  // The int32 accumulators count up to 32 W <= K + 31 differing bits.
  if (M < 0 || N < 0 || K < 1 || K > 0x7fffffff - 31) return cudaErrorInvalidValue;
  if (M == 0 || N == 0) return cudaSuccess;
  if (ceil_div<int64_t>(M, kBM) * ceil_div<int64_t>(N, kBN) > 0x7fffffff) {
    return cudaErrorInvalidValue;
  }
  if ((bias == nullptr) != (bias_dtype == LowbitDtype::kNone)) return cudaErrorInvalidValue;
  const int tail_bits = static_cast<int>(K % 32);
  const uint32_t tail_mask = tail_bits == 0 ? 0u : ~((1u << tail_bits) - 1u);
  BinaryMmArgs args{reinterpret_cast<const uint32_t*>(a_bits),
                    reinterpret_cast<const uint32_t*>(b_bits),
                    a_scale,
                    b_scale,
                    bias,
                    out,
                    M,
                    N,
                    ceil_div<int64_t>(K, 32),
                    static_cast<int>(K),
                    tail_mask,
                    bias_dtype,
                    false};
  switch (out_dtype) {
    case LowbitDtype::kFloat32:
      args.paired_store = N % 2 == 0 && is_aligned(out, 2 * sizeof(float));
      return launch_binary_mm_typed<float>(args, stream);
    case LowbitDtype::kFloat16:
      args.paired_store = N % 2 == 0 && is_aligned(out, 2 * sizeof(__half));
      return launch_binary_mm_typed<__half>(args, stream);
    case LowbitDtype::kBFloat16:
      args.paired_store = N % 2 == 0 && is_aligned(out, 2 * sizeof(__nv_bfloat16));
      return launch_binary_mm_typed<__nv_bfloat16>(args, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

cudaError_t launch_binary_weight_mm(const void* x, LowbitDtype x_dtype, const int32_t* w_bits,
                                    const float* alpha, const void* bias, LowbitDtype bias_dtype,
                                    void* out, int64_t M, int64_t N, int64_t K,
                                    cudaStream_t stream) {
  const GemvArgs args = weight_only_args(x, w_bits, alpha, bias, bias_dtype, out, M, N, K,
                                         ceil_div<int64_t>(K, 32));
  return launch_gemv<BinaryWeights, false>(args, x_dtype, stream);
}

cudaError_t launch_ternary_weight_mm(const void* x, LowbitDtype x_dtype, const int32_t* w_2bit,
                                     const float* alpha, const void* bias, LowbitDtype bias_dtype,
                                     void* out, int64_t M, int64_t N, int64_t K,
                                     cudaStream_t stream) {
  const GemvArgs args = weight_only_args(x, w_2bit, alpha, bias, bias_dtype, out, M, N, K,
                                         ceil_div<int64_t>(K, 16));
  return launch_gemv<TernaryWeights, false>(args, x_dtype, stream);
}

}  // namespace pycompress
