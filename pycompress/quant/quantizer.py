"""The one quantizer every quantization method of pycompress uses.

Round-to-nearest (half to even) uniform quantization of a 2-D tensor [rows, K]:

    symmetric  (b bits): q in [-(2^(b-1) - 1), 2^(b-1) - 1],  scale = amax / qmax,  zero_point = 0
    asymmetric (b bits): q in [0, 2^b - 1],  scale = (hi - lo) / (2^b - 1),  zero_point = round(-lo / scale)
    x ~= (q - zero_point) * scale

Granularity: ``tensor`` (one scale), ``channel`` (one per row: output channel of a weight, token of an
activation) or ``group`` (one per row and per run of ``group_size`` columns; group_size divides K).
Scales have shape [rows, groups] (``tensor``: [1, 1]; ``channel``: [rows, 1]).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

GRANULARITIES = ("tensor", "channel", "group")


@dataclasses.dataclass(frozen=True)
class Quantizer:
    bits: int = 8
    symmetric: bool = True
    granularity: str = "channel"
    group_size: int | None = None

    def __post_init__(self):
        if not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise ValueError(f"Quantizer: bits must be an int in 2..8 (got {self.bits!r})")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"Quantizer: granularity must be one of {', '.join(GRANULARITIES)} (got {self.granularity!r})")
        if self.granularity == "group":
            if not isinstance(self.group_size, int) or self.group_size < 1:
                raise ValueError(f"Quantizer: group_size must be a positive int for granularity='group' (got {self.group_size!r})")
        elif self.group_size is not None:
            raise ValueError(f"Quantizer: group_size is only used with granularity='group' (got {self.group_size!r})")

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1) - 1) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2**self.bits - 1

    def _grouped(self, x: Tensor) -> Tensor:
        """x [rows, K] viewed as [rows or 1, groups, elements per group]."""
        if x.dim() != 2:
            raise ValueError(f"Quantizer: x must be 2-D [rows, K] (got shape {list(x.shape)})")
        rows, K = x.shape
        if self.granularity == "tensor":
            return x.reshape(1, 1, rows * K)
        if self.granularity == "channel":
            return x.reshape(rows, 1, K)
        if K % self.group_size:
            raise ValueError(f"Quantizer: group_size {self.group_size} must divide K = {K}")
        return x.reshape(rows, K // self.group_size, self.group_size)

    def params_from_range(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """(scale, zero_point) float32 for observed ranges ``lo <= x <= hi`` (any matching shapes)."""
        lo = torch.minimum(lo.float(), torch.zeros_like(lo, dtype=torch.float32))
        hi = torch.maximum(hi.float(), torch.zeros_like(hi, dtype=torch.float32))
        if self.symmetric:
            amax = torch.maximum(-lo, hi)
            scale = amax / self.qmax
            zero_point = torch.zeros_like(scale)
        else:
            scale = (hi - lo) / (self.qmax - self.qmin)
            zero_point = torch.round(-lo / torch.where(scale > 0, scale, torch.ones_like(scale)))
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return scale, zero_point

    def params(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(scale, zero_point) of shape [rows or 1, groups] from the min and max of x."""
        g = self._grouped(x.detach().float())
        if not torch.isfinite(g).all():
            raise ValueError("Quantizer: x holds NaN or Inf values, which cannot be quantized")
        return self.params_from_range(g.amin(-1), g.amax(-1))

    def quantize(self, x: Tensor, scale: Tensor, zero_point: Tensor) -> Tensor:
        """Integer codes (int32) of x with the given parameters, shape of x."""
        g = self._grouped(x.float())
        q = torch.round(g / scale[..., None]) + zero_point[..., None]
        return q.clamp_(self.qmin, self.qmax).to(torch.int32).reshape(x.shape)

    def dequantize(self, q: Tensor, scale: Tensor, zero_point: Tensor) -> Tensor:
        g = self._grouped(q.float())
        return ((g - zero_point[..., None]) * scale[..., None]).reshape(q.shape)

    def fake_quantize(self, x: Tensor, scale: Tensor | None = None, zero_point: Tensor | None = None) -> Tensor:
        """x rounded to the quantization grid (float32), with parameters from x when not given."""
        if scale is None:
            scale, zero_point = self.params(x)
        return self.dequantize(self.quantize(x, scale, zero_point), scale, zero_point)
