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
}
