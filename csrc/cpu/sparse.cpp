// CPU kernels of the sparse op family: csr_mm and bsr_mm (layouts in pycompress/ops/sparse.py), and the
// slab helpers that csrc/cpu/sparse24.cpp shares (declared in pycompress/cpu_kernels.h).
//
// Two paths, picked at every call by pycompress::cpu::lowbit_isa() (PYCOMPRESS_CPU_ISA=scalar forces the
// portable one): AVX2 + FMA (compiled with target attributes) and scalar.
//
// Both AVX2 kernels compute y^T against x^T packed once per call into slabs of W = 8 T columns of x
// (pack_x_slabs): a stored weight w[n, k] is broadcast and multiplied by row k of a slab, T full-width
// FMAs whatever the sparsity pattern, accumulated in registers along the whole weight row.
// - csr_mm: one weight row at a time, its entries split round robin over U partial sums (U T >= 8
//   accumulators, enough to cover the FMA latency); the rows of x^T it touches stay in L2 (a slab is
//   K W floats). Tasks are (slab, block of rows), slab-major, so each thread keeps its slab.
// - bsr_mm: a micro-tile of R rows of a block row against the T vectors of a slab row; the B slab rows
//   of a block are consecutive, so they stream like a dense GEMM's.
// The index arrays are checked (O(N + nnz)) before any of them is used as an address.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <optional>

#include "pycompress/cpu_features.h"
#include "pycompress/cpu_kernels.h"

namespace pycompress::cpu {

#define PYC_AVX2_FMA __attribute__((target("avx2,fma,f16c")))

namespace {

// ---------------------------------------------------------------------------------------------------
// Slab packing

// Columns [k0, k1) of slab s (at dst, its row k at dst + k W): 8 rows of x at a time, 8 x 8 transposes.
template <typename T>
PYC_AVX2_FMA void pack_slab_avx2(const T* x, int64_t M, int64_t K, int64_t W, int64_t s, int64_t k0, int64_t k1,
                                 float* dst) {
  for (int64_t j0 = 0; j0 < W; j0 += 8) {
    const T* rows[8];
    bool valid[8];
    for (int i = 0; i < 8; ++i) {
      const int64_t m = s * W + j0 + i;
      valid[i] = m < M;
      rows[i] = x + std::min(m, M - 1) * K;
    }
    int64_t k = k0;
    for (; k + 8 <= k1; k += 8) {
      __m256 r[8];
      for (int i = 0; i < 8; ++i) {
        r[i] = valid[i] ? load8(rows[i] + k) : _mm256_setzero_ps();
      }
      transpose8(r);
      for (int c = 0; c < 8; ++c) {
        _mm256_storeu_ps(dst + (k + c) * W + j0, r[c]);
      }
    }
    for (; k < k1; ++k) {
      for (int i = 0; i < 8; ++i) {
        dst[k * W + j0 + i] = valid[i] ? to_float(rows[i][k]) : 0.0f;
      }
    }
  }
}

template <typename T>
void pack_slab_scalar(const T* x, int64_t M, int64_t K, int64_t W, int64_t s, int64_t k0, int64_t k1, float* dst) {
  for (int64_t k = k0; k < k1; ++k) {
    for (int64_t j = 0; j < W; ++j) {
      const int64_t m = s * W + j;
      dst[k * W + j] = m < M ? to_float(x[m * K + k]) : 0.0f;
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Gather micro-kernel

template <int T>
PYC_AVX2_FMA void gather_rows_t(const float* slab, const int32_t* start, const int32_t* idx, const float* vals,
                                int64_t rows, float* out, int64_t ldo, bool accumulate) {
  constexpr int64_t W = 8 * T;
  // U partial sums, U T >= 8 accumulators: enough independent FMAs to cover their latency.
  constexpr int U = (8 + T - 1) / T;
  for (int64_t r = 0; r < rows; ++r) {
    // The loops over U and T are unrolled before GCC's scalar replacement of acc, which could otherwise
    // leave it in memory, a store per FMA.
    __m256 acc[U][T];
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u) {
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) {
        acc[u][t] = _mm256_setzero_ps();
      }
    }
    int64_t i = start[r];
    const int64_t e = start[r + 1];
    for (; i + U <= e; i += U) {
#pragma GCC unroll 8
      for (int u = 0; u < U; ++u) {
        const float* xr = slab + static_cast<int64_t>(idx[i + u]) * W;
        const __m256 v = _mm256_broadcast_ss(vals + i + u);
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
          acc[u][t] = _mm256_fmadd_ps(v, _mm256_loadu_ps(xr + 8 * t), acc[u][t]);
        }
      }
    }
    for (; i < e; ++i) {
      const float* xr = slab + static_cast<int64_t>(idx[i]) * W;
      const __m256 v = _mm256_broadcast_ss(vals + i);
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) {
        acc[0][t] = _mm256_fmadd_ps(v, _mm256_loadu_ps(xr + 8 * t), acc[0][t]);
      }
    }
    float* o = out + r * ldo;
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      __m256 sum = acc[0][t];
#pragma GCC unroll 8
      for (int u = 1; u < U; ++u) {
        sum = _mm256_add_ps(sum, acc[u][t]);
      }
      if (accumulate) {
        sum = _mm256_add_ps(sum, _mm256_loadu_ps(o + 8 * t));
      }
      _mm256_storeu_ps(o + 8 * t, sum);
    }
  }
}

template <typename OutT>
void store_transposed_scalar(const float* tile, int64_t ldt, int64_t rows, int64_t cols, int64_t n0, int64_t m0,
                             const float* bias, OutT* out, int64_t N) {
  for (int64_t j = 0; j < cols; ++j) {
    OutT* o = out + (m0 + j) * N + n0;
    for (int64_t r = 0; r < rows; ++r) {
      float v = tile[r * ldt + j];
      if (bias != nullptr) {
        v = v + bias[n0 + r];
      }
      o[r] = static_cast<OutT>(v);
    }
  }
}

// 8 x 8 blocks of the tile transposed in registers, so that both the tile and out are read and written
// a vector at a time (with short K, the epilogue is a good part of the work).
template <typename OutT>
PYC_AVX2_FMA void store_transposed_avx2(const float* tile, int64_t ldt, int64_t rows, int64_t cols, int64_t n0,
                                        int64_t m0, const float* bias, OutT* out, int64_t N) {
  const int64_t rows8 = rows / 8 * 8;
  const int64_t cols8 = cols / 8 * 8;
  for (int64_t r0 = 0; r0 < rows8; r0 += 8) {
    const __m256 b = bias != nullptr ? _mm256_loadu_ps(bias + n0 + r0) : _mm256_setzero_ps();
    for (int64_t j0 = 0; j0 < cols8; j0 += 8) {
      __m256 v[8];
      for (int i = 0; i < 8; ++i) {
        v[i] = _mm256_loadu_ps(tile + (r0 + i) * ldt + j0);
      }
      transpose8(v);
      for (int c = 0; c < 8; ++c) {
        store_lanes(out + (m0 + j0 + c) * N + n0 + r0, bias != nullptr ? _mm256_add_ps(v[c], b) : v[c], 8);
      }
    }
    store_transposed_scalar(tile + r0 * ldt + cols8, ldt, 8, cols - cols8, n0 + r0, m0 + cols8, bias, out, N);
  }
  store_transposed_scalar(tile + rows8 * ldt, ldt, rows - rows8, cols, n0 + rows8, m0, bias, out, N);
}

}  // namespace

int64_t slab_vectors(int64_t M) { return std::clamp<int64_t>(ceil_div(M, 8), 1, 4); }

void pack_x_slabs(const at::Tensor& x, int64_t W, float* dst, Isa isa) {
  const int64_t M = x.size(0);
  const int64_t K = x.size(1);
  const int64_t slabs = ceil_div(M, W);
  constexpr int64_t kChunk = 256;
  const int64_t chunks = ceil_div(K, kChunk);
  auto run = [&](auto tag) {
    using T = decltype(tag);
    const T* src = x.const_data_ptr<T>();
    at::parallel_for(0, slabs * chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t s = t / chunks;
        const int64_t k0 = (t % chunks) * kChunk;
        const int64_t k1 = std::min(K, k0 + kChunk);
        float* slab = dst + s * K * W;
        if (isa == Isa::kAvx2) {
          pack_slab_avx2(src, M, K, W, s, k0, k1, slab);
        } else {
          pack_slab_scalar(src, M, K, W, s, k0, k1, slab);
        }
      }
    });
  };
  dispatch_float(x.scalar_type(), "pack_x_slabs", "x", run);
}

void gather_rows_avx2(int T, const float* slab, const int32_t* start, const int32_t* idx, const float* vals,
                      int64_t rows, float* out, int64_t ldo, bool accumulate) {
  switch (T) {
    case 1:
      gather_rows_t<1>(slab, start, idx, vals, rows, out, ldo, accumulate);
      break;
    case 2:
      gather_rows_t<2>(slab, start, idx, vals, rows, out, ldo, accumulate);
      break;
    case 3:
      gather_rows_t<3>(slab, start, idx, vals, rows, out, ldo, accumulate);
      break;
    case 4:
      gather_rows_t<4>(slab, start, idx, vals, rows, out, ldo, accumulate);
      break;

    default:
      TORCH_CHECK(false, "gather_rows_avx2: T must be 1 to 4 (got ", T, ")");
  }
}

void store_transposed(const float* tile, int64_t ldt, int64_t rows, int64_t cols, int64_t n0, int64_t m0,
                      const float* bias, const at::Tensor& out, Isa isa) {
  auto run = [&](auto* o) {
    if (isa == Isa::kAvx2) {
      store_transposed_avx2(tile, ldt, rows, cols, n0, m0, bias, o, out.size(1));
    } else {
      store_transposed_scalar(tile, ldt, rows, cols, n0, m0, bias, o, out.size(1));
    }
  };
  switch (out.scalar_type()) {
    case at::kFloat:
      run(out.mutable_data_ptr<float>());
      break;
    case at::kHalf:
      run(out.mutable_data_ptr<c10::Half>());
      break;
    case at::kBFloat16:
      run(out.mutable_data_ptr<c10::BFloat16>());
      break;
    default:
      TORCH_CHECK(false, "the output must be float32, float16 or bfloat16 (got ", out.scalar_type(), ")");
  }
}

namespace {

// ---------------------------------------------------------------------------------------------------
// Shared by csr_mm and bsr_mm

// The CSR invariants of (crow, col) for a matrix of `columns` (block) columns; the messages are those of
// the reference (pycompress/ops/sparse.py), with the bound named by columns_doc ("K" or "K / B").
void check_index_arrays(const char* op, const at::Tensor& crow, const at::Tensor& col, int64_t columns,
                        const char* columns_doc) {
  const int32_t* c = crow.const_data_ptr<int32_t>();
  const int64_t rows = crow.numel() - 1;
  const int64_t nnz = col.numel();
  bool ordered = c[0] == 0 && c[rows] == nnz;
  for (int64_t r = 0; r < rows; ++r) {
    ordered &= c[r + 1] >= c[r];
  }
  TORCH_CHECK_VALUE(ordered, op, ": crow must start at 0, never decrease and end at col.numel() = ", nnz,
                    " (got crow[0] = ", c[0], ", crow[", rows, "] = ", c[rows], ")");
  const int32_t* k = col.const_data_ptr<int32_t>();
  std::atomic<bool> bad{false};
  at::parallel_for(0, nnz, 65536, [&](int64_t begin, int64_t end) {
    bool out_of_range = false;
    for (int64_t i = begin; i < end; ++i) {
      // Unsigned, so that negative indices compare as large ones.
      out_of_range |= static_cast<uint32_t>(k[i]) >= static_cast<uint64_t>(columns);
    }
    if (out_of_range) {
      bad.store(true, std::memory_order_relaxed);
    }
  });
  TORCH_CHECK_VALUE(!bad.load(), op, ": col must hold (block) column indices in [0, ", columns_doc, ") (", columns_doc,
                    " = ", columns, ")");
}

// The checks on the arguments that the kernels rely on (the public op has validated them already).
void check_sparse_args(const char* op, const at::Tensor& x, const at::Tensor& crow, const at::Tensor& col,
                       const at::Tensor& values, const std::optional<at::Tensor>& bias, int64_t N) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), op, ": x must be a contiguous [M, K] tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16, op,
              ": x must be float32, float16 or bfloat16 (got ", x.scalar_type(), ")");
  TORCH_CHECK(crow.dim() == 1 && crow.numel() >= 1 && crow.scalar_type() == at::kInt && crow.is_contiguous(), op,
              ": crow must be a contiguous int32 [rows + 1] tensor");
  TORCH_CHECK(col.dim() == 1 && col.scalar_type() == at::kInt && col.is_contiguous(), op,
              ": col must be a contiguous int32 [nnz] tensor");
  TORCH_CHECK(values.scalar_type() == x.scalar_type() && values.is_contiguous() && values.size(0) == col.numel(), op,
              ": values must be contiguous, of x's dtype, with one entry per col index");
  TORCH_CHECK(!bias.has_value() || bias->numel() == N, op, ": bias must have N = ", N, " elements");
}

at::Tensor as_float(const at::Tensor& t) { return t.scalar_type() == at::kFloat ? t : t.to(at::kFloat).contiguous(); }

at::Tensor float_bias(const std::optional<at::Tensor>& bias) {
  return bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
}

const float* data_or_null(const at::Tensor& t) { return t.defined() ? t.const_data_ptr<float>() : nullptr; }

// Output rows per task and per tile of the epilogue.
constexpr int64_t kRowsPerTask = 64;

// ---------------------------------------------------------------------------------------------------
// csr_mm

void csr_mm_scalar(const at::Tensor& x, const int32_t* crow, const int32_t* col, const float* vals,
                   const float* bias, at::Tensor& out) {
  const at::Tensor xf = as_float(x);
  const float* xp = xf.const_data_ptr<float>();
  const int64_t M = x.size(0);
  const int64_t K = x.size(1);
  const int64_t N = out.size(1);
  at::parallel_for(0, ceil_div(N, kRowsPerTask), 1, [&](int64_t begin, int64_t end) {
    auto tile = aligned_buffer<float>(kRowsPerTask * M, "csr_mm");
    for (int64_t b = begin; b < end; ++b) {
      const int64_t n0 = b * kRowsPerTask;
      const int64_t rows = std::min(kRowsPerTask, N - n0);
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t m = 0; m < M; ++m) {
          float s = 0.0f;
          for (int64_t i = crow[n0 + r]; i < crow[n0 + r + 1]; ++i) {
            s += vals[i] * xp[m * K + col[i]];
          }
          tile[r * M + m] = s;
        }
      }
      store_transposed(tile.get(), M, rows, M, n0, 0, bias, out, Isa::kScalar);
    }
  });
}

void csr_mm_avx2(const at::Tensor& x, const int32_t* crow, const int32_t* col, const float* vals, const float* bias,
                 at::Tensor& out) {
  const int64_t M = x.size(0);
  const int64_t K = x.size(1);
  const int64_t N = out.size(1);
  const int T = static_cast<int>(slab_vectors(M));
  const int64_t W = 8 * T;
  const int64_t slabs = ceil_div(M, W);
  auto packed = aligned_buffer<float>(slabs * K * W, "csr_mm");
  pack_x_slabs(x, W, packed.get(), Isa::kAvx2);
  const int64_t blocks = ceil_div(N, kRowsPerTask);
  at::parallel_for(0, slabs * blocks, 1, [&](int64_t begin, int64_t end) {
    auto tile = aligned_buffer<float>(kRowsPerTask * W, "csr_mm");
    for (int64_t t = begin; t < end; ++t) {
      const int64_t s = t / blocks;
      const int64_t n0 = (t % blocks) * kRowsPerTask;
      const int64_t rows = std::min(kRowsPerTask, N - n0);
      gather_rows_avx2(T, packed.get() + s * K * W, crow + n0, col, vals, rows, tile.get(), W, false);
      store_transposed(tile.get(), W, rows, std::min(W, M - s * W), n0, s * W, bias, out, Isa::kAvx2);
    }
  });
}

at::Tensor csr_mm(const at::Tensor& x, const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values,
                  const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "csr_mm";
  const int64_t N = crow.numel() - 1;
  check_sparse_args(op, x, crow, col, values, bias, N);
  TORCH_CHECK(values.dim() == 1, op, ": values must be [nnz]");
  const Isa isa = lowbit_isa();
  check_index_arrays(op, crow, col, x.size(1), "K");
  at::Tensor out = at::empty({x.size(0), N}, x.options());
  if (out.numel() == 0) {
    return out;
  }
  const at::Tensor vf = as_float(values);
  const at::Tensor bf = float_bias(bias);
  const int32_t* crow_p = crow.const_data_ptr<int32_t>();
  const int32_t* col_p = col.const_data_ptr<int32_t>();
  if (isa == Isa::kAvx2) {
    csr_mm_avx2(x, crow_p, col_p, vf.const_data_ptr<float>(), data_or_null(bf), out);
  } else {
    csr_mm_scalar(x, crow_p, col_p, vf.const_data_ptr<float>(), data_or_null(bf), out);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------
// bsr_mm

struct BsrArgs {
  const int32_t* crow;  // [N / B + 1]
  const int32_t* col;  // [nnzb] block columns
  const float* vals;  // [nnzb, B, B]
  const float* bias;  // [N] or nullptr
  int64_t B;
};

void bsr_mm_scalar(const at::Tensor& x, const BsrArgs& p, at::Tensor& out) {
  const at::Tensor xf = as_float(x);
  const float* xp = xf.const_data_ptr<float>();
  const int64_t M = x.size(0);
  const int64_t K = x.size(1);
  const int64_t B = p.B;
  const int64_t block_rows = out.size(1) / B;
  at::parallel_for(0, block_rows, 1, [&](int64_t begin, int64_t end) {
    auto tile = aligned_buffer<float>(B * M, "bsr_mm");
    for (int64_t br = begin; br < end; ++br) {
      for (int64_t i = 0; i < B; ++i) {
        for (int64_t m = 0; m < M; ++m) {
          float s = 0.0f;
          for (int64_t b = p.crow[br]; b < p.crow[br + 1]; ++b) {
            const float* w = p.vals + (b * B + i) * B;
            const float* xr = xp + m * K + static_cast<int64_t>(p.col[b]) * B;
            for (int64_t j = 0; j < B; ++j) {
              s += w[j] * xr[j];
            }
          }
          tile[i * M + m] = s;
        }
      }
      store_transposed(tile.get(), M, B, M, br * B, 0, p.bias, out, Isa::kScalar);
    }
  });
}

// Rows i0 .. i0 + R - 1 of block row br against one slab: tile[(i0 + r) W + j] for j < W = 8 T.
template <int R, int T>
PYC_AVX2_FMA void bsr_tile(const float* slab, const BsrArgs& p, int64_t br, int64_t i0, float* tile) {
  constexpr int64_t W = 8 * T;
  const int64_t B = p.B;
  // Every loop over R and T is unrolled before GCC's scalar replacement of acc, which otherwise stays in
  // memory across the loops over blocks and columns, a store per FMA.
  __m256 acc[R][T];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      acc[r][t] = _mm256_setzero_ps();
    }
  }
  for (int64_t b = p.crow[br]; b < p.crow[br + 1]; ++b) {
    const float* xb = slab + static_cast<int64_t>(p.col[b]) * B * W;
    const float* wb = p.vals + (b * B + i0) * B;
    for (int64_t j = 0; j < B; ++j) {
      __m256 xv[T];
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) {
        xv[t] = _mm256_loadu_ps(xb + j * W + 8 * t);
      }
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const __m256 w = _mm256_broadcast_ss(wb + r * B + j);
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
          acc[r][t] = _mm256_fmadd_ps(w, xv[t], acc[r][t]);
        }
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
      _mm256_storeu_ps(tile + (i0 + r) * W + 8 * t, acc[r][t]);
    }
  }
}

// R rows per micro-tile: R T accumulators, at most 12 so that they, T slab vectors and a broadcast fit
// in the 16 registers. R divides every block size (16, 32, 64).
template <int T>
void bsr_block_row(const float* slab, const BsrArgs& p, int64_t br, float* tile) {
  constexpr int R = T == 4 ? 2 : 4;
  for (int64_t i0 = 0; i0 < p.B; i0 += R) {
    bsr_tile<R, T>(slab, p, br, i0, tile);
  }
}

void bsr_mm_avx2(const at::Tensor& x, const BsrArgs& p, at::Tensor& out) {
  const int64_t M = x.size(0);
  const int64_t K = x.size(1);
  const int64_t B = p.B;
  const int64_t block_rows = out.size(1) / B;
  const int T = static_cast<int>(slab_vectors(M));
  const int64_t W = 8 * T;
  const int64_t slabs = ceil_div(M, W);
  auto packed = aligned_buffer<float>(slabs * K * W, "bsr_mm");
  pack_x_slabs(x, W, packed.get(), Isa::kAvx2);
  at::parallel_for(0, slabs * block_rows, 1, [&](int64_t begin, int64_t end) {
    auto tile = aligned_buffer<float>(B * W, "bsr_mm");
    for (int64_t t = begin; t < end; ++t) {
      const int64_t s = t / block_rows;
      const int64_t br = t % block_rows;
      const float* slab = packed.get() + s * K * W;
      switch (T) {
        case 1:
          bsr_block_row<1>(slab, p, br, tile.get());
          break;
        case 2:
          bsr_block_row<2>(slab, p, br, tile.get());
          break;
        case 3:
          bsr_block_row<3>(slab, p, br, tile.get());
          break;
        default:
          bsr_block_row<4>(slab, p, br, tile.get());
      }
      store_transposed(tile.get(), W, B, std::min(W, M - s * W), br * B, s * W, p.bias, out, Isa::kAvx2);
    }
  });
}

at::Tensor bsr_mm(const at::Tensor& x, const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values,
                  const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "bsr_mm";
  TORCH_CHECK(values.dim() == 3 && values.size(1) == values.size(2) &&
                  (values.size(1) == 16 || values.size(1) == 32 || values.size(1) == 64),
              op, ": values must be [nnzb, B, B] with B in (16, 32, 64)");
  const int64_t B = values.size(1);
  const int64_t N = (crow.numel() - 1) * B;
  check_sparse_args(op, x, crow, col, values, bias, N);
  TORCH_CHECK(x.size(1) % B == 0, op, ": K = x.shape[1] must be a multiple of the block size B = ", B);
  const Isa isa = lowbit_isa();
  check_index_arrays(op, crow, col, x.size(1) / B, "K / B");
  at::Tensor out = at::empty({x.size(0), N}, x.options());
  if (out.numel() == 0) {
    return out;
  }
  const at::Tensor vf = as_float(values);
  const at::Tensor bf = float_bias(bias);
  const BsrArgs p{crow.const_data_ptr<int32_t>(), col.const_data_ptr<int32_t>(), vf.const_data_ptr<float>(),
                  data_or_null(bf), B};
  if (isa == Isa::kAvx2) {
    bsr_mm_avx2(x, p, out);
  } else {
    bsr_mm_scalar(x, p, out);
  }
  return out;
}

}  // namespace
}  // namespace pycompress::cpu

TORCH_LIBRARY_IMPL(pycompress_C, CPU, m) {
  m.impl("csr_mm", &pycompress::cpu::csr_mm);
  m.impl("bsr_mm", &pycompress::cpu::bsr_mm);
}
