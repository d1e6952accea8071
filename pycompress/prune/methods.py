"""Pruning criteria and the one-shot and gradual pruning drivers.

Criteria (importance scores; the lowest are pruned):
    magnitude  |w|
    random     uniform noise (a control)
    taylor     first-order Taylor estimate of the loss change, |w * dL/dw| accumulated over batches
Structures: ``unstructured`` (per layer or one global threshold), ``nm`` (N of every M consecutive
input weights kept, e.g. 2:4) and ``ln`` (whole output or input channels ranked by their Ln norm).
Entries already pruned stay pruned: their score is -inf, so sparsity only grows.

Schedules for gradual pruning with fine-tuning between steps:
    agp        Zhu & Gupta's cubic ramp  s_t = s_f + (s_0 - s_f) (1 - t / T)^3
    iterative  equal increments          s_t = s_f t / T
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Optional

import torch
from torch import nn

from pycompress.prune.masks import (
    apply_mask,
    current_mask,
    global_masks,
    ln_structured_mask,
    nm_mask,
    prunable_layers,
    topk_mask,
)

METHODS = ("magnitude", "random", "taylor")
STRUCTURES = ("unstructured", "nm", "ln")
SCOPES = ("layer", "global")
SCHEDULES = ("agp", "iterative")


@dataclasses.dataclass(frozen=True)
class PruneConfig:
    sparsity: float
    method: str = "magnitude"
    structure: str = "unstructured"
    scope: str = "layer"
    n: int = 2
    m: int = 4
    norm: float = 2.0
    dim: int = 0
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.sparsity, (int, float)) or not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"PruneConfig: sparsity must be a number in [0, 1) (got {self.sparsity!r})")
        for field, allowed in (("method", METHODS), ("structure", STRUCTURES), ("scope", SCOPES)):
            if getattr(self, field) not in allowed:
                raise ValueError(f"PruneConfig: {field} must be one of {', '.join(allowed)} (got {getattr(self, field)!r})")
        if self.structure == "ln" and self.method != "magnitude":
            raise ValueError("PruneConfig: structure='ln' ranks channels by their Ln norm; use method='magnitude'")
        if self.scope == "global" and self.structure != "unstructured":
            raise ValueError("PruneConfig: scope='global' applies to structure='unstructured' only")


def _effective_weight(module: nn.Module) -> torch.Tensor:
    return module.weight.detach()


def importance(model: nn.Module, layers: list, method: str, *, data: Optional[Iterable] = None,
               loss_fn: Optional[Callable] = None, seed: int = 0) -> dict:
    """name -> score tensor shaped like the layer's weight (higher is more important)."""
    if method == "magnitude":
        return {name: _effective_weight(m).abs() for name, m in layers}
    if method == "random":
        g = torch.Generator().manual_seed(seed)
        return {name: torch.rand(m.weight.shape, generator=g).to(m.weight.device) for name, m in layers}
    if data is None or loss_fn is None:
        raise ValueError("pruning: method='taylor' needs data (batches of (inputs, targets)) and loss_fn")
    scores = {name: torch.zeros_like(m.weight, dtype=torch.float32) for name, m in layers}
    batches = 0
    was_training = model.training
    model.train()
    for inputs, targets in data:
        model.zero_grad(set_to_none=True)
        loss_fn(model(inputs), targets).backward()
        for name, m in layers:
            param = m.weight_orig if hasattr(m, "weight_orig") else m.weight
            if param.grad is not None:
                scores[name] += (param.detach() * param.grad.detach() * current_mask(m)).abs().float()
        batches += 1
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    if batches == 0:
        raise ValueError("pruning: data yielded no batches")
    return scores


def prune_(model: nn.Module, config: PruneConfig, *, data=None, loss_fn=None, filter_fn=None) -> nn.Module:
    """Prune the Linear and Conv2d layers of ``model`` in place to ``config.sparsity``; returns it."""
    if not isinstance(config, PruneConfig):
        raise TypeError(f"prune_: config must be a PruneConfig (got {type(config).__name__})")
    layers = list(prunable_layers(model, filter_fn))
    if not layers:
        raise ValueError("prune_: the model has no nn.Linear or nn.Conv2d layer to prune (after filter_fn)")
    if config.structure == "ln":
        for _, module in layers:
            keep = ln_structured_mask(_effective_weight(module), config.sparsity, config.norm, config.dim)
            apply_mask(module, keep & current_mask(module))
        return model
    scores = importance(model, layers, config.method, data=data, loss_fn=loss_fn, seed=config.seed)
    for name, module in layers:
        scores[name] = torch.where(current_mask(module), scores[name].float(), torch.full_like(scores[name], -float("inf"),
                                                                                               dtype=torch.float32))
    if config.structure == "nm":
        masks = {name: nm_mask(scores[name].reshape(module.weight.shape[0], -1), config.n, config.m)
                 .view_as(module.weight) for name, module in layers}
    elif config.scope == "global":
        masks = global_masks(scores, config.sparsity)
    else:
        masks = {name: topk_mask(scores[name], config.sparsity) for name in scores}
    for name, module in layers:
        apply_mask(module, masks[name])
    return model


def scheduled_sparsity(step: int, steps: int, final: float, schedule: str = "agp", initial: float = 0.0) -> float:
    """Target sparsity after ``step`` of ``steps`` pruning steps."""
    if schedule not in SCHEDULES:
        raise ValueError(f"scheduled_sparsity: schedule must be one of {', '.join(SCHEDULES)} (got {schedule!r})")
    if steps < 1 or not 0 <= step <= steps:
        raise ValueError(f"scheduled_sparsity: need 0 <= step <= steps and steps >= 1 (got step={step}, steps={steps})")
    t = step / steps
    if schedule == "agp":
        return final + (initial - final) * (1.0 - t) ** 3
    return initial + (final - initial) * t


def prune_gradually(model: nn.Module, config: PruneConfig, *, steps: int, schedule: str = "agp",
                    finetune: Optional[Callable[[nn.Module, int], None]] = None, data=None, loss_fn=None,
                    filter_fn=None) -> nn.Module:
    """Prune in ``steps`` steps up to ``config.sparsity`` following ``schedule``, calling
    ``finetune(model, step)`` after each step (the masks hold while it trains). steps=1 is one-shot."""
    for step in range(1, steps + 1):
        target = scheduled_sparsity(step, steps, config.sparsity, schedule)
        prune_(model, dataclasses.replace(config, sparsity=target), data=data, loss_fn=loss_fn, filter_fn=filter_fn)
        if finetune is not None:
            finetune(model, step)
    return model
