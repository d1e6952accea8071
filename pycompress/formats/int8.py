"""int8 weights with one float32 scale per output channel.

Layout: ``qweight`` int8 [N, K] row-major (the nn.Linear weight layout, K contiguous) and ``scale``
float32 [N] with W[n, k] ~= qweight[n, k] * scale[n]. Symmetric, range [-127, 127].
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from pycompress.ops.int8 import quantize_per_token_reference


@dataclasses.dataclass(frozen=True)
class Int8Weight:
    qweight: Tensor
    scale: Tensor

    def dequantize(self) -> Tensor:
        return self.qweight.float() * self.scale[:, None]


def pack_int8_per_channel(weight: Tensor) -> Int8Weight:
    """Quantize a float weight [N, K] to int8 with a scale per output channel (row).

    Uses the same rounding as activation quantization (per-row absmax / 127, round half to even).
    A weight holding NaN or Inf is rejected: it cannot be represented.
    """
    if not isinstance(weight, Tensor) or weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"pack_int8_per_channel: weight must be a floating-point [N, K] tensor (got {weight!r:.80})")
    if not torch.isfinite(weight).all():
        raise ValueError("pack_int8_per_channel: weight holds NaN or Inf values, which int8 cannot represent")
    q, scale = quantize_per_token_reference(weight.detach())
    return Int8Weight(qweight=q, scale=scale)
