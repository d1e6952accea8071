"""LowRankConfig for ``pycompress.compress_``: each nn.Linear becomes a LowRankLinear of the chosen rank."""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import Tensor, nn

from pycompress.api import register_handler
from pycompress.lowrank.factorize import METHODS, factorize, rank_for_budget, rank_for_energy
from pycompress.nn.lowrank import LowRankLinear
from pycompress.quant.configs import linear_skip_reason


@dataclasses.dataclass(frozen=True)
class LowRankConfig:
    """Exactly one of ``rank`` (an int, or a float in (0, 1) read as that fraction of min(N, K)),
    ``energy`` (keep that fraction of the sum of squared singular values) or ``budget`` (the factors
    hold at most that fraction of the layer's parameters). ``method``: svd, data_aware (DRONE) or
    whitened; the last two need calibration data. A layer whose factors would not be smaller than
    the dense weight is left dense and reported, unless ``skip_unprofitable`` is False."""

    rank: Optional[float] = None
    energy: Optional[float] = None
    budget: Optional[float] = None
    method: str = "svd"
    skip_unprofitable: bool = True

    def __post_init__(self):
        given = [f for f in ("rank", "energy", "budget") if getattr(self, f) is not None]
        if len(given) != 1:
            raise ValueError(f"LowRankConfig: give exactly one of rank, energy, budget (got {given or 'none'})")
        if self.method not in METHODS:
            raise ValueError(f"LowRankConfig: method must be one of {', '.join(METHODS)} (got {self.method!r})")
        rank = self.rank
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, (int, float))
                                 or (isinstance(rank, int) and rank < 1)
                                 or (isinstance(rank, float) and not 0.0 < rank < 1.0)):
            raise ValueError(f"LowRankConfig: rank must be an int >= 1 or a fraction in (0, 1) of min(N, K) "
                             f"(got {rank!r})")
        for field in ("energy", "budget"):
            value = getattr(self, field)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0.0 < value <= 1.0):
                raise ValueError(f"LowRankConfig: {field} must be a number in (0, 1] (got {value!r})")


class GramObserver:
    """Accumulates X^T X (float64) and the row count of a layer's inputs."""

    def __init__(self):
        self.gram: Optional[Tensor] = None
        self.rows = 0

    def update(self, x: Tensor, name: str = "activation") -> None:
        rows = x.detach().reshape(-1, x.shape[-1]).double()
        if not torch.isfinite(rows).all():
            raise ValueError(f"calibration: the input of {name} holds NaN or Inf")
        product = rows.T @ rows
        self.gram = product if self.gram is None else self.gram + product
        self.rows += rows.shape[0]

    def mean_gram(self) -> Tensor:
        return self.gram / max(self.rows, 1)


def _rank(config: LowRankConfig, weight: Tensor) -> int:
    N, K = weight.shape
    if config.rank is not None:
        if isinstance(config.rank, float):
            return max(1, round(config.rank * min(N, K)))
        if config.rank > min(N, K):
            raise ValueError(f"LowRankConfig: rank {config.rank} is above min(N, K) = {min(N, K)} of a weight [{N}, {K}]")
        return config.rank
    if config.budget is not None:
        return rank_for_budget(N, K, config.budget)
    return rank_for_energy(torch.linalg.svdvals(weight.detach().double()), config.energy)


def _observer(config: LowRankConfig):
    return None if config.method == "svd" else GramObserver


@register_handler(LowRankConfig, observer=_observer)
def _lowrank(module: nn.Linear, config: LowRankConfig, observer, name: str):
    reason = linear_skip_reason(module)
    if reason:
        return reason
    N, K = module.weight.shape
    rank = _rank(config, module.weight)
    if config.skip_unprofitable and rank * (N + K) >= N * K:
        return f"rank {rank} factors ({rank * (N + K)} parameters) are not smaller than the weight ({N * K})"
    gram = observer.mean_gram() if observer is not None else None
    u, v = factorize(module.weight, rank, config.method, gram)
    return LowRankLinear.from_factors(module, u, v)
