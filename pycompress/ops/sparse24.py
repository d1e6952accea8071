"""2:4 semi-structured sparsity: compression into the sparse tensor-core layout and the sparse GEMM.

Layout (shared by every backend; it is the operand layout of the sparse MMA ``mma.sp``)
    A weight w [N, K] is 2:4 sparse when every group of 4 consecutive entries along K (columns
    4g .. 4g + 3 of a row) holds at most 2 non-zeros. K must be a multiple of 16.
    values [N, K / 2], w.dtype: the 2 kept entries of each group, in increasing column order:
        values[n, 2g + s] = w[n, 4g + i_s]   (s = 0, 1; i_0 < i_1)
    meta int16 [N, K / 16]: the 2-bit positions i_0, i_1 of the kept entries. Word j of row n covers
        groups 4j .. 4j + 3; group 4j + t uses bits 4t .. 4t + 3: bits 4t, 4t + 1 hold i_0 and bits
        4t + 2, 4t + 3 hold i_1 (e.g. 0x4 keeps positions 0 and 1, 0xE positions 2 and 3). This is the
        per-row bit order mma.sp reads for a 16-column slice of its sparse operand (the weight, as
        the A operand of W x^T); the CUDA kernel pairs the words of two rows into one 32-bit metadata
        register in registers.
    Kept positions of a group: its non-zero entries first (NaN counts as non-zero, -0.0 as zero), then
        its lowest zero positions until there are two, then sorted; so the layout of a given w is
        unique and every backend produces it bit for bit.

Ops
    sparse24_compress(w [N, K] float) -> (values [N, K / 2] w.dtype, meta int16 [N, K / 16])
        raises ValueError naming the first row and column group with more than 2 non-zeros.
    sparse24_mm(x [M, K], values [N, K / 2], meta int16 [N, K / 16], bias [N]?) -> [M, N] x.dtype
        y = x @ w^T + bias with w the decompressed weight; values.dtype == x.dtype
        (float32, float16 or bfloat16); products summed in float32.

Backends: cpu (csrc/cpu/sparse24.cpp), cuda (csrc/cuda/sparse24.cu), triton (kernels/sparse24.py) and
the references below.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from pycompress import registry
from pycompress.ops._backends import register_standard, with_direct_path
from pycompress.ops._checks import FLOAT_DTYPES, check_tensor

_POSITIONS = torch.arange(4, dtype=torch.int64)


# ---------------------------------------------------------------------------------------------
# references


def sparse24_kept_positions(w: Tensor) -> Tensor:
    """int64 [N, K / 4, 2]: the two kept positions (0..3, ascending) of every group of 4."""
    N, K = w.shape
    groups = w.reshape(N, K // 4, 4)
    # Rank by (is zero, position): non-zeros first, then the lowest zero positions.
    key = (groups == 0).to(torch.int64) * 4 + _POSITIONS.to(w.device)
    kept = torch.topk(key, 2, dim=-1, largest=False, sorted=False).indices
    return kept.sort(dim=-1).values


def sparse24_compress_reference(w: Tensor) -> tuple[Tensor, Tensor]:
    N, K = w.shape
    kept = sparse24_kept_positions(w)
    values = torch.gather(w.reshape(N, K // 4, 4), 2, kept).reshape(N, K // 2)
    nibbles = (kept[..., 0] | (kept[..., 1] << 2)).reshape(N, K // 16, 4)
    words = (nibbles << torch.arange(0, 16, 4, dtype=torch.int64, device=w.device)).sum(-1)
    meta = torch.where(words >= 2**15, words - 2**16, words).to(torch.int16)
    return values, meta


def sparse24_decompress(values: Tensor, meta: Tensor) -> Tensor:
    """The dense weight [N, K] (values.dtype) of a compressed 2:4 weight."""
    N, K = meta.shape[0], meta.shape[1] * 16
    shifts = torch.arange(0, 16, 2, dtype=torch.int64, device=meta.device)
    codes = ((meta.to(torch.int64) & 0xFFFF)[..., None] >> shifts) & 3  # [N, K/16, 8]: i0, i1 per group
    positions = codes.reshape(N, K // 4, 2)
    w = torch.zeros(N, K // 4, 4, dtype=values.dtype, device=values.device)
    w.scatter_(2, positions, values.reshape(N, K // 4, 2))
    return w.reshape(N, K)


def sparse24_mm_reference(x: Tensor, values: Tensor, meta: Tensor, bias: Optional[Tensor]) -> Tensor:
    y = x.float() @ sparse24_decompress(values, meta).float().T
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def is_sparse24(w: Tensor) -> bool:
    """Whether every group of 4 consecutive entries along the last dim has at most 2 non-zeros."""
    if w.dim() != 2 or w.shape[1] % 4:
        return False
    return bool(((w.reshape(w.shape[0], -1, 4) != 0).sum(-1) <= 2).all())


# ---------------------------------------------------------------------------------------------
# validation


def _check_w(w) -> None:
    op = "sparse24_compress"
    check_tensor(op, "w", w, dtypes=FLOAT_DTYPES, shape=(None, None),
                 shape_doc="[N, K] with K a multiple of 16")
    if w.shape[1] == 0 or w.shape[1] % 16:
        raise ValueError(f"sparse24_compress: w must have K a positive multiple of 16 columns (got shape {list(w.shape)})")


def _check_pattern(w: Tensor) -> None:
    counts = (w.reshape(w.shape[0], w.shape[1] // 4, 4) != 0).sum(-1)
    bad = (counts > 2).nonzero()
    if bad.numel():
        row, group = bad[0].tolist()
        raise ValueError(
            f"sparse24_compress: w is not 2:4 sparse: row {row}, columns {4 * group}..{4 * group + 3} hold "
            f"{counts[row, group].item()} non-zeros (at most 2 of every 4 consecutive entries may be non-zero; "
            f"prune it first, e.g. with pycompress.prune.PruneConfig(structure='nm'))"
        )


def _check_mm(x, values, meta, bias) -> None:
    op = "sparse24_mm"
    check_tensor(op, "x", x, dtypes=FLOAT_DTYPES, shape=(None, None), shape_doc="[M, K] with K a multiple of 16")
    K = x.shape[1]
    if K == 0 or K % 16:
        raise ValueError(f"{op}: x must have K a positive multiple of 16 columns (got shape {list(x.shape)})")
    check_tensor(op, "values", values, dtypes=(x.dtype,), shape=(None, K // 2),
                 shape_doc="[N, K / 2] with K == x.shape[1], same dtype as x", device=x.device)
    N = values.shape[0]
    check_tensor(op, "meta", meta, dtypes=(torch.int16,), shape=(N, K // 16),
                 shape_doc="[N, K / 16] with N == values.shape[0]", device=x.device)
    if bias is not None:
        check_tensor(op, "bias", bias, dtypes=FLOAT_DTYPES, shape=(N,), shape_doc="[N]", device=x.device)


# ---------------------------------------------------------------------------------------------
# the public ops


def _run(op: str, device: torch.device, *args):
    return registry.select(op, device.type).fn(*args)


def _sparse24_compress(w: Tensor) -> tuple[Tensor, Tensor]:
    """Compress a 2:4 sparse weight [N, K] into (values [N, K / 2], meta int16 [N, K / 16])."""
    _check_w(w)
    _check_pattern(w)
    N, K = w.shape
    if N == 0:
        return w.new_empty((0, K // 2)), w.new_empty((0, K // 16), dtype=torch.int16)
    return _run("sparse24_compress", w.device, w.contiguous())


_sparse24_compress_op = torch.library.custom_op("pycompress::sparse24_compress",
                                                mutates_args=())(_sparse24_compress)
sparse24_compress = with_direct_path(_sparse24_compress, _sparse24_compress_op)


@_sparse24_compress_op.register_fake
def _(w):
    _check_w(w)
    N, K = w.shape
    return w.new_empty((N, K // 2)), w.new_empty((N, K // 16), dtype=torch.int16)


def _sparse24_mm(x: Tensor, values: Tensor, meta: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """y = x @ w^T + bias with w the 2:4 weight held as (values, meta)."""
    _check_mm(x, values, meta, bias)
    if x.shape[0] == 0 or values.shape[0] == 0:
        return x.new_empty((x.shape[0], values.shape[0]))
    args = tuple(None if t is None else t.contiguous() for t in (x, values, meta, bias))
    return _run("sparse24_mm", x.device, *args)


_sparse24_mm_op = torch.library.custom_op("pycompress::sparse24_mm", mutates_args=())(_sparse24_mm)
sparse24_mm = with_direct_path(_sparse24_mm, _sparse24_mm_op)


@_sparse24_mm_op.register_fake
def _(x, values, meta, bias=None):
    _check_mm(x, values, meta, bias)
    return x.new_empty((x.shape[0], values.shape[0]))


register_standard("sparse24_compress", "sparse24", sparse24_compress_reference)
register_standard("sparse24_mm", "sparse24", sparse24_mm_reference)
