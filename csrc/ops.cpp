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
}
