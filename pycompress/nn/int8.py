"""int8 W8A8 drop-in replacements of nn.Linear: dynamic per-token activations (Int8Linear) and
calibrated static per-tensor activations (Int8StaticLinear), both optionally SmoothQuant-smoothed."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from pycompress.formats.int8 import pack_int8_per_channel
from pycompress.nn.base import PackedLinear
from pycompress.ops import int8 as int8_ops


def smoothing_scale(activation_absmax: Tensor, weight: Tensor, alpha: float) -> Tensor:
    """SmoothQuant's per-input-channel factor s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"smoothing_scale: alpha must be in [0, 1] (got {alpha})")
    a = activation_absmax.float().to(weight.device).clamp(min=1e-5)
    w = weight.detach().float().abs().amax(dim=0).clamp(min=1e-5)
    return (a.pow(alpha) / w.pow(1.0 - alpha)).clamp(min=1e-5)


class Int8Linear(PackedLinear):
    """y = x @ W.T + b computed as int8_mm(quantize_per_token(x), W_int8) with the scales fused.

    Buffers: ``qweight`` int8 [out_features, in_features], ``weight_scale`` float32 [out_features]
    (W ~= qweight * weight_scale[:, None]), ``bias``, and with ``smooth`` an ``input_smooth`` float32
    [in_features] = 1 / s that multiplies x before quantization (the weight holds W * s: SmoothQuant).
    Inputs [..., in_features] of float32, float16 or bfloat16; the output has the input's dtype.
    """

    format_name = "int8"
    manifest_fields = ("smooth",)

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None,
                 bias_dtype: torch.dtype = torch.float32, smooth: bool = False):
        super().__init__(in_features, out_features, bias, device, bias_dtype)
        self.smooth = smooth
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        if smooth:
            self.register_buffer("input_smooth", torch.ones(in_features, dtype=torch.float32, device=device))

    @classmethod
    def from_linear(cls, linear: nn.Linear, smooth_scale: Optional[Tensor] = None, **kwargs) -> "Int8Linear":
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"{cls.__name__}.from_linear: linear must be an nn.Linear (got {type(linear).__name__})")
        weight = linear.weight.detach().float()
        if smooth_scale is not None:
            weight = weight * smooth_scale[None, :]
        packed = pack_int8_per_channel(weight)
        module = cls(linear.in_features, linear.out_features, smooth=smooth_scale is not None,
                     **cls._linear_kwargs(linear), **kwargs)
        module.qweight.copy_(packed.qweight)
        module.weight_scale.copy_(packed.scale)
        if smooth_scale is not None:
            module.input_smooth.copy_(1.0 / smooth_scale)
        module._copy_bias(linear)
        return module

    def _smoothed(self, x: Tensor) -> Tensor:
        return (x.float() * self.input_smooth).to(x.dtype) if self.smooth else x

    def forward_2d(self, x: Tensor) -> Tensor:
        q, scale = int8_ops.quantize_per_token(self._smoothed(x))
        return int8_ops.int8_mm(q, self.qweight, scale, self.weight_scale, self.bias, x.dtype)


class Int8StaticLinear(Int8Linear):
    """W8A8 with a calibrated static activation scale (one per tensor, symmetric): x is quantized as
    clamp(round(x / input_scale), -127, 127) with the ``input_scale`` buffer found by calibration."""

    format_name = "int8_static"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None,
                 bias_dtype: torch.dtype = torch.float32, smooth: bool = False):
        super().__init__(in_features, out_features, bias, device, bias_dtype, smooth)
        self.register_buffer("input_scale", torch.ones(1, dtype=torch.float32, device=device))

    def forward_2d(self, x: Tensor) -> Tensor:
        xs = self._smoothed(x).float()
        q = torch.round(xs / self.input_scale).clamp_(-127, 127).to(torch.int8)
        a_scale = self.input_scale.expand(x.shape[0]).contiguous()
        return int8_ops.int8_mm(q, self.qweight, a_scale, self.weight_scale, self.bias, x.dtype)
