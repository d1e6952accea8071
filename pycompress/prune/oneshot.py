"""One-shot pruning from calibration data: Wanda and SparseGPT, applied layer after layer.

Both see the inputs X [tokens, in_features] of each pruned nn.Linear (weight W [out, in]) on
calibration batches; padding tokens (where a dict batch's 2-D ``attention_mask`` is 0) are left out.

Wanda (Sun et al. 2023):
    score_ij = |W_ij| * ||X_j||_2, the norm over all calibration tokens; no weight update.
    unstructured: each output row keeps its round((1 - sparsity) * in) best scores
    N:M:          each group of M consecutive inputs of a row keeps its N best scores
SparseGPT (Frantar & Alistarh 2023):
    H = 2 X^T X / tokens + lambda I, lambda = damping * mean(diag H); inputs that never fire
    (H_jj = 0) get H_jj = 1 and a zero weight column. U is the upper Cholesky factor of H^-1
    (H^-1 = U^T U). Columns are visited in blocks of ``block_size``; the pruned entries are chosen
    adaptively, from the already updated weights, by the smallest w_ij^2 / U_jj^2: per block over
    all rows for unstructured (the layer's count round(sparsity * numel) shared out exactly between
    blocks), per group of M columns for N:M. Pruning column j moves its error e = (w_j - q_j) / U_jj
    onto the columns still to come (W[:, k] -= e U_jk for k > j): the optimal brain surgeon update.
    Computed in float64.

Sequential calibration (``prune_calibrated_``): the target layers are pruned in the order the
forward pass runs them, so each layer is calibrated on the outputs of the already pruned layers
before it. Layers that run one after the other on the same input tensor (query, key and value)
form one stage and share their statistics. A stage inside a block (a child of an nn.ModuleList,
e.g. a transformer layer) is calibrated by running only that block on its cached inputs; the inputs
of a block are captured once, after every layer before it has been pruned. Each run stops as soon
as the stage has received its input.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Iterable, Optional

import torch
from torch import Tensor, nn
from tqdm import tqdm

from pycompress.prune.masks import _check_sparsity, apply_mask, current_mask, is_pruned, nm_mask, prunable_layers
from pycompress.quant.observers import _batch_call

if TYPE_CHECKING:
    from pycompress.prune.methods import PruneConfig

CALIBRATED_METHODS = ("wanda", "sparsegpt")
_DAMPING_TRIES = 5


def _check_nm(name: str, nm, columns: int) -> None:
    if not (isinstance(nm, tuple) and len(nm) == 2 and 0 < nm[0] < nm[1]):
        raise ValueError(f"{name}: nm must be a tuple (n, m) with 0 < n < m (got {nm!r})")
    if columns % nm[1]:
        raise ValueError(f"{name}: the number of input features ({columns}) must be a multiple of m = {nm[1]}")


def _check_prior(name: str, prior: Optional[Tensor], weight: Tensor) -> Tensor:
    """The mask already in force as bool (all True when ``prior`` is None)."""
    if prior is None:
        return torch.ones_like(weight, dtype=torch.bool)
    if prior.shape != weight.shape:
        raise ValueError(f"{name}: prior must have the weight's shape {list(weight.shape)} (got {list(prior.shape)})")
    return prior.to(device=weight.device, dtype=torch.bool)


def wanda_mask(weight: Tensor, input_norm: Tensor, sparsity: float = 0.0, *, nm: Optional[tuple] = None,
               prior: Optional[Tensor] = None) -> Tensor:
    """Keep mask (bool, like ``weight`` [out, in]) by the Wanda score |W_ij| * input_norm_j.

    ``input_norm`` [in]: the L2 norm of each input feature over the calibration tokens.
    ``nm=(n, m)``: N:M structure (``sparsity`` is then ignored); otherwise each row keeps
    round((1 - sparsity) * in) entries. Entries pruned in ``prior`` (bool, False = pruned) stay pruned.
    """
    if weight.dim() != 2:
        raise ValueError(f"wanda_mask: weight must be 2-D [out, in] (got shape {list(weight.shape)})")
    if input_norm.shape != (weight.shape[1],):
        raise ValueError(f"wanda_mask: input_norm must have shape [{weight.shape[1]}] (got {list(input_norm.shape)})")
    prior = _check_prior("wanda_mask", prior, weight)
    score = weight.detach().abs().double() * input_norm.to(device=weight.device, dtype=torch.float64)
    score = score.masked_fill(~prior, -float("inf"))
    if nm is not None:
        _check_nm("wanda_mask", nm, weight.shape[1])
        return nm_mask(score, nm[0], nm[1]) & prior
    _check_sparsity(sparsity)
    keep = int(round((1.0 - sparsity) * weight.shape[1]))
    mask = torch.zeros_like(prior)
    if keep > 0:
        mask.scatter_(1, torch.topk(score, keep, dim=1, sorted=False).indices, True)
    return mask & prior


def _inverse_hessian_factor(hessian: Tensor, damping: float) -> Tensor:
    """Upper Cholesky factor U of (H + lambda I)^-1; lambda grows tenfold while a factorisation fails."""
    eye = torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    damp = damping * torch.diagonal(hessian).mean()
    for _ in range(_DAMPING_TRIES):
        lower, info = torch.linalg.cholesky_ex(hessian + damp * eye)
        if info == 0:
            upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
            if info == 0:
                return upper
        damp = damp * 10
    raise ValueError(f"sparsegpt_prune: the Hessian is not positive definite even with damping "
                     f"{damping * 10 ** (_DAMPING_TRIES - 1)} * mean(diag H); check the calibration inputs")


def sparsegpt_prune(weight: Tensor, hessian: Tensor, sparsity: float = 0.0, *, nm: Optional[tuple] = None,
                    prior: Optional[Tensor] = None, block_size: int = 128,
                    damping: float = 0.01) -> tuple[Tensor, Tensor]:
    """(pruned weight, keep mask) of a Linear weight [out, in] given the input Hessian [in, in].

    ``hessian``: 2 X^T X / tokens of the layer's calibration inputs X [tokens, in] (see the module
    docstring for the algorithm). ``nm=(n, m)``: N:M structure (``sparsity`` is then ignored).
    Entries pruned in ``prior`` (bool, False = pruned) stay pruned. The pruned weight has the dtype
    of ``weight`` and is zero where the mask is False.
    """
    if weight.dim() != 2:
        raise ValueError(f"sparsegpt_prune: weight must be 2-D [out, in] (got shape {list(weight.shape)})")
    rows, cols = weight.shape
    if hessian.shape != (cols, cols):
        raise ValueError(f"sparsegpt_prune: hessian must have shape [{cols}, {cols}] (got {list(hessian.shape)})")
    if not torch.isfinite(hessian).all():
        raise ValueError("sparsegpt_prune: hessian has NaN or Inf entries; calibration inputs must be finite")
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"sparsegpt_prune: block_size must be a positive int (got {block_size!r})")
    if not isinstance(damping, (int, float)) or not damping > 0:
        raise ValueError(f"sparsegpt_prune: damping must be a positive number (got {damping!r})")
    if nm is not None:
        _check_nm("sparsegpt_prune", nm, cols)
        if block_size % nm[1]:
            raise ValueError(f"sparsegpt_prune: block_size ({block_size}) must be a multiple of m = {nm[1]}")
    else:
        _check_sparsity(sparsity)
    forced = ~_check_prior("sparsegpt_prune", prior, weight)

    w = weight.detach().to(torch.float64).clone()
    h = hessian.detach().to(device=weight.device, dtype=torch.float64).clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    u = _inverse_hessian_factor(h, damping)
    pruned = torch.zeros_like(forced)
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        w1, u1 = w[:, start:end], u[start:end, start:end]
        d = torch.diagonal(u1)
        forced1 = forced[:, start:end]
        pruned1 = forced1.clone()
        err1 = torch.zeros_like(w1)
        if nm is None:
            count = round(sparsity * rows * end) - round(sparsity * rows * start)
            count = max(count, int(forced1.sum()))
            score = (w1 ** 2 / d ** 2).masked_fill(forced1, -float("inf"))
            pruned1.view(-1)[torch.topk(score.flatten(), count, largest=False, sorted=False).indices] = True
        for i in range(end - start):
            if nm is not None and i % nm[1] == 0:
                group = slice(i, i + nm[1])
                score = (w1[:, group] ** 2 / d[group] ** 2).masked_fill(forced1[:, group], -float("inf"))
                pruned1[:, group].scatter_(1, torch.topk(score, nm[1] - nm[0], dim=1, largest=False).indices, True)
            column = w1[:, i]
            kept = column.masked_fill(pruned1[:, i], 0.0)
            err = (column - kept) / d[i]
            w1[:, i + 1:] -= err[:, None] * u1[i, i + 1:][None, :]
            w1[:, i] = kept
            err1[:, i] = err
        w[:, end:] -= err1 @ u[start:end, end:]
        pruned[:, start:end] = pruned1
    return w.masked_fill(pruned, 0.0).to(weight.dtype), ~pruned


class _InputStats:
    """Running statistics of a layer's inputs: per-feature sum of squares (Wanda) or X^T X (SparseGPT)."""

    def __init__(self, method: str, features: int, device):
        self.method = method
        self.tokens = 0
        shape = (features, features) if method == "sparsegpt" else (features,)
        self.total = torch.zeros(shape, dtype=torch.float64, device=device)

    def add(self, x: Tensor, layer: str) -> None:
        if not torch.isfinite(x).all():
            raise ValueError(f"{self.method}: layer {layer} received NaN or Inf inputs; calibration data must be finite")
        x = x.double()
        self.total += x.T @ x if self.method == "sparsegpt" else (x * x).sum(0)
        self.tokens += x.shape[0]

    def input_norm(self) -> Tensor:
        return self.total.sqrt()

    def hessian(self) -> Tensor:
        return 2.0 * self.total / max(self.tokens, 1)


class _Stop(Exception):
    """Ends a forward pass once a hook has seen what it needs."""


def _token_mask(batch) -> Optional[Tensor]:
    """[batch, seq] bool of the real (non-padding) tokens of a dict batch, else None."""
    if isinstance(batch, dict):
        mask = batch.get("attention_mask")
        if isinstance(mask, Tensor) and mask.dim() == 2:
            return mask.bool()
    return None


def _token_rows(x: Tensor, token_mask: Optional[Tensor]) -> Tensor:
    """A layer input as [tokens, features], without the padding tokens when they can be told apart."""
    if token_mask is not None and x.dim() == 3 and x.shape[:2] == token_mask.shape:
        x = x[token_mask.to(x.device)]
    return x.reshape(-1, x.shape[-1])


def _stages(model: nn.Module, layers: list, batch, method: str) -> list[list[tuple[str, nn.Module]]]:
    """The target layers in the order one forward pass runs them; consecutive layers that receive the
    same input tensor form one stage."""
    calls = []
    names = {id(module): name for name, module in layers}
    hooks = [module.register_forward_pre_hook(lambda m, args: calls.append((m, args[0]))) for _, module in layers]
    try:
        _batch_call(model, batch)
    finally:
        for hook in hooks:
            hook.remove()
    for name, module in layers:
        runs = sum(m is module for m, _ in calls)
        if runs != 1:
            raise ValueError(f"{method}: layer {name} ran {runs} times in one forward pass; sequential calibration "
                             "needs every pruned layer to run exactly once (leave it out with filter_fn)")
    stages, previous = [], None
    for module, x in calls:
        if stages and x is previous:
            stages[-1].append((names[id(module)], module))
        else:
            stages.append([(names[id(module)], module)])
        previous = x
    return stages


def _block_of(model: nn.Module, name: str) -> Optional[nn.Module]:
    """The child of the outermost nn.ModuleList that holds layer ``name`` (e.g. a transformer layer)."""
    parent = model
    for part in name.split(".")[:-1]:
        child = parent._modules[part]
        if isinstance(parent, nn.ModuleList):
            return child
        parent = child
    return None


def _run_until(calls: list, module: nn.Module, hook, with_kwargs: bool = False, what: str = "") -> None:
    """Run every call until ``module`` is about to run; ``hook(index, args, kwargs)`` sees its inputs."""
    index = 0

    def stop(m, args, kwargs=None):
        hook(index, args, kwargs)
        raise _Stop

    handle = module.register_forward_pre_hook(stop, with_kwargs=with_kwargs)
    try:
        for index, call in enumerate(calls):
            try:
                call()
            except _Stop:
                continue
            raise ValueError(f"calibration: {what} did not run on calibration batch {index}")
    finally:
        handle.remove()


def _prune_layer(module: nn.Module, stats: _InputStats, config: PruneConfig) -> None:
    weight = module.weight.detach()
    prior = current_mask(module) if is_pruned(module) else None
    nm = (config.n, config.m) if config.structure == "nm" else None
    if config.method == "wanda":
        keep = wanda_mask(weight, stats.input_norm(), config.sparsity, nm=nm, prior=prior)
    else:
        pruned, keep = sparsegpt_prune(weight, stats.hessian(), config.sparsity, nm=nm, prior=prior,
                                       block_size=config.block_size, damping=config.damping)
        with torch.no_grad():
            (module.weight_orig if is_pruned(module) else module.weight).copy_(pruned)
    apply_mask(module, keep)


@torch.no_grad()
def prune_calibrated_(model: nn.Module, config: PruneConfig, data: Iterable, filter_fn=None) -> nn.Module:
    """Prune the nn.Linear layers of ``model`` in place with ``config.method`` ('wanda' or 'sparsegpt'),
    calibrated sequentially (see the module docstring) on ``data``: model inputs, each a dict
    (``model(**batch)``), a tuple (``model(*batch)``) or a tensor (``model(batch)``)."""
    method = config.method
    if method not in CALIBRATED_METHODS:
        raise ValueError(f"prune_calibrated_: config.method must be one of {', '.join(CALIBRATED_METHODS)} "
                         f"(got {method!r})")
    layers = list(prunable_layers(model, filter_fn))
    if not layers:
        raise ValueError("prune_: the model has no nn.Linear or nn.Conv2d layer to prune (after filter_fn)")
    convs = [name for name, module in layers if not isinstance(module, nn.Linear)]
    if convs:
        raise ValueError(f"prune_: method={method!r} prunes nn.Linear layers only; leave out {', '.join(convs)} "
                         "with filter_fn")
    batches = list(data)
    if not batches:
        raise ValueError(f"prune_: method={method!r} needs calibration data, and data yielded no batches")
    token_masks = [_token_mask(batch) for batch in batches]
    model_calls = [partial(_batch_call, model, batch) for batch in batches]
    was_training = model.training
    model.eval()
    try:
        stages = _stages(model, layers, batches[0], method)
        cached_block, block_calls = None, None
        for stage in tqdm(stages, desc=method, unit="stage", leave=False):
            blocks = {id(_block_of(model, name)): _block_of(model, name) for name, _ in stage}
            block = next(iter(blocks.values())) if len(blocks) == 1 else None
            if block is None:
                calls = model_calls
            else:
                if block is not cached_block:
                    inputs = []
                    _run_until(model_calls, block, lambda i, args, kwargs: inputs.append((args, kwargs)),
                               with_kwargs=True, what=f"the block holding {stage[0][0]}")
                    cached_block = block
                    block_calls = [partial(block, *args, **kwargs) for args, kwargs in inputs]
                calls = block_calls
            first_name, first = stage[0]
            stats = _InputStats(method, first.in_features, first.weight.device)
            _run_until(calls, first, lambda i, args, kwargs: stats.add(_token_rows(args[0], token_masks[i]), first_name),
                       what=f"layer {first_name}")
            for _, module in stage:
                _prune_layer(module, stats, config)
    finally:
        model.train(was_training)
    return model
