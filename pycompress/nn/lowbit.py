"""Weight-only int8, binary and ternary drop-in replacements of nn.Linear."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from pycompress.formats.int8 import pack_int8_per_channel
from pycompress.nn.base import PackedLinear
from pycompress.ops import lowbit as lowbit_ops
from pycompress.quant.lowbit import binarize_weight, ternarize_weight

ACTIVATION_MODES = ("float", "binary")


def _words(k: int, per_word: int) -> int:
    return (k + per_word - 1) // per_word


class WeightOnlyInt8Linear(PackedLinear):
    """W8A16: int8 weights with a scale per output channel (``group_size`` None) or per group of
    ``group_size`` input channels; activations stay in their float dtype. Buffers ``qweight`` int8
    [out, in] and ``weight_scale`` float32 [out] or [out, in / group_size]."""

    format_name = "int8_weight_only"
    manifest_fields = ("group_size",)

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None,
                 bias_dtype: torch.dtype = torch.float32, group_size: Optional[int] = None):
        super().__init__(in_features, out_features, bias, device, bias_dtype)
        if group_size is not None and (group_size < 1 or in_features % group_size):
            raise ValueError(
                f"WeightOnlyInt8Linear: group_size must divide in_features = {in_features} (got {group_size})"
            )
        self.group_size = group_size
        scale_shape = (out_features,) if group_size is None else (out_features, in_features // group_size)
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(scale_shape, dtype=torch.float32, device=device))

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: Optional[int] = None) -> "WeightOnlyInt8Linear":
        module = cls(linear.in_features, linear.out_features, group_size=group_size, **cls._linear_kwargs(linear))
        packed = pack_int8_per_channel(linear.weight, group_size)
        module.qweight.copy_(packed.qweight)
        module.weight_scale.copy_(packed.scale)
        module._copy_bias(linear)
        return module

    def forward_2d(self, x: Tensor) -> Tensor:
        return lowbit_ops.int8_weight_only_mm(x, self.qweight, self.weight_scale, self.bias)


class BinaryLinear(PackedLinear):
    """XNOR-Net layer: weights alpha[n] * sign(W) packed 32 per int32 word.

    ``activations="float"`` (W1A16) multiplies float activations by the sign weights;
    ``activations="binary"`` (W1A1) also binarizes each token, x ~= beta[m] * sign(x), and runs the
    XOR/popcount GEMM. Buffers ``w_bits`` int32 [out, ceil(in / 32)] and ``alpha`` float32 [out].
    """

    format_name = "binary"
    manifest_fields = ("activations",)

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None,
                 bias_dtype: torch.dtype = torch.float32, activations: str = "float"):
        super().__init__(in_features, out_features, bias, device, bias_dtype)
        if activations not in ACTIVATION_MODES:
            raise ValueError(f"BinaryLinear: activations must be one of {ACTIVATION_MODES} (got {activations!r})")
        self.activations = activations
        self.register_buffer("w_bits", torch.zeros(out_features, _words(in_features, 32), dtype=torch.int32,
                                                   device=device))
        self.register_buffer("alpha", torch.ones(out_features, dtype=torch.float32, device=device))

    @classmethod
    def from_linear(cls, linear: nn.Linear, activations: str = "float") -> "BinaryLinear":
        module = cls(linear.in_features, linear.out_features, activations=activations, **cls._linear_kwargs(linear))
        signs, alpha = binarize_weight(linear.weight)
        module.w_bits.copy_(lowbit_ops.pack_bits_reference(signs))
        module.alpha.copy_(alpha)
        module._copy_bias(linear)
        return module

    def forward_2d(self, x: Tensor) -> Tensor:
        if self.activations == "float":
            return lowbit_ops.binary_weight_mm(x, self.w_bits, self.alpha, self.bias)
        beta = x.abs().float().mean(dim=1)
        a_bits = lowbit_ops.pack_bits(x)
        return lowbit_ops.binary_mm(a_bits, self.w_bits, self.in_features, beta, self.alpha, self.bias, x.dtype)


class TernaryLinear(PackedLinear):
    """Ternary weight network layer (TWN): weights alpha[n] * t, t in {-1, 0, 1} packed 16 per int32
    word (2-bit codes); float activations. Buffers ``w_2bit`` int32 [out, ceil(in / 16)] and ``alpha``."""

    format_name = "ternary"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None,
                 bias_dtype: torch.dtype = torch.float32):
        super().__init__(in_features, out_features, bias, device, bias_dtype)
        self.register_buffer("w_2bit", torch.zeros(out_features, _words(in_features, 16), dtype=torch.int32,
                                                   device=device))
        self.register_buffer("alpha", torch.ones(out_features, dtype=torch.float32, device=device))

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "TernaryLinear":
        module = cls(linear.in_features, linear.out_features, **cls._linear_kwargs(linear))
        t, alpha = ternarize_weight(linear.weight)
        module.w_2bit.copy_(lowbit_ops.pack_ternary(t))
        module.alpha.copy_(alpha)
        module._copy_bias(linear)
        return module

    def forward_2d(self, x: Tensor) -> Tensor:
        return lowbit_ops.ternary_weight_mm(x, self.w_2bit, self.alpha, self.bias)
