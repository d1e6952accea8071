"""Quantization configs for ``pycompress.compress_`` and the handlers that apply them."""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import nn

from pycompress.api import register_handler
from pycompress.quant.mixed import MixedPrecisionConfig
from pycompress.quant.observers import OBSERVERS, Observer
from pycompress.nn.conv import BinaryConv2d, Int8Conv2d, conv_skip_reason
from pycompress.nn.int8 import Int8Linear, Int8StaticLinear, smoothing_scale
from pycompress.quant.quantizer import Quantizer
from pycompress.nn.lowbit import ACTIVATION_MODES, BinaryLinear, TernaryLinear, WeightOnlyInt8Linear


def _check_alpha(name, alpha):
    if alpha is not None and not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
        raise ValueError(f"{name}: smoothquant_alpha must be None or a number in [0, 1] (got {alpha!r})")


@dataclasses.dataclass(frozen=True)
class Int8Config:
    """W8A8: int8 weights with one scale per output channel and int8 activations quantized per token
    on the fly (symmetric, dynamic). Applies to nn.Linear layers. With ``smoothquant_alpha`` the
    per-channel activation ranges seen on the calibration data are migrated into the weights first
    (SmoothQuant), which then needs calibration data."""

    smoothquant_alpha: Optional[float] = None

    def __post_init__(self):
        _check_alpha("Int8Config", self.smoothquant_alpha)


@dataclasses.dataclass(frozen=True)
class Int8StaticConfig:
    """W8A8 with static activation scales (one per layer input, symmetric) calibrated on data by an
    observer: ``minmax``, ``moving_average``, ``percentile`` (with ``percentile``) or ``mse``;
    optionally SmoothQuant-smoothed. The scales are saved with the model."""

    observer: str = "minmax"
    percentile: float = 99.99
    smoothquant_alpha: Optional[float] = None

    def __post_init__(self):
        if self.observer not in OBSERVERS:
            raise ValueError(f"Int8StaticConfig: observer must be one of {', '.join(OBSERVERS)} (got {self.observer!r})")
        if not 0 < self.percentile <= 100:
            raise ValueError(f"Int8StaticConfig: percentile must be in (0, 100] (got {self.percentile})")
        _check_alpha("Int8StaticConfig", self.smoothquant_alpha)
        if self.smoothquant_alpha is not None and self.observer != "minmax":
            # The smoothed input's range is derived from per-channel maxima, which only minmax observes.
            raise ValueError("Int8StaticConfig: smoothquant_alpha works with observer='minmax' only "
                             f"(got observer={self.observer!r})")


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
    def handler(module, config, observer=None, name=""):
        return linear_skip_reason(module) or convert(module, config, observer)

    return handler


register_handler(TernaryConfig)(_linear_handler(lambda m, c, o: TernaryLinear.from_linear(m)))


@register_handler(Int8WeightOnlyConfig)
@_linear_handler
def _int8_weight_only(module, config, observer):
    if config.group_size is not None and module.in_features % config.group_size:
        return f"group_size {config.group_size} does not divide in_features {module.in_features}"
    return WeightOnlyInt8Linear.from_linear(module, config.group_size)


def _int8_observer(config):
    smooth = config.smoothquant_alpha is not None
    if isinstance(config, Int8StaticConfig):
        return lambda: Observer(config.observer, percentile=config.percentile, channel_absmax=smooth)
    return (lambda: Observer("minmax", channel_absmax=True)) if smooth else None


def _smooth_scale(module, config, observer):
    if config.smoothquant_alpha is None:
        return None
    return smoothing_scale(observer.channel_absmax, module.weight, config.smoothquant_alpha)


def _linear_or_conv(module) -> bool:
    return isinstance(module, (nn.Linear, nn.Conv2d))


@register_handler(Int8Config, applies=_linear_or_conv, observer=_int8_observer)
def _int8_dynamic(module, config, observer, name):
    if isinstance(module, nn.Conv2d):
        if config.smoothquant_alpha is not None:
            return "SmoothQuant applies to nn.Linear layers; this convolution is left dense"
        return conv_skip_reason(module) or Int8Conv2d.from_conv(module)
    return linear_skip_reason(module) or Int8Linear.from_linear(module, _smooth_scale(module, config, observer))


@register_handler(Int8StaticConfig, observer=_int8_observer)
@_linear_handler
def _int8_static(module, config, observer):
    smooth = _smooth_scale(module, config, observer)
    result = Int8StaticLinear.from_linear(module, smooth)
    lo, hi = observer.range()
    if smooth is not None:
        # The observer saw x; the layer quantizes x / s, whose range the per-channel maxima give.
        amax = (observer.channel_absmax.to(smooth.device) / smooth).max()
        lo, hi = -amax, amax
    scale, _ = Quantizer(8, True, "tensor").params_from_range(lo.reshape(1, 1), hi.reshape(1, 1))
    result.input_scale.copy_(scale.reshape(1))
    return result


def _weight_only_with_bits(module: nn.Linear, bits: int) -> WeightOnlyInt8Linear:
    quantizer = Quantizer(bits)
    scale, zero_point = quantizer.params(module.weight)
    result = WeightOnlyInt8Linear(module.in_features, module.out_features, **WeightOnlyInt8Linear._linear_kwargs(module))
    result.qweight.copy_(quantizer.quantize(module.weight.detach(), scale, zero_point).to(torch.int8))
    result.weight_scale.copy_(scale[:, 0])
    result._copy_bias(module)
    return result


@register_handler(MixedPrecisionConfig)
def _mixed_precision(module, config, observer, name):
    bits = config.plan.get(name, config.default_bits)
    if bits is None:
        return None
    return linear_skip_reason(module) or _weight_only_with_bits(module, bits)


@register_handler(BinaryConfig, applies=_linear_or_conv)
def _binary(module, config, observer, name):
    if isinstance(module, nn.Conv2d):
        return conv_skip_reason(module) or BinaryConv2d.from_conv(module, config.activations)
    return linear_skip_reason(module) or BinaryLinear.from_linear(module, config.activations)
