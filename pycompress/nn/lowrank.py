"""Low-rank drop-in modules: LowRankLinear (y = (x v^T) u^T + bias with trainable factors) and
SeparableConv2d (a k x k conv as a depthwise k x k conv followed by a pointwise 1x1 conv)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from pycompress.nn.base import PackedLinear
from pycompress.ops import lowrank as lowrank_ops


class LowRankLinear(PackedLinear):
    """W [out, in] ~ u [out, rank] @ v [rank, in]; ``u`` and ``v`` are parameters (fine-tunable), the
    bias a buffer as in every packed module. Fewer multiply-adds than the dense layer when
    rank (in + out) < in * out."""

    format_name = "lowrank"
    manifest_fields = ("rank",)

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None,
                 bias_dtype: torch.dtype = torch.float32, rank: int = 1, dtype: Optional[torch.dtype] = None):
        super().__init__(in_features, out_features, bias, device, bias_dtype)
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= min(in_features, out_features):
            raise ValueError(f"LowRankLinear: rank must be an int in [1, min(in_features, out_features)] = "
                             f"[1, {min(in_features, out_features)}] (got {rank!r})")
        self.rank = rank
        dtype = dtype or bias_dtype
        self.u = nn.Parameter(torch.zeros(out_features, rank, dtype=dtype, device=device))
        self.v = nn.Parameter(torch.zeros(rank, in_features, dtype=dtype, device=device))

    @classmethod
    def from_factors(cls, linear: nn.Linear, u: Tensor, v: Tensor) -> "LowRankLinear":
        module = cls(linear.in_features, linear.out_features, rank=u.shape[1], dtype=linear.weight.dtype,
                     **cls._linear_kwargs(linear))
        with torch.no_grad():
            module.u.copy_(u)
            module.v.copy_(v)
        module._copy_bias(linear)
        return module

    def dense_weight(self) -> Tensor:
        return self.u.detach() @ self.v.detach()

    def forward_2d(self, x: Tensor) -> Tensor:
        # The fused op keeps the [M, rank] intermediate on chip and takes the bias in any float dtype;
        # its autograd trains u and v.
        return lowrank_ops.lowrank_mm(x, self.v, self.u, self.bias)


class SeparableConv2d(nn.Module):
    """A depthwise-separable stand-in for a k x k nn.Conv2d (groups=1): ``depthwise``, a k x k conv with
    groups=in_channels and in_channels * multiplier output channels (channel i * multiplier + j reads
    input channel i), carrying the stride, padding, dilation and padding mode; then ``pointwise``, a 1x1
    conv to out_channels with the bias. Both are plain nn.Conv2d, so the whole module fine-tunes.
    Parameters: in * m * k^2 + out * in * m (+ out), against out * in * k^2 (+ out) for the dense conv;
    the multiply-adds per output position scale the same way."""

    format_name = "separable_conv2d"

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 padding_mode: str = "zeros", bias: bool = True, multiplier: int = 1, device=None,
                 dtype: Optional[torch.dtype] = None):
        super().__init__()
        if isinstance(multiplier, bool) or not isinstance(multiplier, int) or multiplier < 1:
            raise ValueError(f"SeparableConv2d: multiplier must be an int >= 1 (got {multiplier!r})")
        self.depthwise = nn.Conv2d(in_channels, in_channels * multiplier, kernel_size, stride=stride,
                                   padding=padding, dilation=dilation, groups=in_channels, bias=False,
                                   padding_mode=padding_mode, device=device, dtype=dtype)
        self.pointwise = nn.Conv2d(in_channels * multiplier, out_channels, 1, bias=bias, device=device, dtype=dtype)
        self.in_channels, self.out_channels, self.multiplier = in_channels, out_channels, multiplier

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, multiplier: int = 1) -> "SeparableConv2d":
        """Initialised by decomposition: for each input channel i, the best rank-m approximation of
        the slice W[:, i] ([out, k*k]) by SVD, U S Vh: depthwise kernels Vh[:m] (reshaped k x k),
        pointwise weights U[:, :m] S[:m]. Exact when every slice has rank <= m. Components beyond
        min(out, k*k) get orthonormal depthwise kernels and zero pointwise weights (trainable)."""
        if type(conv) is not nn.Conv2d:
            raise TypeError(f"SeparableConv2d.from_conv: conv must be a plain nn.Conv2d (got {type(conv).__name__})")
        if conv.groups != 1:
            raise ValueError(f"SeparableConv2d.from_conv: conv must have groups=1 (got groups={conv.groups})")
        kh, kw = conv.kernel_size
        taps = kh * kw
        if isinstance(multiplier, bool) or not isinstance(multiplier, int) or not 1 <= multiplier <= taps:
            raise ValueError(f"SeparableConv2d.from_conv: multiplier must be an int in [1, k*k] = [1, {taps}] for a "
                             f"{kh}x{kw} kernel (got {multiplier!r})")
        if not torch.isfinite(conv.weight).all():
            raise ValueError("SeparableConv2d.from_conv: conv.weight holds NaN or Inf")
        Cout, Cin = conv.out_channels, conv.in_channels
        module = cls(Cin, Cout, conv.kernel_size, stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                     padding_mode=conv.padding_mode, bias=conv.bias is not None, multiplier=multiplier,
                     device=conv.weight.device, dtype=conv.weight.dtype)
        slices = conv.weight.detach().double().permute(1, 0, 2, 3).reshape(Cin, Cout, taps)
        # Full matrices only when the multiplier exceeds min(out, k*k), i.e. out < k*k: U stays small.
        U, S, Vh = torch.linalg.svd(slices, full_matrices=multiplier > min(Cout, taps))
        q = min(multiplier, S.shape[1])
        left = U.new_zeros(Cin, Cout, multiplier)
        left[:, :, :q] = U[:, :, :q] * S[:, None, :q]
        with torch.no_grad():
            module.depthwise.weight.copy_(Vh[:, :multiplier].reshape(Cin * multiplier, 1, kh, kw))
            module.pointwise.weight.copy_(left.permute(1, 0, 2).reshape(Cout, Cin * multiplier, 1, 1))
            if conv.bias is not None:
                module.pointwise.bias.copy_(conv.bias.detach())
        return module

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))

    def extra_repr(self) -> str:
        return f"multiplier={self.multiplier}"

    def manifest_entry(self) -> dict:
        dw = self.depthwise
        return {"format": self.format_name, "in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(dw.kernel_size), "stride": list(dw.stride),
                "padding": dw.padding if isinstance(dw.padding, str) else list(dw.padding),
                "dilation": list(dw.dilation), "padding_mode": dw.padding_mode,
                "bias": self.pointwise.bias is not None, "multiplier": self.multiplier,
                "dtype": str(dw.weight.dtype).replace("torch.", "")}

    @classmethod
    def from_manifest_entry(cls, entry: dict, device=None) -> "SeparableConv2d":
        def geometry(value):
            return value if isinstance(value, str) else tuple(value)

        return cls(entry["in_channels"], entry["out_channels"], tuple(entry["kernel_size"]),
                   stride=tuple(entry["stride"]), padding=geometry(entry["padding"]),
                   dilation=tuple(entry["dilation"]), padding_mode=entry["padding_mode"], bias=entry["bias"],
                   multiplier=entry["multiplier"], device=device, dtype=getattr(torch, entry["dtype"]))
