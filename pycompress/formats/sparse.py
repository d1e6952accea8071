"""Packing of sparse weights: CSR, BSR (B x B blocks) and 2:4 (see pycompress.ops.sparse / sparse24)."""

from __future__ import annotations

import torch
from torch import Tensor

from pycompress.ops.sparse import BSR_BLOCKS


def _check_weight(fn: str, w) -> None:
    if not isinstance(w, Tensor) or w.dim() != 2 or not w.is_floating_point():
        raise ValueError(f"{fn}: w must be a 2-D floating-point tensor [N, K] (got {w!r:.60})")


def pack_csr(w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(crow int32 [N + 1], col int32 [nnz], values [nnz]) of the non-zero entries of w [N, K]."""
    _check_weight("pack_csr", w)
    w = w.detach()
    rows, cols = (w != 0).nonzero(as_tuple=True)
    crow = torch.zeros(w.shape[0] + 1, dtype=torch.int64, device=w.device)
    crow[1:] = torch.bincount(rows, minlength=w.shape[0]).cumsum(0)
    return crow.to(torch.int32), cols.to(torch.int32), w[rows, cols].contiguous()


def pack_bsr(w: Tensor, block: int) -> tuple[Tensor, Tensor, Tensor]:
    """(crow int32 [N / B + 1], col int32 [nnzb], values [nnzb, B, B]) of the B x B blocks of w [N, K]
    holding at least one non-zero."""
    _check_weight("pack_bsr", w)
    if block not in BSR_BLOCKS:
        raise ValueError(f"pack_bsr: block must be one of {BSR_BLOCKS} (got {block!r})")
    N, K = w.shape
    if N % block or K % block:
        raise ValueError(f"pack_bsr: w's shape {list(w.shape)} must be multiples of the block size {block} "
                         f"in both dimensions")
    blocks = w.detach().reshape(N // block, block, K // block, block).permute(0, 2, 1, 3)
    present = (blocks != 0).flatten(2).any(-1)  # [N / B, K / B]
    rows, cols = present.nonzero(as_tuple=True)
    crow = torch.zeros(N // block + 1, dtype=torch.int64, device=w.device)
    crow[1:] = present.sum(1).cumsum(0)
    return crow.to(torch.int32), cols.to(torch.int32), blocks[rows, cols].contiguous()
