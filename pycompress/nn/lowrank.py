"""Low-rank drop-in replacement of nn.Linear: y = (x v^T) u^T + bias with trainable factors."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from pycompress.nn.base import PackedLinear


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
        return F.linear(F.linear(x, self.v), self.u, self.bias)
