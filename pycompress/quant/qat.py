"""Quantization-aware training: fake-quantized layers trained with the straight-through estimator,
then converted to the packed modules of this package.

    model = prepare_qat(model, QATConfig(weight="int", bits=4))   # nn.Linear -> FakeQuantLinear
    ... train as usual ...
    convert(model)                                                 # FakeQuantLinear -> packed module

Weight modes: ``int`` (uniform ``bits``-bit through the shared Quantizer; ``learned_step=True`` learns
the step size per output channel as in LSQ), ``binary`` (XNOR-Net sign times mean |W|) and
``ternary`` (TWN). Activations: None (float), an int bit width (per-token symmetric dynamic fake
quantization) or ``"binary"`` (per-token sign times mean |x|, W1A1). Gradients pass through every
rounding or sign unchanged (STE), clipped to the representable range where the method says so.

convert() gives: int weights with float activations -> WeightOnlyInt8Linear (codes of <= 8 bits kept
in int8 with their scales); int8 weights with 8-bit activations -> Int8Linear; binary -> BinaryLinear
(W1A16, or W1A1 with binary activations); ternary -> TernaryLinear.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pycompress.api import _set_submodule
from pycompress.nn.int8 import Int8Linear
from pycompress.nn.lowbit import BinaryLinear, TernaryLinear, WeightOnlyInt8Linear
from pycompress.ops.lowbit import pack_bits_reference, pack_ternary
from pycompress.quant.lowbit import TWN_THRESHOLD
from pycompress.quant.quantizer import Quantizer

WEIGHT_MODES = ("int", "binary", "ternary")


@dataclasses.dataclass(frozen=True)
class QATConfig:
    weight: str = "int"
    bits: int = 8
    granularity: str = "channel"
    group_size: Optional[int] = None
    learned_step: bool = False
    activations: Union[None, int, str] = None

    def __post_init__(self):
        if self.weight not in WEIGHT_MODES:
            raise ValueError(f"QATConfig: weight must be one of {WEIGHT_MODES} (got {self.weight!r})")
        if self.weight == "int":
            Quantizer(self.bits, True, self.granularity, self.group_size)
        if self.learned_step and (self.weight != "int" or self.granularity != "channel"):
            raise ValueError("QATConfig: learned_step needs weight='int' and granularity='channel'")
        acts = self.activations
        if not (acts is None or acts == "binary" or (isinstance(acts, int) and 2 <= acts <= 8)):
            raise ValueError(f"QATConfig: activations must be None, an int in 2..8 or 'binary' (got {acts!r})")
        if acts == "binary" and self.weight != "binary":
            raise ValueError("QATConfig: activations='binary' needs weight='binary' (W1A1)")
        if isinstance(acts, int) and not (self.weight == "int" and self.bits == 8 and acts == 8):
            # Packed kernels exist for W8A8 only; other activation widths would train a model no kernel runs.
            raise ValueError("QATConfig: integer activations are supported as W8A8 only (weight='int', bits=8, activations=8)")


def _ste(x: Tensor, x_q: Tensor) -> Tensor:
    """x_q in the forward pass, the identity's gradient in the backward pass."""
    return x + (x_q - x).detach()


def fake_quantize_per_token(x: Tensor, bits: int) -> Tensor:
    qmax = 2 ** (bits - 1) - 1
    amax = x.detach().abs().amax(dim=-1, keepdim=True).clamp(min=1e-12)
    scale = amax / qmax
    return _ste(x, torch.round(x / scale).clamp(-qmax, qmax) * scale)


def binarize_ste(x: Tensor, dim: int) -> Tensor:
    """alpha * sign(x) along ``dim`` (alpha = mean |x|), with the clipped straight-through gradient
    (zero where |x| > 1, as in BinaryNet) for the sign and the exact gradient of alpha."""
    alpha = x.abs().mean(dim=dim, keepdim=True)
    signs = torch.where(x < 0, -1.0, 1.0).to(x.dtype)
    clipped = x.clamp(-1, 1)
    return (clipped + (signs - clipped).detach()) * alpha


def ternarize_ste(w: Tensor) -> Tensor:
    delta = TWN_THRESHOLD * w.detach().abs().mean(dim=1, keepdim=True)
    keep = (w.detach().abs() > delta).to(w.dtype)
    alpha = (w.abs() * keep).sum(dim=1, keepdim=True) / keep.sum(dim=1, keepdim=True).clamp(min=1)
    t = torch.sign(w.detach()) * keep
    return _ste(w, t * alpha.detach()) + (alpha - alpha.detach()) * t


class FakeQuantLinear(nn.Linear):
    """nn.Linear whose forward uses the fake-quantized weight (and activations) of ``config``."""

    def __init__(self, in_features: int, out_features: int, bias: bool, config: QATConfig, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.config = config
        self.quantizer = Quantizer(config.bits, True, config.granularity, config.group_size) \
            if config.weight == "int" else None
        self.step = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, config: QATConfig) -> "FakeQuantLinear":
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, config,
                     device=linear.weight.device, dtype=linear.weight.dtype)
        module.weight = linear.weight
        module.bias = linear.bias
        if config.learned_step:
            scale, _ = module.quantizer.params(linear.weight)
            module.step = nn.Parameter(scale[:, 0].clone().to(linear.weight.dtype))
        return module

    def quantized_weight(self) -> Tensor:
        w, c = self.weight, self.config
        if c.weight == "binary":
            return binarize_ste(w, dim=1)
        if c.weight == "ternary":
            return ternarize_ste(w)
        if self.step is not None:
            qmax = self.quantizer.qmax
            # LSQ: round with STE; the step's gradient is scaled by 1 / sqrt(numel * qmax).
            grad_scale = 1.0 / math.sqrt(w.numel() * qmax)
            step = self.step * grad_scale + (self.step - self.step * grad_scale).detach()
            v = (w / step[:, None]).clamp(-qmax, qmax)
            return _ste(v, torch.round(v)) * step[:, None]
        return _ste(w, self.quantizer.fake_quantize(w.detach()).to(w.dtype))

    def forward(self, x: Tensor) -> Tensor:
        acts = self.config.activations
        if acts == "binary":
            x = binarize_ste(x, dim=-1)
        elif isinstance(acts, int):
            x = fake_quantize_per_token(x, acts)
        return F.linear(x, self.quantized_weight(), self.bias)

    def to_packed(self) -> nn.Module:
        c = self.config
        linear = nn.Linear(self.in_features, self.out_features, self.bias is not None,
                           device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.weight)
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        if c.weight == "binary":
            return BinaryLinear.from_linear(linear, "binary" if c.activations == "binary" else "float")
        if c.weight == "ternary":
            return TernaryLinear.from_linear(linear)
        if c.activations == 8:
            return Int8Linear.from_linear(linear)
        group_size = c.group_size if c.granularity == "group" else None
        module = WeightOnlyInt8Linear(self.in_features, self.out_features, self.bias is not None,
                                      device=self.weight.device,
                                      bias_dtype=self.bias.dtype if self.bias is not None else torch.float32,
                                      group_size=group_size)
        with torch.no_grad():
            w = self.weight.detach().float()
            if self.step is not None:
                scale = self.step.detach().float()[:, None]
                q = torch.round(w / scale).clamp(-self.quantizer.qmax, self.quantizer.qmax)
            else:
                scale, zero_point = self.quantizer.params(w)
                q = self.quantizer.quantize(w, scale, zero_point)
                if c.granularity == "tensor":
                    scale = scale.expand(self.out_features, 1)
            module.qweight.copy_(q.to(torch.int8))
            module.weight_scale.copy_(scale[:, 0] if group_size is None else scale)
            if self.bias is not None:
                module.bias.copy_(self.bias)
        return module


def prepare_qat(model: nn.Module, config: QATConfig, *, filter_fn=None) -> nn.Module:
    """Swap every plain nn.Linear (passing ``filter_fn(module, name)``) for a FakeQuantLinear sharing
    its parameters; returns the model (the replacement when the model itself is an nn.Linear)."""
    if not isinstance(config, QATConfig):
        raise TypeError(f"prepare_qat: config must be a QATConfig (got {type(config).__name__})")
    result = model
    for name, module in list(model.named_modules()):
        if type(module) is not nn.Linear or (filter_fn is not None and not filter_fn(module, name)):
            continue
        fq = FakeQuantLinear.from_linear(module, config)
        if name:
            _set_submodule(model, name, fq)
        else:
            result = fq
    return result


def convert(model: nn.Module) -> nn.Module:
    """Replace every FakeQuantLinear by its packed module; returns the model."""
    if isinstance(model, FakeQuantLinear):
        return model.to_packed()
    for name, module in list(model.named_modules()):
        if isinstance(module, FakeQuantLinear):
            _set_submodule(model, name, module.to_packed())
    return model
