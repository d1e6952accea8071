// Host launcher of the fused low-rank GEMM (csrc/cuda/lowrank.cu). Torch-free, so that the kernels
// compile with nvcc alone; csrc/cuda/lowrank_ops.cpp binds it to pycompress_C::lowrank_mm.
//
// The math is the op contract (pycompress/ops/lowrank.py holds the reference):
//   t = x v^T ([M, r], products summed in float32), rounded to x's dtype;
//   out = cast(t u^T + bias), products summed in float32 (in any order) and rounded once.
// t stays in shared memory: it is never written to global memory.
// All tensors are dense row-major device buffers; no alignment is assumed. float16 / bfloat16 with
// K % 8 == 0, r % 8 == 0 and 16-byte aligned x, v, u run on the tensor cores (mma.sync m16n8k16, tiles
// staged by cp.async); float32, and (b)float16 of other shapes, on the CUDA cores.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "pycompress/sparse_cuda.h"

namespace pycompress {

// The float dtypes of the shared tensor-core tile helpers (sparse_tiles.cuh), whose bias load the
// low-rank kernels use as well.
using LowrankDtype = SparseDtype;

// How a launch splits the work over thread blocks; plan_lowrank_mm chooses it for the current device.
// A block owns block_m rows of x, one chunk of r_chunk rank columns (t = x v^T for that chunk, in
// shared memory) and one of n_splits ranges of output columns. With r_splits > 1 the blocks of one
// output tile add their partial products into a float32 workspace, and the last of them to finish
// writes the tile.
struct LowrankMmPlan {
  bool tensor_cores;
  int64_t block_m;
  int64_t r_chunk;   // a multiple of 16
  int64_t r_splits;  // ceil(r / r_chunk)
  int64_t n_splits;
  int64_t n_tiles_per_split;
  int64_t smem_bytes;       // dynamic shared memory per block
  int64_t workspace_bytes;  // 0 when r_splits == 1
};

// x: [M, K], v: [r, K], u: [N, r], all of dtype. M, N >= 1, K, r >= 1.
cudaError_t plan_lowrank_mm(const void* x, const void* v, const void* u, LowrankDtype dtype,
                            int64_t M, int64_t N, int64_t K, int64_t r, LowrankMmPlan* plan);

// As planned by plan_lowrank_mm for the same arguments. bias: [N] of bias_dtype, or nullptr with
// kNone; out: [M, N] of dtype; workspace: plan.workspace_bytes of device memory (16-byte aligned),
// or nullptr when that is 0. The launcher clears the workspace on `stream` before using it.
cudaError_t launch_lowrank_mm(const void* x, const void* v, const void* u, const void* bias,
                              LowrankDtype bias_dtype, void* out, LowrankDtype dtype, int64_t M,
                              int64_t N, int64_t K, int64_t r, const LowrankMmPlan& plan,
                              void* workspace, cudaStream_t stream);

}  // namespace pycompress
