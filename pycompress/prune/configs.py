"""Pruning configs for ``pycompress.compress_``: sparse formats where they are faster, and physical
structured pruning.

``Sparse24Config`` prunes each nn.Linear to 2:4 (magnitude, Wanda or SparseGPT; or packs weights that
are already 2:4 with ``method=None``) and packs it as a Sparse24Linear. ``SparseConfig`` prunes to
``sparsity`` (unstructured, or whole ``block`` x ``block`` blocks) and packs as a SparseLinear in CSR or
BSR. The pruning always happens; the packed format replaces the layer only where it is measured faster
than the dense layer on this device at ``tokens`` input rows (``min_speedup``; None packs every
layer without timing). A layer kept dense keeps its pruned weights and is reported with the reason.

``StructuredPruneConfig`` (pycompress.prune.physical) removes channels, attention heads or FFN neurons
for real: the layers become smaller dense layers. With target="channels", ``filter_fn`` picks the
producer layers and the first calibration batch traces the model; heads and ffn apply to every
BERT-style block (calibration batches feed importance="data").
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from pycompress.api import register_handler
from pycompress.nn.sparse import Sparse24Linear, SparseLinear
from pycompress.ops.sparse import BSR_BLOCKS
from pycompress.prune.masks import apply_mask, make_permanent, topk_mask
from pycompress.prune.methods import PruneConfig, prune_
from pycompress.prune.physical import StructuredPruneConfig, prune_channels_, structured_prune_, trace_channel_groups
from pycompress.quant.configs import linear_skip_reason
from pycompress.timing import speedup

SPARSE24_METHODS = ("magnitude", "wanda", "sparsegpt")
SPARSE_METHODS = ("magnitude", "random", "wanda", "sparsegpt")


def _check_speed_fields(name: str, min_speedup, tokens) -> None:
    if min_speedup is not None and not (isinstance(min_speedup, (int, float)) and min_speedup > 0):
        raise ValueError(f"{name}: min_speedup must be None or a positive number (got {min_speedup!r})")
    if not isinstance(tokens, int) or tokens < 1:
        raise ValueError(f"{name}: tokens must be a positive int (got {tokens!r})")


@dataclasses.dataclass(frozen=True)
class Sparse24Config:
    """2:4 semi-structured sparsity. ``method``: "magnitude", "wanda" or "sparsegpt" (the last two
    need calibration data), or None when the weights already are 2:4 sparse and only need packing."""

    method: Optional[str] = "magnitude"
    min_speedup: Optional[float] = 1.0
    tokens: int = 64

    def __post_init__(self):
        if self.method is not None and self.method not in SPARSE24_METHODS:
            raise ValueError(f"Sparse24Config: method must be None or one of {', '.join(SPARSE24_METHODS)} "
                             f"(got {self.method!r})")
        _check_speed_fields("Sparse24Config", self.min_speedup, self.tokens)


@dataclasses.dataclass(frozen=True)
class SparseConfig:
    """Unstructured sparsity packed in CSR, or with ``block`` (16, 32 or 64) whole blocks pruned by
    their L2 norm and packed in BSR. ``method``: magnitude, random, wanda or sparsegpt (unstructured)."""

    sparsity: float
    method: str = "magnitude"
    block: Optional[int] = None
    min_speedup: Optional[float] = 1.0
    tokens: int = 64

    def __post_init__(self):
        if not isinstance(self.sparsity, (int, float)) or not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"SparseConfig: sparsity must be a number in [0, 1) (got {self.sparsity!r})")
        if self.method not in SPARSE_METHODS:
            raise ValueError(f"SparseConfig: method must be one of {', '.join(SPARSE_METHODS)} (got {self.method!r})")
        if self.block is not None:
            if self.block not in BSR_BLOCKS:
                raise ValueError(f"SparseConfig: block must be None or one of {BSR_BLOCKS} (got {self.block!r})")
            if self.method != "magnitude":
                raise ValueError(f"SparseConfig: block pruning ranks blocks by their L2 norm; use method='magnitude' "
                                 f"(got {self.method!r})")
        _check_speed_fields("SparseConfig", self.min_speedup, self.tokens)


def _skip_reason(module: nn.Module, config) -> Optional[str]:
    reason = linear_skip_reason(module)
    if reason:
        return reason
    if isinstance(config, Sparse24Config) and module.in_features % 16:
        return f"in_features {module.in_features} is not a multiple of 16 (2:4 kernels need it)"
    if isinstance(config, SparseConfig) and config.block is not None:
        if module.in_features % config.block or module.out_features % config.block:
            return (f"shape [{module.out_features}, {module.in_features}] is not a multiple of the block "
                    f"size {config.block}")
    return None


def _block_mask(weight: torch.Tensor, sparsity: float, block: int) -> torch.Tensor:
    N, K = weight.shape
    norms = weight.detach().float().reshape(N // block, block, K // block, block).pow(2).sum((1, 3))
    keep = topk_mask(norms, sparsity)
    return keep.repeat_interleave(block, 0).repeat_interleave(block, 1)


def _prepare(model: nn.Module, candidates: list, config, calibration) -> None:
    """Prune the candidate layers the format can take, then fold the masks into the weights."""
    eligible = {name: module for name, module in candidates if _skip_reason(module, config) is None}
    if not eligible or getattr(config, "method", "") is None:
        return
    if isinstance(config, SparseConfig) and config.block is not None:
        for module in eligible.values():
            apply_mask(module, _block_mask(module.weight, config.sparsity, config.block))
    else:
        if isinstance(config, Sparse24Config):
            prune_config = PruneConfig(sparsity=0.5, method=config.method, structure="nm", n=2, m=4)
        else:
            prune_config = PruneConfig(sparsity=config.sparsity, method=config.method)
        selected = set(eligible.values())
        prune_(model, prune_config, data=calibration, filter_fn=lambda module, name: module in selected)
    for module in eligible.values():
        make_permanent(module)


def _keep_dense_reason(packed: nn.Module, linear: nn.Linear, config, label: str) -> Optional[str]:
    if config.min_speedup is None:
        return None
    weight = linear.weight.detach()
    x = torch.randn(config.tokens, linear.in_features, dtype=weight.dtype, device=weight.device)
    ratio = speedup(lambda: F.linear(x, weight, linear.bias), lambda: packed(x), device=weight.device)
    if ratio >= config.min_speedup:
        return None
    return (f"kept dense (pruned): {label} measured {ratio:.2f}x the dense layer's speed at {config.tokens} "
            f"tokens on {weight.device.type} (needs >= {config.min_speedup}x)")


def _convert(module, config, observer, name):
    reason = _skip_reason(module, config)
    if reason:
        return reason
    if isinstance(config, Sparse24Config):
        packed, label = Sparse24Linear.from_linear(module), "2:4"
    elif config.block is None:
        packed, label = SparseLinear.from_linear(module, "csr"), "csr"
    else:
        packed, label = SparseLinear.from_linear(module, "bsr", config.block), f"bsr {config.block}x{config.block}"
    if isinstance(packed, SparseLinear):
        label += f" at {1.0 - packed.density:.0%} sparsity"
    return _keep_dense_reason(packed, module, config, label) or packed


register_handler(Sparse24Config, prepare=_prepare)(_convert)
register_handler(SparseConfig, prepare=_prepare)(_convert)


def _linear_or_conv(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, nn.Conv2d))


def _shapes(model: nn.Module) -> dict:
    return {name: tuple(m.weight.shape) for name, m in model.named_modules() if _linear_or_conv(m)}


def _structured_prepare(model: nn.Module, candidates: list, config: StructuredPruneConfig, calibration) -> dict:
    before = _shapes(model)
    skipped = {}
    if config.target == "channels":
        if calibration is None:
            raise ValueError("compress_: StructuredPruneConfig(target='channels') needs calibration= (model inputs; "
                             "the first batch traces the channel dependencies)")
        example = next(iter(calibration))
        groups, reasons = trace_channel_groups(model, example)
        producers = [name for name, _ in candidates if name in groups]
        skipped = {name: f"channels kept: {reasons[name]}" for name, _ in candidates if name in reasons}
        if producers:
            prune_channels_(model, config.amount, example_inputs=example, layers=producers, norm=config.norm,
                            round_to=config.round_to)
    else:
        structured_prune_(model, config, data=calibration)
    after = _shapes(model)
    changed = {name: f"{list(before[name])} -> {list(shape)}" for name, shape in after.items()
               if name in before and before[name] != shape}
    return {"changed": changed, "skipped": skipped}


register_handler(StructuredPruneConfig, applies=_linear_or_conv, prepare=_structured_prepare)(
    lambda module, config, observer, name: None)
