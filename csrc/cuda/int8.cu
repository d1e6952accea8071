// CUDA kernels of the int8 op family: per-token quantization and the int8 x int8 -> int32 GEMM on the
// integer tensor cores (IMMA, sm_80 / sm_90), with the dequantizing epilogue fused.
//
// EXPERIMENTAL: these kernels have been compiled (sm_80, sm_90a) but have not yet run on a GPU. The
// backend registry marks the CUDA int8 backend experimental until its tests pass on real hardware.
//
// Contract (pycompress/ops/int8.py is the reference; results must match it bit for bit):
//   quantize_per_token: amax = max_k |x[m, k]| (NaN-propagating); finite amax > 0:
//     scale = amax / 127, q = clamp(rint(x * (127 / amax)), -127, 127); amax == 0: scale 1, q 0;
//     non-finite amax: scale NaN, q 0.
//   int8_mm: out = cast((float(acc) * a_scale[m]) * b_scale[n] + bias[n]), acc exact (wrapping) int32.
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "pycompress/cuda_common.cuh"
#include "pycompress/int8_cuda.h"

namespace pycompress {
namespace {

// In PTX for the same reason as ieee_mul (cuda_common.cuh): --use_fast_math would flush subnormals.
__device__ __forceinline__ float ieee_div(float a, float b) {
  float r;
  asm("div.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}

// Round half to even, saturating to the int32 range; NaN becomes 0.
__device__ __forceinline__ int round_half_even(float x) {
  int r;
  asm("cvt.rni.s32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return r;
}

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T bits_as(unsigned short bits);
template <>
__device__ __forceinline__ __half bits_as<__half>(unsigned short bits) {
  return __ushort_as_half(bits);
}
template <>
__device__ __forceinline__ __nv_bfloat16 bits_as<__nv_bfloat16>(unsigned short bits) {
  return __ushort_as_bfloat16(bits);
}

// ---------------------------------------------------------------------------------------------------
// quantize_per_token: one block per row. The first kQuantCached vectors of each thread stay in
// registers between the absmax and the quantize phase, so rows up to kQuantCached * blockDim vectors
// are read from global memory once; longer rows re-read their tail (from L1/L2).

constexpr int kQuantCached = 4;
constexpr int kQuantMaxThreads = 1024;

// W consecutive elements of a row as loaded: one element, or 16 bytes (W = 16 / sizeof(T)) kept as raw
// words so that every load is a single 128-bit load.
template <typename T, int W>
struct RowChunk {
  static_assert(W * sizeof(T) == 16, "a vector chunk is 16 bytes");
  uint4 raw;
  __device__ __forceinline__ void load(const T* row, int64_t i) {
    raw = __ldg(reinterpret_cast<const uint4*>(row) + i);
  }
  __device__ __forceinline__ float at(int j) const {
    constexpr int kPerWord = 4 / sizeof(T);
    const int w = j / kPerWord;
    const uint32_t word = w == 0 ? raw.x : (w == 1 ? raw.y : (w == 2 ? raw.z : raw.w));
    if constexpr (sizeof(T) == 4) {
      return __uint_as_float(word);
    } else {
      const uint32_t bits = (word >> (16 * (j % kPerWord))) & 0xffffu;
      return to_float(bits_as<T>(static_cast<unsigned short>(bits)));
    }
  }
};

template <typename T>
struct RowChunk<T, 1> {
  T value;
  __device__ __forceinline__ void load(const T* row, int64_t i) { value = row[i]; }
  __device__ __forceinline__ float at(int) const { return to_float(value); }
};

// |x| as float bits. The bits of a non-negative float order like its value, with +Inf above every
// finite value and NaN above +Inf, so an unsigned max over them is the NaN-propagating absmax.
template <typename T, int W>
__device__ __forceinline__ uint32_t abs_bits_max(uint32_t acc, const RowChunk<T, W>& c) {
#pragma unroll
  for (int j = 0; j < W; ++j) {
    const uint32_t bits = __float_as_uint(c.at(j)) & 0x7fffffffu;
    acc = bits > acc ? bits : acc;
  }
  return acc;
}

__device__ __forceinline__ uint32_t block_max(uint32_t v) {
  __shared__ uint32_t warp_max[kQuantMaxThreads / 32];
  v = __reduce_max_sync(0xffffffffu, v);
  if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x >> 5] = v;
  __syncthreads();
  uint32_t m = 0;
  for (unsigned w = 0; w < blockDim.x / 32; ++w) m = warp_max[w] > m ? warp_max[w] : m;
  return m;
}

template <typename T, int W>
__device__ __forceinline__ void quantize_store(int8_t* dst, const RowChunk<T, W>& c, float inv,
                                               bool finite_nonzero) {
  uint32_t bytes[W];
#pragma unroll
  for (int j = 0; j < W; ++j) {
    int r = round_half_even(ieee_mul(c.at(j), inv));
    r = r > 127 ? 127 : (r < -127 ? -127 : r);
    bytes[j] = finite_nonzero ? static_cast<uint32_t>(r) & 0xffu : 0u;
  }
  if constexpr (W == 1) {
    *dst = static_cast<int8_t>(bytes[0]);
  } else {
    uint32_t words[W / 4];
#pragma unroll
    for (int w = 0; w < W / 4; ++w) {
      words[w] = bytes[4 * w] | (bytes[4 * w + 1] << 8) | (bytes[4 * w + 2] << 16) |
                 (bytes[4 * w + 3] << 24);
    }
    if constexpr (W == 4) {
      *reinterpret_cast<uint32_t*>(dst) = words[0];
    } else {
      static_assert(W == 8, "16-byte loads of float32/float16/bfloat16 hold 4 or 8 elements");
      *reinterpret_cast<uint2*>(dst) = make_uint2(words[0], words[1]);
    }
  }
}

// W elements per load: 16 bytes when the launcher found the rows 16-byte aligned, else 1.
template <typename T, int W>
__global__ void __launch_bounds__(kQuantMaxThreads)
    quantize_per_token_kernel(const T* __restrict__ x, int8_t* __restrict__ q,
                              float* __restrict__ scale, int64_t K) {
  using Chunk = RowChunk<T, W>;
  const int64_t row = blockIdx.x;
  const int64_t nvec = K / W;
  const T* __restrict__ xr = x + row * K;
  int8_t* __restrict__ qr = q + row * K;
  const int64_t stride = blockDim.x;

  Chunk cached[kQuantCached];
  uint32_t amax_bits = 0;
#pragma unroll
  for (int i = 0; i < kQuantCached; ++i) {
    const int64_t v = threadIdx.x + i * stride;
    if (v < nvec) {
      cached[i].load(xr, v);
      amax_bits = abs_bits_max(amax_bits, cached[i]);
    }
  }
  for (int64_t v = threadIdx.x + kQuantCached * stride; v < nvec; v += stride) {
    Chunk c;
    c.load(xr, v);
    amax_bits = abs_bits_max(amax_bits, c);
  }
  amax_bits = block_max(amax_bits);

  const bool finite = amax_bits < 0x7f800000u;
  const bool finite_nonzero = finite && amax_bits != 0;
  const float amax = __uint_as_float(amax_bits);
  const float inv = finite_nonzero ? ieee_div(127.0f, amax) : 0.0f;
  if (threadIdx.x == 0) {
    scale[row] = finite_nonzero ? ieee_div(amax, 127.0f)
                                : (finite ? 1.0f : __uint_as_float(0x7fc00000u));
  }

#pragma unroll
  for (int i = 0; i < kQuantCached; ++i) {
    const int64_t v = threadIdx.x + i * stride;
    if (v < nvec) quantize_store(qr + v * W, cached[i], inv, finite_nonzero);
  }
  for (int64_t v = threadIdx.x + kQuantCached * stride; v < nvec; v += stride) {
    Chunk c;
    c.load(xr, v);
    quantize_store(qr + v * W, c, inv, finite_nonzero);
  }
}

template <typename T>
cudaError_t launch_quantize_typed(const T* x, int8_t* q, float* scale, int64_t M, int64_t K,
                                  cudaStream_t stream) {
  constexpr int W = 16 / sizeof(T);
  const bool vectorised = K % W == 0 && is_aligned(x, 16) && is_aligned(q, W);
  const int64_t nvec = vectorised ? K / W : K;
  int64_t threads = ceil_div<int64_t>(ceil_div<int64_t>(nvec, kQuantCached), 32) * 32;
  threads = threads < 32 ? 32 : (threads > kQuantMaxThreads ? kQuantMaxThreads : threads);
  const dim3 grid(static_cast<unsigned>(M));
  const dim3 block(static_cast<unsigned>(threads));
  if (vectorised) {
    quantize_per_token_kernel<T, W><<<grid, block, 0, stream>>>(x, q, scale, K);
  } else {
    quantize_per_token_kernel<T, 1><<<grid, block, 0, stream>>>(x, q, scale, K);
  }
  return cudaGetLastError();
}

// ---------------------------------------------------------------------------------------------------
// int8_mm: block tile 128 x 128 x 64, 8 warps as 2 (M) x 4 (N), warp tile 64 x 32 = 4 x 4 IMMA
// m16n8k32 tiles. A [M, K] and B [N, K] both keep K contiguous, which is the "row.col" operand order
// of mma, so both tiles are staged the same way: a kStages-deep cp.async ring of 64-byte rows,
// read with ldmatrix (an 8 x 16-byte ldmatrix matrix is exactly the 8 x 16 int8 fragment of mma).

constexpr int kBM = 128;
constexpr int kBN = 128;
constexpr int kBK = 64;
constexpr int kStages = 4;
constexpr int kWarpsM = 2;
constexpr int kWarpsN = 4;
constexpr int kThreads = 32 * kWarpsM * kWarpsN;
constexpr int kWM = kBM / kWarpsM;
constexpr int kWN = kBN / kWarpsN;
constexpr int kMI = kWM / 16;
constexpr int kNI = kWN / 8;
constexpr int kTileABytes = kBM * kBK;
constexpr int kTileBBytes = kBN * kBK;
constexpr int kStageBytes = kTileABytes + kTileBBytes;
constexpr int kSmemBytes = kStages * kStageBytes;
// Blocks walk kGroupM tile rows at a time, so that concurrently running blocks share A and B tiles in L2.
constexpr int kGroupM = 8;

static_assert(kBK == kSwizzleRowBytes, "tile rows are swizzled as whole 64-byte rows");
static_assert(kNI % 2 == 0, "B fragments are loaded two n8 tiles per ldmatrix.x4");
static_assert((kBM * kBK / 16) % kThreads == 0 && (kBN * kBK / 16) % kThreads == 0,
              "every thread copies the same number of 16-byte chunks");

struct Int8MmArgs {
  const int8_t* a;
  const int8_t* b;
  const float* a_scale;
  const float* b_scale;
  const void* bias;
  void* out;
  int64_t M;
  int64_t N;
  int64_t K;
  Int8Dtype bias_dtype;
  bool paired_store;  // N even and out aligned to two elements: store column pairs at once
};

__device__ __forceinline__ void mma_s8(int (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Stages rows [row0, row0 + kRows) x columns [k0, k0 + kBK) of the row-major [rows, K] matrix g into
// a swizzled shared tile, with zeros outside the matrix (zero rows and columns add nothing to acc).
// kAligned: K % 16 == 0 and g 16-byte aligned, so every in-range chunk is a whole aligned 16 bytes
// and goes by cp.async; otherwise bytes are gathered one by one and stored synchronously, which the
// pipeline's barriers order just as well.
template <bool kAligned, int kRows>
__device__ __forceinline__ void load_tile(uint32_t tile, const int8_t* __restrict__ g, int64_t rows,
                                          int64_t K, int64_t row0, int64_t k0) {
  constexpr int kChunksPerThread = kRows * kBK / 16 / kThreads;
#pragma unroll
  for (int i = 0; i < kChunksPerThread; ++i) {
    const int id = static_cast<int>(threadIdx.x) + i * kThreads;
    const int r = id >> 2;
    const int c = id & 3;
    const int64_t gr = row0 + r;
    const int64_t gk = k0 + c * 16;
    const uint32_t dst = tile + swizzle(r, c);
    if constexpr (kAligned) {
      const bool valid = gr < rows && gk < K;
      cp_async_16(dst, valid ? g + gr * K + gk : g, valid);
    } else {
      uint32_t w[4] = {0u, 0u, 0u, 0u};
      if (gr < rows) {
        const int8_t* src = g + gr * K;
#pragma unroll
        for (int e = 0; e < 16; ++e) {
          if (gk + e < K) {
            w[e >> 2] |= static_cast<uint32_t>(static_cast<uint8_t>(src[gk + e])) << (8 * (e & 3));
          }
        }
      }
      st_shared_16(dst, w);
    }
  }
}

__device__ __forceinline__ float load_bias(const void* bias, Int8Dtype dtype, int64_t i) {
  switch (dtype) {
    case Int8Dtype::kFloat16:
      return __half2float(static_cast<const __half*>(bias)[i]);
    case Int8Dtype::kBFloat16:
      return __bfloat162float(static_cast<const __nv_bfloat16*>(bias)[i]);
    default:
      return static_cast<const float*>(bias)[i];
  }
}

template <bool kAligned, typename Out>
__global__ void __launch_bounds__(kThreads, 2) int8_mm_kernel(const Int8MmArgs args) {
  extern __shared__ __align__(128) uint8_t smem[];
  const uint32_t smem_base = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const int64_t M = args.M;
  const int64_t N = args.N;
  const int64_t K = args.K;

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

  auto load_stage = [&](int stage, int kt) {
    const uint32_t tile_a = smem_base + stage * kStageBytes;
    const int64_t k0 = static_cast<int64_t>(kt) * kBK;
    load_tile<kAligned, kBM>(tile_a, args.a, M, K, m0, k0);
    load_tile<kAligned, kBN>(tile_a + kTileABytes, args.b, N, K, n0, k0);
  };

  int acc[kMI][kNI][4];
#pragma unroll
  for (int mi = 0; mi < kMI; ++mi)
#pragma unroll
    for (int ni = 0; ni < kNI; ++ni)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[mi][ni][j] = 0;

  const int k_tiles = static_cast<int>(ceil_div<int64_t>(K, kBK));
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < k_tiles) load_stage(s, s);
    cp_async_commit();
  }

  // ldmatrix.x4 lane roles: lanes 8j..8j+7 give the row addresses of matrix j. For A, matrices
  // 0..3 are (rows 0-7, k 0-15), (rows 8-15, k 0-15), (rows 0-7, k 16-31), (rows 8-15, k 16-31) of
  // a 16 x 32 tile, which land in a0..a3 of mma. For B they are (n 0-7, k 0-15), (n 0-7, k 16-31),
  // (n 8-15, k 0-15), (n 8-15, k 16-31): b0, b1 of two adjacent n8 tiles.
  const int a_row = warp_m * kWM + (lane & 15);
  const int a_chunk = lane >> 4;
  const int b_row = warp_n * kWN + (lane & 7) + ((lane >> 4) << 3);
  const int b_chunk = (lane >> 3) & 1;

  // Before iteration kt, kStages - 1 + kt groups were committed and group g holds tile g; waiting
  // until at most kStages - 2 are pending means tile kt has landed. The barrier then also proves
  // that every warp is done with the stage consumed in iteration kt - 1, which is refilled next.
  for (int kt = 0; kt < k_tiles; ++kt) {
    cp_async_wait<kStages - 2>();
    __syncthreads();
    const int next = kt + kStages - 1;
    if (next < k_tiles) load_stage(next % kStages, next);
    cp_async_commit();

    const uint32_t tile_a = smem_base + (kt % kStages) * kStageBytes;
    const uint32_t tile_b = tile_a + kTileABytes;
#pragma unroll
    for (int ks = 0; ks < kBK / 32; ++ks) {
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
#pragma unroll
      for (int mi = 0; mi < kMI; ++mi)
#pragma unroll
        for (int ni = 0; ni < kNI; ++ni) mma_s8(acc[mi][ni], af[mi], bf[ni]);
    }
  }

  // Accumulator fragment: lane holds rows g and g + 8, columns 2t and 2t + 1 of each 16 x 8 tile.
  const int g = lane >> 2;
  const int t = lane & 3;
  const bool has_bias = args.bias != nullptr;
  float col_scale[kNI][2];
  float col_bias[kNI][2];
#pragma unroll
  for (int ni = 0; ni < kNI; ++ni) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int64_t col = n0 + warp_n * kWN + ni * 8 + t * 2 + j;
      const bool in = col < N;
      col_scale[ni][j] = in ? args.b_scale[col] : 0.0f;
      col_bias[ni][j] = in && has_bias ? load_bias(args.bias, args.bias_dtype, col) : 0.0f;
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
      Out* out_row = out + row * N;
#pragma unroll
      for (int ni = 0; ni < kNI; ++ni) {
        float v[2];
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          v[j] = ieee_mul(ieee_mul(__int2float_rn(acc[mi][ni][2 * h + j]), row_scale),
                          col_scale[ni][j]);
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
cudaError_t launch_int8_mm_typed(const Int8MmArgs& args, cudaStream_t stream) {
  const bool aligned = args.K % 16 == 0 && is_aligned(args.a, 16) && is_aligned(args.b, 16);
  const auto kernel = aligned ? int8_mm_kernel<true, Out> : int8_mm_kernel<false, Out>;
  const cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes);
  if (err != cudaSuccess) return err;
  const int64_t blocks = ceil_div<int64_t>(args.M, kBM) * ceil_div<int64_t>(args.N, kBN);
  kernel<<<dim3(static_cast<unsigned>(blocks)), dim3(kThreads), kSmemBytes, stream>>>(args);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_quantize_per_token(const void* x, Int8Dtype x_dtype, int8_t* q, float* scale,
                                      int64_t M, int64_t K, cudaStream_t stream) {
  if (M < 0 || K < 0 || M > 0x7fffffff) return cudaErrorInvalidValue;
  if (M == 0) return cudaSuccess;
  switch (x_dtype) {
    case Int8Dtype::kFloat32:
      return launch_quantize_typed(static_cast<const float*>(x), q, scale, M, K, stream);
    case Int8Dtype::kFloat16:
      return launch_quantize_typed(static_cast<const __half*>(x), q, scale, M, K, stream);
    case Int8Dtype::kBFloat16:
      return launch_quantize_typed(static_cast<const __nv_bfloat16*>(x), q, scale, M, K, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

cudaError_t launch_int8_mm(const int8_t* a, const int8_t* b, const float* a_scale,
                           const float* b_scale, const void* bias, Int8Dtype bias_dtype, void* out,
                           Int8Dtype out_dtype, int64_t M, int64_t N, int64_t K,
                           cudaStream_t stream) {
  if (M < 0 || N < 0 || K < 0 || K > 0x7fffffff - kBK) return cudaErrorInvalidValue;
  if (M == 0 || N == 0) return cudaSuccess;
  if (ceil_div<int64_t>(M, kBM) * ceil_div<int64_t>(N, kBN) > 0x7fffffff) {
    return cudaErrorInvalidValue;
  }
  if ((bias == nullptr) != (bias_dtype == Int8Dtype::kNone)) return cudaErrorInvalidValue;
  Int8MmArgs args{a, b, a_scale, b_scale, bias, out, M, N, K, bias_dtype, false};
  switch (out_dtype) {
    case Int8Dtype::kFloat32:
      args.paired_store = N % 2 == 0 && is_aligned(out, 2 * sizeof(float));
      return launch_int8_mm_typed<float>(args, stream);
    case Int8Dtype::kFloat16:
      args.paired_store = N % 2 == 0 && is_aligned(out, 2 * sizeof(__half));
      return launch_int8_mm_typed<__half>(args, stream);
    case Int8Dtype::kBFloat16:
      args.paired_store = N % 2 == 0 && is_aligned(out, 2 * sizeof(__nv_bfloat16));
      return launch_int8_mm_typed<__nv_bfloat16>(args, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace pycompress
