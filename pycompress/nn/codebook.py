"""Weight-clustered drop-in replacement of nn.Linear: b-bit indices into a fine-tunable codebook."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pycompress.nn.base import PackedLinear
from pycompress.ops import codebook as codebook_ops

CLUSTER_BITS = range(2, 9)
WEIGHT_DTYPES = ("float32", "float16", "bfloat16")


def check_cluster_bits(name: str, bits) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise TypeError(f"{name}: bits must be an int in 2..8 (got {type(bits).__name__} {bits!r})")
    if bits not in CLUSTER_BITS:
        raise ValueError(f"{name}: bits must be in 2..8 (got {bits})")


def storage_bits(bits: int) -> int:
    """The index width in memory: 4-bit nibbles for up to 16 clusters, bytes beyond."""
    return 4 if bits <= 4 else 8


class CodebookLinear(PackedLinear):
    """w[n, k] = codebook[g(n), index(n, k)] with 2^``bits`` clusters (bits 2..8), g(n) = n when
    ``per_channel`` else 0 (pycompress.ops.codebook layout).

    Buffers: ``idx`` uint8 [out, ceil(in / 2)] (bits <= 4, two indices per byte) or [out, in]
    (bits 5..8), fixed. Parameter: ``codebook`` [G, C] of ``weight_dtype`` with C = 16 or 256 (the
    storage width), trainable: its gradient is the weight gradient summed over each cluster. Entries
    beyond 2^bits are zero and never read. The forward casts the codebook to the input's dtype (the op
    takes both in one dtype).
    """

    format_name = "codebook"
    manifest_fields = ("bits", "per_channel", "weight_dtype")

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None,
                 bias_dtype: torch.dtype = torch.float32, bits: int = 4, per_channel: bool = True,
                 weight_dtype: str = "float32"):
        super().__init__(in_features, out_features, bias, device, bias_dtype)
        check_cluster_bits("CodebookLinear", bits)
        if not isinstance(per_channel, bool):
            raise TypeError(f"CodebookLinear: per_channel must be a bool (got {type(per_channel).__name__} "
                            f"{per_channel!r})")
        if weight_dtype not in WEIGHT_DTYPES:
            raise ValueError(f"CodebookLinear: weight_dtype must be one of {', '.join(WEIGHT_DTYPES)} "
                             f"(got {weight_dtype!r})")
        self.bits, self.per_channel, self.weight_dtype = bits, per_channel, weight_dtype
        width = storage_bits(bits)
        columns = codebook_ops.packed_columns(in_features, width)
        self.register_buffer("idx", torch.zeros(out_features, columns, dtype=torch.uint8, device=device))
        groups = out_features if per_channel else 1
        self.codebook = nn.Parameter(torch.zeros(groups, 2**width, dtype=getattr(torch, weight_dtype), device=device))

    @classmethod
    def from_clusters(cls, linear: nn.Linear, indices: Tensor, centroids: Tensor,
                      per_channel: bool) -> "CodebookLinear":
        """Pack a clustering of ``linear``'s weight: ``indices`` [out, in] into ``centroids`` [G, 2^bits]
        (G = out with ``per_channel``, else 1), as ``pycompress.share.kmeans_weights`` returns them."""
        N, K = linear.out_features, linear.in_features
        clusters = centroids.shape[1] if centroids.dim() == 2 else 0
        bits = clusters.bit_length() - 1
        groups = N if per_channel else 1
        if centroids.dim() != 2 or clusters != 2**bits or bits not in CLUSTER_BITS or centroids.shape[0] != groups:
            raise ValueError(f"CodebookLinear.from_clusters: centroids must be [G, 2^bits] with G = {groups} "
                             f"(per_channel={per_channel}) and bits in 2..8 (got shape {list(centroids.shape)})")
        if tuple(indices.shape) != (N, K):
            raise ValueError(f"CodebookLinear.from_clusters: indices must be [out, in] = [{N}, {K}] "
                             f"(got shape {list(indices.shape)})")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= clusters):
            raise ValueError(f"CodebookLinear.from_clusters: indices must lie in [0, {clusters}) "
                             f"(got min {int(indices.min())}, max {int(indices.max())})")
        dtype_name = str(linear.weight.dtype).replace("torch.", "")
        module = cls(K, N, bits=bits, per_channel=per_channel, weight_dtype=dtype_name, **cls._linear_kwargs(linear))
        with torch.no_grad():
            module.idx.copy_(codebook_ops.pack_indices(indices, storage_bits(bits)))
            module.codebook.zero_()
            module.codebook[:, :clusters] = centroids
        module._copy_bias(linear)
        return module

    def dense_weight(self) -> Tensor:
        return codebook_ops.codebook_decode(self.idx, self.codebook.detach(), self.in_features)

    def forward_2d(self, x: Tensor) -> Tensor:
        return codebook_ops.codebook_mm(x, self.idx, self.codebook.to(x.dtype), self.bias)
