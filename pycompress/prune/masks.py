"""Pruning masks: scores -> masks, and masks applied through torch.nn.utils.prune.

A pruned layer holds ``weight_orig`` (a parameter) and ``weight_mask`` (a buffer), and computes
``weight = weight_orig * weight_mask`` before every forward, exactly as torch.nn.utils.prune does: a
model pruned by either library is understood by the other, gradients of pruned entries are zero, and
the pruned weights stay zero through optimizer steps. ``make_permanent`` folds the masks in.

Masks from scores:
    unstructured, per layer:  keep the (1 - sparsity) fraction of entries with the largest score
    unstructured, global:     one threshold over the scores of every layer (scores must be comparable)
    N:M:                      in each group of M consecutive entries along the input dimension, keep N
    structured (Ln norm):     whole slices along ``dim`` ranked by the Ln norm of the slice
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn
from torch.nn.utils import prune as torch_prune


def _check_sparsity(sparsity: float) -> None:
    if not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0:
        raise ValueError(f"pruning: sparsity must be a number in [0, 1) (got {sparsity!r})")


def topk_mask(score: Tensor, sparsity: float) -> Tensor:
    """1 for the ``round((1 - sparsity) * numel)`` largest scores, 0 elsewhere (ties broken by index)."""
    _check_sparsity(sparsity)
    keep = int(round((1.0 - sparsity) * score.numel()))
    mask = torch.zeros(score.numel(), dtype=torch.bool, device=score.device)
    if keep > 0:
        mask[torch.topk(score.flatten().float(), keep, sorted=False).indices] = True
    return mask.view_as(score)


def global_masks(scores: dict, sparsity: float) -> dict:
    """Masks for several layers from one threshold over all their scores."""
    _check_sparsity(sparsity)
    flat = torch.cat([s.flatten().float() for s in scores.values()])
    mask = topk_mask(flat, sparsity).flatten()
    out, start = {}, 0
    for name, s in scores.items():
        out[name] = mask[start:start + s.numel()].view_as(s)
        start += s.numel()
    return out


def nm_mask(score: Tensor, n: int = 2, m: int = 4) -> Tensor:
    """Keep the ``n`` largest scores of every group of ``m`` consecutive entries along the last dim."""
    if not 0 < n < m:
        raise ValueError(f"nm_mask: need 0 < n < m (got n={n}, m={m})")
    if score.shape[-1] % m:
        raise ValueError(f"nm_mask: the last dimension ({score.shape[-1]}) must be a multiple of m = {m}")
    groups = score.float().reshape(-1, m)
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(1, torch.topk(groups, n, dim=1).indices, True)
    return mask.view_as(score)


def ln_structured_mask(weight: Tensor, sparsity: float, n: float = 2, dim: int = 0) -> Tensor:
    """Zero the fraction ``sparsity`` of slices along ``dim`` with the smallest Ln norm.

    dim 0 of a Linear/Conv weight is its output channels (rows, filters); dim 1 its input channels.
    """
    _check_sparsity(sparsity)
    if not -weight.dim() <= dim < weight.dim():
        raise ValueError(f"ln_structured_mask: dim must index a dimension of the weight {list(weight.shape)} (got {dim})")
    other = [d for d in range(weight.dim()) if d != dim % weight.dim()]
    norms = torch.linalg.vector_norm(weight.detach().float(), ord=n, dim=other)
    keep = topk_mask(norms, sparsity)
    shape = [1] * weight.dim()
    shape[dim] = -1
    return keep.view(shape).expand_as(weight)


def apply_mask(module: nn.Module, mask: Tensor, name: str = "weight") -> None:
    """Prune ``module.<name>`` with ``mask``; combined with any mask it already has."""
    torch_prune.custom_from_mask(module, name, mask.to(dtype=torch.float32, device=getattr(module, name).device))


def is_pruned(module: nn.Module, name: str = "weight") -> bool:
    return hasattr(module, f"{name}_mask") and hasattr(module, f"{name}_orig")


def current_mask(module: nn.Module, name: str = "weight") -> Tensor:
    """The mask in force (all ones when the layer is not pruned)."""
    if is_pruned(module, name):
        return getattr(module, f"{name}_mask").bool()
    return torch.ones_like(getattr(module, name), dtype=torch.bool)


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold every mask into its weight and remove the masking machinery (``torch_prune.remove``)."""
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, torch_prune.BasePruningMethod):
                torch_prune.remove(module, hook._tensor_name)
    return model


def prunable_layers(model: nn.Module, filter_fn=None) -> Iterable[tuple[str, nn.Module]]:
    """(name, module) of the Linear and Conv2d layers, optionally filtered by ``filter_fn(module, name)``."""
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)) and (filter_fn is None or filter_fn(module, name)):
            yield name, module


def sparsity_report(model: nn.Module) -> dict:
    """Fraction of zero weights per prunable layer and overall (``"total"``)."""
    report, zeros, total = {}, 0, 0
    for name, module in prunable_layers(model):
        w = module.weight.detach()
        z = int((w == 0).sum())
        report[name] = z / w.numel()
        zeros += z
        total += w.numel()
    report["total"] = zeros / max(total, 1)
    return report
