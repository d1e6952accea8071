"""Depthwise-separable factorization of k x k convolutions.

A Conv2d with weight W [out, in, k, k] (groups=1) becomes a depthwise k x k conv (groups=in,
in * m channels) followed by a pointwise 1x1 conv to out, initialised from the per-input-channel SVDs
of W (``pycompress.nn.lowrank.SeparableConv2d.from_conv``). ``SeparableConvConfig`` does it through
``pycompress.compress_``; ``separable_`` does it and reports the parameter and multiply-add reduction.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

from torch import nn

from pycompress.api import compress_, register_handler, report
from pycompress.nn.lowrank import SeparableConv2d
from pycompress.prune.physical import count_macs, count_params


@dataclasses.dataclass(frozen=True)
class SeparableConvConfig:
    """Every nn.Conv2d with groups=1 and a kernel larger than 1x1 becomes a SeparableConv2d with
    ``multiplier`` depthwise channels per input channel (an int in [1, kh * kw]; a larger multiplier
    is an error). Other convs stay and are reported, as is a conv whose separable form would not have
    fewer parameters (m (k^2 + out) >= out k^2), unless ``skip_unprofitable`` is False."""

    multiplier: int = 1
    skip_unprofitable: bool = True

    def __post_init__(self):
        m = self.multiplier
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(f"SeparableConvConfig: multiplier must be an int >= 1 (got {m!r})")


def _is_conv2d(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d)


@register_handler(SeparableConvConfig, applies=_is_conv2d)
def _separable(module: nn.Conv2d, config: SeparableConvConfig, observer, name: str):
    if type(module) is not nn.Conv2d:
        return f"{type(module).__name__} is not a plain nn.Conv2d"
    if module.groups != 1:
        return f"groups={module.groups}: only groups=1 convs are separated"
    kh, kw = module.kernel_size
    if kh * kw == 1:
        return "a 1x1 kernel has nothing to separate"
    if config.multiplier > kh * kw:
        raise ValueError(f"SeparableConvConfig: multiplier {config.multiplier} is above k*k = {kh * kw} of "
                         f"{name or 'the model'} ({kh}x{kw} kernel)")
    out, m = module.out_channels, config.multiplier
    if config.skip_unprofitable and m * (kh * kw + out) >= out * kh * kw:
        return (f"multiplier {m}: the separable form ({module.in_channels * m * (kh * kw + out)} weights) is not "
                f"smaller than the conv ({module.weight.numel()})")
    return SeparableConv2d.from_conv(module, config.multiplier)


@dataclasses.dataclass(frozen=True)
class SeparableReport:
    """What ``separable_`` did: layers replaced (name -> format) and left (name -> why), and the
    model's parameters and Linear/Conv multiply-adds (``count_macs``) on the example inputs."""

    replaced: dict
    skipped: dict
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int

    @property
    def param_reduction(self) -> float:
        """1 - params_after / params_before."""
        return 1.0 - self.params_after / self.params_before

    @property
    def mac_reduction(self) -> float:
        """1 - macs_after / macs_before."""
        return 1.0 - self.macs_after / self.macs_before


def separable_(model: nn.Module, example_inputs, *, multiplier: int = 1, skip_unprofitable: bool = True,
               filter_fn: Optional[Callable[[nn.Module, str], bool]] = None) -> SeparableReport:
    """Apply ``SeparableConvConfig(multiplier, skip_unprofitable)`` to ``model`` in place (the convs
    ``filter_fn(module, name)`` accepts) and count what it saved on ``example_inputs`` (a tensor, a
    tuple of positional inputs or a dict of keyword inputs)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"separable_: model must be an nn.Module (got {type(model).__name__})")
    if isinstance(model, nn.Conv2d):
        raise TypeError("separable_: model must contain the convs, not be one (a bare conv cannot be replaced in "
                        "place; use SeparableConv2d.from_conv)")
    config = SeparableConvConfig(multiplier=multiplier, skip_unprofitable=skip_unprofitable)
    params_before, macs_before = count_params(model), count_macs(model, example_inputs)
    compress_(model, config, filter_fn=filter_fn)
    done = report(model)
    return SeparableReport(dict(done.replaced), dict(done.skipped), params_before, count_params(model),
                           macs_before, count_macs(model, example_inputs))
