"""Int8Linear: a drop-in nn.Linear with int8 weights and per-token int8 activations (W8A8)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pycompress.formats.int8 import pack_int8_per_channel
from pycompress.ops import int8 as int8_ops


class Int8Linear(nn.Module):
    """y = x @ W.T + b computed as int8_mm(quantize_per_token(x), W_int8) with the scales fused.

    Buffers: ``qweight`` int8 [out_features, in_features], ``weight_scale`` float32 [out_features]
    (W ~= qweight * weight_scale[:, None]) and ``bias`` [out_features] (kept in its float dtype) or None.
    Inputs [..., in_features] of float32, float16 or bfloat16; the output has the input's dtype.
    """

    format_name = "int8"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None,
                 bias_dtype: torch.dtype = torch.float32):
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(
                f"Int8Linear: in_features and out_features must be >= 1 (got {in_features}, {out_features})"
            )
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=bias_dtype, device=device))
        else:
            self.bias = None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"Int8Linear.from_linear: linear must be an nn.Linear (got {type(linear).__name__})")
        packed = pack_int8_per_channel(linear.weight)
        has_bias = linear.bias is not None
        module = cls(
            linear.in_features,
            linear.out_features,
            bias=has_bias,
            device=linear.weight.device,
            bias_dtype=linear.bias.dtype if has_bias else torch.float32,
        )
        module.qweight.copy_(packed.qweight)
        module.weight_scale.copy_(packed.scale)
        if has_bias:
            module.bias.copy_(linear.bias.detach())
        return module

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"Int8Linear: input must have last dimension {self.in_features} (got shape {list(x.shape)})"
            )
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        q, scale = int8_ops.quantize_per_token(x2)
        y = int8_ops.int8_mm(q, self.qweight, scale, self.weight_scale, self.bias, x.dtype)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"

    def manifest_entry(self) -> dict:
        return {
            "format": self.format_name,
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias is not None,
            "bias_dtype": str(self.bias.dtype).replace("torch.", "") if self.bias is not None else None,
        }

    @classmethod
    def from_manifest_entry(cls, entry: dict, device=None) -> "Int8Linear":
        bias_dtype = getattr(torch, entry["bias_dtype"]) if entry.get("bias_dtype") else torch.float32
        return cls(entry["in_features"], entry["out_features"], bias=entry["bias"], device=device,
                   bias_dtype=bias_dtype)
