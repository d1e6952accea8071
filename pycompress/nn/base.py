"""Common base of the packed drop-in replacements of nn.Linear."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class PackedLinear(nn.Module):
    """A drop-in for nn.Linear whose weight lives in a packed format.

    Subclasses set ``format_name``, register their packed buffers in ``__init__`` (from the
    constructor arguments alone, so that ``pycompress.load`` can rebuild them from the manifest),
    list extra constructor arguments in ``manifest_fields`` and implement ``forward_2d`` on [M, K]
    inputs. The bias is a buffer [out_features] kept in its float dtype, or None.
    """

    format_name = ""
    manifest_fields: tuple = ()

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None,
                 bias_dtype: torch.dtype = torch.float32):
        super().__init__()
        name = type(self).__name__
        if in_features < 1 or out_features < 1:
            raise ValueError(f"{name}: in_features and out_features must be >= 1 (got {in_features}, {out_features})")
        self.in_features = in_features
        self.out_features = out_features
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=bias_dtype, device=device))
        else:
            self.bias = None

    def _copy_bias(self, linear: nn.Linear) -> None:
        if linear.bias is not None:
            self.bias.copy_(linear.bias.detach())

    @staticmethod
    def _linear_kwargs(linear: nn.Linear) -> dict:
        has_bias = linear.bias is not None
        return dict(bias=has_bias, device=linear.weight.device,
                    bias_dtype=linear.bias.dtype if has_bias else torch.float32)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"{type(self).__name__}: input must have last dimension {self.in_features} (got shape {list(x.shape)})"
            )
        lead = x.shape[:-1]
        y = self.forward_2d(x.reshape(-1, self.in_features))
        return y.reshape(*lead, self.out_features)

    def forward_2d(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        extra = "".join(f", {f}={getattr(self, f)!r}" for f in self.manifest_fields)
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}{extra}"

    def manifest_entry(self) -> dict:
        entry = {
            "format": self.format_name,
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias is not None,
            "bias_dtype": str(self.bias.dtype).replace("torch.", "") if self.bias is not None else None,
        }
        entry.update({f: getattr(self, f) for f in self.manifest_fields})
        return entry

    @classmethod
    def from_manifest_entry(cls, entry: dict, device=None) -> "PackedLinear":
        bias_dtype = getattr(torch, entry["bias_dtype"]) if entry.get("bias_dtype") else torch.float32
        extra = {f: entry[f] for f in cls.manifest_fields}
        return cls(entry["in_features"], entry["out_features"], bias=entry["bias"], device=device,
                   bias_dtype=bias_dtype, **extra)
