"""Activation observers for static (calibrated) quantization, and the calibration loop.

Each observer sees activation batches x [..., C] and yields a range (lo, hi) per tensor:
    minmax          the running min and max
    moving_average  min and max averaged over batches (x_t = (1 - c) x_{t-1} + c batch_t)
    percentile      the p-th percentile of |x| (p = 99.99 by default) over a bounded random sample
    mse             the clipping of the max range that minimises the mean squared quantization error
                    on a bounded sample, searched over 100 candidate ratios
The range becomes a scale through the shared Quantizer (8-bit symmetric for the int8 kernels).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Callable, Iterable

import torch
from torch import Tensor, nn
from tqdm import tqdm

from pycompress.quant.quantizer import Quantizer

OBSERVERS = ("minmax", "moving_average", "percentile", "mse")
_SAMPLE = 1 << 16


class Observer:
    """Collects statistics of one tensor's activations; ``range()`` gives (lo, hi) as 0-d tensors."""

    def __init__(self, kind: str = "minmax", *, percentile: float = 99.99, averaging_constant: float = 0.01,
                 channel_absmax: bool = False, seed: int = 0):
        if kind not in OBSERVERS:
            raise ValueError(f"Observer: kind must be one of {', '.join(OBSERVERS)} (got {kind!r})")
        if not 0 < percentile <= 100:
            raise ValueError(f"Observer: percentile must be in (0, 100] (got {percentile})")
        self.kind = kind
        self.percentile = percentile
        self.averaging_constant = averaging_constant
        self.lo = None
        self.hi = None
        self.samples: list[Tensor] = []
        self.channel_absmax = None if not channel_absmax else torch.zeros(0)
        self.batches = 0
        self._g = torch.Generator().manual_seed(seed)

    def update(self, x: Tensor, name: str = "activation") -> None:
        x = x.detach().float().cpu()
        if not torch.isfinite(x).all():
            raise ValueError(f"calibration: {name} received NaN or Inf activations; calibration data must be finite")
        lo, hi = x.min(), x.max()
        if self.lo is None:
            self.lo, self.hi = lo, hi
        elif self.kind == "moving_average":
            c = self.averaging_constant
            self.lo = (1 - c) * self.lo + c * lo
            self.hi = (1 - c) * self.hi + c * hi
        else:
            self.lo, self.hi = torch.minimum(self.lo, lo), torch.maximum(self.hi, hi)
        if self.kind in ("percentile", "mse"):
            flat = x.reshape(-1)
            if flat.numel() > _SAMPLE:
                flat = flat[torch.randint(flat.numel(), (_SAMPLE,), generator=self._g)]
            self.samples.append(flat)
        if self.channel_absmax is not None:
            amax = x.reshape(-1, x.shape[-1]).abs().amax(0)
            self.channel_absmax = amax if self.channel_absmax.numel() == 0 else torch.maximum(self.channel_absmax, amax)
        self.batches += 1

    def range(self) -> tuple[Tensor, Tensor]:
        if self.lo is None:
            raise ValueError("calibration: the observer saw no batches; calibration must yield at least one batch")
        if self.kind in ("minmax", "moving_average"):
            return self.lo, self.hi
        sample = torch.cat(self.samples)
        if self.kind == "percentile":
            amax = torch.quantile(sample.abs(), self.percentile / 100)
            return -amax, amax
        return self._mse_range(sample)

    def _mse_range(self, sample: Tensor) -> tuple[Tensor, Tensor]:
        quantizer = Quantizer(8, True, "tensor")
        amax = torch.maximum(-self.lo, self.hi)
        best, best_err = amax, None
        for ratio in torch.linspace(0.2, 1.0, 100):
            a = amax * ratio
            scale, zp = quantizer.params_from_range(-a.reshape(1, 1), a.reshape(1, 1))
            err = (quantizer.fake_quantize(sample.reshape(1, -1), scale, zp) - sample).pow(2).mean()
            if best_err is None or err < best_err:
                best, best_err = a, err
        return -best, best


def _batch_call(model: nn.Module, batch):
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


@torch.no_grad()
def calibrate(model: nn.Module, calibration: Iterable, modules: dict[str, nn.Module],
              make_observer: Callable[[], Observer], desc: str = "calibrating") -> dict[str, Observer]:
    """Run ``model`` over ``calibration`` (tensors, tuples or dicts of tensors) and observe the input
    of every module in ``modules`` (name -> module). Returns name -> observer."""
    if calibration is None:
        raise ValueError("calibration: this config needs calibration data (an iterable of model inputs)")
    observers = {name: make_observer() for name in modules}
    hooks = [
        module.register_forward_pre_hook(lambda m, args, name=name: observers[name].update(args[0], name))
        for name, module in modules.items()
    ]
    was_training = model.training
    model.eval()
    batches = 0
    try:
        for batch in tqdm(calibration, desc=desc, unit="batch", leave=False):
            _batch_call(model, batch)
            batches += 1
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    if batches == 0:
        raise ValueError("calibration: the calibration iterable yielded no batches")
    return observers
