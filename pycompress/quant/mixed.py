"""Bit-width choice: per-layer sensitivity analysis and a mixed-precision plan under a size budget.

sensitivity: for each nn.Linear and each candidate bit width, quantize that layer's weights alone
(symmetric, per output channel, round to nearest) and measure the loss of the model's output on the
calibration batches: 1 - mean cosine similarity between the original and the perturbed outputs
(per sample, over the first tensor the model returns).

plan: a multiple-choice knapsack solved greedily. Every layer starts at the lowest bit width; the
upgrade with the largest loss reduction per extra byte is applied while the total weight size stays
within the budget. Layer losses are treated as additive, the usual first-order assumption.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Optional

import torch
from torch import Tensor, nn
from tqdm import tqdm

from pycompress.quant.observers import _batch_call
from pycompress.quant.quantizer import Quantizer

DEFAULT_BITS = (2, 3, 4, 6, 8)


def _first_tensor(out) -> Tensor:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, dict) or hasattr(out, "values"):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        for item in out:
            if isinstance(item, Tensor):
                return item
    raise TypeError(f"sensitivity: the model must return a tensor or a structure holding one (got {type(out).__name__})")


@dataclasses.dataclass
class Sensitivity:
    """losses[layer][bits]: output loss with only that layer quantized; params[layer]: its weights."""

    losses: dict
    params: dict

    def ranking(self, bits: int) -> list:
        """Layers from the most to the least sensitive at ``bits``."""
        return sorted(self.losses, key=lambda name: self.losses[name][bits], reverse=True)


@torch.no_grad()
def layer_sensitivity(model: nn.Module, calibration: Iterable, bits=DEFAULT_BITS, *, filter_fn=None) -> Sensitivity:
    """Output loss of quantizing each nn.Linear alone at each of ``bits`` (see the module docstring)."""
    batches = list(calibration) if calibration is not None else []
    if not batches:
        raise ValueError("layer_sensitivity: calibration must yield at least one batch")
    for b in bits:
        Quantizer(b)
    model.eval()
    reference = [_first_tensor(_batch_call(model, batch)).float() for batch in batches]
    layers = [(name, m) for name, m in model.named_modules()
              if type(m) is nn.Linear and (filter_fn is None or filter_fn(m, name))]
    losses, params = {}, {}
    for name, layer in tqdm(layers, desc="sensitivity", unit="layer", leave=False):
        original = layer.weight.data.clone()
        params[name] = original.numel()
        losses[name] = {}
        for b in bits:
            layer.weight.data.copy_(Quantizer(b).fake_quantize(original).to(original.dtype))
            cos = []
            for batch, ref in zip(batches, reference):
                out = _first_tensor(_batch_call(model, batch)).float()
                cos.append(torch.nn.functional.cosine_similarity(out.flatten(1), ref.flatten(1), dim=1).mean())
            losses[name][b] = 1.0 - torch.stack(cos).mean().item()
        layer.weight.data.copy_(original)
    return Sensitivity(losses=losses, params=params)


def plan_mixed_precision(sensitivity: Sensitivity, *, average_bits: float) -> dict:
    """Bits per layer minimising the summed loss with total weight bits <= average_bits * weights."""
    names = list(sensitivity.losses)
    if not names:
        raise ValueError("plan_mixed_precision: the sensitivity table is empty")
    options = sorted(next(iter(sensitivity.losses.values())))
    if not options[0] <= average_bits <= options[-1]:
        raise ValueError(f"plan_mixed_precision: average_bits must lie in [{options[0]}, {options[-1]}] (got {average_bits})")
    budget = average_bits * sum(sensitivity.params.values())
    plan = {name: options[0] for name in names}
    used = options[0] * sum(sensitivity.params.values())
    while True:
        best = None
        for name in names:
            current = options.index(plan[name])
            for nxt in options[current + 1:]:
                extra = (nxt - plan[name]) * sensitivity.params[name]
                if used + extra > budget:
                    continue
                gain = sensitivity.losses[name][plan[name]] - sensitivity.losses[name][nxt]
                ratio = gain / extra
                if best is None or ratio > best[0]:
                    best = (ratio, name, nxt, extra)
        if best is None or best[0] <= 0:
            return plan
        _, name, nxt, extra = best
        plan[name] = nxt
        used += extra


def plan_bits(plan: dict, params: dict) -> float:
    """Average bits per weight of a plan."""
    return sum(plan[n] * params[n] for n in plan) / sum(params[n] for n in plan)


@dataclasses.dataclass(frozen=True)
class MixedPrecisionConfig:
    """Weight-only quantization with a bit width per layer (``plan``: layer name -> bits in 2..8),
    symmetric per output channel; layers not in the plan are left as they are. Codes of fewer than
    8 bits are stored in the int8 container of WeightOnlyInt8Linear and run by its kernels."""

    plan: dict
    default_bits: Optional[int] = None

    def __post_init__(self):
        for name, b in self.plan.items():
            if not isinstance(b, int) or not 2 <= b <= 8:
                raise ValueError(f"MixedPrecisionConfig: plan[{name!r}] must be bits in 2..8 (got {b!r})")
