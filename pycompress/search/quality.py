"""Quality proxies on calibration data: layer-wise reconstruction errors, and the model's output error.

Layer-wise. For a site (an nn.Linear) with calibration inputs X [R, K] (real tokens only, at most
``max_rows``) and its module f' built by compress_ on a copy of the layer, calibrated on X:

    e(site, option) = ||f(X) - f'(X)||_F / ||f(X)||_F

It ranks the options of one layer (same inputs, same layers downstream): an option with a larger e
that is also no faster and no smaller than another option of the layer is never worth measuring further.

Model output. The error the search adds up is E = ||Y - Y'||^2 / ||Y||^2, the squared relative error of
the model's output on the calibration batches (real tokens), of the model with one change:

    site option       the module f' above swapped in for the layer (the layer's sensitivity)
    structure change  heads or FFN neurons removed from every block, or the blocks with the lowest
                      block influence removed: a copy of the model changed as the recipe changes it

Independent errors add in squares, so E of several changes is taken as the sum of their E (measured
on MiniLM: within 10% for changes in different blocks; changes inside one block add up to somewhat
less, so the sum errs on the safe side). For an embedding, 1 - cosine is about E / 2. An option's E on
a layer that a structure change has shrunk is taken from the unshrunk layer. The end-to-end fidelity
the caller passes judges the final candidates.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from typing import Callable, Union

import torch
from torch import Tensor, nn

from pycompress.api import _set_submodule
from pycompress.search.space import ModelSpace, Site, call_model, compress_layer, hidden

MAX_ROWS = 2048


def _real_tokens(x: Tensor, batch) -> Tensor:
    """The rows of ``x`` [..., features] that are real tokens: where the batch's attention_mask
    (when it has the leading shape of x) is set; every row otherwise. Returned as [rows, features]."""
    if isinstance(batch, Mapping) and isinstance(batch.get("attention_mask"), Tensor):
        mask = batch["attention_mask"]
        if tuple(mask.shape) == tuple(x.shape[:-1]):
            return x[mask.bool()].float()
    return x.reshape(-1, x.shape[-1]).float()


def _output(value) -> Tensor:
    """The model's main output: the tensor itself, or the first tensor of a tuple or of a Hugging Face
    output (``last_hidden_state``, ``logits``)."""
    if isinstance(value, Tensor):
        return value
    items = value.values() if isinstance(value, Mapping) else value if isinstance(value, (tuple, list)) else ()
    for item in items:
        if isinstance(item, Tensor):
            return item
    raise TypeError(f"search: the model's output must be a tensor, or hold one (got {type(value).__name__})")


def relative_error(reference: list, approximation: list) -> float:
    """sqrt(sum ||r - a||^2 / sum ||r||^2) over matching lists of tensors."""
    num = sum(float((r.float() - a.float()).pow(2).sum()) for r, a in zip(reference, approximation))
    den = sum(float(r.float().pow(2).sum()) for r in reference)
    return (num / den) ** 0.5 if den > 0 else float(num > 0)


class QualityModel:
    """Captures, in one pass over ``calibration`` (a list of model inputs), the inputs of every site,
    the blocks' inputs and outputs and the model's outputs; then answers the errors of the module
    docstring (cached)."""

    def __init__(self, model: nn.Module, calibration: list, space: ModelSpace, *, max_rows: int = MAX_ROWS):
        self.model, self.calibration, self.space = model, calibration, space
        self._errors: dict = {}
        self._modules: dict = {}
        self._capture(max_rows)

    @torch.no_grad()
    def _capture(self, max_rows: int) -> None:
        model, space = self.model, self.space
        sites = {site.name: model.get_submodule(site.name) for site in space.sites}
        rows = {name: [] for name in sites}
        counts = dict.fromkeys(sites, 0)
        count = space.stack.count if space.stack is not None else 0
        blocks = [[] for _ in range(count)]
        current = {}

        def site_hook(name):
            def hook(module, args):
                if counts[name] < max_rows:
                    x = _real_tokens(args[0].detach(), current["batch"])[: max_rows - counts[name]]
                    rows[name].append(x)
                    counts[name] += x.shape[0]
            return hook

        def enter(i):
            def hook(module, args):
                blocks[i].append({"in": _real_tokens(hidden(args[0]).detach(), current["batch"])})
            return hook

        def leave(i):
            def hook(module, args, output):
                blocks[i][-1]["out"] = _real_tokens(hidden(output).detach(), current["batch"])
            return hook

        handles = [m.register_forward_pre_hook(site_hook(name)) for name, m in sites.items()]
        for i in range(count):
            block = model.get_submodule(f"{space.stack.name}.{i}")
            handles += [block.register_forward_pre_hook(enter(i)), block.register_forward_hook(leave(i))]
        outputs = []
        was_training = model.training
        model.eval()
        try:
            for batch in self.calibration:
                current["batch"] = batch
                outputs.append(_real_tokens(_output(call_model(model, batch)).detach(), batch))
        finally:
            for handle in handles:
                handle.remove()
            model.train(was_training)
        self.inputs = {name: torch.cat(chunks) for name, chunks in rows.items() if chunks}
        self.outputs = outputs
        self.blocks = blocks

    @torch.no_grad()
    def output_error(self, changed: nn.Module) -> float:
        """E of a changed version of the model: the squared relative error of its output against the
        original's on the calibration batches."""
        was_training = changed.training
        changed.eval()
        try:
            approx = [_real_tokens(_output(call_model(changed, batch)), batch) for batch in self.calibration]
        finally:
            changed.train(was_training)
        return relative_error(self.outputs, approx) ** 2

    @torch.no_grad()
    def layer_error(self, site: Site, option) -> Union[float, str]:
        """e(site, option), or why the option does not apply to the layer. The compressed module is kept
        for ``output_error_of`` until ``release``."""
        key = (site.name, option)
        if key not in self._errors:
            x = self.inputs.get(site.name)
            if x is None:
                self._errors[key] = "the calibration batches never reached this layer"
            else:
                linear = self.model.get_submodule(site.name)
                x = x.to(device=linear.weight.device, dtype=linear.weight.dtype)
                packed = compress_layer(linear, option, [x])
                if isinstance(packed, str):
                    self._errors[key] = packed
                else:
                    packed.eval()
                    self._errors[key] = relative_error([linear(x)], [packed(x)])
                    self._modules[key] = packed
        return self._errors[key]

    def output_error_of(self, site: Site, option) -> float:
        """E of the model with the module that ``layer_error(site, option)`` built in place of the layer."""
        key = ("output", site.name, option)
        if key not in self._errors:
            module = self._modules.get((site.name, option))
            if module is None:
                raise ValueError(f"search: no compressed module of {site.name!r} for {option!r}; ask layer_error first")
            original = self.model.get_submodule(site.name)
            try:
                _set_submodule(self.model, site.name, module)
                self._errors[key] = self.output_error(self.model)
            finally:
                _set_submodule(self.model, site.name, original)
        return self._errors[key]

    def release(self, site: Site) -> None:
        """Free the compressed modules kept for ``site``."""
        for key in [k for k in self._modules if k[0] == site.name]:
            del self._modules[key]

    def change_error(self, change: Callable[[nn.Module], None], key) -> float:
        """E of a copy of the model changed in place by ``change`` (cached under ``key``)."""
        if ("change", key) not in self._errors:
            changed = copy.deepcopy(self.model).eval()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                change(changed)
            self._errors[("change", key)] = self.output_error(changed)
        return self._errors[("change", key)]

    def removal_order(self) -> list:
        """Block indices from the least to the most influential: block influence, the relative change
        ||block(h) - h|| / ||block(h)|| of the hidden state over the real calibration tokens."""
        influence = []
        for i, batches in enumerate(self.blocks):
            if any(b["out"].shape != b["in"].shape for b in batches):
                raise ValueError(f"search: block {i} of {self.space.stack.name!r} must map hidden states to hidden "
                                 f"states of the same shape to be removable (got {tuple(batches[0]['in'].shape)} -> "
                                 f"{tuple(batches[0]['out'].shape)}); set SearchSpace(max_removed_blocks=0)")
            influence.append(relative_error([b["out"] for b in batches], [b["in"] for b in batches]))
        return sorted(range(len(influence)), key=lambda i: influence[i])
