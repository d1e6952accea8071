"""int8 (W8A8) and binary (XNOR) forms of nn.Conv2d, running through the GEMM kernels.

A convolution is computed as a GEMM over unfolded patches (im2col): for each group,
patches [B * L, C_g * kh * kw] times the packed weight [out_g, C_g * kh * kw]^T, with L the number of
output positions. Stride, padding (integers or pairs; "valid"), dilation and groups are supported;
padding="same" and padding modes other than "zeros" are rejected with an error.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pycompress.formats.int8 import pack_int8_per_channel
from pycompress.ops import int8 as int8_ops
from pycompress.ops import lowbit as lowbit_ops
from pycompress.quant.lowbit import binarize_weight

_GEOMETRY = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups")


def conv_skip_reason(conv: nn.Module):
    """None when a packed conv can replace ``conv``, else why not."""
    if type(conv) is not nn.Conv2d:
        return f"{type(conv).__name__} is not a plain nn.Conv2d"
    if isinstance(conv.padding, str) and conv.padding != "valid":
        return f"padding={conv.padding!r} is not supported (use explicit integer padding)"
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r} is not supported (only 'zeros')"
    if conv.weight.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"weight dtype {conv.weight.dtype} is not float32, float16 or bfloat16"
    if not torch.isfinite(conv.weight).all():
        return "weight holds NaN or Inf values"
    return None


class PackedConv2d(nn.Module):
    """Base of the packed Conv2d forms: geometry, bias buffer, im2col and the manifest."""

    format_name = ""

    def __init__(self, in_channels, out_channels, kernel_size, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                 groups=1, bias=True, device=None, bias_dtype=torch.float32):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"{type(self).__name__}: groups={groups} must divide in_channels={in_channels} "
                             f"and out_channels={out_channels}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride = tuple(kernel_size), tuple(stride)
        self.padding = (0, 0) if padding == "valid" else tuple(padding)
        self.dilation = tuple(dilation)
        self.patch = in_channels // groups * self.kernel_size[0] * self.kernel_size[1]
        if bias:
            self.register_buffer("bias", torch.zeros(out_channels, dtype=bias_dtype, device=device))
        else:
            self.bias = None

    @classmethod
    def _geometry(cls, conv: nn.Conv2d) -> dict:
        has_bias = conv.bias is not None
        return dict(in_channels=conv.in_channels, out_channels=conv.out_channels, kernel_size=conv.kernel_size,
                    stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                    bias=has_bias, device=conv.weight.device,
                    bias_dtype=conv.bias.dtype if has_bias else torch.float32)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__}: input must be [B, {self.in_channels}, H, W] (got {list(x.shape)})")
        B, _, H, W = x.shape
        kh, kw = self.kernel_size
        out_h = (H + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        out_w = (W + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        cols = F.unfold(x, self.kernel_size, dilation=self.dilation, padding=self.padding, stride=self.stride)
        L = cols.shape[-1]
        cols = cols.view(B, self.groups, self.patch, L).permute(1, 0, 3, 2).reshape(self.groups, B * L, self.patch)
        out_g = self.out_channels // self.groups
        outs = [self.group_gemm(cols[g].contiguous(), g * out_g, (g + 1) * out_g) for g in range(self.groups)]
        y = torch.cat(outs, dim=1) if self.groups > 1 else outs[0]
        return y.view(B, L, self.out_channels).transpose(1, 2).reshape(B, self.out_channels, out_h, out_w)

    def _bias(self, lo: int, hi: int):
        return None if self.bias is None else self.bias[lo:hi]

    def group_gemm(self, patches: Tensor, lo: int, hi: int) -> Tensor:
        raise NotImplementedError

    def manifest_entry(self) -> dict:
        entry = {"format": self.format_name, "bias": self.bias is not None,
                 "bias_dtype": str(self.bias.dtype).replace("torch.", "") if self.bias is not None else None}
        entry.update({f: getattr(self, f) for f in _GEOMETRY})
        return entry

    @classmethod
    def from_manifest_entry(cls, entry: dict, device=None):
        bias_dtype = getattr(torch, entry["bias_dtype"]) if entry.get("bias_dtype") else torch.float32
        return cls(**{f: entry[f] for f in _GEOMETRY}, bias=entry["bias"], device=device, bias_dtype=bias_dtype)

    def extra_repr(self) -> str:
        return ", ".join(f"{f}={getattr(self, f)}" for f in _GEOMETRY) + f", bias={self.bias is not None}"


class Int8Conv2d(PackedConv2d):
    """W8A8 convolution: int8 filters with a scale per output channel; each output position's patch
    is quantized per token on the fly. Buffers ``qweight`` int8 [out, in / groups * kh * kw] and
    ``weight_scale`` float32 [out]."""

    format_name = "int8_conv2d"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        device = self.bias.device if self.bias is not None else kwargs.get("device")
        self.register_buffer("qweight", torch.zeros(self.out_channels, self.patch, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(self.out_channels, dtype=torch.float32, device=device))

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "Int8Conv2d":
        reason = conv_skip_reason(conv)
        if reason:
            raise ValueError(f"Int8Conv2d.from_conv: {reason}")
        module = cls(**cls._geometry(conv))
        packed = pack_int8_per_channel(conv.weight.detach().reshape(conv.out_channels, -1))
        module.qweight.copy_(packed.qweight)
        module.weight_scale.copy_(packed.scale)
        if conv.bias is not None:
            module.bias.copy_(conv.bias.detach())
        return module

    def group_gemm(self, patches: Tensor, lo: int, hi: int) -> Tensor:
        q, scale = int8_ops.quantize_per_token(patches)
        return int8_ops.int8_mm(q, self.qweight[lo:hi], scale, self.weight_scale[lo:hi], self._bias(lo, hi),
                                patches.dtype)


class BinaryConv2d(PackedConv2d):
    """XNOR convolution: filters alpha[o] * sign(W) packed 32 per int32 word; with
    ``activations="binary"`` each patch is binarized too (beta * sign, W1A1), else float patches
    multiply the sign filters (W1A16)."""

    format_name = "binary_conv2d"

    def __init__(self, *args, activations: str = "float", **kwargs):
        super().__init__(*args, **kwargs)
        if activations not in ("float", "binary"):
            raise ValueError(f"BinaryConv2d: activations must be 'float' or 'binary' (got {activations!r})")
        self.activations = activations
        device = self.bias.device if self.bias is not None else kwargs.get("device")
        words = (self.patch + 31) // 32
        self.register_buffer("w_bits", torch.zeros(self.out_channels, words, dtype=torch.int32, device=device))
        self.register_buffer("alpha", torch.ones(self.out_channels, dtype=torch.float32, device=device))

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, activations: str = "float") -> "BinaryConv2d":
        reason = conv_skip_reason(conv)
        if reason:
            raise ValueError(f"BinaryConv2d.from_conv: {reason}")
        module = cls(**cls._geometry(conv), activations=activations)
        signs, alpha = binarize_weight(conv.weight.detach().reshape(conv.out_channels, -1))
        module.w_bits.copy_(lowbit_ops.pack_bits_reference(signs))
        module.alpha.copy_(alpha)
        if conv.bias is not None:
            module.bias.copy_(conv.bias.detach())
        return module

    def group_gemm(self, patches: Tensor, lo: int, hi: int) -> Tensor:
        if self.activations == "float":
            return lowbit_ops.binary_weight_mm(patches, self.w_bits[lo:hi], self.alpha[lo:hi], self._bias(lo, hi))
        beta = patches.abs().float().mean(dim=1)
        return lowbit_ops.binary_mm(lowbit_ops.pack_bits(patches), self.w_bits[lo:hi], self.patch, beta,
                                    self.alpha[lo:hi], self._bias(lo, hi), patches.dtype)

    def manifest_entry(self) -> dict:
        return {**super().manifest_entry(), "activations": self.activations}

    @classmethod
    def from_manifest_entry(cls, entry: dict, device=None):
        bias_dtype = getattr(torch, entry["bias_dtype"]) if entry.get("bias_dtype") else torch.float32
        return cls(**{f: entry[f] for f in _GEOMETRY}, bias=entry["bias"], device=device, bias_dtype=bias_dtype,
                   activations=entry["activations"])
