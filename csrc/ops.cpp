// Schemas of the native ops of pycompress._C. Each op family registers its CPU implementation in
// csrc/cpu/<family>.cpp and its CUDA implementation in csrc/cuda/<family>_ops.cpp. The public ops
// (torch.ops.pycompress.*) are defined in pycompress/ops/, which validates inputs and picks a backend;
// these native ops assume validated, contiguous inputs and only re-check cheap invariants.
#include <torch/library.h>

TORCH_LIBRARY(pycompress_C, m) {
  // x [M, K] float32/float16/bfloat16 -> (q int8 [M, K], scale float32 [M]).
  m.def("quantize_per_token(Tensor x) -> (Tensor, Tensor)");
  // a int8 [M, K], b int8 [N, K], a_scale f32 [M], b_scale f32 [N], bias [N]? -> out [M, N] out_dtype.
  m.def(
      "int8_mm(Tensor a, Tensor b, Tensor a_scale, Tensor b_scale, Tensor? bias, ScalarType out_dtype) "
      "-> Tensor");

  // Low-bit family (csrc/cpu/lowbit.cpp, csrc/cuda/lowbit.cu): math in pycompress/ops/lowbit.py.
  // x [M, K] float, w int8 [N, K], w_scale f32 [N] or [N, G] -> [M, N] x.dtype (W8A16, per channel or group).
  m.def("int8_weight_only_mm(Tensor x, Tensor w, Tensor w_scale, Tensor? bias) -> Tensor");
  // x [M, K] float or int8 -> int32 [M, ceil(K / 32)], bit j of word w set when x[m, 32 w + j] < 0.
  m.def("pack_bits(Tensor x) -> Tensor");
  // W1A1: dot = K - 2 popcount(a xor b) over the first K bits, then scales and bias.
  m.def(
      "binary_mm(Tensor a_bits, Tensor b_bits, int K, Tensor a_scale, Tensor b_scale, Tensor? bias, "
      "ScalarType out_dtype) -> Tensor");
  // W1A16: y = alpha[n] * sum_k x[m, k] * sign[n, k] + bias[n].
  m.def("binary_weight_mm(Tensor x, Tensor w_bits, Tensor alpha, Tensor? bias) -> Tensor");
  // 2-bit ternary weights (16 codes per int32 word): y = alpha[n] * sum_k x[m, k] * t[n, k] + bias[n].
  m.def("ternary_weight_mm(Tensor x, Tensor w_2bit, Tensor alpha, Tensor? bias) -> Tensor");

  // 2:4 family (csrc/cpu/sparse24.cpp, csrc/cuda/sparse24.cu): layout in pycompress/ops/sparse24.py.
  // w [N, K] float, 2:4 sparse, K % 16 == 0 -> (values [N, K / 2] w.dtype, meta int16 [N, K / 16]).
  m.def("sparse24_compress(Tensor w) -> (Tensor, Tensor)");
  // x [M, K], values [N, K / 2] x.dtype, meta int16 [N, K / 16], bias [N]? -> [M, N] x.dtype.
  m.def("sparse24_mm(Tensor x, Tensor values, Tensor meta, Tensor? bias) -> Tensor");

  // Sparse family (csrc/cpu/sparse.cpp, csrc/cuda/sparse.cu): layouts in pycompress/ops/sparse.py.
  // x [M, K], CSR w [N, K]: crow int32 [N + 1], col int32 [nnz], values [nnz] x.dtype -> [M, N].
  m.def("csr_mm(Tensor x, Tensor crow, Tensor col, Tensor values, Tensor? bias) -> Tensor");
  // x [M, K], BSR w [N, K]: crow int32 [N / B + 1], col int32 [nnzb], values [nnzb, B, B] -> [M, N].
  m.def("bsr_mm(Tensor x, Tensor crow, Tensor col, Tensor values, Tensor? bias) -> Tensor");

  // Low-rank family (csrc/cpu/lowrank.cpp, csrc/cuda/lowrank.cu): math in pycompress/ops/lowrank.py.
  // x [M, K], v [r, K] x.dtype, u [N, r] x.dtype, bias [N]? -> [M, N] x.dtype; y = (x v^T) u^T + bias.
  m.def("lowrank_mm(Tensor x, Tensor v, Tensor u, Tensor? bias) -> Tensor");

  // Codebook family (csrc/cpu/codebook.cpp, csrc/cuda/codebook.cu): layout in pycompress/ops/codebook.py.
  // x [M, K], idx uint8 [N, ceil(K / 2)] (4-bit, C = 16) or [N, K] (8-bit, C = 256), codebook [G, C]
  // x.dtype with G = 1 or N, bias [N]? -> [M, N] x.dtype; w[n, k] = codebook[g(n), index(n, k)].
  m.def("codebook_mm(Tensor x, Tensor idx, Tensor codebook, Tensor? bias) -> Tensor");
}
