"""Sparse drop-in replacements of nn.Linear: 2:4 semi-structured, CSR and BSR weights."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from pycompress.formats.sparse import pack_bsr, pack_csr
from pycompress.nn.base import PackedLinear
from pycompress.ops import sparse as sparse_ops
from pycompress.ops import sparse24 as sparse24_ops

SPARSE_LAYOUTS = ("csr", "bsr")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _weight_dtype(name: str, dtype_name: str) -> torch.dtype:
    dtype = getattr(torch, dtype_name, None)
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"{name}: weight_dtype must be 'float32', 'float16' or 'bfloat16' (got {dtype_name!r})")
    return dtype


def _dense_weight(linear: nn.Linear) -> Tensor:
    """The weight as the layer computes it (masks of torch.nn.utils.prune applied)."""
    return linear.weight.detach()


class Sparse24Linear(PackedLinear):
    """2:4 semi-structured weights: buffers ``values`` [out, in / 2] (the weight's dtype) and ``meta``
    int16 [out, in / 16] in the sparse tensor-core layout (pycompress.ops.sparse24). The input must
    have the weight's dtype; in_features must be a multiple of 16."""

    format_name = "sparse24"
    manifest_fields = ("weight_dtype",)

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None,
                 bias_dtype: torch.dtype = torch.float32, weight_dtype: str = "float32"):
        super().__init__(in_features, out_features, bias, device, bias_dtype)
        if in_features % 16:
            raise ValueError(f"Sparse24Linear: in_features must be a multiple of 16 (got {in_features})")
        self.weight_dtype = weight_dtype
        dtype = _weight_dtype("Sparse24Linear", weight_dtype)
        self.register_buffer("values", torch.zeros(out_features, in_features // 2, dtype=dtype, device=device))
        self.register_buffer("meta", torch.zeros(out_features, in_features // 16, dtype=torch.int16, device=device))

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Sparse24Linear":
        """Pack a layer whose weight is already 2:4 sparse (prune it first, e.g. with Sparse24Config)."""
        weight = _dense_weight(linear)
        module = cls(linear.in_features, linear.out_features, weight_dtype=_dtype_name(weight.dtype),
                     **cls._linear_kwargs(linear))
        values, meta = sparse24_ops.sparse24_compress(weight)
        module.values.copy_(values)
        module.meta.copy_(meta)
        module._copy_bias(linear)
        return module

    def dense_weight(self) -> Tensor:
        return sparse24_ops.sparse24_decompress(self.values, self.meta)

    def forward_2d(self, x: Tensor) -> Tensor:
        return sparse24_ops.sparse24_mm(x, self.values, self.meta, self.bias)


class SparseLinear(PackedLinear):
    """Unstructured sparse weights in CSR (``layout="csr"``) or in ``block`` x ``block`` blocks
    (``layout="bsr"``, block 16, 32 or 64). Buffers ``crow``, ``col`` (int32) and ``values`` as in
    pycompress.ops.sparse; ``nnz`` is the number of stored entries (CSR) or blocks (BSR)."""

    format_name = "sparse"
    manifest_fields = ("layout", "block", "nnz", "weight_dtype")

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None,
                 bias_dtype: torch.dtype = torch.float32, layout: str = "csr", block: Optional[int] = None,
                 nnz: int = 0, weight_dtype: str = "float32"):
        super().__init__(in_features, out_features, bias, device, bias_dtype)
        if layout not in SPARSE_LAYOUTS:
            raise ValueError(f"SparseLinear: layout must be one of {SPARSE_LAYOUTS} (got {layout!r})")
        if layout == "csr" and block is not None:
            raise ValueError(f"SparseLinear: block must be None for layout='csr' (got {block!r})")
        if layout == "bsr":
            if block not in sparse_ops.BSR_BLOCKS:
                raise ValueError(f"SparseLinear: block must be one of {sparse_ops.BSR_BLOCKS} for layout='bsr' "
                                 f"(got {block!r})")
            if in_features % block or out_features % block:
                raise ValueError(f"SparseLinear: in_features and out_features must be multiples of block = {block} "
                                 f"(got {in_features}, {out_features})")
        if not isinstance(nnz, int) or nnz < 0:
            raise ValueError(f"SparseLinear: nnz must be an int >= 0 (got {nnz!r})")
        self.layout, self.block, self.nnz, self.weight_dtype = layout, block, nnz, weight_dtype
        dtype = _weight_dtype("SparseLinear", weight_dtype)
        rows = out_features if layout == "csr" else out_features // block
        values_shape = (nnz,) if layout == "csr" else (nnz, block, block)
        self.register_buffer("crow", torch.zeros(rows + 1, dtype=torch.int32, device=device))
        self.register_buffer("col", torch.zeros(nnz, dtype=torch.int32, device=device))
        self.register_buffer("values", torch.zeros(values_shape, dtype=dtype, device=device))

    @classmethod
    def from_linear(cls, linear: nn.Linear, layout: str = "csr", block: Optional[int] = None) -> "SparseLinear":
        """Pack the non-zero entries (CSR) or non-zero blocks (BSR) of the layer's weight."""
        weight = _dense_weight(linear)
        if layout == "bsr":
            if block not in sparse_ops.BSR_BLOCKS:
                raise ValueError(f"SparseLinear: block must be one of {sparse_ops.BSR_BLOCKS} for layout='bsr' "
                                 f"(got {block!r})")
            crow, col, values = pack_bsr(weight, block)
        else:
            crow, col, values = pack_csr(weight)
        module = cls(linear.in_features, linear.out_features, layout=layout, block=block, nnz=col.numel(),
                     weight_dtype=_dtype_name(weight.dtype), **cls._linear_kwargs(linear))
        module.crow.copy_(crow)
        module.col.copy_(col)
        module.values.copy_(values)
        module._copy_bias(linear)
        return module

    @property
    def density(self) -> float:
        """Stored weights over in_features * out_features."""
        stored = self.values.numel()
        return stored / (self.in_features * self.out_features)

    def dense_weight(self) -> Tensor:
        to_dense = sparse_ops.csr_to_dense if self.layout == "csr" else sparse_ops.bsr_to_dense
        return to_dense(self.crow, self.col, self.values, self.in_features)

    def forward_2d(self, x: Tensor) -> Tensor:
        op = sparse_ops.csr_mm if self.layout == "csr" else sparse_ops.bsr_mm
        return op(x, self.crow, self.col, self.values, self.bias)
