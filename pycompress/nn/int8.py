"""Int8Linear: a drop-in nn.Linear with int8 weights and per-token int8 activations (W8A8)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pycompress.formats.int8 import pack_int8_per_channel
from pycompress.nn.base import PackedLinear
from pycompress.ops import int8 as int8_ops


class Int8Linear(PackedLinear):
    """y = x @ W.T + b computed as int8_mm(quantize_per_token(x), W_int8) with the scales fused.

    Buffers: ``qweight`` int8 [out_features, in_features], ``weight_scale`` float32 [out_features]
    (W ~= qweight * weight_scale[:, None]) and ``bias``. Inputs [..., in_features] of float32, float16
    or bfloat16; the output has the input's dtype.
    """

    format_name = "int8"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None,
                 bias_dtype: torch.dtype = torch.float32):
        super().__init__(in_features, out_features, bias, device, bias_dtype)
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"Int8Linear.from_linear: linear must be an nn.Linear (got {type(linear).__name__})")
        packed = pack_int8_per_channel(linear.weight)
        module = cls(linear.in_features, linear.out_features, **cls._linear_kwargs(linear))
        module.qweight.copy_(packed.qweight)
        module.weight_scale.copy_(packed.scale)
        module._copy_bias(linear)
        return module

    def forward_2d(self, x: Tensor) -> Tensor:
        q, scale = int8_ops.quantize_per_token(x)
        return int8_ops.int8_mm(q, self.qweight, scale, self.weight_scale, self.bias, x.dtype)
