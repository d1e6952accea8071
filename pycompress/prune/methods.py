"""Pruning criteria and the one-shot and gradual pruning drivers.

Criteria (importance scores; the lowest are pruned):
    magnitude  |w|
    random     uniform noise (a control)
    taylor     first-order Taylor estimate of the loss change, |w * dL/dw| accumulated over batches
    wanda      |w| times the norm of its input over calibration data (pycompress.prune.oneshot)
    sparsegpt  one-shot pruning with second-order weight updates from calibration data (oneshot)
    movement   -w * dL/dw accumulated while fine-tuning (MovementPruner, pycompress.prune.movement)
Structures: ``unstructured`` (scope: per layer, one global threshold, or per output row / input
column of each layer: every row or column loses the same fraction), ``nm`` (N of every M consecutive
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
from pycompress.prune.oneshot import CALIBRATED_METHODS, prune_calibrated_

METHODS = ("magnitude", "random", "taylor", "wanda", "sparsegpt", "movement")
STRUCTURES = ("unstructured", "nm", "ln")
SCOPES = ("layer", "global", "row", "column")
SCHEDULES = ("agp", "iterative")
SEQUENTIAL = ("block", "layer", "none")


@dataclasses.dataclass(frozen=True)
class PruneConfig:
    """What to prune and how: ``sparsity`` (fraction of weights removed; N:M fixes it at 1 - n/m),
    ``method`` (the criterion, module docstring), ``structure`` and ``scope``; ``n``, ``m`` for N:M;
    ``norm``, ``dim`` for Ln-structured; ``seed`` for random; ``block_size`` (columns per block) and
    ``damping`` (fraction of the mean Hessian diagonal added to it) for sparsegpt; ``sequential`` for
    wanda and sparsegpt: which pruned layers the calibration inputs of a layer pass through
    (pycompress.prune.oneshot)."""

    sparsity: float
    method: str = "magnitude"
    structure: str = "unstructured"
    scope: str = "layer"
    n: int = 2
    m: int = 4
    norm: float = 2.0
    dim: int = 0
    seed: int = 0
    block_size: int = 128
    damping: float = 0.01
    sequential: str = "block"

    def __post_init__(self):
        if not isinstance(self.sparsity, (int, float)) or not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"PruneConfig: sparsity must be a number in [0, 1) (got {self.sparsity!r})")
        for field, allowed in (("method", METHODS), ("structure", STRUCTURES), ("scope", SCOPES),
                               ("sequential", SEQUENTIAL)):
            if getattr(self, field) not in allowed:
                raise ValueError(f"PruneConfig: {field} must be one of {', '.join(allowed)} (got {getattr(self, field)!r})")
        if self.structure == "ln" and self.method != "magnitude":
            raise ValueError("PruneConfig: structure='ln' ranks channels by their Ln norm; use method='magnitude'")
        if self.scope != "layer" and self.structure != "unstructured":
            raise ValueError(f"PruneConfig: scope={self.scope!r} applies to structure='unstructured' only")
        if self.scope != "layer" and self.method in CALIBRATED_METHODS:
            raise ValueError(f"PruneConfig: method={self.method!r} compares weights within a layer "
                             "(wanda: per output row; sparsegpt: per column block); use scope='layer'")
        if self.method == "movement" and self.structure != "unstructured":
            raise ValueError("PruneConfig: method='movement' supports structure='unstructured' only")
        if not isinstance(self.block_size, int) or self.block_size < 1:
            raise ValueError(f"PruneConfig: block_size must be a positive int (got {self.block_size!r})")
        if self.structure == "nm" and not (isinstance(self.n, int) and isinstance(self.m, int) and 0 < self.n < self.m):
            raise ValueError(f"PruneConfig: structure='nm' needs ints 0 < n < m (got n={self.n!r}, m={self.m!r})")
        if self.method == "sparsegpt" and self.structure == "nm" and self.block_size % self.m:
            raise ValueError(f"PruneConfig: block_size ({self.block_size}) must be a multiple of m = {self.m}")
        if not isinstance(self.damping, (int, float)) or not self.damping > 0:
            raise ValueError(f"PruneConfig: damping must be a positive number (got {self.damping!r})")


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
    """Prune the Linear and Conv2d layers of ``model`` in place to ``config.sparsity``; returns it.

    ``data``: for 'taylor', batches of (inputs, targets) with ``loss_fn``; for 'wanda' and 'sparsegpt',
    calibration batches of model inputs (dict: ``model(**batch)``, tuple: ``model(*batch)``, tensor:
    ``model(batch)``), which prune the nn.Linear layers only.
    """
    if not isinstance(config, PruneConfig):
        raise TypeError(f"prune_: config must be a PruneConfig (got {type(config).__name__})")
    if config.method == "movement":
        raise ValueError("prune_: method='movement' scores weights while fine-tuning; call "
                         "MovementPruner(model, config, steps=...).step() in the training loop instead")
    if config.method in CALIBRATED_METHODS:
        if data is None:
            raise ValueError(f"prune_: method={config.method!r} needs data: an iterable of calibration batches "
                             "of model inputs")
        return prune_calibrated_(model, config, data, filter_fn)
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
    elif config.scope in ("row", "column"):
        masks = {name: _grouped_mask(scores[name], config.sparsity, config.scope) for name in scores}
    else:
        masks = {name: topk_mask(scores[name], config.sparsity) for name in scores}
    for name, module in layers:
        apply_mask(module, masks[name])
    return model


def _grouped_mask(score: torch.Tensor, sparsity: float, scope: str) -> torch.Tensor:
    """Keep the largest ``1 - sparsity`` of the scores of every output row (scope "row") or input
    column (scope "column", the other dims of a conv weight flattened) of one layer."""
    rows = score.reshape(score.shape[0], -1)
    groups = rows if scope == "row" else rows.T
    keep = int(round((1.0 - sparsity) * groups.shape[1]))
    mask = torch.zeros_like(groups, dtype=torch.bool)
    if keep > 0:
        mask.scatter_(1, torch.topk(groups, keep, dim=1).indices, True)
    return (mask if scope == "row" else mask.T).reshape(score.shape)


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
