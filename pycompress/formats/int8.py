"""int8 weights with float32 scales per output channel or per group of input channels.

Layout: ``qweight`` int8 [N, K] row-major (the nn.Linear weight layout, K contiguous) and ``scale``
float32 [N] (per channel) or [N, G] (G groups of K / G consecutive columns), with
W[n, k] ~= qweight[n, k] * scale[n, k // (K / G)]. Symmetric, range [-127, 127].
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import Tensor

from pycompress.quant.quantizer import Quantizer


@dataclasses.dataclass(frozen=True)
class Int8Weight:
    qweight: Tensor
    scale: Tensor


def pack_int8_per_channel(weight: Tensor, group_size: Optional[int] = None) -> Int8Weight:
    """Quantize a float weight [N, K] to int8, symmetric, one scale per output channel (or per group
    of ``group_size`` input channels). A weight holding NaN or Inf is rejected."""
    if not isinstance(weight, Tensor) or weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"pack_int8_per_channel: weight must be a floating-point [N, K] tensor (got {weight!r:.80})")
    if not torch.isfinite(weight).all():
        raise ValueError("pack_int8_per_channel: weight holds NaN or Inf values, which int8 cannot represent")
    quantizer = Quantizer(8, True, "channel" if group_size is None else "group", group_size)
    scale, zero_point = quantizer.params(weight)
    q = quantizer.quantize(weight.detach(), scale, zero_point).to(torch.int8)
    return Int8Weight(qweight=q, scale=scale[:, 0].contiguous() if group_size is None else scale.contiguous())
