"""Quantization configs for ``pycompress.compress_`` and the handlers that apply them."""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import nn

from pycompress.api import register_handler
from pycompress.nn.int8 import Int8Linear
from pycompress.nn.lowbit import ACTIVATION_MODES, BinaryLinear, TernaryLinear, WeightOnlyInt8Linear


@dataclasses.dataclass(frozen=True)
class Int8Config:
    """W8A8: int8 weights with one scale per output channel and int8 activations quantized per token
    on the fly (symmetric, dynamic). Applies to nn.Linear layers; needs no calibration data."""


@dataclasses.dataclass(frozen=True)
class Int8WeightOnlyConfig:
    """W8A16: int8 weights (per output channel, or per group of ``group_size`` input channels),
    float activations. For decoding (small batches), where reading the weights dominates."""

    group_size: Optional[int] = None

    def __post_init__(self):
        if self.group_size is not None and (not isinstance(self.group_size, int) or self.group_size < 1):
            raise ValueError(f"Int8WeightOnlyConfig: group_size must be None or a positive int (got {self.group_size!r})")


@dataclasses.dataclass(frozen=True)
class BinaryConfig:
    """XNOR-Net binary weights (sign times the mean |W| per output channel); with
    ``activations="binary"`` the activations are binarized per token too (W1A1)."""

    activations: str = "float"

    def __post_init__(self):
        if self.activations not in ACTIVATION_MODES:
            raise ValueError(f"BinaryConfig: activations must be one of {ACTIVATION_MODES} (got {self.activations!r})")


@dataclasses.dataclass(frozen=True)
class TernaryConfig:
    """Ternary weights by the TWN rule (threshold 0.7 mean |W|, per output channel), packed in 2 bits."""


def linear_skip_reason(module: nn.Module):
    """None when ``module`` is a plain nn.Linear a packed format can take, else why not."""
    if type(module) is not nn.Linear:
        return f"{type(module).__name__} subclasses nn.Linear and may read .weight directly; left dense"
    weight = module.weight
    if weight.device.type == "meta":
        return "weight is on the meta device (not materialised)"
    if weight.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"weight dtype {weight.dtype} is not float32, float16 or bfloat16"
    if not torch.isfinite(weight).all():
        return "weight holds NaN or Inf values"
    return None


def _linear_handler(convert):
    def handler(module, config):
        if not isinstance(module, nn.Linear):
            return None
        return linear_skip_reason(module) or convert(module, config)

    return handler


register_handler(Int8Config)(_linear_handler(lambda m, c: Int8Linear.from_linear(m)))
register_handler(BinaryConfig)(_linear_handler(lambda m, c: BinaryLinear.from_linear(m, c.activations)))
register_handler(TernaryConfig)(_linear_handler(lambda m, c: TernaryLinear.from_linear(m)))


@register_handler(Int8WeightOnlyConfig)
@_linear_handler
def _int8_weight_only(module, config):
    if config.group_size is not None and module.in_features % config.group_size:
        return f"group_size {config.group_size} does not divide in_features {module.in_features}"
    return WeightOnlyInt8Linear.from_linear(module, config.group_size)
