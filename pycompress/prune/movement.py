"""Movement pruning (Sanh et al. 2020): prune the weights that move towards zero while fine-tuning.

Every weight W_ij of a pruned layer has a score S_ij that accumulates, after each backward pass,

    S_ij -= W_ij * dL/dW_ij

where dL/dW is the gradient with respect to the masked weight W * M taken as if the mask were the
identity (the straight-through estimator of the paper): a pruned weight keeps its stored value
(``weight_orig``) and its score, and comes back if its score climbs back into the top. After step t
the mask keeps the (1 - s_t) fraction of the highest scores of each layer (scope='layer') or of all
layers together (scope='global'); s_t follows ``scheduled_sparsity`` from 0 to the config's sparsity
over ``steps`` steps after ``warmup`` steps, then stays there. Weights pruned before the pruner was
attached stay pruned. The masks are torch.nn.utils.prune masks, so the pruned weights are exactly zero
in every forward pass and receive no gradient; ``make_permanent`` folds them in.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pycompress.prune.masks import (
    apply_mask,
    current_mask,
    global_masks,
    is_pruned,
    prunable_layers,
    topk_mask,
)
from pycompress.prune.methods import PruneConfig, scheduled_sparsity


class MovementPruner:
    """Movement pruning driven from a training loop::

        pruner = MovementPruner(model, PruneConfig(0.9, method="movement"), steps=1000)
        for inputs, targets in batches:
            loss_fn(model(inputs), targets).backward()
            optimizer.step()
            pruner.step()            # scores from this backward pass, then the masks of step t
            optimizer.zero_grad()
        pruner.remove()              # masks stay; make_permanent(model) folds them in

    ``step()`` reads the gradient of the last forward pass that required gradients, so call it once
    after each backward pass, before the next training forward pass.
    """

    def __init__(self, model: nn.Module, config: PruneConfig, *, steps: int, schedule: str = "agp",
                 warmup: int = 0, filter_fn=None):
        if not isinstance(config, PruneConfig):
            raise TypeError(f"MovementPruner: config must be a PruneConfig (got {type(config).__name__})")
        if config.method != "movement":
            raise ValueError(f"MovementPruner: config.method must be 'movement' (got {config.method!r})")
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"MovementPruner: steps must be a positive int (got {steps!r})")
        if not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"MovementPruner: warmup must be a non-negative int (got {warmup!r})")
        scheduled_sparsity(0, steps, config.sparsity, schedule)  # raises on an unknown schedule
        self.layers = list(prunable_layers(model, filter_fn))
        if not self.layers:
            raise ValueError("MovementPruner: the model has no nn.Linear or nn.Conv2d layer to prune (after filter_fn)")
        self.config, self.steps, self.schedule, self.warmup = config, steps, schedule, warmup
        self.step_count = 0
        self._allowed = {}
        self.scores = {}
        self._handles = []
        for name, module in self.layers:
            self._allowed[name] = current_mask(module).clone()
            if not is_pruned(module):
                apply_mask(module, self._allowed[name])
            self.scores[name] = torch.zeros_like(module.weight_orig, dtype=torch.float32)
            self._handles.append(module.register_forward_hook(_retain_weight_grad))

    def sparsity(self, step: int) -> float:
        """Target sparsity after ``step`` calls of ``step()``."""
        return scheduled_sparsity(min(max(step - self.warmup, 0), self.steps), self.steps, self.config.sparsity,
                                  self.schedule)

    @torch.no_grad()
    def step(self) -> None:
        """Add -W * dL/dW to the scores, then re-mask every layer to the scheduled sparsity."""
        if not self._handles:
            raise ValueError("MovementPruner.step: the pruner was removed")
        grads = {}
        for name, module in self.layers:
            grad = module.weight.grad if module.weight.retains_grad else None
            if grad is None:
                raise ValueError(f"MovementPruner.step: layer {name} has no gradient; call step() after "
                                 "loss.backward() and before the next forward pass")
            grads[name] = grad
        for name, module in self.layers:
            self.scores[name] -= (module.weight_orig.detach() * grads[name]).float()
            # the gradient of this pass is consumed: a second step() without a new backward pass fails
            module.weight.grad = None
        self.step_count += 1
        self._remask(self.sparsity(self.step_count))

    def _remask(self, sparsity: float) -> None:
        scores = {name: self.scores[name].masked_fill(~self._allowed[name], -float("inf")) for name in self.scores}
        if self.config.scope == "global":
            masks = global_masks(scores, sparsity)
        else:
            masks = {name: topk_mask(score, sparsity) for name, score in scores.items()}
        for name, module in self.layers:
            mask = masks[name] & self._allowed[name]
            module.weight_mask.copy_(mask)
            # the forward pre-hook of torch.nn.utils.prune recomputes this product before each forward;
            # refreshed here so that the weight read between steps is the masked one
            module.weight = module.weight_orig * module.weight_mask

    def remove(self) -> None:
        """Detach the pruner (its hooks); the layers keep their masks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


def _retain_weight_grad(module: nn.Module, args, output) -> None:
    weight: Tensor = module.weight
    if weight.requires_grad and not weight.is_leaf:
        weight.retain_grad()
