"""Quantization configs for ``pycompress.compress_`` and the handlers that apply them."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from pycompress.api import register_handler
from pycompress.nn.int8 import Int8Linear


@dataclasses.dataclass(frozen=True)
class Int8Config:
    """W8A8: int8 weights with one scale per output channel and int8 activations quantized per token
    on the fly (symmetric, dynamic). Applies to nn.Linear layers; needs no calibration data."""


@register_handler(Int8Config)
def _int8_linear(module: nn.Module, config: Int8Config):
    """The Int8Linear replacing ``module``, or the reason it is left dense."""
    if not isinstance(module, nn.Linear):
        return None
    if type(module) is not nn.Linear:
        return f"{type(module).__name__} subclasses nn.Linear and may read .weight directly; left dense"
    weight = module.weight
    if weight.device.type == "meta":
        return "weight is on the meta device (not materialised)"
    if weight.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"weight dtype {weight.dtype} is not float32, float16 or bfloat16"
    if not torch.isfinite(weight).all():
        return "weight holds NaN or Inf values"
    return Int8Linear.from_linear(module)
