"""Factorized embedding (ALBERT, Lan et al. 2020): a V x H embedding table becomes a V x E table and an
E x H projection (no bias), V E + E H parameters instead of V H:

    y = table[ids] @ projection          table [V, E], projection [E, H], y [..., H]

Built from a trained table W [V, H] by its truncated SVD, W ~ (U_E S_E^1/2)(S_E^1/2 Vh_E), the best rank-E
approximation in Frobenius norm (pycompress.lowrank.factorize); exact when rank(W) <= E. E is given, or
the smallest keeping a fraction ``energy`` of sum sigma^2. A ``padding_idx`` row that is zero in W is
exactly zero in the table, so its output stays exactly zero, and F.embedding gives it no gradient.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from pycompress.api import register_handler
from pycompress.lowrank.factorize import factorize, rank_for_energy
from pycompress.nn import FORMATS


def _check_dim(fn: str, dim, V: int, H: int) -> None:
    if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim < min(V, H):
        raise ValueError(f"{fn}: dim E must be an int in [1, min(V, H)) = [1, {min(V, H)}) for a [{V}, {H}] "
                         f"embedding table (got E={dim!r})")


class FactorizedEmbedding(nn.Module):
    """A drop-in for nn.Embedding(V, H): ``table`` [V, E] and ``projection`` [E, H] parameters."""

    format_name = "factorized_embedding"

    def __init__(self, num_embeddings: int, embedding_dim: int, dim: int, padding_idx: Optional[int] = None,
                 device=None, dtype: Optional[torch.dtype] = None):
        super().__init__()
        _check_dim("FactorizedEmbedding", dim, num_embeddings, embedding_dim)
        if padding_idx is not None:
            if isinstance(padding_idx, bool) or not isinstance(padding_idx, int) \
                    or not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(f"FactorizedEmbedding: padding_idx must be an int in [-{num_embeddings}, "
                                 f"{num_embeddings}) (got {padding_idx!r})")
            padding_idx %= num_embeddings
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.dim = dim
        self.padding_idx = padding_idx
        self.table = nn.Parameter(torch.empty(num_embeddings, dim, device=device, dtype=dtype))
        self.projection = nn.Parameter(torch.empty(dim, embedding_dim, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # N(0, 1) rows times a projection of variance 1/E: outputs of unit variance, as nn.Embedding's.
        nn.init.normal_(self.table)
        nn.init.normal_(self.projection, std=self.dim ** -0.5)
        if self.padding_idx is not None:
            with torch.no_grad():
                self.table[self.padding_idx].zero_()

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding, dim: Optional[int] = None, *,
                       energy: Optional[float] = None) -> "FactorizedEmbedding":
        """The truncated SVD of ``embedding.weight`` at inner dimension ``dim``, or at the smallest one
        keeping the fraction ``energy`` of sum sigma^2 (give exactly one)."""
        if not isinstance(embedding, nn.Embedding):
            raise TypeError(f"FactorizedEmbedding.from_embedding: embedding must be an nn.Embedding "
                            f"(got {type(embedding).__name__})")
        reason = unsupported_reason(embedding)
        if reason:
            raise ValueError(f"FactorizedEmbedding.from_embedding: {reason}")
        weight = embedding.weight.detach()
        V, H = weight.shape
        if (dim is None) == (energy is None):
            raise ValueError(f"FactorizedEmbedding.from_embedding: give exactly one of dim or energy "
                             f"(got dim={dim!r}, energy={energy!r})")
        if dim is None:
            dim = dim_for_energy(weight, energy)
        _check_dim("FactorizedEmbedding.from_embedding", dim, V, H)
        table, projection = factorize(weight, dim, "svd")
        module = cls(V, H, dim, embedding.padding_idx, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            module.table.copy_(table)
            module.projection.copy_(projection)
            pad = embedding.padding_idx
            if pad is not None and not weight[pad].any():
                module.table[pad].zero_()
        module.table.requires_grad_(embedding.weight.requires_grad)
        module.projection.requires_grad_(embedding.weight.requires_grad)
        return module

    def forward(self, input: Tensor) -> Tensor:
        return F.embedding(input, self.table, self.padding_idx) @ self.projection

    def dense_weight(self) -> Tensor:
        """The V x H table this module computes: table @ projection."""
        return self.table @ self.projection

    def extra_repr(self) -> str:
        pad = f", padding_idx={self.padding_idx}" if self.padding_idx is not None else ""
        return f"{self.num_embeddings}, {self.embedding_dim}, dim={self.dim}{pad}"

    def manifest_entry(self) -> dict:
        return {"format": self.format_name, "num_embeddings": self.num_embeddings,
                "embedding_dim": self.embedding_dim, "dim": self.dim, "padding_idx": self.padding_idx,
                "dtype": str(self.table.dtype).replace("torch.", "")}

    @classmethod
    def from_manifest_entry(cls, entry: dict, device=None) -> "FactorizedEmbedding":
        return cls(entry["num_embeddings"], entry["embedding_dim"], entry["dim"], entry["padding_idx"],
                   device=device, dtype=getattr(torch, entry["dtype"]))


def unsupported_reason(embedding: nn.Embedding) -> Optional[str]:
    """Why ``embedding`` cannot be factorized exactly as it behaves, or None: max_norm renormalises
    table rows on lookup, and sparse or frequency-scaled gradients are not carried over."""
    options = {"max_norm": embedding.max_norm is not None, "sparse": embedding.sparse,
               "scale_grad_by_freq": embedding.scale_grad_by_freq}
    used = [name for name, on in options.items() if on]
    if used:
        return f"an embedding with {', '.join(used)} set is not supported"
    return None


def dim_for_energy(weight: Tensor, energy: float) -> int:
    """The smallest E whose rank-E truncated SVD keeps the fraction ``energy`` of sum sigma^2 of ``weight``."""
    return rank_for_energy(torch.linalg.svdvals(weight.detach().double()), energy)


@dataclasses.dataclass(frozen=True)
class FactorizedEmbeddingConfig:
    """Each nn.Embedding (limit them with compress_'s filter_fn) becomes a FactorizedEmbedding with inner
    dimension ``dim`` (E), or the smallest E keeping the fraction ``energy`` of sum sigma^2 (exactly one).
    A table with min(V, H) <= E, or whose factors would not be smaller, is left as it is and reported."""

    dim: Optional[int] = None
    energy: Optional[float] = None

    def __post_init__(self):
        if (self.dim is None) == (self.energy is None):
            raise ValueError(f"FactorizedEmbeddingConfig: give exactly one of dim or energy "
                             f"(got dim={self.dim!r}, energy={self.energy!r})")
        if self.dim is not None and (isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 1):
            raise ValueError(f"FactorizedEmbeddingConfig: dim E must be an int >= 1 (got E={self.dim!r})")
        if self.energy is not None and (isinstance(self.energy, bool) or not isinstance(self.energy, (int, float))
                                        or not 0.0 < self.energy <= 1.0):
            raise ValueError(f"FactorizedEmbeddingConfig: energy must be a number in (0, 1] (got {self.energy!r})")


def _factorized(module: nn.Embedding, config: FactorizedEmbeddingConfig):
    """(FactorizedEmbedding, what changed) for ``module``, or (None, why it stays)."""
    reason = unsupported_reason(module)
    if reason:
        return None, reason
    V, H = module.weight.shape
    dim = config.dim if config.dim is not None else dim_for_energy(module.weight, config.energy)
    if dim >= min(V, H):
        return None, f"E={dim} is not below min(V, H) = {min(V, H)} of the [{V}, {H}] table"
    if dim * (V + H) >= V * H:
        return None, f"E={dim} factors ({dim * (V + H):,} parameters) are not smaller than the table ({V * H:,})"
    factorized = FactorizedEmbedding.from_embedding(module, dim)
    return factorized, (f"[{V}, {H}] -> [{V}, {dim}] @ [{dim}, {H}]: {V * H:,} -> {dim * (V + H):,} parameters "
                        f"({dim * (V + H) / (V * H):.1%})")


def _prepare(model: nn.Module, candidates: list, config: FactorizedEmbeddingConfig, calibration) -> dict:
    # Swapped here rather than in convert so that the report carries each table's parameter reduction;
    # convert handles only a bare nn.Embedding given as the model.
    changed, skipped = {}, {}
    names = {}
    for tensor_name, tensor in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(tensor), []).append(tensor_name)
    for name, module in candidates:
        if not name:
            continue
        # A table tied to another layer (an output layer reading the input embedding) would stay there
        # dense, and the tie would be lost.
        others = [n for n in names[id(module.weight)] if n != f"{name}.weight"]
        if others:
            skipped[name] = f"its weight is tied to {', '.join(others)}"
            continue
        factorized, what = _factorized(module, config)
        if factorized is None:
            skipped[name] = what
        else:
            model.set_submodule(name, factorized)
            changed[name] = what
    return {"changed": changed, "skipped": skipped}


def _is_embedding(module: nn.Module) -> bool:
    return type(module) is nn.Embedding


@register_handler(FactorizedEmbeddingConfig, applies=_is_embedding, prepare=_prepare)
def _convert(module: nn.Embedding, config: FactorizedEmbeddingConfig, observer, name: str):
    if name:
        return None
    factorized, what = _factorized(module, config)
    return what if factorized is None else factorized


__all__ = ["FactorizedEmbedding", "FactorizedEmbeddingConfig", "dim_for_energy", "unsupported_reason"]


# pycompress.load rebuilds the modules named in a manifest from pycompress.nn.FORMATS.
FORMATS[FactorizedEmbedding.format_name] = FactorizedEmbedding
