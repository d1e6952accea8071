"""Layer pruning: whole residual blocks removed from a stack of blocks.

The stack is a ModuleList or Sequential reached by a dotted name (``"encoder.layer"`` in Hugging Face
BERT-style encoders), whose blocks map hidden states to hidden states of the same shape. A block's
importance is its block influence (Men et al. 2024, "ShortGPT"), measured on calibration data:

    BI_i = 1 - E_tokens[ cos(x_i, x_{i+1}) ]      x_i the hidden state entering block i

over the real (non-padding) tokens. The blocks that change the representation least, the lowest BI,
are removed first; the scores come from one pass over the unpruned model.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import torch
from torch import Tensor, nn

from pycompress.prune.physical import _calibrate, _masked_tokens


def _stack(model: nn.Module, blocks: str, fn: str) -> nn.Module:
    try:
        stack = model.get_submodule(blocks)
    except AttributeError as exc:
        raise ValueError(f"{fn}: blocks must name a submodule of the model (got {blocks!r})") from exc
    if not isinstance(stack, (nn.ModuleList, nn.Sequential)):
        raise ValueError(f"{fn}: blocks={blocks!r} must name an nn.ModuleList or nn.Sequential "
                         f"(got {type(stack).__name__})")
    if len(stack) == 0:
        raise ValueError(f"{fn}: {blocks!r} holds no blocks")
    return stack


def _hidden(value) -> Tensor:
    # Hugging Face blocks may return a tuple whose first element is the hidden state.
    return value[0] if isinstance(value, (tuple, list)) else value


def block_influence(model: nn.Module, data: Iterable, *, blocks: str = "encoder.layer") -> Tensor:
    """[num_blocks] block influence, 1 - mean cosine between each block's input and output hidden
    states over the real tokens of the batches in ``data`` (model inputs: dicts, tuples or tensors)."""
    stack = _stack(model, blocks, "block_influence")
    sums = torch.zeros(len(stack), dtype=torch.float64)
    counts = torch.zeros(len(stack), dtype=torch.float64)

    def observe(i):
        def hook(block, args, output, batch):
            if not args:
                raise ValueError(f"block_influence: block {i} of {blocks!r} must take the hidden state as its first "
                                 "positional argument")
            inputs, output = _hidden(args[0]), _hidden(output)
            if not isinstance(output, Tensor) or output.shape != inputs.shape:
                raise ValueError(f"block_influence: block {i} of {blocks!r} must map hidden states to hidden states "
                                 f"of the same shape (got {tuple(inputs.shape)} -> "
                                 f"{tuple(getattr(output, 'shape', ()))})")
            a, b = _masked_tokens(inputs, batch), _masked_tokens(output, batch)
            sums[i] += torch.nn.functional.cosine_similarity(a, b, dim=-1).double().sum().cpu()
            counts[i] += a.shape[0]

        return hook

    _calibrate(model, data, [(block, observe(i)) for i, block in enumerate(stack)], "block_influence")
    if (counts == 0).any():
        raise ValueError(f"block_influence: data gave no real (unmasked) tokens to the blocks of {blocks!r}")
    return (1.0 - sums / counts).float()


def prune_layers_(model: nn.Module, n: Optional[int] = None, *, amount: Optional[float] = None,
                  data: Optional[Iterable] = None, blocks: str = "encoder.layer",
                  remove: Optional[Sequence[int]] = None) -> nn.Module:
    """Remove blocks from the stack ``blocks`` in place and return ``model``: the ``n`` blocks (or the
    fraction ``amount``, rounded) with the lowest block influence on ``data``, or exactly the indices in
    ``remove``. At least one block stays. ``model.config.num_hidden_layers`` follows the stack when it
    described it, and blocks' ``layer_idx`` attributes (Hugging Face cache slots) are renumbered."""
    stack = _stack(model, blocks, "prune_layers_")
    total = len(stack)
    if sum(x is not None for x in (n, amount, remove)) != 1:
        raise ValueError("prune_layers_: give exactly one of n (blocks to remove), amount (fraction) or remove "
                         "(indices)")
    if amount is not None:
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0.0 <= amount < 1.0:
            raise ValueError(f"prune_layers_: amount must be a number in [0, 1) (got {amount!r})")
        n = int(round(amount * total))
    if remove is None:
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < total:
            raise ValueError(f"prune_layers_: n must be an int in [0, {total}) for {total} blocks (got {n!r})")
        if data is None:
            raise ValueError("prune_layers_: choosing blocks by influence needs data (calibration batches)")
        influence = block_influence(model, data, blocks=blocks)
        remove = influence.argsort()[:n].tolist()
    else:
        remove = list(remove)
        bad = [i for i in remove if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < total]
        if bad or len(set(remove)) != len(remove) or len(remove) >= total:
            raise ValueError(f"prune_layers_: remove must list distinct block indices in [0, {total}), fewer than "
                             f"{total} (got {remove})")
    kept = [i for i in range(total) if i not in set(remove)]
    for new, old in enumerate(kept):
        for module in stack[old].modules():
            if getattr(module, "layer_idx", None) == old:
                module.layer_idx = new
    replacement = type(stack)([stack[i] for i in kept]) if isinstance(stack, nn.ModuleList) \
        else nn.Sequential(*[stack[i] for i in kept])
    parent_name, _, child = blocks.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, replacement)
    config = getattr(model, "config", None)
    if getattr(config, "num_hidden_layers", None) == total:
        config.num_hidden_layers = len(kept)
    return model


__all__ = ["block_influence", "prune_layers_"]
