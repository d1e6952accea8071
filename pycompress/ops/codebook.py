"""Codebook (weight-clustered) GEMM: weights are b-bit indices into a small table of shared values.

Layout (shared by every backend)
    codebook [G, C] x.dtype with C = 16 (4-bit indices) or C = 256 (8-bit indices); G = 1 (one table
        for the whole weight) or G = N (one table per output channel). Clusterings with fewer than C
        values (2..3 bits in 4-bit storage, 5..7 bits in 8-bit storage) leave the unused entries unread.
    idx uint8, the index of weight [n, k] into row g(n) of the codebook (g(n) = n when G = N, else 0):
        8-bit: [N, K], one index per byte;
        4-bit: [N, ceil(K / 2)], element k in the low nibble (k even) or the high nibble (k odd) of
            byte k // 2; the high nibble of the last byte is padding when K is odd and is never read.
    The dense weight is w[n, k] = codebook[g(n), index(n, k)].

Op
    codebook_mm(x [M, K], idx, codebook [G, C], bias [N]?) -> [M, N] x.dtype
        y = x @ w^T + bias, products summed in float32. The fused kernels decode the weights through
        the codebook in registers: the dense weight is never written to memory. Built for decode
        (small M), correct for any M.
        Differentiable in x, codebook and bias (plain PyTorch backward): the codebook gradient of
        entry c is the sum of the weight gradients dy^T x over the weights that use c (gradients
        accumulated per cluster), so clustered layers fine-tune their shared values.

Backends: cpu (csrc/cpu/codebook.cpp), cuda (csrc/cuda/codebook.cu), triton (kernels/codebook.py) and
the reference below.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from pycompress import registry
from pycompress.ops._backends import register_standard, with_direct_path
from pycompress.ops._checks import FLOAT_DTYPES, check_tensor

CODEBOOK_SIZES = (16, 256)  # codebook entries C for 4-bit and 8-bit indices


def index_bits(codebook: Tensor) -> int:
    """4 or 8: the storage width of the indices that address ``codebook`` [G, C]."""
    return 4 if codebook.shape[1] == 16 else 8


def packed_columns(K: int, bits: int) -> int:
    return (K + 1) // 2 if bits == 4 else K


# ---------------------------------------------------------------------------------------------
# packing (plain PyTorch: offline weight packing, and the references)


def pack_indices(indices: Tensor, bits: int) -> Tensor:
    """Pack integer indices [N, K] in [0, 2^bits) into the uint8 layout above (bits 4 or 8)."""
    if bits not in (4, 8):
        raise ValueError(f"pack_indices: bits must be 4 or 8 (the storage widths; got {bits!r})")
    if not isinstance(indices, Tensor) or indices.dim() != 2 or indices.dtype.is_floating_point \
            or indices.dtype.is_complex or indices.dtype == torch.bool:
        raise ValueError(f"pack_indices: indices must be a 2-D integer tensor [N, K] (got {indices!r:.80})")
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= 2**bits):
        raise ValueError(f"pack_indices: indices must lie in [0, {2**bits}) for bits={bits} "
                         f"(got min {int(indices.min())}, max {int(indices.max())})")
    codes = indices.to(torch.int64)
    if bits == 8:
        return codes.to(torch.uint8)
    N, K = codes.shape
    if K % 2:
        codes = torch.cat([codes, codes.new_zeros(N, 1)], dim=1)
    pairs = codes.view(N, -1, 2)
    return (pairs[..., 0] | (pairs[..., 1] << 4)).to(torch.uint8)


def unpack_indices(idx: Tensor, K: int, bits: int) -> Tensor:
    """int64 [N, K] indices of a packed uint8 ``idx``."""
    codes = idx.to(torch.int64)
    if bits == 8:
        return codes
    nibbles = torch.stack([codes & 0xF, codes >> 4], dim=-1)
    return nibbles.reshape(idx.shape[0], -1)[:, :K]


def codebook_decode(idx: Tensor, codebook: Tensor, K: int) -> Tensor:
    """The dense weight [N, K] (codebook.dtype) of packed indices ``idx`` into ``codebook``."""
    indices = unpack_indices(idx, K, index_bits(codebook))
    if codebook.shape[0] == 1:
        return codebook[0][indices]
    return torch.gather(codebook, 1, indices)


def codebook_mm_reference(x: Tensor, idx: Tensor, codebook: Tensor, bias: Optional[Tensor]) -> Tensor:
    y = x.float() @ codebook_decode(idx, codebook, x.shape[1]).float().T
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


# ---------------------------------------------------------------------------------------------
# validation


def _check(x, idx, codebook, bias) -> None:
    op = "codebook_mm"
    check_tensor(op, "x", x, dtypes=FLOAT_DTYPES, shape=(None, None), shape_doc="[M, K]")
    K = x.shape[1]
    if K == 0:
        raise ValueError(f"{op}: x must have K >= 1 columns (got shape {list(x.shape)})")
    check_tensor(op, "codebook", codebook, dtypes=(x.dtype,), shape=(None, None),
                 shape_doc="[G, C] with C = 16 (4-bit) or 256 (8-bit) and G = 1 or N, same dtype as x",
                 device=x.device)
    if codebook.shape[1] not in CODEBOOK_SIZES:
        raise ValueError(f"{op}: codebook must have C = 16 (4-bit indices) or 256 (8-bit indices) columns "
                         f"(got shape {list(codebook.shape)})")
    bits = index_bits(codebook)
    cols = packed_columns(K, bits)
    doc = f"[N, {'ceil(K / 2)' if bits == 4 else 'K'}] = [N, {cols}] for {bits}-bit indices"
    check_tensor(op, "idx", idx, dtypes=(torch.uint8,), shape=(None, cols), shape_doc=doc, device=x.device)
    N = idx.shape[0]
    if codebook.shape[0] not in (1, N):
        raise ValueError(f"{op}: codebook must have G = 1 (per tensor) or G = N = {N} (per output channel) "
                         f"rows (got shape {list(codebook.shape)})")
    if bias is not None:
        check_tensor(op, "bias", bias, dtypes=FLOAT_DTYPES, shape=(N,), shape_doc="[N] with N == idx.shape[0]",
                     device=x.device)


# ---------------------------------------------------------------------------------------------
# the public op


def _codebook_mm(x: Tensor, idx: Tensor, codebook: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """y = x @ w^T + bias with w[n, k] = codebook[g(n), idx[n, k]] decoded in registers."""
    _check(x, idx, codebook, bias)
    if x.shape[0] == 0 or idx.shape[0] == 0:
        return x.new_empty((x.shape[0], idx.shape[0]))
    return registry.select("codebook_mm", registry.device_type(x)).fn(
        x.contiguous(), idx.contiguous(), codebook.contiguous(), None if bias is None else bias.contiguous())


_codebook_mm_op = torch.library.custom_op("pycompress::codebook_mm", mutates_args=())(_codebook_mm)
codebook_mm = with_direct_path(_codebook_mm, _codebook_mm_op)


@_codebook_mm_op.register_fake
def _(x, idx, codebook, bias=None):
    _check(x, idx, codebook, bias)
    return x.new_empty((x.shape[0], idx.shape[0]))


def _setup_context(ctx, inputs, output) -> None:
    x, idx, codebook, bias = inputs
    ctx.save_for_backward(x, idx, codebook)
    ctx.bias_dtype = None if bias is None else bias.dtype


def _backward(ctx, dy: Tensor):
    x, idx, codebook = ctx.saved_tensors
    dx = dcodebook = dbias = None
    K = x.shape[1]
    if ctx.needs_input_grad[0]:
        dx = (dy.float() @ codebook_decode(idx, codebook, K).float()).to(x.dtype)
    if ctx.needs_input_grad[2]:
        dw = dy.float().T @ x.float()  # [N, K]
        indices = unpack_indices(idx, K, index_bits(codebook))
        if codebook.shape[0] == 1:
            flat = torch.zeros(codebook.shape[1], dtype=torch.float32, device=x.device)
            dcodebook = flat.scatter_add_(0, indices.reshape(-1), dw.reshape(-1))[None, :]
        else:
            dcodebook = torch.zeros(codebook.shape, dtype=torch.float32, device=x.device).scatter_add_(1, indices, dw)
        dcodebook = dcodebook.to(codebook.dtype)
    if ctx.bias_dtype is not None and ctx.needs_input_grad[3]:
        dbias = dy.sum(0).to(ctx.bias_dtype)
    return dx, None, dcodebook, dbias


_codebook_mm_op.register_autograd(_backward, setup_context=_setup_context)

register_standard("codebook_mm", "codebook", codebook_mm_reference)
