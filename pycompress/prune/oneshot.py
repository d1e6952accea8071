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

Calibration (``prune_calibrated_``): layers are pruned in the order the forward pass runs them.
Layers that run one after the other on the same input tensor (query, key and value) form a stage
and share their statistics. ``sequential`` says what a layer's calibration inputs have been through:
    "block"  the pruned blocks before its own (a block is a child of an nn.ModuleList, e.g. a
             transformer layer); the layers of one block are calibrated together, on one run of
             the block (the choice of the Wanda and SparseGPT papers); a layer outside any block
             is calibrated as under "layer"
    "layer"  every pruned layer before it, its own block's included (one run per stage)
    "none"   the unpruned model: all layers calibrated on one pass
A run inside a block starts from the block's cached inputs. Those are captured once per block, with
every layer before it pruned: by running the block before on its cached inputs when the forward
pass feeds one block's output straight into the next (checked on the first batch), else by a pass
of the model that stops at the block. Every run stops as soon as the last input it needs is seen.
On MiniLM at 50% and 2:4 (tests/prune/test_minilm_pruning.py) the three choices were within 0.01
of each other in held-out embedding cosine for both methods; "block" is the cheapest of the two
sequential ones (about two model passes in all).
"""

from __future__ import annotations

from collections.abc import Mapping
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
_SUB_BLOCK = 16


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
    """Upper Cholesky factor U of (H + lambda I)^-1, so that (H + lambda I)^-1 = U^T U; lambda grows
    tenfold while the factorisation fails.

    With F the index reversal, F H F = L L^T gives H = R R^T with R = F L F upper triangular, hence
    H^-1 = R^-T R^-1 and U = R^-1: one factorisation and one triangular solve, without forming H^-1
    (LAPACK's potri, which does, is many times slower on a busy multi-core CPU).
    """
    eye = torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    damp = damping * torch.diagonal(hessian).mean()
    flipped = hessian.flip(0, 1)
    for _ in range(_DAMPING_TRIES):
        lower, info = torch.linalg.cholesky_ex(flipped + damp * eye)
        if info == 0:
            return torch.linalg.solve_triangular(lower.flip(0, 1), eye, upper=True)
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

    # Columns of W are rows here: the per-column updates then touch contiguous memory.
    wt = weight.detach().T.to(torch.float64).contiguous()
    h = hessian.detach().to(device=weight.device, dtype=torch.float64).clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    wt[dead] = 0.0
    u = _inverse_hessian_factor(h, damping)
    forced = forced.T.contiguous()
    pruned = torch.zeros_like(forced)
    sub_block = _SUB_BLOCK if nm is None else max(1, _SUB_BLOCK // nm[1]) * nm[1]
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        w1, u1 = wt[start:end], u[start:end, start:end]
        d = torch.diagonal(u1)
        forced1 = forced[start:end]
        pruned1 = forced1.clone()
        # err_j = w_j * pruned_j / U_jj: the error of column j, pushed onto the columns after it
        scale1 = torch.zeros_like(w1)
        err1 = torch.empty_like(w1)
        if nm is None:
            count = round(sparsity * rows * end) - round(sparsity * rows * start)
            count = max(count, int(forced1.sum()))
            score = (w1 ** 2 / d[:, None] ** 2).masked_fill(forced1, -float("inf"))
            pruned1.view(-1)[torch.topk(score.flatten(), count, largest=False, sorted=False).indices] = True
            torch.div(pruned1, d[:, None], out=scale1)
        # The same lazy batching once more inside the block: a column updates the rest of its
        # sub-block at once, the rest of the block after the sub-block. The per-column operations stay
        # small enough to run on one thread; thousands of tiny multi-threaded ones crawl on a busy CPU.
        for sub in range(0, end - start, sub_block):
            sub_end = min(sub + sub_block, end - start)
            for i in range(sub, sub_end):
                if nm is not None and i % nm[1] == 0:
                    group = slice(i, i + nm[1])
                    score = (w1[group] ** 2 / d[group, None] ** 2).masked_fill(forced1[group], -float("inf"))
                    pruned1[group].scatter_(0, torch.topk(score, nm[1] - nm[0], dim=0, largest=False).indices, True)
                    torch.div(pruned1[group], d[group, None], out=scale1[group])
                torch.mul(w1[i], scale1[i], out=err1[i])
                w1[i + 1:sub_end].addr_(u1[i, i + 1:sub_end], err1[i], alpha=-1)
            w1[sub_end:].addmm_(u1[sub:sub_end, sub_end:].T, err1[sub:sub_end], alpha=-1)
        w1.masked_fill_(pruned1, 0.0)
        wt[end:].addmm_(u[start:end, end:].T, err1, alpha=-1)
        pruned[start:end] = pruned1
    return wt.T.to(weight.dtype), ~pruned.T


class _InputStats:
    """Running statistics of a layer's inputs: per-feature sum of squares (Wanda) or X^T X (SparseGPT)."""

    def __init__(self, method: str, layer: str, features: int, device):
        self.method, self.layer = method, layer
        self.tokens = 0
        shape = (features, features) if method == "sparsegpt" else (features,)
        self.total = torch.zeros(shape, dtype=torch.float64, device=device)

    def add(self, x: Tensor) -> None:
        # float32 products of one batch, summed over batches in float64
        x = x.float()
        self.total += x.T @ x if self.method == "sparsegpt" else (x * x).sum(0)
        self.tokens += x.shape[0]

    def _checked_total(self) -> Tensor:
        # a NaN or Inf input makes the sums NaN or Inf: one check here instead of one per batch
        if not torch.isfinite(self.total).all():
            raise ValueError(f"{self.method}: the inputs of layer {self.layer} have NaN or Inf values (or overflow "
                             "float32 when squared); calibration data must be finite")
        return self.total

    def input_norm(self) -> Tensor:
        return self._checked_total().sqrt()

    def hessian(self) -> Tensor:
        return 2.0 * self._checked_total() / max(self.tokens, 1)


class _Stop(Exception):
    """Ends a forward pass once a hook has seen what it needs."""


def _token_mask(batch) -> Optional[Tensor]:
    """[batch, seq] bool of the real (non-padding) tokens of a dict batch, else None."""
    if isinstance(batch, Mapping):
        mask = batch.get("attention_mask")
        if isinstance(mask, Tensor) and mask.dim() == 2:
            return mask.bool()
    return None


def _token_rows(x: Tensor, token_mask: Optional[Tensor]) -> Tensor:
    """A layer input as [tokens, features], without the padding tokens when they can be told apart."""
    if token_mask is not None and x.dim() == 3 and x.shape[:2] == token_mask.shape:
        x = x[token_mask.to(x.device)]
    return x.reshape(-1, x.shape[-1])


def _block_of(model: nn.Module, name: str) -> Optional[nn.Module]:
    """The child of the outermost nn.ModuleList that holds layer ``name`` (e.g. a transformer layer)."""
    parent = model
    for part in name.split(".")[:-1]:
        child = parent._modules[part]
        if isinstance(parent, nn.ModuleList):
            return child
        parent = child
    return None


def _first_tensor(out) -> Optional[Tensor]:
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    return out if isinstance(out, Tensor) else None


def _discover(model: nn.Module, layers: list, blocks: list, batch, method: str) -> tuple[list, dict]:
    """One forward pass on ``batch`` gives:

    stages: the target layers in the order they run; consecutive layers that receive the same input
        tensor form one stage.
    chained: id(block) -> the block before it, for each block whose call is fully determined by the
        one before: its first argument is that block's output (or the output's first element) and
        its other arguments are the very objects the block before received. Such a block's inputs
        are computed by running the block before on its cached inputs, not by a pass from the start.
    """
    calls, block_calls = [], {}
    names = {id(module): name for name, module in layers}

    def record_block(module, args, kwargs, out):
        block_calls.setdefault(id(module), []).append((args, kwargs, out))

    hooks = [module.register_forward_pre_hook(lambda m, args: calls.append((m, args[0]))) for _, module in layers]
    hooks += [block.register_forward_hook(record_block, with_kwargs=True) for block in blocks]
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
    chained = {}
    for before, block in zip(blocks, blocks[1:]):
        if len(block_calls.get(id(before), ())) != 1 or len(block_calls.get(id(block), ())) != 1:
            continue
        (args0, kwargs0, out0), (args1, kwargs1, _) = block_calls[id(before)][0], block_calls[id(block)][0]
        if (args1 and _first_tensor(out0) is not None and args1[0] is _first_tensor(out0)
                and len(args1) == len(args0) and all(x is y for x, y in zip(args1[1:], args0[1:]))
                and kwargs1.keys() == kwargs0.keys() and all(kwargs1[k] is kwargs0[k] for k in kwargs0)):
            chained[id(block)] = before
    return stages, chained


def _capture_inputs(calls: list, block: nn.Module, layer: str) -> list:
    """(args, kwargs) of ``block`` in each call, each call stopped as soon as the block is reached."""
    inputs = []

    def capture(module, args, kwargs):
        inputs.append((args, kwargs))
        raise _Stop

    handle = block.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        for index, call in enumerate(calls):
            try:
                call()
            except _Stop:
                continue
            raise ValueError(f"calibration: the block holding layer {layer} did not run on calibration batch {index}")
    finally:
        handle.remove()
    return inputs


def _block_inputs(block: nn.Module, previous: Optional[nn.Module], previous_inputs: Optional[list],
                  chained: dict, model_calls: list, layer: str) -> list:
    """(args, kwargs) of ``block`` on every calibration batch, with the layers that run before it pruned."""
    if previous is not None and chained.get(id(block)) is previous:
        return [((_first_tensor(previous(*args, **kwargs)),) + tuple(args[1:]), kwargs)
                for args, kwargs in previous_inputs]
    return _capture_inputs(model_calls, block, layer)


def _collect(calls: list, stages: list, stats: list, token_masks: list) -> None:
    """Run each call until the first layer of the last stage has its input; ``stats[k]`` accumulates the
    input of the first layer of ``stages[k]`` (the layers of a stage share their input)."""
    index = 0

    def observer(k):
        def observe(module, args):
            stats[k].add(_token_rows(args[0], token_masks[index]))
            if k == len(stages) - 1:
                raise _Stop
        return observe

    handles = [stage[0][1].register_forward_pre_hook(observer(k)) for k, stage in enumerate(stages)]
    try:
        for index, call in enumerate(calls):
            try:
                call()
            except _Stop:
                continue
            raise ValueError(f"calibration: layer {stages[-1][0][0]} did not run on calibration batch {index}")
    finally:
        for handle in handles:
            handle.remove()


def _units(model: nn.Module, stages: list, sequential: str) -> list[tuple[Optional[nn.Module], list]]:
    """Groups of stages calibrated by one run over the batches, with the block that runs them (None:
    the whole model runs them)."""
    if sequential == "none":
        return [(None, stages)]
    owners = []
    for stage in stages:
        found = {id(b): b for b in (_block_of(model, name) for name, _ in stage)}
        owners.append(next(iter(found.values())) if len(found) == 1 else None)
    units = []
    for stage, owner in zip(stages, owners):
        if sequential == "block" and owner is not None and units and units[-1][0] is owner:
            units[-1][1].append(stage)
        else:
            units.append((owner, [stage]))
    return units


def _prune_layer(module: nn.Module, stats: _InputStats, config: PruneConfig) -> None:
    """Prune one layer from its input statistics (under no_grad: SparseGPT writes its weights in place)."""
    weight = module.weight.detach()
    prior = current_mask(module) if is_pruned(module) else None
    nm = (config.n, config.m) if config.structure == "nm" else None
    if config.method == "wanda":
        keep = wanda_mask(weight, stats.input_norm(), config.sparsity, nm=nm, prior=prior)
    else:
        pruned, keep = sparsegpt_prune(weight, stats.hessian(), config.sparsity, nm=nm, prior=prior,
                                       block_size=config.block_size, damping=config.damping)
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
    blocks = list({id(b): b for name, _ in layers if (b := _block_of(model, name)) is not None}.values())
    was_training = model.training
    model.eval()
    try:
        stages, chained = _discover(model, layers, blocks, batches[0], method)
        block, block_inputs = None, None
        for owner, unit in tqdm(_units(model, stages, config.sequential), desc=method, unit="step", leave=False):
            if owner is not None and owner is not block:
                block_inputs = _block_inputs(owner, block, block_inputs, chained, model_calls, unit[0][0][0])
                block = owner
            calls = model_calls if owner is None else [partial(owner, *args, **kwargs) for args, kwargs in block_inputs]
            stats = [_InputStats(method, stage[0][0], stage[0][1].in_features, stage[0][1].weight.device)
                     for stage in unit]
            _collect(calls, unit, stats, token_masks)
            for stage, stage_stats in zip(unit, stats):
                for _, module in stage:
                    _prune_layer(module, stage_stats, config)
    finally:
        model.train(was_training)
    return model
