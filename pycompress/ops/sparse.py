"""Unstructured sparse GEMMs: CSR and block-sparse (BSR) weights, for sparsity 50-99%.

Layouts (shared by every backend)
    CSR, weight w [N, K]:
        crow int32 [N + 1]: crow[0] = 0, non-decreasing, crow[N] = nnz
        col int32 [nnz]: column of each stored entry, in [0, K); within a row ascending
        values [nnz]: the entries, row by row (w[n, col[i]] = values[i] for crow[n] <= i < crow[n + 1])
    BSR, weight w [N, K] in B x B blocks (B = 16, 32 or 64; N and K multiples of B):
        crow int32 [N / B + 1], col int32 [nnzb] (block columns, in [0, K / B), ascending per block row)
        values [nnzb, B, B]: values[b, i, j] = w[r B + i, col[b] B + j] for block b of block row r

Ops (x float32/float16/bfloat16 [M, K]; values of x.dtype; products summed in float32;
output [M, N] in x.dtype)
    csr_mm(x, crow, col, values, bias [N]?)  = x @ w^T + bias,  N = crow.numel() - 1
    bsr_mm(x, crow, col, values, bias [N]?)  = x @ w^T + bias,  N = (crow.numel() - 1) B

The ops check shapes and dtypes; the index arrays themselves are checked by the reference and the
CPU backend, while the GPU backends trust them (produce them with pycompress.formats.sparse).

Backends: cpu (csrc/cpu/sparse.cpp), cuda (csrc/cuda/sparse.cu), triton (kernels/sparse.py) and the
references below.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from pycompress import registry
from pycompress.ops._backends import register_standard, with_direct_path
from pycompress.ops._checks import FLOAT_DTYPES, check_tensor

BSR_BLOCKS = (16, 32, 64)


# ---------------------------------------------------------------------------------------------
# references


def _check_index_arrays(op: str, crow: Tensor, col: Tensor, columns: int) -> None:
    """The CSR invariants of (crow, col) for a matrix with ``columns`` (block) columns."""
    crow64, col64 = crow.to(torch.int64), col.to(torch.int64)
    if crow64[0].item() != 0 or crow64[-1].item() != col.numel() or bool((crow64[1:] < crow64[:-1]).any()):
        raise ValueError(f"{op}: crow must start at 0, never decrease and end at col.numel() = {col.numel()}")
    if col.numel() and (col64.min().item() < 0 or col64.max().item() >= columns):
        raise ValueError(f"{op}: col must hold (block) column indices in [0, {columns})")


def csr_to_dense(crow: Tensor, col: Tensor, values: Tensor, K: int) -> Tensor:
    """The dense weight [N, K] (values.dtype) of a CSR weight."""
    _check_index_arrays("csr_mm", crow, col, K)
    N = crow.numel() - 1
    rows = torch.repeat_interleave(torch.arange(N, device=crow.device), crow.to(torch.int64).diff())
    w = torch.zeros(N, K, dtype=values.dtype, device=values.device)
    w.index_put_((rows, col.to(torch.int64)), values, accumulate=True)
    return w


def bsr_to_dense(crow: Tensor, col: Tensor, values: Tensor, K: int) -> Tensor:
    """The dense weight [N, K] (values.dtype) of a BSR weight with blocks values.shape[1:]."""
    B = values.shape[1]
    _check_index_arrays("bsr_mm", crow, col, K // B)
    R = crow.numel() - 1
    rows = torch.repeat_interleave(torch.arange(R, device=crow.device), crow.to(torch.int64).diff())
    w = torch.zeros(R, K // B, B, B, dtype=values.dtype, device=values.device)
    w.index_put_((rows, col.to(torch.int64)), values, accumulate=True)
    return w.permute(0, 2, 1, 3).reshape(R * B, K)


def _finish(y: Tensor, bias: Optional[Tensor], dtype: torch.dtype) -> Tensor:
    if bias is not None:
        y = y + bias.float()
    return y.to(dtype)


def csr_mm_reference(x: Tensor, crow: Tensor, col: Tensor, values: Tensor, bias: Optional[Tensor]) -> Tensor:
    return _finish(x.float() @ csr_to_dense(crow, col, values, x.shape[1]).float().T, bias, x.dtype)


def bsr_mm_reference(x: Tensor, crow: Tensor, col: Tensor, values: Tensor, bias: Optional[Tensor]) -> Tensor:
    return _finish(x.float() @ bsr_to_dense(crow, col, values, x.shape[1]).float().T, bias, x.dtype)


# ---------------------------------------------------------------------------------------------
# validation


def _check_common(op: str, x, crow, col, values_shape, values_doc, values, bias, rows_per_crow: int) -> int:
    check_tensor(op, "x", x, dtypes=FLOAT_DTYPES, shape=(None, None), shape_doc="[M, K]")
    check_tensor(op, "crow", crow, dtypes=(torch.int32,), shape=(None,), shape_doc="[rows + 1]", device=x.device)
    if crow.numel() == 0:
        raise ValueError(f"{op}: crow must have at least one entry (rows + 1) (got an empty tensor)")
    check_tensor(op, "col", col, dtypes=(torch.int32,), shape=(None,), shape_doc="[nnz]", device=x.device)
    check_tensor(op, "values", values, dtypes=(x.dtype,), shape=values_shape,
                 shape_doc=f"{values_doc}, same dtype as x", device=x.device)
    if values.shape[0] != col.shape[0]:
        raise ValueError(f"{op}: values must have one entry per col index: values.shape[0] == col.numel() "
                         f"(got {values.shape[0]} and {col.numel()})")
    N = (crow.numel() - 1) * rows_per_crow
    if bias is not None:
        check_tensor(op, "bias", bias, dtypes=FLOAT_DTYPES, shape=(N,), shape_doc=f"[N] = [{N}]", device=x.device)
    return N


def _check_csr_mm(x, crow, col, values, bias) -> int:
    return _check_common("csr_mm", x, crow, col, (None,), "[nnz]", values, bias, 1)


def _check_bsr_mm(x, crow, col, values, bias) -> int:
    op = "bsr_mm"
    check_tensor(op, "values", values, dtypes=FLOAT_DTYPES, shape=(None, None, None), shape_doc="[nnzb, B, B]")
    B = values.shape[1]
    if B not in BSR_BLOCKS or values.shape[2] != B:
        raise ValueError(f"{op}: values must be [nnzb, B, B] with B in {BSR_BLOCKS} (got {list(values.shape)})")
    N = _check_common(op, x, crow, col, (None, B, B), f"[nnzb, {B}, {B}]", values, bias, B)
    if x.shape[1] % B:
        raise ValueError(f"{op}: K = x.shape[1] = {x.shape[1]} must be a multiple of the block size B = {B}")
    return N


# ---------------------------------------------------------------------------------------------
# the public ops


def _sparse_mm(op: str, check, x, crow, col, values, bias, *, fake: bool) -> Tensor:
    """Shared body of csr_mm and bsr_mm (real and fake): validate, then run or allocate."""
    N = check(x, crow, col, values, bias)
    if fake or x.shape[0] == 0 or N == 0:
        return x.new_empty((x.shape[0], N))
    args = tuple(None if t is None else t.contiguous() for t in (x, crow, col, values, bias))
    return registry.select(op, registry.device_type(x)).fn(*args)


def _csr_mm(x: Tensor, crow: Tensor, col: Tensor, values: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """y = x @ w^T + bias with w [N, K] in CSR (crow, col, values)."""
    return _sparse_mm("csr_mm", _check_csr_mm, x, crow, col, values, bias, fake=False)


_csr_mm_op = torch.library.custom_op("pycompress::csr_mm", mutates_args=())(_csr_mm)
csr_mm = with_direct_path(_csr_mm, _csr_mm_op)


@_csr_mm_op.register_fake
def _(x, crow, col, values, bias=None):
    return _sparse_mm("csr_mm", _check_csr_mm, x, crow, col, values, bias, fake=True)


def _bsr_mm(x: Tensor, crow: Tensor, col: Tensor, values: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """y = x @ w^T + bias with w [N, K] in B x B blocks (crow, col, values [nnzb, B, B])."""
    return _sparse_mm("bsr_mm", _check_bsr_mm, x, crow, col, values, bias, fake=False)


_bsr_mm_op = torch.library.custom_op("pycompress::bsr_mm", mutates_args=())(_bsr_mm)
bsr_mm = with_direct_path(_bsr_mm, _bsr_mm_op)


@_bsr_mm_op.register_fake
def _(x, crow, col, values, bias=None):
    return _sparse_mm("bsr_mm", _check_bsr_mm, x, crow, col, values, bias, fake=True)


register_standard("csr_mm", "sparse", csr_mm_reference)
register_standard("bsr_mm", "sparse", bsr_mm_reference)
